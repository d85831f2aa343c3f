"""The datastore's backups: a Spaces key that can reach only the stack's backup bucket, and
restic's repository password, pushed to the datastore with the schedule and retention
(and the backup alerts' webhook, alertWebhookUrl).

restic on the datastore does the work (cloudinit/datastore/platform-backup.sh). The
password encrypts every snapshot; it lives in the stack's state (a secret) and in one
root-only file on the datastore, so a rebuilt datastore reads the old snapshots.
"""

from __future__ import annotations

import pulumi
import pulumi_digitalocean as do
import pulumi_random as random

from cloudinit import datastore as datastore_files

from . import conventions, remote
from .settings import Settings

REPOSITORY_PASSWORD_LENGTH = 48


class Backups(pulumi.ComponentResource):
    def __init__(
        self,
        name: str,
        *,
        settings: Settings,
        bucket: do.SpacesBucket,
        route: remote.SshRoute,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("node-platform:index:Backups", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # Losing it loses every snapshot. Its inputs never change, so it is never replaced;
        # keep a copy outside the stack too (README: restore runbook).
        password = random.RandomPassword(
            f"{name}-repository-password", length=REPOSITORY_PASSWORD_LENGTH, special=False, opts=child
        )
        # Read and write on this bucket only: a leaked key cannot reach other buckets or
        # create any. (restic needs delete for retention, which `readwrite` includes.)
        self.key = do.SpacesKey(
            f"{name}-key",
            name=f"{settings.stack}-datastore-backups",
            grants=[do.SpacesKeyGrantArgs(bucket=bucket.name, permission="readwrite")],
            opts=child,
        )
        repository = bucket.name.apply(
            lambda bucket_name: datastore_files.backup_repository(settings.spaces_endpoint, bucket_name)
        )
        secrets = pulumi.Output.secret(
            pulumi.Output.all(
                repository=repository,
                password=password.result,
                access_key=self.key.access_key,
                secret_key=self.key.secret_key,
            )
        )
        webhook = settings.alert_webhook_url
        self.push = remote.push(
            f"{name}-push",
            route=route,
            kind="backup",
            files={
                "backup.env": secrets.apply(lambda s: datastore_files.backup_env(**s)),
                # Pushed when empty too: unsetting alertWebhookUrl must clear it on the droplet.
                "alert.env": webhook.output().apply(datastore_files.alert_env) if webhook
                else datastore_files.alert_env(""),
                **datastore_files.backup_schedule_files(settings),
            },
            parent=self,
        )
        self.repository = repository
        self.register_outputs({"repository": repository})
