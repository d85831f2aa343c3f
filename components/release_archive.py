"""Where `python -m deploy` archives every release: the stack's backup bucket, under
releases/<stack>/, with a Spaces key of the deploy's own. Only when backups are on: the
bucket exists only then.
"""

from __future__ import annotations

import pulumi
import pulumi_digitalocean as do

from cloudinit import app_server as app_files

from model.settings import Settings


def release_archive(
    name: str, *, settings: Settings, bucket: do.SpacesBucket, datastore_address: pulumi.Input[str]
) -> pulumi.Output[dict]:
    """The stack output the deploy command reads: bucket, endpoint, key, and the run
    configuration archived with each release. Secret as a whole (it holds the key)."""
    # Read and write on the backup bucket only. Spaces keys cannot be scoped to a prefix,
    # so this key could also read or delete the datastore's restic repository beside
    # releases/; it stays on operators' machines, never on a droplet. A key of its own,
    # not the datastore's, so either can be revoked alone.
    key = do.SpacesKey(
        f"{name}-key",
        name=f"{settings.stack}-deploys",
        grants=[do.SpacesKeyGrantArgs(bucket=bucket.name, permission="readwrite")],
    )
    return pulumi.Output.secret(
        pulumi.Output.all(
            bucket=bucket.name,
            region=bucket.region,
            endpoint=settings.spaces_endpoint,
            access_key_id=key.access_key,
            secret_access_key=key.secret_key,
            configuration=pulumi.Output.from_input(datastore_address).apply(
                lambda address: app_files.run_configuration(address, settings)
            ),
        )
    )
