"""Redis behind stunnel on the datastore's rendered files, in the datastore sandbox
(tests/roles/datastore_sandbox.py), driven by the role's own provisioning functions:
TLS 1.3 only without renegotiation, and the ACL users (the app's, the backup's; no
default user)."""

from __future__ import annotations

import pytest

import mockcloud
from cloudinit import datastore
from model import conventions

from datastore_sandbox import ROUND, Sandbox, password, tool


@pytest.fixture(scope="module")
def staging():
    return mockcloud.stack_settings("staging")


def passwords_for(settings):
    return {name: password() for name in datastore.password_names()}


def test_redis_behind_stunnel_on_the_rendered_configs(tmp_path, staging):
    tool("stunnel4", "stunnel4")
    tool("redis-server", "redis-server")
    tool("openssl", "openssl")
    pw = passwords_for(staging)
    box = Sandbox(tmp_path, staging, pw)
    tls_port = conventions.ENGINES["redis"].tls_port
    cli = f"redis-cli --no-auth-warning -h {box.address} -p {tls_port}"
    app = f"{cli} --tls --cacert {box.ca_cert} --user {conventions.ENGINE_APP_USER} -a {pw['redis']}"
    run = box.run(ROUND + f"""
round first redis_steps
round second redis_steps
check tls-with-password test "$({app} SET k v)" = OK
check tls-read test "$({app} GET k)" = v
check tls-without-password test "$({cli} --tls --cacert {box.ca_cert} GET k 2>&1)" = v
{cli} --tls --cacert {box.ca_cert} GET k 2>&1
check plaintext-to-stunnel test "$(timeout 5 {cli} -a {pw['redis']} PING 2>&1)" = PONG
check redis-not-on-vpc timeout 3 redis-cli -h {box.address} -p {conventions.ENGINES['redis'].local_port} PING
check verified-handshake bash -c "openssl s_client -connect {box.address}:{tls_port} -CAfile {box.ca_cert} -verify_return_error -verify_ip {box.address} </dev/null"
check tls12-refused bash -c "openssl s_client -tls1_2 -connect {box.address}:{tls_port} -CAfile {box.ca_cert} </dev/null"
check renegotiation-off grep -qx 'renegotiation = no' {datastore.REDIS_STUNNEL_CONF}
check stunnel-took-every-option bash -c "grep -q 'Configuration successful' $T/stunnel.log && ! grep -i -e 'not valid' -e 'invalid' $T/stunnel.log"
check data-on-volume test -d {conventions.DATA_MOUNT}/redis
check users-file-private test "$(stat -c '%a %U:%G' {datastore.REDIS_ACL_FILE})" = "640 root:redis"
check no-plaintext-password grep -rqF {pw['redis']} /etc/redis
cat "$T/stunnel.log"
""")
    out = run.output
    assert run.status("round-first") == 0, out
    assert run.changes("first") > 0
    assert run.status("round-second") == 0, out
    assert run.changes("second") == 0, out
    assert run.status("tls-with-password") == 0, out
    assert run.status("tls-read") == 0, out
    assert run.status("tls-without-password") != 0 and "NOAUTH" in out
    assert run.status("plaintext-to-stunnel") != 0
    assert run.status("redis-not-on-vpc") != 0
    assert run.status("verified-handshake") == 0, out
    # TLS 1.3 only, and renegotiation off should an older version ever be allowed: stunnel
    # read the option (it refuses to start on one it does not know) and took it.
    assert run.status("tls12-refused") != 0, out
    assert run.status("renegotiation-off") == 0, out
    assert run.status("stunnel-took-every-option") == 0, out
    assert run.status("data-on-volume") == 0
    assert run.status("users-file-private") == 0, out
    assert run.status("no-plaintext-password") != 0, out


def test_redis_users_keep_the_app_from_administering_and_the_backup_to_its_snapshot(tmp_path, staging):
    """The app's Redis user reads and writes keys but cannot wipe, reconfigure, re-point or
    debug Redis; the default user (a password alone, as before users) cannot log in; the
    backup user takes the snapshot the backup takes (redis-cli --rdb) and reads no key; a
    transaction the app wrote is still there after a restart."""
    tool("stunnel4", "stunnel4")
    tool("redis-server", "redis-server")
    tool("openssl", "openssl")
    pw = passwords_for(staging)
    box = Sandbox(tmp_path, staging, pw)
    local = f"redis-cli --no-auth-warning -h 127.0.0.1 -p {conventions.ENGINES['redis'].local_port}"
    app = f"{local} --user {conventions.ENGINE_APP_USER} -a {pw['redis']}"
    backup = f"{local} --user {conventions.BACKUP_USER} -a {pw['redis_backup']}"
    refused = {
        "flushall": "FLUSHALL",
        "flushdb": "FLUSHDB",
        "config-set": "CONFIG SET appendonly no",
        "config-get": "CONFIG GET requirepass",
        "replicaof": "REPLICAOF 192.0.2.1 6379",
        "debug": "DEBUG SLEEP 0",
        "acl": "ACL LIST",
        "monitor": "MONITOR",
        "shutdown": "SHUTDOWN NOSAVE",
    }
    checks = "\n".join(
        f'check app-{label} bash -c "timeout 5 {app} {command} 2>&1 | tee /dev/stderr | grep -q -e NOPERM -e \'not allowed\'"'
        for label, command in refused.items()
    )
    run = box.run(ROUND + f"""
round first redis_steps
check app-set test "$({app} SET k v)" = OK
check app-get test "$({app} GET k)" = v
check app-info bash -c "{app} INFO server | grep -q redis_version"
{checks}
check still-there test "$({app} GET k)" = v
check default-password bash -c "{local} -a {pw['redis']} GET k 2>&1 | tee /dev/stderr | grep -q -e WRONGPASS -e NOAUTH"
check default-nopass bash -c "{local} GET k 2>&1 | tee /dev/stderr | grep -q NOAUTH"
check backup-snapshot bash -c "{backup} --rdb $T/dump.rdb && test -s $T/dump.rdb"
check backup-get bash -c "{backup} GET k 2>&1 | tee /dev/stderr | grep -q NOPERM"
check backup-flushall bash -c "{backup} FLUSHALL 2>&1 | tee /dev/stderr | grep -q NOPERM"
check transaction bash -c "printf 'MULTI\\nLPUSH tx kept\\nSET tx-too kept\\nEXEC\\n' | {app}"
systemctl restart redis-server
tx_kept() {{ for _ in 1 2 3 4 5; do [ "$({app} LRANGE tx 0 -1) $({app} GET tx-too)" = "kept kept" ] && return 0; sleep 1; done; return 1; }}
check transaction-after-restart tx_kept
""")
    out = run.output
    assert run.status("round-first") == 0, out
    for label in ["app-set", "app-get", "app-info", "still-there", "default-password", "default-nopass",
                  "backup-snapshot", "backup-get", "backup-flushall", *(f"app-{label}" for label in refused),
                  # Redis replays its append-only file at start: a transaction the app wrote
                  # is there again (redis/redis#14541: not while the default user had no rights;
                  # Redis logs a transaction as MULTI/EXEC only when two of its commands wrote).
                  "transaction", "transaction-after-restart"]:
        assert run.status(label) == 0, f"{label}\n{out}"


def test_redis_waits_for_its_password(tmp_path, staging):
    """Before the secrets push, Redis is configured but not started (stunnel would expose it)."""
    box = Sandbox(tmp_path, staging, passwords=None)
    run = box.run(ROUND + f"""
round first redis_steps
check redis-running pgrep -x redis-server
check users-file test -e {datastore.REDIS_ACL_FILE}
""")
    assert run.status("round-first") == 0, run.output
    assert run.status("redis-running") != 0
    assert run.status("users-file") != 0
