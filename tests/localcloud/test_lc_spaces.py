"""The Spaces stand-in's server checks keys as Spaces does: started as `up` starts it
(spaces.server_command), on loopback, its own port and key directory under a temporary
folder, so a running local cloud is not touched.

The plan holds the program's SpacesKeys as made. A key granted `readwrite` on bucket A
uses A (boto3 and restic, which the droplets run), and can neither list, read, write nor
delete in bucket B; a `read` key reads and cannot write; an unknown key or a wrong secret
is refused; the host's key has every bucket; keys follow the stack's file (a key removed
from it stops working at once).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from localcloud import plan as local_plan
from localcloud import shell, spaces
from localcloud.spaces_server import policy_document

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "deploy"))
from s3_stand_in import private_ca  # noqa: E402  (the deploy tests' private CA for a loopback server)

# The tests that start the server run a host program (and restic): tier sandbox.
server_test = pytest.mark.sandbox

APP = ("DO00APPKEY0000000001", "app-secret-" + "a" * 32)
DATASTORE = ("DO00DATASTOREKEY0002", "datastore-secret-" + "d" * 26)
READER = ("DO00READONLYKEY00003", "reader-secret-" + "r" * 29)
APP_BUCKET, DATASTORE_BUCKET = "t-example-com-app-backups", "t-example-com-backups"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, monkeypatch_module):
    directory = tmp_path_factory.mktemp("spaces")
    ca, cert, key = private_ca(directory, "127.0.0.1")
    keys = directory / "keys"
    monkeypatch_module.setattr(spaces, "KEYS_DIR", keys)
    port = free_port()
    argv = spaces.server_command(host="127.0.0.1", port=port, keys=keys, cert=Path(cert), key=Path(key))
    assert argv[1:3] == ["-m", "localcloud.spaces_server"]
    log = open(directory / "server.log", "wb")
    proc = subprocess.Popen(argv, env={**os.environ, **spaces.server_env()}, stdout=log, stderr=subprocess.STDOUT,
                            cwd=directory, start_new_session=True)
    endpoint = f"https://127.0.0.1:{port}"

    def answering() -> bool:
        assert proc.poll() is None, (directory / "server.log").read_text()
        return shell.succeeds(["curl", "-s", "-o", "/dev/null", "--cacert", ca, endpoint + "/"], timeout=10)
    shell.wait_until(answering, 30, lambda: (directory / "server.log").read_text(), every=0.3)
    try:
        yield SimpleNamespace(endpoint=endpoint, ca=ca, directory=directory)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as m:
        yield m


def s3_with(server, key: tuple[str, str], region: str = spaces.REGION):
    return boto3.client("s3", endpoint_url=server.endpoint, region_name=region, verify=server.ca,
                        aws_access_key_id=key[0], aws_secret_access_key=key[1],
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


def planned(name: str, key: tuple[str, str], *grants: tuple[str, str]) -> local_plan.PlannedKey:
    return local_plan.PlannedKey(name, key[0], key[1], tuple({"bucket": b, "permission": p} for b, p in grants))


@pytest.fixture(scope="module")
def stack_keys(server):
    host = s3_with(server, spaces.HOST_KEY)
    for bucket in (APP_BUCKET, DATASTORE_BUCKET):
        host.create_bucket(Bucket=bucket)
    host.put_object(Bucket=DATASTORE_BUCKET, Key="restic/datastore/config", Body=b"the datastore's repository")
    spaces.register_keys("t", [planned("t-app-backups", APP, (APP_BUCKET, "readwrite")),
                               planned("t-datastore-backups", DATASTORE, (DATASTORE_BUCKET, "readwrite")),
                               planned("t-auditor", READER, (DATASTORE_BUCKET, "read"))])
    assert oct((spaces.KEYS_DIR / "t.json").stat().st_mode & 0o777) == "0o600"
    return host


def refused(call, code: str = "AccessDenied") -> None:
    with pytest.raises(ClientError) as raised:
        call()
    assert raised.value.response["Error"]["Code"] == code, raised.value.response["Error"]


@server_test
def test_a_key_uses_its_own_bucket_and_cannot_list_read_write_or_delete_another(server, stack_keys):
    app = s3_with(server, APP)
    app.put_object(Bucket=APP_BUCKET, Key="restic/app/config", Body=b"app")
    assert [o["Key"] for o in app.list_objects_v2(Bucket=APP_BUCKET)["Contents"]] == ["restic/app/config"]
    app.delete_object(Bucket=APP_BUCKET, Key="restic/app/config")
    # Signed for the stack's Spaces region, as the deploy tool signs (Store.region): the same.
    assert s3_with(server, APP, region="ams3").list_objects_v2(Bucket=APP_BUCKET)["KeyCount"] == 0
    denied_elsewhere = s3_with(server, APP, region="ams3")
    refused(lambda: denied_elsewhere.list_objects_v2(Bucket=DATASTORE_BUCKET))
    refused(lambda: app.list_objects_v2(Bucket=DATASTORE_BUCKET))
    refused(lambda: app.get_object(Bucket=DATASTORE_BUCKET, Key="restic/datastore/config"))
    refused(lambda: app.put_object(Bucket=DATASTORE_BUCKET, Key="restic/datastore/config", Body=b"replaced"))
    refused(lambda: app.delete_object(Bucket=DATASTORE_BUCKET, Key="restic/datastore/config"))
    refused(lambda: app.delete_bucket(Bucket=DATASTORE_BUCKET))
    refused(lambda: app.create_bucket(Bucket="t-a-bucket-of-its-own"))
    # Untouched: the host still reads the datastore's object as it was.
    assert stack_keys.get_object(Bucket=DATASTORE_BUCKET, Key="restic/datastore/config")["Body"].read() == \
        b"the datastore's repository"


@server_test
def test_a_read_grant_reads_and_writes_nothing(server, stack_keys):
    reader = s3_with(server, READER)
    assert reader.get_object(Bucket=DATASTORE_BUCKET, Key="restic/datastore/config")["Body"].read()
    assert reader.list_objects_v2(Bucket=DATASTORE_BUCKET)["KeyCount"] == 1
    refused(lambda: reader.put_object(Bucket=DATASTORE_BUCKET, Key="x", Body=b"x"))
    refused(lambda: reader.delete_object(Bucket=DATASTORE_BUCKET, Key="restic/datastore/config"))
    refused(lambda: reader.list_objects_v2(Bucket=APP_BUCKET))


@server_test
def test_unknown_keys_and_wrong_secrets_are_refused(server, stack_keys):
    refused(lambda: s3_with(server, ("DO00NOSUCHKEY0000000", "x")).list_objects_v2(Bucket=APP_BUCKET),
            "InvalidAccessKeyId")
    refused(lambda: s3_with(server, (APP[0], "not-its-secret")).list_objects_v2(Bucket=APP_BUCKET),
            "SignatureDoesNotMatch")


@server_test
def test_restic_with_a_roles_key_backs_up_to_its_bucket_and_cannot_open_anothers(server, stack_keys, tmp_path):
    """What a droplet runs (platform-backup: restic over S3), with its backup.env's values."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "file").write_text("configuration\n")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "RESTIC_PASSWORD": "p" * 48,
           "RESTIC_CACHE_DIR": str(tmp_path / "cache"), "AWS_ACCESS_KEY_ID": APP[0], "AWS_SECRET_ACCESS_KEY": APP[1]}

    def restic(bucket: str, *args: str) -> subprocess.CompletedProcess:
        repository = f"s3:{server.endpoint}/{bucket}/restic/app"
        return subprocess.run(["restic", "-r", repository, "--cacert", server.ca, *args], env=env,
                              capture_output=True, text=True, timeout=120)

    for step in (["init"], ["backup", str(tmp_path / "data")], ["snapshots", "--json"], ["forget", "--keep-last", "1", "--prune"]):
        done = restic(APP_BUCKET, *step)
        assert done.returncode == 0, (step, done.stdout, done.stderr)
    other = restic(DATASTORE_BUCKET, "init")
    assert other.returncode != 0 and "Access Denied" in other.stderr, other.stderr
    assert stack_keys.list_objects_v2(Bucket=DATASTORE_BUCKET)["KeyCount"] == 1, "nothing written there"


@server_test
def test_the_host_key_has_every_bucket_and_a_key_removed_from_the_stack_stops_working(server, stack_keys):
    names = {b["Name"] for b in stack_keys.list_buckets()["Buckets"]}
    assert {APP_BUCKET, DATASTORE_BUCKET} <= names
    refused(lambda: s3_with(server, APP).list_buckets())   # a scoped key lists no account's buckets
    spaces.register_keys("t", [planned("t-datastore-backups", DATASTORE, (DATASTORE_BUCKET, "readwrite"))])
    refused(lambda: s3_with(server, APP).list_objects_v2(Bucket=APP_BUCKET), "InvalidAccessKeyId")
    assert s3_with(server, DATASTORE).list_objects_v2(Bucket=DATASTORE_BUCKET)["KeyCount"] == 1
    spaces.forget_keys("t")
    refused(lambda: s3_with(server, DATASTORE).list_objects_v2(Bucket=DATASTORE_BUCKET), "InvalidAccessKeyId")


def test_grants_become_policies_as_spaces_defines_the_permissions():
    rw = json.loads(policy_document([{"bucket": "b", "permission": "readwrite"}]))["Statement"]
    assert rw == [{"Effect": "Allow", "Action": "s3:*", "Resource": ["arn:aws:s3:::b", "arn:aws:s3:::b/*"]}]
    read = json.loads(policy_document([{"bucket": "b", "permission": "read"}]))["Statement"]
    assert read[0]["Action"] == ["s3:Get*", "s3:List*"]
    full = json.loads(policy_document([{"bucket": "", "permission": "fullaccess"}]))["Statement"]
    assert full == [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]
    with pytest.raises(ValueError, match="grant permission 'write': Spaces knows read, readwrite and fullaccess"):
        policy_document([{"bucket": "b", "permission": "write"}])
    with pytest.raises(ValueError, match="a 'readwrite' grant names no bucket"):
        policy_document([{"bucket": "", "permission": "readwrite"}])


def test_the_plan_holds_each_spaces_key_with_its_grants_as_the_program_made_them():
    import mockcloud
    d = mockcloud.deploy(mockcloud.stack_settings("staging", spacesEndpoint=spaces.ENDPOINT))
    p = local_plan.plan_from(d.resources, d.mocks.options, "staging", d.settings, {})
    made = {k.name: k for k in d.of_type(":SpacesKey")}
    assert {k.name: (k.access_key, k.secret_key, k.grants) for k in p.keys} == {
        k.state["name"]: (k.state["accessKey"], k.state["secretKey"], tuple(k.state["grants"])) for k in made.values()}
    assert {k.name for k in p.keys} == {"staging-datastore-backups", "staging-lb-backups", "staging-app-backups",
                                        "staging-deploys"}
    assert {b.key: b.name for b in p.buckets}["app-backups"] == p.bucket("app-backups").name
    assert all(k.secret_key not in repr(p) for k in p.keys), "the plan's repr shows no secret"
