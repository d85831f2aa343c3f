"""Each release archived to the stack's bucket before any server receives it.

Where and with which key come from the program's own `release_archive` output; the
deploys run with the fleet of fleet.py (servers kept as data) against moto's S3 on
loopback over TLS with a private CA, as a local stand-in for Spaces would be.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from deploy import __main__ as cli
from deploy import archive
from deploy.archive import ArchiveError, NotArchived, Store, store_from_outputs
from deploy.executor import CommandFailed, Executor, Result
from deploy.targets import LocalStack, PulumiStack

from archive_stand_in import KEYS, deploy
from fleet import NEW, OLD, FakeTarget, Fleet



def objects(s3, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def secrets_of(staging_deployment, store: Store) -> list[str]:
    passwords = [r.state["result"] for r in staging_deployment.of_type(":RandomPassword")]
    return [store.access_key_id, store.secret_access_key, *passwords]


# --- a deploy against the stand-in ---------------------------------------------------------

def test_a_deploy_archives_release_configuration_and_manifest_before_any_server(
        monkeypatch, staging_deployment, store, s3, build):
    fleet = Fleet()
    archived_when_first_sent: list[list[str]] = []
    send = fleet.run

    def run(argv, **kwargs):
        if argv[0] == "rsync" and not archived_when_first_sent:
            archived_when_first_sent.append(objects(s3, store.bucket))
        return send(argv, **kwargs)

    fleet.run = run
    assert deploy(monkeypatch, fleet, FakeTarget(store), build) == 0
    assert archived_when_first_sent == [sorted(KEYS)]
    assert all(server.running == NEW for server in fleet.servers.values())

    tarball = s3.get_object(Bucket=store.bucket, Key=KEYS[0])["Body"].read()
    manifest = json.loads(s3.get_object(Bucket=store.bucket, Key=KEYS[1])["Body"].read())
    with tarfile.open(fileobj=io.BytesIO(tarball)) as packed:
        members = {m.name: m for m in packed.getmembers()}
        read = lambda name: packed.extractfile(members[name]).read().decode()  # noqa: E731
        # The release exactly as the servers receive it, with the modes they hold it in.
        built = {str(Path("release") / p.relative_to(build.directory)) for p in Path(build.directory).rglob("*")}
        assert {n for n in members if n.startswith("release/")} == built
        assert read("release/web/server.js") == "require('pg');\n"
        assert read("release/REVISION") == NEW + "\n"
        assert members["release/web/server.js"].mode == 0o644
        assert members["release/node_modules/pg/cli.js"].mode == 0o755
        assert members["release/node_modules/.bin/pg"].linkname == "../pg/cli.js"
        assert {(m.uid, m.uname) for m in members.values()} == {(0, "")}
        # How it runs: what the program provisions, passwords left out.
        assert read("config/ecosystem.config.js") == store.configuration["ecosystem.config.js"]
        assert read("config/app.env.template") == store.configuration["app.env.template"]
        inner = json.loads(read("manifest.json"))
    assert manifest == inner | {"tarball_bytes": len(tarball), "tarball_sha256": hashlib.sha256(tarball).hexdigest()}
    assert inner == {
        "release_id": NEW, "stack": "staging", "git_commit": "bbbbbbb", "dirty": False,
        "built_at": "2026-11-29T21:30:05Z", "node_version": "v22.11.0", "app": {"name": "shop", "version": "2.3.4"},
        "release": "release/", "configuration": ["config/app.env.template", "config/ecosystem.config.js"],
        "tarball": KEYS[0],
    }
    printed = fleet.printed()
    assert f"archiving {NEW}" in printed and f"s3://{store.bucket}/{KEYS[0]}" in printed
    assert f"archived {NEW} with its signed manifest" in printed
    everything = json.dumps(manifest) + printed + read_config(tarball)
    for secret in secrets_of(staging_deployment, store):
        assert secret not in everything


def read_config(tarball: bytes) -> str:
    with tarfile.open(fileobj=io.BytesIO(tarball)) as packed:
        return "".join(packed.extractfile(m).read().decode() for m in packed.getmembers() if m.name.startswith("config/"))


def test_an_upload_that_fails_stops_the_deploy_before_any_server_is_touched(monkeypatch, staging_deployment, store, s3, build):
    missing = replace(store, bucket=f"gone-{uuid.uuid4().hex[:8]}")
    fleet = Fleet()
    assert deploy(monkeypatch, fleet, FakeTarget(missing), build) == cli.EXIT_STOPPED
    # Only node's version was asked (the runtime check, before the archive).
    assert [action for host, action in fleet.log if host != "lock" and action != "runtime"] == [], \
        "no server listed, sent to or switched"
    assert fleet.locks == {} and [action.split()[0] for host, action in fleet.log if host == "lock"] == (
        ["lock"] * len(fleet.servers) + ["unlock"] * len(fleet.servers))
    assert all((s.current, s.running, s.releases) == (OLD, OLD, [OLD]) for s in fleet.servers.values())
    printed = fleet.printed()
    assert f"deploy: could not archive to s3://{missing.bucket}/{KEYS[0]} at {store.endpoint}" in printed
    assert "NoSuchBucket" in printed and "No server was touched." in printed
    for secret in secrets_of(staging_deployment, store):
        assert secret not in printed


def test_the_endpoint_ca_comes_from_aws_ca_bundle_and_without_it_nothing_is_deployed(
        monkeypatch, store, s3, build):
    """boto3 is never given `verify`: the stand-in's private CA is trusted only through
    AWS_CA_BUNDLE (the success above ran with it)."""
    monkeypatch.delenv("AWS_CA_BUNDLE")
    fleet = Fleet()
    assert deploy(monkeypatch, fleet, FakeTarget(store), build) == cli.EXIT_STOPPED
    assert "certificate verify failed" in fleet.printed()
    assert "set AWS_CA_BUNDLE to a file holding it (now: unset)" in fleet.printed()
    assert objects(s3, store.bucket) == []
    assert not [action for host, action in fleet.log if host != "lock" and action != "runtime"]


def test_a_stack_with_nowhere_to_archive_says_why_and_deploys(monkeypatch, build):
    fleet = Fleet()
    assert deploy(monkeypatch, fleet, FakeTarget(), build) == 0
    assert "the release will not be archived: this test stack has no bucket" in fleet.printed()
    assert all(server.running == NEW for server in fleet.servers.values())


# --- where the store comes from ------------------------------------------------------------

def test_the_store_is_the_programs_output_and_its_key_is_redacted_once_read(staging_deployment):
    outputs = json.loads(json.dumps(staging_deployment.outputs))   # as `pulumi stack output --json` gives them
    found = store_from_outputs("staging", outputs, missing_why="")
    expected = staging_deployment.outputs["release_archive"]
    assert (found.bucket, found.endpoint, found.access_key_id) == (
        expected["bucket"], expected["endpoint"], expected["access_key_id"])
    assert found.url("R1", archive.TARBALL) == f"s3://{expected['bucket']}/releases/staging/R1.tar.gz"
    assert expected["secret_access_key"] not in repr(found)
    executor = Executor(secrets=[], out=io.StringIO())
    target = FakeTarget(found)
    assert cli.archive_store(target, executor) is found
    executor.say(f"key {found.access_key_id} secret {found.secret_access_key}")
    assert executor.out.getvalue() == "key [REDACTED] secret [REDACTED]\n"


def test_no_output_means_not_archived_with_the_reason_and_a_broken_one_is_an_error():
    with pytest.raises(NotArchived, match="backups: true"):
        store_from_outputs("staging", {"public_ip": "198.51.100.2"}, missing_why="set backups: true")
    with pytest.raises(ArchiveError, match="release_archive lacks 'secret_access_key'"):
        store_from_outputs("staging", {"release_archive": {"bucket": "b", "region": "r", "endpoint": "e",
                                                           "access_key_id": "k"}}, missing_why="")


class Outputs(Executor):
    """Answers `pulumi stack output` with the program's outputs; keeps what it was asked."""

    def __init__(self, outputs: dict):
        super().__init__(secrets=[], verbose=True, out=io.StringIO())
        self.outputs, self.asked = outputs, []

    def run(self, argv, *, input=None, timeout=900, secret_output=False):
        self.asked.append((argv, secret_output))
        return Result(argv, 0, json.dumps(self.outputs))


def test_a_real_stack_reads_the_key_with_show_secrets_and_prints_none_of_it(staging_deployment):
    executor = Outputs(staging_deployment.outputs)
    found = PulumiStack("staging", executor).archive_store()
    assert executor.asked == [(["pulumi", "stack", "output", "--json", "--show-secrets", "--stack", "staging"], True)]
    assert found.secret_access_key == staging_deployment.outputs["release_archive"]["secret_access_key"]
    executor = Outputs({"public_ip": "198.51.100.2"})
    with pytest.raises(NotArchived, match="setting `backups: true`"):
        PulumiStack("staging", executor).archive_store()


def test_output_marked_secret_is_never_printed_even_verbose_or_failing(tmp_path):
    (tmp_path / "secret").write_text("s3cr3t-value\n")
    out = io.StringIO()
    executor = Executor(secrets=[], verbose=True, out=out)
    assert executor.run(["cat", str(tmp_path / "secret")], secret_output=True).output == "s3cr3t-value\n"
    with pytest.raises(CommandFailed):
        executor.check("show", ["sh", "-c", f"cat {tmp_path}/secret; exit 1"], secret_output=True)
    assert "s3cr3t-value" not in out.getvalue()
    assert "(output not shown: it may hold secrets)" in out.getvalue()
    executor.run(["cat", str(tmp_path / "secret")])
    assert "  | s3cr3t-value" in out.getvalue(), "other output is printed as before"


def test_a_local_stack_reads_its_state_or_says_why_it_cannot(tmp_path, monkeypatch, staging_deployment):
    from localcloud import records
    state = tmp_path / "staging.json"
    monkeypatch.setattr(records, "state_file", lambda name: state)
    from localcloud import spaces
    state.write_text(json.dumps({"overrides": {}, "outputs": staging_deployment.outputs}))
    store = LocalStack("staging").archive_store()
    assert store.bucket == staging_deployment.outputs["release_archive"]["bucket"]
    assert store.ca_bundle == str(spaces.CA_CERT), "the stand-in's private CA is trusted for a local stack"
    for record in ({"overrides": {}, "outputs": {"public_ip": "198.51.100.2"}},   # backups off
                   {"overrides": {}}):                                            # an `up` before outputs were kept
        state.write_text(json.dumps(record))
        with pytest.raises(NotArchived, match="localcloud up"):
            LocalStack("staging").archive_store()


# The plan holds the local cloud's operator key, made by ssh-keygen in /var/lib/localcloud (root).
@pytest.mark.sandbox
def test_the_local_clouds_state_keeps_the_programs_outputs(tmp_path, monkeypatch):
    from localcloud import plan as local_plan, records
    monkeypatch.setattr(records, "state_file", lambda name: tmp_path / "none.json")
    record = local_plan.plan("staging").record
    saved = json.loads(json.dumps(record))
    assert saved["outputs"]["public_ip"] == record["outputs"]["public_ip"]
    assert saved["outputs"]["private_ips"]["app"]
    # The Spaces stand-in is the archive's endpoint, as it is the backups'.
    from localcloud import spaces
    assert saved["outputs"]["release_archive"]["endpoint"] == spaces.ENDPOINT


def test_uploads_put_the_manifest_last_under_the_stacks_prefix(tmp_path, store):
    plan = archive.uploads(store, "R1", tmp_path / "R1.tar.gz", tmp_path / "R1.json", tmp_path / "R1.json.sig")
    assert [(u.key, u.content_type) for u in plan] == [
        ("releases/staging/R1.tar.gz", "application/gzip"),
        ("releases/staging/R1.json.sig", "application/octet-stream"),
        ("releases/staging/R1.json", "application/json")]
    assert os.fspath(plan[0].path).endswith("R1.tar.gz")


def test_rollback_to_a_release_the_servers_lack_restores_it_from_the_archive(monkeypatch, store, build):
    assert deploy(monkeypatch, Fleet(), FakeTarget(store), build) == 0   # archived; that fleet is gone
    fleet = Fleet()                                                  # servers that never held it
    uploaded: dict[str, dict[str, bytes]] = {}
    send = fleet.run

    def run(argv, **kwargs):
        if argv[0] == "rsync":   # what each server would receive: the unpacked release, as deploy's
            source = Path(argv[-2])
            uploaded[argv[-1]] = {str(f.relative_to(source)): (f.readlink().as_posix().encode() if f.is_symlink()
                                                                else f.read_bytes())
                                  for f in source.rglob("*") if f.is_symlink() or f.is_file()}
        return send(argv, **kwargs)

    fleet.run = run
    assert cli.main(["rollback", "staging", "--to", NEW], executor=fleet) == 0, fleet.printed()
    assert f"{NEW}: not on every server; fetching it from s3://{store.bucket}/{KEYS[0]}" in fleet.printed()
    assert all(s.current == NEW for s in fleet.servers.values())
    built = Path(build.directory)
    expected = {str(f.relative_to(built)): (f.readlink().as_posix().encode() if f.is_symlink() else f.read_bytes())
                for f in built.rglob("*") if f.is_symlink() or f.is_file()}
    assert len(uploaded) == len(fleet.servers) and all(files == expected for files in uploaded.values())


def test_rollback_to_a_release_neither_servers_nor_archive_hold_switches_nothing(monkeypatch, store):
    fleet = Fleet()
    monkeypatch.setattr(cli, "target_of", lambda args, executor: FakeTarget(store))
    never = "20200101T000000Z-0000000"
    assert cli.main(["rollback", "staging", "--to", never], executor=fleet) == cli.EXIT_STOPPED
    assert f"app-1: does not hold {never}" in fleet.printed()
    assert f"It is not archived either (no s3://{store.bucket}/releases/staging/{never}.json)" in fleet.printed()
    assert all(s.current == OLD for s in fleet.servers.values())
    assert [a for h, a in fleet.log if h != "lock" and not a.startswith("list")] == [], "nothing switched"
    nowhere = Fleet()
    monkeypatch.setattr(cli, "target_of", lambda args, executor: FakeTarget())
    assert cli.main(["rollback", "staging", "--to", never], executor=nowhere) == cli.EXIT_STOPPED
    assert "No archive to look in: this test stack has no bucket" in nowhere.printed()


def test_rollback_to_an_archived_release_whose_tarball_was_replaced_switches_nothing(monkeypatch, store, s3, build):
    assert deploy(monkeypatch, Fleet(), FakeTarget(store), build) == 0
    s3.put_object(Bucket=store.bucket, Key=KEYS[0], Body=b"a tarball someone put in its place")
    fleet = Fleet()
    assert cli.main(["rollback", "staging", "--to", NEW], executor=fleet) == cli.EXIT_STOPPED
    assert "the tarball was replaced or damaged in the bucket. Refusing to restore it" in fleet.printed()
    assert [a for h, a in fleet.log if h != "lock" and not a.startswith("list")] == [], "nothing sent or switched"


def test_an_unpacked_release_keeps_its_links_inside_and_refuses_one_out(tmp_path):
    from deploy import restore
    good = tmp_path / "good.tar.gz"
    with tarfile.open(good, "w:gz") as packed:
        for name, target in (("release/node_modules/.bin/pg", "../pg/cli.js"), ("release/escape", "/etc/passwd")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            packed.addfile(info)
    with pytest.raises(tarfile.TarError):
        restore.unpack(good, str(tmp_path / "out"), "R1")
    with pytest.raises(ArchiveError, match="release id '../x'"):
        restore.unpack(good, str(tmp_path / "out2"), "../x")


def test_a_deploy_deletes_the_stacks_archived_releases_beyond_the_newest_kept(monkeypatch, store, s3, build):
    older = ["20260101T000000Z-1111111", "20260201T000000Z-2222222", "20260301T000000Z-3333333"]
    for release_id in older:
        for suffix in (archive.TARBALL, archive.MANIFEST, archive.SIGNATURE):
            s3.put_object(Bucket=store.bucket, Key=store.key(release_id, suffix), Body=b"old")
    other_stack = f"releases/production/{older[0]}.tar.gz"
    s3.put_object(Bucket=store.bucket, Key=other_stack, Body=b"not this stack's")
    monkeypatch.setattr(archive, "ARCHIVED_RELEASES_KEPT", 2)
    fleet = Fleet()
    assert deploy(monkeypatch, fleet, FakeTarget(store), build) == 0
    kept = sorted(KEYS + tuple(store.key(older[-1], suffix) for suffix in (archive.TARBALL, archive.MANIFEST,
                                                                             archive.SIGNATURE)))
    assert objects(s3, store.bucket) == sorted(kept + [other_stack])
    assert archive.archived_ids(store) == [older[-1], NEW]
    assert f"deleted 2 archived release(s) older than the newest 2 ({older[0]} .. {older[1]})" in fleet.printed()


def test_a_deploy_whose_old_archives_cannot_be_deleted_warns_and_goes_on(monkeypatch, store, build):
    from botocore.exceptions import ClientError

    def refused(store, keep):
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no delete"}}, "DeleteObject")

    monkeypatch.setattr(archive, "prune", refused)
    fleet = Fleet()
    assert deploy(monkeypatch, fleet, FakeTarget(store), build) == 0
    assert "warning: could not delete archived releases older than the newest" in fleet.printed()
    assert all(server.running == NEW for server in fleet.servers.values())
