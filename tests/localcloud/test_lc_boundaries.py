"""What each party may do on the booted staging stack: the apps' Redis login cannot
administer Redis, and the internet sees no internal detail in the public health check.
"""

from __future__ import annotations

import pytest

from model import conventions

pytestmark = pytest.mark.localcloud

REDIS_LOCAL = f"-h 127.0.0.1 -p {conventions.ENGINES['redis'].local_port}"


def app_env(s, server: str) -> dict[str, str]:
    """An app server's .env, as the apps read it."""
    proc = s.run(server, ["cat", conventions.APP_ENV_FILE], check=True)
    return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line and not line.startswith("#"))


def redis_as(s, env: dict[str, str], command: str):
    """A Redis command on the datastore, logged in as the .env says (the password on stdin,
    into redis-cli's environment: never in argv)."""
    script = f'read -r REDISCLI_AUTH; export REDISCLI_AUTH; redis-cli --no-auth-warning {REDIS_LOCAL} --user "$1" {command} 2>&1'
    return s.run("datastore", ["bash", "-c", script, "redis-as", env["REDIS_USER"]], input=env["REDIS_PASSWORD"] + "\n")


def test_the_apps_redis_user_cannot_flush_or_reconfigure_redis(local_stack):
    s = local_stack
    env = app_env(s, s.app_servers()[0])
    assert env.get("REDIS_USER") == conventions.ENGINE_APP_USER, sorted(env)
    # The login works: the refusals below are the user's rights, not a failed login.
    probe = redis_as(s, env, "SET boundary-probe kept")
    assert probe.stdout.strip() == "OK", probe.stdout
    for command in ["FLUSHALL", "FLUSHDB", "CONFIG SET appendonly no", "REPLICAOF 192.0.2.1 6379"]:
        refused = redis_as(s, env, command)
        assert "NOPERM" in refused.stdout, f"{command}: {refused.stdout}"
    kept = redis_as(s, env, "GET boundary-probe")
    assert kept.stdout.strip() == "kept", kept.stdout
    # The default user (a password alone, as before Redis had users) is off.
    default = s.run("datastore", ["bash", "-c", f"read -r REDISCLI_AUTH; export REDISCLI_AUTH; "
                                                f"redis-cli --no-auth-warning {REDIS_LOCAL} GET boundary-probe 2>&1"],
                    input=env["REDIS_PASSWORD"] + "\n")
    assert "WRONGPASS" in default.stdout or "NOAUTH" in default.stdout, default.stdout
    redis_as(s, env, "DEL boundary-probe")
