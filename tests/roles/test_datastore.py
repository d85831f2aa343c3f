"""The datastore role: its files rendered for the staging stack, read by the programs that
read them on a droplet, and its engines started on them.

PostgreSQL and RabbitMQ (Redis: test_datastore_redis.py) run on the rendered files inside a
throwaway namespace (tests/roles/datastore_sandbox.py), driven by the role's own
provisioning functions, twice: the second run must change nothing. MongoDB is not
installable here: its config and user script are checked for structure only.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import subprocess

import pytest
import yaml

import cloudinit
import mockcloud
from cloudinit import common, datastore
from model import conventions

from datastore_sandbox import ROUND, Sandbox, password, tool, vpc_address

DS = conventions.DATASTORE
PG_CONNECT = "host={host} port={port} dbname={db} user={user} sslmode={mode} sslrootcert={ca} connect_timeout=5"




@pytest.fixture(scope="module")
def staging():
    return mockcloud.stack_settings("staging")


@pytest.fixture(scope="module")
def rendered(staging):
    return cloudinit.rendered_files(DS, staging)


def passwords_for(settings):
    return {name: password() for name in datastore.password_names()}


def addressed(text: str, address: str) -> str:
    return text.replace(conventions.PRIVATE_ADDRESS_PLACEHOLDER, address)


# --- Rendering -------------------------------------------------------------------------


def test_every_engine_has_its_files_and_none_holds_a_secret(staging, rendered):
    assert set(staging.engines) == set(conventions.ENGINES)
    for engine in staging.engines:
        for f in datastore.engine_files(engine):
            assert f.path in rendered, f.path
    drop_in = rendered[datastore.drop_in("postgresql")]
    assert f"RequiresMountsFor={conventions.DATA_MOUNT}" in drop_in
    assert f"ReadWritePaths={conventions.DATA_MOUNT}/redis" in rendered[datastore.drop_in("redis")]
    assert conventions.DATASTORE_SECRETS_FILE not in rendered  # arrives by push only
    # The bundle is in the stack's state in plain text: it holds no password.
    document = gzip.decompress(base64.b64decode(cloudinit.bundle(DS, staging).payload)).decode()
    assert not re.search(r"_PASSWORD=[A-Za-z0-9]", document)  # only `=$VARIABLE` in scripts
    assert not re.search(r"requirepass \w", document)


def test_volume_is_named_in_one_place(staging, rendered):
    device = conventions.VOLUME_DEVICE_PREFIX + conventions.volume_name(staging.stack)
    assert f"VOLUME_DEVICE={device}\n" in rendered[common.ROLE_STEPS]
    assert "nofail" in rendered[common.ROLE_STEPS]
    assert "x-systemd.device-timeout=" in rendered[common.ROLE_STEPS]


def test_pg_hba_allows_only_tls_from_the_vpc(staging, rendered):
    rules = [line.split() for line in rendered[datastore.POSTGRESQL_HBA].splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules == [
        ["local", "all", "postgres", "peer"],
        ["local", "all", conventions.BACKUP_USER, "peer"],
        ["hostssl", conventions.ENGINE_APP_DATABASE, conventions.ENGINE_APP_USER,
         staging.vpc_ip_range, "scram-sha-256"],
    ]


def test_engines_switched_off_leave_nothing_behind(staging):
    port_texts = {e: str(conventions.ENGINES[e].tls_port) for e in conventions.ENGINES}
    packages = {"postgresql": "ensure_packages_unstarted postgresql", "redis": "ensure_packages_unstarted redis-server",
                "rabbitmq": "ensure_packages_unstarted rabbitmq-server",
                "mongodb": "ensure_packages_unstarted mongodb-org-server"}
    for kept in [(), ("postgresql",), ("redis", "rabbitmq")]:
        settings = mockcloud.stack_settings("staging", engines=list(kept))
        files = cloudinit.rendered_files(DS, settings)
        everything = "\n".join(files.values())
        steps = files[common.ROLE_STEPS]
        for engine in conventions.ENGINES:
            own = [f.path for f in datastore.engine_files(engine)]
            if engine in kept:
                assert all(p in files for p in own)
                assert f"{engine}_steps" in steps
                continue
            assert not [p for p in own if p in files], engine
            assert f"{engine}_steps" not in steps
            # Only stopped: a running datastore may have had it on (its data stays).
            assert f"\n    engine_off {engine}\n" in steps, engine
            assert packages[engine] not in steps, engine
            assert f":{port_texts[engine]}" not in everything and f"port = {port_texts[engine]}" not in everything
        opened = {rule.port for rule in cloudinit.template_context(DS, settings)["inbound"]}
        assert opened == {conventions.SSH_PORT} | {conventions.ENGINES[e].tls_port for e in kept}


@pytest.mark.parametrize("engines", [list(conventions.ENGINES), []], ids=["all", "none"])
def test_provision_script_passes_shellcheck(tmp_path, engines):
    shellcheck = tool("shellcheck", "shellcheck")
    settings = mockcloud.stack_settings("staging", engines=engines)
    files = cloudinit.rendered_files(DS, settings)
    for path in (common.ROLE_STEPS, common.LIBRARY):
        (tmp_path / path.rsplit("/", 1)[1]).write_text(files[path])
    result = subprocess.run(
        [shellcheck, "--shell=bash", "--severity=style", "common.sh", "role.sh"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mongodb_config_structure(staging, rendered):
    """No MongoDB build is reachable here: the config is checked for structure only."""
    config = yaml.safe_load(addressed(rendered[datastore.MONGODB_CONF], vpc_address(staging)))
    assert config["net"]["port"] == conventions.ENGINES["mongodb"].tls_port
    assert config["net"]["bindIp"] == f"127.0.0.1,{vpc_address(staging)}"
    assert config["net"]["tls"] == {
        "mode": "requireTLS",
        "certificateKeyFile": conventions.MONGODB_PEM_PATH,
        "CAFile": conventions.CA_CERT_PATH,
        "allowConnectionsWithoutCertificates": True,
        "disabledProtocols": "TLS1_0,TLS1_1,TLS1_2",
    }
    assert config["security"] == {"authorization": "enabled"}
    assert config["storage"]["dbPath"] == f"{conventions.DATA_MOUNT}/mongodb"
    steps = rendered[common.ROLE_STEPS]
    # The combined PEM is certificate then key, rewritten when either changes.
    assert f"ensure_secret_file {conventions.MONGODB_PEM_PATH} 0640 root:mongodb" in steps
    assert f"$(cat {conventions.SERVER_CERT_PATH} {conventions.SERVER_KEY_PATH})" in steps


def test_mongodb_user_script_parses_and_reads_passwords_from_the_environment(tmp_path, rendered):
    node = tool("node", "nodejs")
    script = rendered[datastore.MONGODB_USERS_SCRIPT]
    (tmp_path / "users.js").write_text(script)
    result = subprocess.run([node, "--check", tmp_path / "users.js"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "process.env.MONGODB_ADMIN_PASSWORD" in script and "process.env.MONGODB_PASSWORD" in script
    assert f'user: "{conventions.ENGINE_ADMIN_USER}"' in script


# mongosh's `db` as the user script uses it, recording each call (no MongoDB binaries here).
MONGOSH_STAND_IN = """
const existing = JSON.parse(process.env.EXISTING_USERS), calls = [];
globalThis.db = { getSiblingDB: (name) => ({
  auth: (user) => ({ ok: existing.includes(user) ? 1 : 0 }),
  getUser: (user) => (existing.includes(user) ? { user } : null),
  createUser: (spec) => calls.push({ db: name, createUser: spec.user, pwd: spec.pwd, roles: spec.roles }),
  updateUser: (user, spec) => calls.push({ db: name, updateUser: user, pwd: spec.pwd, roles: spec.roles }),
}) };
require("vm").runInThisContext(require("fs").readFileSync(process.argv[2], "utf8"));
console.log(JSON.stringify(calls));
"""


@pytest.mark.parametrize("existing", [[], [conventions.ENGINE_ADMIN_USER, conventions.ENGINE_APP_USER]],
                         ids=["first-run", "again"])
def test_mongodb_user_script_gives_the_app_read_write_and_indexes_and_no_user_admin(tmp_path, rendered, existing):
    """Not dbOwner: its userAdmin lets an app server's intruder add users or change the
    app's password. Set again on an existing user, so an older stack's dbOwner goes."""
    node = tool("node", "nodejs")
    (tmp_path / "users.js").write_text(rendered[datastore.MONGODB_USERS_SCRIPT])
    (tmp_path / "stand-in.js").write_text(MONGOSH_STAND_IN)
    env = {"PATH": "/usr/bin:/bin", "MONGODB_ADMIN_PASSWORD": "admin-pw", "MONGODB_PASSWORD": "app-pw",
           "EXISTING_USERS": json.dumps(existing)}
    result = subprocess.run([node, tmp_path / "stand-in.js", tmp_path / "users.js"], capture_output=True, text=True,
                            env=env)
    assert result.returncode == 0, result.stderr
    app = [call for call in json.loads(result.stdout) if conventions.ENGINE_APP_USER in
           (call.get("createUser"), call.get("updateUser"))]
    database = conventions.ENGINE_APP_DATABASE
    assert app == [{"db": database, ("updateUser" if existing else "createUser"): conventions.ENGINE_APP_USER,
                    "pwd": "app-pw", "roles": [{"role": "readWrite", "db": database},
                                                {"role": "dbAdmin", "db": database}]}]


# --- Engines started on their rendered files ----------------------------------------------



def test_postgresql_on_the_rendered_config(tmp_path, staging):
    tool("psql", "postgresql-client")
    tool("pg_createcluster", "postgresql-common")
    pw = passwords_for(staging)
    box = Sandbox(tmp_path, staging, pw)
    port = conventions.ENGINES["postgresql"].tls_port
    db, user = conventions.ENGINE_APP_DATABASE, conventions.ENGINE_APP_USER

    def conn(mode, host=box.address):
        return PG_CONNECT.format(host=host, port=port, db=db, user=user, mode=mode, ca=box.ca_cert)

    run = box.run(ROUND + f"""
round first postgresql_steps
round second postgresql_steps
export PGPASSWORD={pw['postgresql']}
check tls-app psql -X "{conn('verify-full')}" -c "CREATE TABLE t (x int); INSERT INTO t VALUES (1)"
check tls-is-used psql -X -At "{conn('verify-full')}" -c "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
check plaintext psql -X "{conn('disable')}" -c "SELECT 1"
check from-outside-vpc psql -X "{conn('require', host='127.0.0.1')}" -c "SELECT 1"
PGPASSWORD=wrong check wrong-password psql -X "{conn('verify-full')}" -c "SELECT 1"
check backup-reads runuser -u {conventions.BACKUP_USER} -- psql -X -d {db} -c "SELECT * FROM t"
check backup-dumps runuser -u {conventions.BACKUP_USER} -- pg_dump -d {db} -f /dev/null
check backup-insert runuser -u {conventions.BACKUP_USER} -- psql -X -d {db} -c "INSERT INTO t VALUES (2)"
check backup-create runuser -u {conventions.BACKUP_USER} -- psql -X -d {db} -c "CREATE TABLE u (x int)"
check backup-read-write runuser -u {conventions.BACKUP_USER} -- psql -X -d {db} -c "SET default_transaction_read_only = off" -c "INSERT INTO t VALUES (3)"
check app-owns-only-its-db test "$(runuser -u postgres -- psql -XAt -c "SELECT string_agg(datname, ',') FROM pg_database WHERE pg_get_userbyid(datdba) = '{user}'")" = {db}
check data-on-volume test -f "{conventions.DATA_MOUNT}/postgresql/$(postgresql_version)/main/PG_VERSION"
psql -X -At "{conn('verify-full')}" -c "SHOW listen_addresses"
""")
    out = run.output
    assert run.status("round-first") == 0, out
    assert run.changes("first") > 0
    assert run.status("round-second") == 0, out
    assert run.changes("second") == 0, out
    assert run.status("tls-app") == 0, out
    assert run.status("tls-is-used") == 0 and "\nt\n" in run.completed.stdout
    assert f"localhost,{box.address}" in run.completed.stdout
    assert run.status("plaintext") != 0 and "no pg_hba.conf entry" in out
    assert run.status("from-outside-vpc") != 0
    assert run.status("wrong-password") != 0 and "password authentication failed" in out
    assert run.status("backup-reads") == 0, out
    assert run.status("backup-dumps") == 0, out
    assert run.status("backup-insert") != 0
    assert run.status("backup-create") != 0
    assert run.status("backup-read-write") != 0 and "permission denied" in out
    assert run.status("app-owns-only-its-db") == 0, out
    assert run.status("data-on-volume") == 0, out


def test_postgresql_on_a_new_droplet_takes_over_the_cluster_on_the_kept_volume(tmp_path, staging):
    """The datastore replaced, its volume kept: the new root disk has no /etc/postgresql."""
    tool("psql", "postgresql-client")
    pw = passwords_for(staging)
    box = Sandbox(tmp_path, staging, pw)
    port = conventions.ENGINES["postgresql"].tls_port
    db, user = conventions.ENGINE_APP_DATABASE, conventions.ENGINE_APP_USER
    conn = PG_CONNECT.format(host=box.address, port=port, db=db, user=user, mode="verify-full", ca=box.ca_cert)
    run = box.run(ROUND + f"""
round first postgresql_steps
export PGPASSWORD={pw['postgresql']}
check write psql -X "{conn}" -c "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)"
v=$(postgresql_version)
check stop pg_ctlcluster "$v" main stop
check new-root-disk rm -rf "/etc/postgresql/$v/main"
round new-droplet postgresql_steps
round again postgresql_steps
check read test "$(psql -X -At "{conn}" -c "SELECT x FROM kept")" = 42
""")
    out = run.output
    assert run.status("round-first") == 0, out
    assert run.status("write") == 0 and run.status("new-root-disk") == 0, out
    assert run.status("round-new-droplet") == 0, out
    assert "taken over from the volume" in out
    assert run.status("read") == 0, out
    assert run.status("round-again") == 0 and run.changes("again") == 0, out


def test_rabbitmq_on_the_rendered_config(tmp_path, staging):
    tool("rabbitmq-server", "rabbitmq-server")
    tool("openssl", "openssl")
    pw = passwords_for(staging)
    box = Sandbox(tmp_path, staging, pw)
    tls_port = conventions.ENGINES["rabbitmq"].tls_port
    user, vhost = conventions.ENGINE_APP_USER, conventions.ENGINE_APP_DATABASE
    run = box.run(ROUND + f"""
round first rabbitmq_steps
round second rabbitmq_steps
check amqps bash -c "openssl s_client -connect {box.address}:{tls_port} -CAfile {box.ca_cert} -verify_return_error </dev/null"
check amqp-closed bash -c "exec 3<>/dev/tcp/{box.address}/5672"
check amqp-closed-loopback bash -c "exec 3<>/dev/tcp/127.0.0.1/5672"
rabbitmqctl --quiet --no-table-headers list_users
check guest-gone bash -c "! rabbitmqctl --quiet --no-table-headers list_users | cut -f1 | grep -qx guest"
check app-authenticates rabbitmqctl --quiet authenticate_user {user} {pw['rabbitmq']}
check vhost bash -c "rabbitmqctl --quiet --no-table-headers list_vhosts | grep -qx {vhost}"
check permissions bash -c "rabbitmqctl --quiet --no-table-headers list_user_permissions {user} | grep -qx '{vhost}\t.\\*\t.\\*\t.\\*'"
check data-on-volume bash -c "ls -d {conventions.DATA_MOUNT}/rabbitmq/mnesia/rabbit@localhost"
""", timeout=170)
    out = run.output
    assert run.status("round-first") == 0, out
    assert run.changes("first") > 0
    assert run.status("round-second") == 0, out
    assert run.changes("second") == 0, out
    assert run.status("amqps") == 0, out
    assert run.status("amqp-closed") != 0
    assert run.status("amqp-closed-loopback") != 0
    assert run.status("guest-gone") == 0, out
    assert run.status("app-authenticates") == 0, out
    assert run.status("vhost") == 0, out
    assert run.status("permissions") == 0, out
    assert run.status("data-on-volume") == 0, out


# --- engines switched off and on again on a running datastore ---------------------------------


def test_engines_switched_off_stop_keep_their_data_and_come_back_with_it(tmp_path):
    """Provisioning run again after `engines` changed (the bundle brings the new role steps,
    staged files and platform.env): PostgreSQL and Redis on, then off, then on again."""
    tool("psql", "postgresql-client")
    tool("redis-server", "redis-server")
    tool("stunnel4", "stunnel4")
    on = mockcloud.stack_settings("staging", engines=["postgresql", "redis"])
    off = mockcloud.stack_settings("staging", engines=[])
    pw = passwords_for(on)
    box = Sandbox(tmp_path, on, pw)
    box.variant("on", on)
    box.variant("off", off)
    pg_port, redis_port = conventions.ENGINES["postgresql"].tls_port, conventions.ENGINES["redis"].tls_port
    conn = PG_CONNECT.format(host=box.address, port=pg_port, db=conventions.ENGINE_APP_DATABASE,
                             user=conventions.ENGINE_APP_USER, mode="verify-full", ca=box.ca_cert)
    redis = f"redis-cli --no-auth-warning -h {box.address} -p {redis_port} --tls --cacert {box.ca_cert} --user {conventions.ENGINE_APP_USER} -a {pw['redis']}"
    data = conventions.DATA_MOUNT
    run = box.run(ROUND + f"""
export PGPASSWORD={pw['postgresql']}
use_variant on
round on engine_steps
check write-pg psql -X "{conn}" -c "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)"
check write-redis test "$({redis} SET kept 42)" = OK
v=$(postgresql_version)
use_variant off
round off engine_steps
check pg-stopped bash -c "! pg_lsclusters -h | grep -q online"
check redis-stopped bash -c "! pgrep -x redis-server"
check stunnel-stopped bash -c "! pgrep -x stunnel4"
check pg-port-closed bash -c "exec 3<>/dev/tcp/{box.address}/{pg_port}"
check redis-port-closed bash -c "exec 3<>/dev/tcp/{box.address}/{redis_port}"
check disabled bash -c "ls -A $T/enabled | grep -e postgresql -e redis -e stunnel"
check not-started-at-boot test "$(cat /etc/postgresql/$v/main/start.conf)" = manual
check pg-data-kept test -f {data}/postgresql/$v/main/PG_VERSION
check redis-data-kept test -n "$(ls -A {data}/redis)"
round off-again engine_steps
use_variant on
round on-again engine_steps
check read-pg test "$(psql -X -At "{conn}" -c "SELECT x FROM kept")" = 42
check read-redis test "$({redis} GET kept)" = 42
check enabled-again bash -c "ls -A $T/enabled | grep -q redis-server && ls -A $T/enabled | grep -q postgresql@"
check started-at-boot test "$(cat /etc/postgresql/$v/main/start.conf)" = auto
round on-steady engine_steps
""", timeout=170)
    out = run.output
    assert run.status("round-on") == 0, out
    assert run.status("write-pg") == 0 and run.status("write-redis") == 0, out
    assert run.status("round-off") == 0, out
    assert run.changes("off") > 0
    for label in ("pg-stopped", "redis-stopped", "stunnel-stopped", "not-started-at-boot",
                  "pg-data-kept", "redis-data-kept"):
        assert run.status(label) == 0, (label, out)
    for label in ("pg-port-closed", "redis-port-closed", "disabled"):
        assert run.status(label) != 0, (label, out)
    assert run.status("round-off-again") == 0 and run.changes("off-again") == 0, out
    assert run.status("round-on-again") == 0, out
    for label in ("read-pg", "read-redis", "enabled-again", "started-at-boot"):
        assert run.status(label) == 0, (label, out)
    assert run.status("round-on-steady") == 0 and run.changes("on-steady") == 0, out
