"""Where `python -m deploy` archives every release: a bucket of its own (releases/<stack>/),
a Spaces key of the deploy's own granted on that bucket alone, and the key that signs each
release's manifest. Only when backups are on.

Neither key reaches a droplet: they are in the stack's secret output `release_archive`,
read by operators' deploy command. No droplet's key can write this bucket, and a manifest
or tarball replaced in it (by anyone holding a key to the whole account's Spaces, say) is
refused at restore: the manifest carries the tarball's sha256 and is signed with a key
that exists only in the stack's state; the public half is an output of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_digitalocean as do
import pulumi_tls as tls

import cloudinit

from model import conventions
from model.settings import Settings

from .buckets import spaces_bucket


@dataclass
class ReleaseArchive:
    output: pulumi.Output[dict]               # the secret stack output `release_archive`
    signing_public_key: pulumi.Output[str]     # public: anyone can check a release with it


def release_archive(name: str, *, settings: Settings, datastore_address: pulumi.Input[str]) -> ReleaseArchive:
    """The stack output the deploy command reads: bucket, endpoint, keys, and the run
    configuration archived with each release. Secret as a whole (it holds the keys)."""
    bucket = spaces_bucket(f"{name}-bucket", settings=settings, purpose=conventions.RELEASES)
    # Read and write on the release bucket only; the deploy deletes old releases. A key of
    # its own, not a backup key, so either can be revoked alone.
    key = do.SpacesKey(
        f"{name}-key",
        name=f"{settings.stack}-deploys",
        grants=[do.SpacesKeyGrantArgs(bucket=bucket.name, permission="readwrite")],
    )
    # Its inputs never change, so it is never replaced: every release signed since stays
    # checkable. Ed25519: small signatures, and OpenSSL verifies them by hand too.
    signing = tls.PrivateKey(f"{name}-signing-key", algorithm="ED25519")
    output = pulumi.Output.secret(
        pulumi.Output.all(
            bucket=bucket.name,
            region=bucket.region,
            endpoint=bucket.region.apply(settings.endpoint_of),
            access_key_id=key.access_key,
            secret_access_key=key.secret_key,
            signing_key_pem=signing.private_key_pem,
            signing_public_key_pem=signing.public_key_pem,
            configuration=pulumi.Output.from_input(datastore_address).apply(
                lambda address: cloudinit.run_configuration(address, settings)
            ),
        )
    )
    return ReleaseArchive(output, pulumi.Output.unsecret(signing.public_key_pem))
