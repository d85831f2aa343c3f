"""One role's backups: a Spaces key that can reach only the role's own bucket, and
restic's repository password, pushed to each of the role's droplets with the schedule
and retention (and the backup alerts' webhook, alertWebhookUrl).

restic on each droplet does the work (cloudinit/common/platform-backup.sh): the datastore
sends its engines' dumps and configuration, the load balancer its certificates and
configuration, each app server its configuration. Each role has its own bucket, key,
repository (restic/<role>) and password: a load balancer's files open none of the
datastore's dumps, and its key can neither list nor delete them.
The password lives in the stack's state (a secret) and in one root-only file per
droplet, so a rebuilt droplet reads the old snapshots.
"""

from __future__ import annotations

import pulumi
import pulumi_digitalocean as do
import pulumi_random as random

from cloudinit import common as common_files

from . import remote

from model import conventions
from model.settings import Settings

REPOSITORY_PASSWORD_LENGTH = 48


class Backups(pulumi.ComponentResource):
    def __init__(
        self,
        name: str,
        *,
        settings: Settings,
        role: str,
        bucket: do.SpacesBucket,
        members: dict[str, remote.SshRoute],
        opts: pulumi.ResourceOptions | None = None,
    ):
        """members: each droplet of the role by its name in the stack (`lb`, `app-1`); the
        first creates the role's repository."""
        super().__init__("node-platform:index:Backups", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # Losing it loses every snapshot. Its inputs never change, so it is never replaced;
        # keep a copy outside the stack too (README: restore runbook).
        password = random.RandomPassword(
            f"{name}-repository-password", length=REPOSITORY_PASSWORD_LENGTH, special=False, opts=child
        )
        # Read and write on the role's bucket only: a leaked key cannot reach another role's
        # bucket or create any. (restic needs delete for retention, which `readwrite` includes.)
        self.key = do.SpacesKey(
            f"{name}-key",
            name=f"{settings.stack}-{role}-backups",
            grants=[do.SpacesKeyGrantArgs(bucket=bucket.name, permission="readwrite")],
            opts=child,
        )
        self.repository = pulumi.Output.all(bucket.name, bucket.region).apply(
            lambda found: common_files.backup_repository(settings.endpoint_of(found[1]), found[0], role)
        )
        webhook = settings.alert_webhook_url
        # Pushed when empty too: unsetting alertWebhookUrl must clear it on the droplet.
        alert_env = webhook.output().apply(common_files.alert_env) if webhook else common_files.alert_env("")

        def push(member: str, creates_repository: bool, depends_on: list[pulumi.Resource] | None = None):
            secrets = pulumi.Output.secret(
                pulumi.Output.all(
                    repository=self.repository,
                    password=password.result,
                    access_key=self.key.access_key,
                    secret_key=self.key.secret_key,
                    host=conventions.backup_host(settings.stack, member),
                )
            )
            return remote.push(
                f"{member}-backup-push",
                route=members[member],
                kind="backup",
                files={
                    "backup.env": secrets.apply(
                        lambda s: common_files.backup_env(**s, creates_repository=creates_repository)
                    ),
                    "alert.env": alert_env,
                    **common_files.backup_schedule_files(settings),
                },
                parent=self,
                depends_on=depends_on,
            )

        # The repository is created once, by the first member's push; the others wait for it
        # and only check. Two `restic init` at once (the engine runs pushes in parallel) can
        # leave a config written by one and a key by the other: a repository none can open.
        creator, *others = members
        creator_push = push(creator, creates_repository=True)
        for member in others:
            push(member, creates_repository=False, depends_on=[creator_push])
        self.register_outputs({"repository": self.repository})
