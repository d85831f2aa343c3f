"""Deploys on the stack booted by `python -m localcloud up` (marker `localcloud`, root).

Real droplets, real SSH through the LB as jump host, rsync as the deploy user, pm2's
graceful reload under systemd, and a steady stream of GETs from the internet client
through the LB's TLS front while it all happens. The tests run in order on one stack:
deploy, a bad release that stops at the first server, rollback, concurrent deploys.

Operator key: deploy logs in as `deploy` (on the LB, which it only passes, and on each app
server) with an operator's key: the local cloud's own, which a local override adds to the
stack's sshPublicKeys; with deployKeys empty the deploy login takes those (the program's
operators push brings them to every droplet).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from model import conventions
from deploy import DEFAULT_APP_DIR

pytestmark = pytest.mark.localcloud

ROOT = Path(__file__).resolve().parents[2]
STACK = "staging"
HEALTH_TIMEOUT = "25"


@pytest.fixture(scope="module")
def plan(local_stack):
    """The session's local stack (tests/conftest.py), as its last `up` deployed it."""
    from localcloud import stack as local
    assert local_stack.plan.stack == STACK
    return local.deployed(STACK)


@pytest.fixture(scope="module")
def operator_key(plan):
    """The local cloud's operator key: the plan's operators push gave every droplet its public half."""
    from localcloud import config
    assert config.OPERATOR_KEY.exists(), "the local stack's `up` makes the operator key"
    return str(config.OPERATOR_KEY)


def deploy_cli(*args: str, key: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploy", *args, STACK, "--local", "-i", key],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)


def app_servers(plan):
    return sorted((d for d in plan.droplets if d.key.startswith("app-")), key=lambda d: d.key)


def on(name: str, script: str) -> str:
    from localcloud import droplet
    return droplet.exec(name, ["bash", "-c", script], check=False, timeout=60).stdout.strip()


def current_of(name: str) -> str:
    return os.path.basename(on(name, f"readlink {conventions.CURRENT_RELEASE_LINK}"))


def running_releases(name: str) -> set[str]:
    """The release every pm2 worker of the apps runs from (their working directories)."""
    dirs = on(name, "for p in $(pgrep -u app -f 'node '); do readlink /proc/$p/cwd; done")
    return {os.path.basename(d) for d in dirs.splitlines() if d.startswith(conventions.RELEASES_DIR)}


# --- a steady stream of requests through the LB -----------------------------------------

def under_load(local_stack, *args: str, key: str) -> tuple[subprocess.CompletedProcess, dict]:
    """`deploy_cli(*args)` with GETs of the web app (/) and the API (/api/hello) in turn,
    from the internet client through the LB (localcloud.traffic), from 2 s before it to 2 s
    after: what it printed, and what the requests saw (printed too, with how long it took)."""
    from localcloud import traffic
    load = local_stack.stream(["/", "/api/hello"], seconds=None)
    time.sleep(2)
    start = time.monotonic()
    try:
        result = deploy_cli(*args, key=key)
    finally:
        took = time.monotonic() - start
        time.sleep(2)
        seen = traffic.result(load)
    print(result.stdout, f"\n[{args[0]} took {took:.1f}s] load: {seen}")
    return result, seen


def assert_none_lost(plan, seen: dict) -> None:
    """The example app's load: steady, every request answered, and every app server seen
    (its API names the server that answered)."""
    assert seen["requests"] > 100 and seen["failed"] == 0, seen
    assert set(seen["hosts"]) >= {d.name for d in app_servers(plan)}, seen


def release_id_from(output: str) -> str:
    match = re.search(r"^built (\S+)", output, re.M)
    assert match, output
    return match.group(1)


def bad_app(tmp_path: Path) -> str:
    """The example app with an API that dies as it starts: /healthz never answers."""
    app = tmp_path / "bad-app"
    shutil.copytree(DEFAULT_APP_DIR, app, ignore=shutil.ignore_patterns("node_modules"))
    server = app / "api" / "server.js"
    server.write_text("'use strict';\nconsole.error('bad release: exiting');\nprocess.exit(1);\n" + server.read_text())
    return str(app)


# --- the tests, in order ---------------------------------------------------------------

def serving(plan) -> str:
    """The status line of a GET of / through the LB, from the internet client."""
    from localcloud import checks
    seen = checks.from_internet(checks.curl_argv(f"https://{plan.domain}/", plan.domain, plan.lb.reserved_ips[0],
                                                 443, "-k", "-o", "/dev/null", "-w", "%{http_code}"))
    return seen.stdout.strip()


def test_deploy_under_load_loses_no_request_and_every_server_runs_the_new_release(local_stack, plan, operator_key):
    assert serving(plan) == "200", "the local stack does not serve / through its LB: nothing to measure"
    before = {d.name: current_of(d.name) for d in app_servers(plan)}
    result, seen = under_load(local_stack, "deploy", "--health-timeout", HEALTH_TIMEOUT, key=operator_key)
    assert result.returncode == 0, result.stdout + result.stderr
    new = release_id_from(result.stdout)
    assert_none_lost(plan, seen)
    for d in app_servers(plan):
        assert current_of(d.name) == new
        assert running_releases(d.name) == {new}, f"{d.name}: pm2 workers run {running_releases(d.name)}"
        assert before[d.name] != new
    assert "deploy: done" in result.stdout
    # Staging sets no alertWebhookUrl: the stack's (empty, secret) output says so.
    assert "notifications are off (no alertWebhookUrl): local stack staging's alert_webhook_url output is empty" \
        in result.stdout, result.stdout
    archived_in_the_spaces_stand_in(plan, new, result.stdout)


def archived_in_the_spaces_stand_in(plan, release: str, output: str) -> None:
    """The release, its manifest and the manifest's signature are in the stack's release
    bucket, and match what the servers hold."""
    import hashlib
    import io
    import tarfile
    from localcloud import spaces
    assert f"archived {release} with its signed manifest" in output, output
    s3 = spaces.client()
    prefix = f"releases/{STACK}/{release}"
    bucket = plan.bucket("release-archive-bucket").name
    tarball = s3.get_object(Bucket=bucket, Key=f"{prefix}.tar.gz")["Body"].read()
    manifest_bytes = s3.get_object(Bucket=bucket, Key=f"{prefix}.json")["Body"].read()
    manifest = json.loads(manifest_bytes)
    assert manifest["tarball_sha256"] == hashlib.sha256(tarball).hexdigest()
    from cryptography.hazmat.primitives import serialization
    from localcloud import records
    public = records.load(STACK)["outputs"]["release_signing_public_key"]
    signature = s3.get_object(Bucket=bucket, Key=f"{prefix}.json.sig")["Body"].read()
    serialization.load_pem_public_key(public.encode()).verify(signature, manifest_bytes)   # raises if not
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        assert tar.extractfile("release/REVISION").read().decode().strip() == release
        archived = {m.name.removeprefix("release/") for m in tar.getmembers()
                    if m.name.startswith("release/") and m.isfile() and "node_modules" not in m.name}
    name = app_servers(plan)[0].name
    held = on(name, f"cd {conventions.RELEASES_DIR}/{release} && find . -path ./node_modules -prune -o -type f -print")
    assert archived == {p.removeprefix("./") for p in held.splitlines()}


def test_a_bad_release_stops_at_the_first_server_switched_back_and_loses_no_request(local_stack, plan, operator_key,
                                                                                      tmp_path):
    servers = app_servers(plan)
    good = {d.name: current_of(d.name) for d in servers}
    result, seen = under_load(local_stack, "deploy", "--app", bad_app(tmp_path), "--health-timeout", HEALTH_TIMEOUT,
                              key=operator_key)
    assert result.returncode == 1, result.stdout + result.stderr
    bad = release_id_from(result.stdout)
    first, *rest = servers
    assert f"{first.key}: {bad} failed" in result.stdout
    assert f"switched back to {good[first.name]}" in result.stdout
    for d in rest:
        assert f"{d.key}: not touched" in result.stdout
    for d in servers:
        assert current_of(d.name) == good[d.name]
        assert running_releases(d.name) == {good[d.name]}
    # The bad release was uploaded everywhere (before any switch), run nowhere.
    assert bad in deploy_cli("releases", key=operator_key).stdout
    assert_none_lost(plan, seen)


def test_rollback_returns_every_server_to_the_previous_release(local_stack, plan, operator_key):
    servers = app_servers(plan)
    listed = deploy_cli("releases", key=operator_key)
    assert listed.returncode == 0, listed.stdout
    current = {d.name: current_of(d.name) for d in servers}
    print(listed.stdout)
    result, seen = under_load(local_stack, "rollback", "--health-timeout", HEALTH_TIMEOUT, key=operator_key)
    assert result.returncode == 0, result.stdout + result.stderr
    for d in servers:
        now = current_of(d.name)
        assert now != current[d.name]
        assert running_releases(d.name) == {now}
        assert f"{d.key}: {now} (healthy" in result.stdout
    assert seen["failed"] == 0, seen
    back = deploy_cli("rollback", "--to", current[servers[0].name], key=operator_key)
    assert back.returncode == 0, back.stdout
    assert all(current_of(d.name) == current[d.name] for d in servers)


def test_rollback_to_a_release_the_servers_no_longer_hold_restores_it_from_the_archive(local_stack, plan, operator_key):
    """As after pruning: the servers lost the (archived) release; `rollback --to` fetches,
    checks, uploads and switches to it, with no request lost."""
    servers = app_servers(plan)
    wanted = current_of(servers[0].name)          # deployed by the first test, so archived
    assert deploy_cli("rollback", "--health-timeout", HEALTH_TIMEOUT, key=operator_key).returncode == 0
    for d in servers:
        assert current_of(d.name) != wanted
        on(d.name, f"runuser -u {conventions.DEPLOY_USER} -- rm -rf {conventions.RELEASES_DIR}/{wanted}")
    assert wanted not in deploy_cli("releases", key=operator_key).stdout
    result, seen = under_load(local_stack, "rollback", "--to", wanted, "--health-timeout", HEALTH_TIMEOUT,
                              key=operator_key)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{wanted}: signature and sha256 check" in result.stdout
    for d in servers:
        assert current_of(d.name) == wanted and running_releases(d.name) == {wanted}
        assert on(d.name, f"cat {conventions.RELEASES_DIR}/{wanted}/REVISION") == wanted
    assert_none_lost(plan, seen)


def test_a_concurrent_deploy_is_refused_naming_the_holder_and_a_stale_lock_can_be_broken(plan, operator_key):
    """The lock is deploy's own, in its home on every app server (taken in the pool's order)."""
    first_server, *_ = app_servers(plan)
    lock = conventions.DEPLOY_LOCK_DIR
    first = subprocess.Popen([sys.executable, "-m", "deploy", "deploy", STACK, "--local", "-i", operator_key,
                              "--health-timeout", HEALTH_TIMEOUT], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while any(on(d.name, f"cat {lock}/holder 2>/dev/null") == "" for d in app_servers(plan)):
            assert time.monotonic() < deadline and first.poll() is None, "the first deploy never took the lock"
            time.sleep(0.5)
        holder = on(first_server.name, f"cat {lock}/holder")
        second = deploy_cli("deploy", key=operator_key)
    finally:
        out, _ = first.communicate(timeout=900)
    print(second.stdout, out)
    assert second.returncode == 3, second.stdout
    assert f"is locked: a deploy by {holder} holds it" in second.stdout
    assert re.match(r"^\S+@\S+ since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(deploy, pid \d+\)$", holder), holder
    assert first.returncode == 0, out
    for d in app_servers(plan):
        assert on(d.name, f"test -e {lock} && echo held") == "", d.name
        assert on(d.name, f"stat -c %U {conventions.DEPLOY_HOME}") == conventions.DEPLOY_USER

    # A deploy that died holding the lock (on the first server): refused until broken explicitly.
    on(first_server.name, f"runuser -u {conventions.DEPLOY_USER} -- sh -c \"mkdir {lock} && echo 'gone@laptop "
                          f"since 2026-01-01T00:00:00Z (deploy, pid 1)' > {lock}/holder\"")
    assert deploy_cli("rollback", key=operator_key).returncode == 3
    broken = deploy_cli("rollback", "--break-lock", key=operator_key)
    assert broken.returncode == 0, broken.stdout
    assert "removed the lock of gone@laptop since 2026-01-01T00:00:00Z" in broken.stdout
    assert all(on(d.name, f"test -e {lock} && echo held") == "" for d in app_servers(plan))
