"""Deploys on the stack booted by `python -m localcloud up` (marker `localcloud`, root).

Real droplets, real SSH through the LB as jump host, rsync as the deploy user, pm2's
graceful reload under systemd, and a steady stream of GETs from the internet client
through the LB's TLS front while it all happens. The tests run in order on one stack:
deploy, a release the start check refuses, one that fails under pm2 and is switched back,
rollback, concurrent deploys.

Operator key: deploy logs in as `deploy` (on the LB, which it only passes, and on each app
server) with an operator's key: the local cloud's own, which a local override adds to the
stack's sshPublicKeys; with deployKeys empty the deploy login takes those (the program's
operators push brings them to every droplet).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from model import conventions
from deploy import DEFAULT_APP_DIR
from localcloud import shell

from on_the_local_stack import (
    HEALTH_TIMEOUT, ROOT, STACK, app_servers, assert_none_lost, current_of, deploy_cli, on, release_id_from,
    running_releases, under_load,
)

pytestmark = pytest.mark.localcloud

def bad_app(tmp_path: Path, dies_when: str = "true") -> str:
    """The example app with an API that exits as it starts when `dies_when` (JavaScript)
    holds: /healthz never answers."""
    app = tmp_path / "bad-app"
    shutil.copytree(DEFAULT_APP_DIR, app, ignore=shutil.ignore_patterns("node_modules"))
    server = app / "api" / "server.js"
    server.write_text(f"'use strict';\nif ({dies_when}) {{ console.error('bad release: exiting'); process.exit(1); }}\n"
                      + server.read_text())
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


def test_a_release_whose_api_exits_as_it_starts_is_never_switched_to_and_no_request_fails(local_stack, plan,
                                                                                          operator_key, tmp_path):
    servers = app_servers(plan)
    good = {d.name: current_of(d.name) for d in servers}
    workers = {d.name: on(d.name, "pgrep -u app -f 'node ' | sort") for d in servers}
    result, seen = under_load(local_stack, "deploy", "--app", bad_app(tmp_path), "--health-timeout", HEALTH_TIMEOUT,
                              key=operator_key)
    assert result.returncode == 1, result.stdout + result.stderr
    bad = release_id_from(result.stdout)
    first, *rest = servers
    # Started beside the running apps on app-1, as the app user with the apps' environment:
    # the API died, the web process started and was stopped, app-1 never switched.
    assert (f"{first.key}: {bad} failed ({first.key}: start {bad} once beside the running apps: exit 1: api: FAILED: "
            f"it exited (code 1) before it said ready); not switched: still on {good[first.name]}") in result.stdout
    assert "  !   api: bad release: exiting" in result.stdout and "  ! web: started (ready in " in result.stdout
    for d in rest:
        assert f"{d.key}: not touched" in result.stdout
    for d in servers:
        assert current_of(d.name) == good[d.name]
        assert running_releases(d.name) == {good[d.name]}
    assert_none_lost(plan, seen)   # POSTs too: no request ever reached the release
    assert seen["by_status"].get("201", 0) > 10, seen
    # Nothing reloaded or restarted the apps anywhere: every worker is the one from before.
    assert {d.name: on(d.name, "pgrep -u app -f 'node ' | sort") for d in servers} == workers


def test_a_release_failing_only_under_pm2_stops_at_the_first_server_switched_back_and_no_get_fails(
        local_stack, plan, operator_key, tmp_path):
    """What the start check cannot see (here an API that exits when pm2 runs it, standing
    for failures that come with pm2, load or time): the reload fails, the server goes back."""
    servers = app_servers(plan)
    good = {d.name: current_of(d.name) for d in servers}
    result, seen = under_load(local_stack, "deploy", "--app", bad_app(tmp_path, "process.env.pm_id !== undefined"),
                              "--health-timeout", HEALTH_TIMEOUT, key=operator_key)
    assert result.returncode == 1, result.stdout + result.stderr
    bad = release_id_from(result.stdout)
    first, *rest = servers
    assert f"[{first.key}]   api: started (ready in " in result.stdout, "the start check passed"
    assert f"{first.key}: {bad} failed" in result.stdout
    # pm2 gave up on the API as it started: the reload failed (no health wait besides) and
    # the deploy showed the apps' journal: what the API wrote as it died (which pm2 loses
    # from its log files) and why the reload failed.
    assert f"[{first.key}] FAILED {first.key}: reload the apps: exit 1" in result.stdout
    journal = [line for line in result.stdout.splitlines() if line.startswith(f"[{first.key}]   ")]
    assert any(line.startswith(f"[{first.key}]   api: bad release: exiting") for line in journal), result.stdout
    assert any("platform-apps-reload: pm2 gave up on api: it kept exiting as it started" in line
               for line in journal), result.stdout
    assert f"switched back to {good[first.name]}" in result.stdout
    for d in rest:
        assert f"{d.key}: not touched" in result.stdout
    for d in servers:
        assert current_of(d.name) == good[d.name]
        assert running_releases(d.name) == {good[d.name]}
    # The bad release was uploaded everywhere (before any switch), run nowhere.
    assert bad in deploy_cli("releases", key=operator_key).stdout
    # The LB retries on app-2 each GET app-1 fails meanwhile; a POST it does not retry:
    # one that reaches app-1 after pm2 deleted the old API workers (their successors'
    # listen_timeout run out) and before the switch back gets app-1's 502 (README, "Deploy
    # and roll back"). Nothing else fails.
    assert seen["requests"] > 100 and seen["failed_by_method"].get("GET", 0) == 0, seen
    assert set(seen["by_status"]) <= {"200", "201", "502"} and not seen["errors"], seen
    assert set(seen["hosts"]) >= {d.name for d in servers}, seen
    # What the API wrote as it died: not in pm2's files (cluster mode loses it), in the journal.
    files = deploy_cli("logs", "--since", "10m", "--process", "api", "-n", "500", key=operator_key)
    assert files.returncode == 0 and "bad release: exiting" not in files.stdout, files.stdout
    journaled = deploy_cli("logs", "--journal", "--since", "10m", "--process", "api", key=operator_key)
    assert journaled.returncode == 0, journaled.stdout + journaled.stderr
    assert any(re.fullmatch(rf"\[{first.key}\] \S+ \d+\|api: bad release: exiting", line)
               for line in journaled.stdout.splitlines()), journaled.stdout[-3000:]
    web = deploy_cli("logs", "--journal", "--since", "10m", "--process", "web", "-n", "2000", key=operator_key)
    assert web.returncode == 0 and "|web: " in web.stdout and "bad release" not in web.stdout, web.stdout[-3000:]


def test_the_apps_journal_wrapper_takes_two_numbers_as_deploy_and_journalctl_itself_is_refused(plan):
    wrapper = "/usr/local/sbin/platform-apps-journal"
    name = app_servers(plan)[0].name
    as_deploy = f"runuser -u {conventions.DEPLOY_USER} -- sudo -n"
    assert on(name, f"{as_deploy} {wrapper} 0 3 | wc -l; echo $?").split() == ["3", "0"], "the last 3, no bound"
    assert on(name, f"{as_deploy} {wrapper} $(date -d '1 hour' +%s) 3 | wc -l") == "0", "none from the future"
    for refused in (f"{wrapper} '0;id' 3", f"{wrapper} 0 3 --output=json", f"{wrapper} --since=0 3"):
        said = on(name, f"{as_deploy} {refused} 2>&1; echo exit $?")
        assert said.endswith("exit 2") and "usage: platform-apps-journal SINCE LINES" in said, (refused, said)
    said = on(name, f"{as_deploy} journalctl -n 1 2>&1; echo exit $?")
    assert said.endswith("exit 1") and "a password is required" in said, said
    # On a server in another zone its times are still UTC: the deploy tool compares them as text.
    zone = on(name, "readlink /etc/localtime")
    try:
        on(name, "ln -sfn /usr/share/zoneinfo/Asia/Tokyo /etc/localtime")
        assert on(name, "date +%z") == "+0900"
        times = on(name, f"{as_deploy} {wrapper} 0 3 | cut -d' ' -f1").split()
    finally:
        on(name, f"ln -sfn {zone} /etc/localtime")
    assert len(times) == 3 and all(t.endswith("+0000") for t in times), times
    # The unit's steps open no PAM session (setpriv, not runuser): no session lines among the apps'.
    assert on(name, f"journalctl -u {conventions.APPS_UNIT} --no-pager | grep -c pam_unix || true") == "0"


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

        def all_locked() -> bool:
            assert first.poll() is None, f"the first deploy ended before it held every lock: {first.stdout.read()}"
            return all(on(d.name, f"cat {lock}/holder 2>/dev/null") for d in app_servers(plan))
        shell.wait_until(all_locked, 120, "the first deploy never took the lock", every=0.5)
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
