"""On the booted stack, the key each droplet holds reaches its own role's bucket only, as
a Spaces key granted on one bucket does: root on an app server or the LB (which can read
backup.env) can neither list nor delete the datastore's backups, nor touch the release
archive.

The keys are read from the droplets' own backup.env; the requests go from the host to
the Spaces stand-in (keys checked: localcloud/spaces_server.py), and one from the app
server itself, with restic, as its backups run.
"""

from __future__ import annotations

import shlex

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from localcloud import spaces
from model import conventions

pytestmark = pytest.mark.localcloud

# Each role's bucket by its resource in the program; the releases' is no droplet's.
BUCKETS = {conventions.DATASTORE: "datastore-backups", conventions.LOAD_BALANCER: "lb-backups",
           conventions.APP_SERVER: "app-backups", conventions.RELEASES: "release-archive-bucket"}


def backup_env(s, droplet: str) -> dict[str, str]:
    text = s.run(droplet, ["cat", conventions.BACKUP_SECRETS_FILE], check=True).stdout
    return {k: (shlex.split(v) or [""])[0] for k, v in (line.split("=", 1) for line in text.splitlines() if "=" in line)}


def client_with(env: dict[str, str]):
    return boto3.client("s3", endpoint_url=spaces.ENDPOINT, region_name=spaces.REGION, verify=str(spaces.CA_CERT),
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


def denied(call) -> None:
    with pytest.raises(ClientError) as raised:
        call()
    assert raised.value.response["Error"]["Code"] == "AccessDenied", raised.value.response["Error"]


def test_each_droplets_key_reaches_its_own_bucket_only(local_stack):
    s = local_stack
    host = spaces.client()
    names = {purpose: s.plan.bucket(resource).name for purpose, resource in BUCKETS.items()}
    # Something of the datastore's to try to delete: its repository's config (its push made it).
    (datastore_object, *_) = [o["Key"] for o in host.list_objects_v2(
        Bucket=names[conventions.DATASTORE], Prefix=conventions.backup_repository_path(conventions.DATASTORE))["Contents"]]
    members = {conventions.LOAD_BALANCER: "lb", conventions.APP_SERVER: s.app_servers()[0],
               conventions.DATASTORE: "datastore"}
    for role, droplet in members.items():
        env = backup_env(s, droplet)
        own = names[role]
        assert env["RESTIC_REPOSITORY"].endswith(f"/{own}/{conventions.backup_repository_path(role)}"), env["RESTIC_REPOSITORY"]
        s3 = client_with(env)
        listed = s3.list_objects_v2(Bucket=own, Prefix=conventions.backup_repository_path(role))
        assert listed["KeyCount"] > 0, f"{droplet}: its own repository"
        for purpose, other in names.items():
            if other == own:
                continue
            denied(lambda: s3.list_objects_v2(Bucket=other))
            denied(lambda: s3.put_object(Bucket=other, Key=f"from-{droplet}", Body=b"x"))
            if purpose == conventions.DATASTORE:
                denied(lambda: s3.get_object(Bucket=other, Key=datastore_object))
                denied(lambda: s3.delete_object(Bucket=other, Key=datastore_object))
    # Nothing was deleted: the host still finds the datastore's object.
    assert host.head_object(Bucket=names[conventions.DATASTORE], Key=datastore_object)


def test_root_on_an_app_server_cannot_open_the_datastores_repository_with_restic(local_stack):
    s = local_stack
    app = s.app_servers()[0]
    repository = backup_env(s, app)["RESTIC_REPOSITORY"].replace(
        f"/{s.plan.bucket(BUCKETS[conventions.APP_SERVER]).name}/{conventions.backup_repository_path(conventions.APP_SERVER)}",
        f"/{s.plan.bucket(BUCKETS[conventions.DATASTORE]).name}/{conventions.backup_repository_path(conventions.DATASTORE)}")
    script = (f"set -a; . {conventions.BACKUP_SECRETS_FILE}; set +a; "
              f"RESTIC_REPOSITORY={shlex.quote(repository)} restic --no-cache --no-lock snapshots")
    tried = s.run(app, ["sh", "-c", script], timeout=120)
    assert tried.returncode != 0 and "Access Denied" in tried.stdout + (tried.stderr or ""), tried.stdout + (tried.stderr or "")
    own = s.run(app, ["sh", "-c", f"set -a; . {conventions.BACKUP_SECRETS_FILE}; set +a; restic --no-cache snapshots"],
                timeout=120)
    assert own.returncode == 0, own.stdout + (own.stderr or "")
