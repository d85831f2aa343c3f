"""The apps' own settings on the booted stack: one appEnv and one appSecrets value set as
`pulumi config set` sets them, then `up` under a steady stream of requests through the LB.
Only the app servers' `env` pushes run; every app server's .env carries both, read back
exactly by the app's own loader; every pm2 worker is a new one (the graceful reload); no
request failed; the secret is in no command's output. Unset again, both leave the .env.
A setting the apps cannot start with, or start with but cannot serve with (their health
check fails), stops at the first app server before its apps reload (the start check with
the new .env): it keeps its old .env and its workers, no request fails, and the others
never receive it.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest

from cloudinit import app_server
from localcloud import config, stack, traffic
from model import conventions
from on_the_local_stack import deploy_cli

GREETING = "hello 'world' \"twice\" $HOME #not-a-comment  "


def workers(local_stack, app: str) -> set[str]:
    """The PIDs of the apps' pm2 workers (node processes of the app user running from a
    release; pm2's own daemon runs from the app root)."""
    script = (f"for p in $(pgrep -u {conventions.APP_USER} -f 'node '); do "
              f"case $(readlink /proc/$p/cwd) in {conventions.RELEASES_DIR}/*) echo $p;; esac; done")
    return set(local_stack.run(app, ["bash", "-c", script], check=True).stdout.split())


def as_the_app_reads_it(local_stack, app: str, names: list[str]) -> dict:
    """The variables as the current release's loader (lib/env.js) reads them from the .env, as the app user."""
    script = (f"const {{ loadEnvFile }} = require('{conventions.CURRENT_RELEASE_LINK}/lib/env.js');"
              f"loadEnvFile('{conventions.APP_ENV_FILE}');"
              f"console.log(JSON.stringify(Object.fromEntries({json.dumps(names)}.map(n => [n, process.env[n] ?? null]))));")
    argv = ["runuser", "-u", conventions.APP_USER, "--", "env", "-i", "PATH=/usr/bin:/bin", "node", "-e", script]
    return json.loads(local_stack.run(app, argv, check=True).stdout)


@pytest.fixture(scope="module")
def back_to_committed(local_stack):
    """After the module, the stack as committed (no app settings), also when a check failed."""
    yield
    local_stack.up(stack.plan(local_stack.plan.stack))


def test_app_env_and_a_secret_reach_every_env_and_reload_the_apps_under_load(local_stack, back_to_committed):
    name = local_stack.plan.stack
    secret = f"tok-{uuid.uuid4()}"
    apps = local_stack.app_servers()
    app_keys = {d.key for d in local_stack.plan.with_tag(conventions.APP_SERVER)}
    before = {app: workers(local_stack, app) for app in apps}
    assert all(before.values()), before

    p = stack.plan(name, {"appEnv": {"GREETING": GREETING}, "appSecrets": {"API_TOKEN": secret}})
    result, load = local_stack.up_under_load(p)
    print(f"\n[figures] app settings pushed under 20 req/s: {load}; up took {result.seconds:.0f}s")
    assert stack.healthy(result)
    assert {r.name for r in result.commands if r.status == "ok"} == {f"{key}-env-push" for key in app_keys}
    assert not any(secret in r.output or secret in r.stdout for r in result.commands)
    for app in apps:
        env = local_stack.run(app, ["cat", conventions.APP_ENV_FILE], check=True).stdout
        assert f"\nGREETING={GREETING}\n" in env and f"\nAPI_TOKEN={secret}\n" in env, app
        assert as_the_app_reads_it(local_stack, app, ["GREETING", "API_TOKEN"]) == {
            "GREETING": GREETING, "API_TOKEN": secret}, app
        mode = local_stack.run(app, ["stat", "-c", "%a %U:%G", conventions.APP_ENV_FILE], check=True).stdout.split()
        assert mode == ["640", f"root:{conventions.APP_USER}"], app
        after = workers(local_stack, app)
        assert after and not after & before[app], f"{app}: workers before {before[app]}, after {after}"
    assert load["requests"] > 0 and load["failed"] == 0, load

    local_stack.up(stack.plan(name))
    for app in apps:
        env = local_stack.run(app, ["cat", conventions.APP_ENV_FILE], check=True).stdout
        assert "GREETING=" not in env and "API_TOKEN=" not in env, app


# An appEnv value, what the start check says of the /api/ process, and what the process
# wrote (in app-1's journal only).
UNUSABLE_ENVS = {
    # The example app listens where LISTEN_HOST says: an address no server has, it cannot.
    "cannot start": ({"LISTEN_HOST": "192.0.2.1"}, "api: FAILED: it exited", "192.0.2.1"),
    # node-postgres sends PGOPTIONS at each connection: PostgreSQL refuses every one, so the
    # api starts but answers its health check 503.
    "cannot serve": ({"PGOPTIONS": "-c no_such_setting=on"},
                     f"api: FAILED: {conventions.HEALTH_PATH} did not answer 200 within "
                     f"{conventions.APP_HEALTH_TIMEOUT_SECONDS}s (last: 503)", "no_such_setting"),
}


@pytest.mark.parametrize("case", UNUSABLE_ENVS)
def test_an_env_the_apps_cannot_start_or_serve_with_stops_at_app_1_before_its_apps_reload(
        local_stack, back_to_committed, case):
    app_env, said, wrote = UNUSABLE_ENVS[case]
    name = local_stack.plan.stack
    keys = sorted(d.key for d in local_stack.plan.with_tag(conventions.APP_SERVER))
    assert keys[0] == "app-1"
    env_before = {key: local_stack.run(key, ["cat", conventions.APP_ENV_FILE], check=True).stdout for key in keys}
    untouched = {key: workers(local_stack, key) for key in keys}

    result, load = local_stack.up_under_load(stack.plan(name, {"appEnv": app_env}))
    print(f"\n[figures] an env the apps {case} with, under 20 req/s: {load}; up took {result.seconds:.0f}s")
    status = {r.name: r for r in result.commands}
    failed = status["app-1-env-push"]
    assert failed.status == "failed", failed
    assert said in failed.output, failed.output
    assert "check failed; previous files restored, nothing reloaded" in failed.output, failed.output
    # What the processes wrote is in the apps' journal as the deploy user reads it (`deploy
    # logs --journal`), not in the push's output, which CI logs keep.
    hint = re.search(rf"deploy logs {name} --journal(?: --process [a-z]+)+\)", failed.output)   # those that failed
    assert wrote not in failed.output and hint and " --process api" in hint[0], failed.output
    # The operator's command, narrowed to the process the check names.
    shown = deploy_cli("logs", "--journal", "--process", "api", "--lines", "1000", key=str(config.OPERATOR_KEY))
    assert shown.returncode == 0, shown.stderr
    assert re.search(rf"^\[app-1\] \S+ {app_server.START_CHECK_LOG_TAG}\[\d+\]:   api: .*{re.escape(wrote)}",
                     shown.stdout, re.MULTILINE), shown.stdout[-3000:]
    assert all(status[f"{key}-env-push"].status == "not run" for key in keys[1:]), result.commands
    for key in keys:
        assert local_stack.run(key, ["cat", conventions.APP_ENV_FILE], check=True).stdout == env_before[key], key
    assert {key: workers(local_stack, key) for key in keys} == untouched, "no server's apps reloaded"
    assert load["requests"] > 0 and load["failed"] == 0, load
    after = traffic.result(local_stack.stream("/api/hello", rate=10, seconds=6))
    assert {local_stack.name(key) for key in keys} <= set(after["hosts"]) and after["failed"] == 0, after
