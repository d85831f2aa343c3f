"""What each party may do on the booted staging stack: the apps' Redis login cannot
administer Redis; the app servers serve the LB's client certificate only; the internet
sees no internal detail in the public health check.
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


def test_app_servers_serve_the_lb_only_with_its_client_certificate(local_stack):
    """From the LB itself (the one droplet the firewall lets in): without its certificate
    nginx answers 400 to anything; with it, the app server's full health."""
    s = local_stack
    app = s.plan.droplet(s.app_servers()[0])
    url = f"https://{app.vpc_ip}:{conventions.APP_TLS_PORT}{conventions.HEALTH_PATH}"
    curl = ["curl", "--silent", "--max-time", "10", "--cacert", conventions.CA_CERT_PATH,
            "--resolve", f"{conventions.app_pool_tls_name(s.plan.stack)}:{conventions.APP_TLS_PORT}:{app.vpc_ip}",
            url.replace(app.vpc_ip, conventions.app_pool_tls_name(s.plan.stack)), "-w", "\n%{http_code}"]
    without = s.run("lb", curl)
    assert without.stdout.rpartition("\n")[2] == "400", without.stdout + without.stderr
    with_cert = s.run("lb", [*curl, "--cert", conventions.SERVER_CERT_PATH, "--key", conventions.SERVER_KEY_PATH])
    body, _, code = with_cert.stdout.rpartition("\n")
    assert code == "200" and "engines" in body, with_cert.stdout + with_cert.stderr


def internal_names(s) -> list[str]:
    """What the internet must not learn from the public health check: every droplet's name
    and private address, and the app servers' certificate name."""
    names = [conventions.app_pool_tls_name(s.plan.stack)]
    for d in s.plan.droplets:
        names += [d.name, d.vpc_ip]
    return names


def test_public_healthz_via_the_lb_says_up_only_and_names_no_internal_host(local_stack):
    s = local_stack
    s.wait_healthy()
    answer = s.https(conventions.HEALTH_PATH, "-D", "-", "-w", "\n%{http_code}")
    text, _, code = answer.stdout.rpartition("\n")
    assert code == "200", answer.stdout + answer.stderr
    # (text mode turned curl's CRLFs into newlines)
    head, _, body = text.partition("\n\n")
    assert body.strip() == "ok", text
    for name in internal_names(s):
        assert name not in text, f"{name} in the public /healthz: {text}"
    # The full answer is still there for whoever is on an app server.
    assert "engines" in s.full_health(s.app_servers()[0])
