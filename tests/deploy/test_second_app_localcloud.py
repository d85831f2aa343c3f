"""Your own app on the booted stack (marker `localcloud`, root): a second app that is not
the example (tests/fixtures/second-app: a build step, a migration as its release command,
a worker process, one appEnv setting and one appSecrets value), deployed and operated with
the documented commands only. Afterwards the example app and the committed settings are
back, whatever happened.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

import pytest

from cloudinit import app_server
from model import conventions

from deploy import DEFAULT_APP_DIR

from on_the_local_stack import (
    HEALTH_TIMEOUT, READS, app_servers, current_of, deploy_cli, on, release_id_from, running_releases, under_load,
)

pytestmark = pytest.mark.localcloud

APP = Path(__file__).resolve().parents[1] / "fixtures" / "second-app"
GREETING = "hello from the stack's settings"


@pytest.fixture(scope="module")
def token():
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def second_app_settings(local_stack, operator_key, token):
    """appEnv and appSecrets as `pulumi config set` gives them (staging's own appEnv kept);
    then the example app redeployed and the committed settings back."""
    import mockcloud
    from localcloud import stack
    name = local_stack.plan.stack
    app_env = {**mockcloud.stack_settings(name).app_env, "SECOND_APP_GREETING": GREETING}
    local_stack.up(stack.plan(name, {"appEnv": app_env, "appSecrets": {"SECOND_APP_TOKEN": token}}))
    yield
    back = deploy_cli("deploy", "--app", DEFAULT_APP_DIR, "--health-timeout", HEALTH_TIMEOUT, key=operator_key)
    local_stack.up(stack.plan(name))
    assert back.returncode == 0, back.stdout


def through_lb(local_stack, path: str) -> tuple[int, str]:
    proc = local_stack.https(path, "-w", "\n%{http_code}")
    body, _, code = proc.stdout.rpartition("\n")
    return int(code or 0), body.strip()


def migrations(local_stack) -> dict[str, int]:
    status, body = through_lb(local_stack, "/api/migrations")
    assert status == 200, body
    return json.loads(body)


def test_a_second_app_is_deployed_with_its_build_migration_worker_setting_and_secret(
        local_stack, plan, operator_key, token, second_app_settings):
    result, seen = under_load(local_stack, "deploy", "--app", str(APP), "--health-timeout", HEALTH_TIMEOUT,
                              key=operator_key, paths=READS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert seen["requests"] > 100 and seen["failed"] == 0, seen
    release = release_id_from(result.stdout)
    assert f"built {release} (site, api, worker)" in result.stdout
    assert "build: node build.js" in result.stdout and "release command: node migrate.js" in result.stdout
    for d in app_servers(plan):
        assert current_of(d.name) == release and running_releases(d.name) == {release}

    # Built by its build step, served by its own processes, its setting and secret in place.
    assert through_lb(local_stack, "/") == (200, "second app: built by the build step")
    status, body = through_lb(local_stack, "/api/config")
    assert status == 200 and json.loads(body) == {"greeting": GREETING,
                                                  "token_sha256": hashlib.sha256(token.encode()).hexdigest()}
    assert token not in result.stdout
    assert migrations(local_stack).get(release) == 1, "the migration ran exactly once"
    # Its declared health path answers the platform's health check (it has no /healthz).
    for d in app_servers(plan):
        assert on(d.name, f"cat {app_server.HEALTH_SNIPPET}") == "set $platform_health_path /ready;"
    assert through_lb(local_stack, conventions.HEALTH_PATH) == (200, "ok")

    status_out = deploy_cli("status", key=operator_key)
    assert status_out.returncode == 0, status_out.stdout
    rows = [line for line in status_out.stdout.splitlines() if line.startswith("app-")]
    assert len(rows) == len(app_servers(plan))
    for row in rows:
        assert release in row and "api 2 up" in row and "site 1 up" in row and "worker 1 up" in row, row

    logs = deploy_cli("logs", "--process", "worker", "--lines", "3", key=operator_key)
    assert logs.returncode == 0, logs.stdout
    for d in app_servers(plan):
        assert f"[{d.key}] worker " in logs.stdout and f"worker: beat ({release})" in logs.stdout, logs.stdout

    ran = deploy_cli("exec", "--server", "app-2", "--", "sh", "-c", 'echo "$SECOND_APP_GREETING"; exit 4', key=operator_key)
    assert ran.returncode == 4 and GREETING in ran.stdout, ran.stdout

    try:
        assert deploy_cli("maintenance", "on", key=operator_key).returncode == 0
        assert through_lb(local_stack, "/")[0] == 503
    finally:
        assert deploy_cli("maintenance", "off", key=operator_key).returncode == 0
    assert through_lb(local_stack, "/")[0] == 200


def test_a_second_deploy_migrates_once_more_and_rollback_to_brings_the_first_back_from_the_archive(
        local_stack, plan, operator_key, second_app_settings):
    first = current_of(app_servers(plan)[0].name)
    again = deploy_cli("deploy", "--app", str(APP), "--health-timeout", HEALTH_TIMEOUT, key=operator_key)
    assert again.returncode == 0, again.stdout
    second = release_id_from(again.stdout)
    ran = migrations(local_stack)
    assert (ran.get(first), ran.get(second)) == (1, 1), f"each deploy's migration, once: {ran}"
    for d in app_servers(plan):
        on(d.name, f"runuser -u {conventions.DEPLOY_USER} -- rm -rf {conventions.RELEASES_DIR}/{first}")
    back, seen = under_load(local_stack, "rollback", "--to", first, "--health-timeout", HEALTH_TIMEOUT,
                            key=operator_key, paths=READS)
    assert back.returncode == 0, back.stdout + back.stderr
    assert f"{first}: signature and sha256 check" in back.stdout
    for d in app_servers(plan):
        assert current_of(d.name) == first and running_releases(d.name) == {first}
    assert seen["failed"] == 0, seen
    assert migrations(local_stack)[first] == 1, "a rollback runs no release command"
