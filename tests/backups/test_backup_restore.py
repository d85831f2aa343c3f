"""Backups and restores, for real: the rendered platform-backup and platform-restore run
inside the datastore sandbox (tests/roles) against engines started on their rendered
configs, with restic sending to an S3 server (moto) on loopback in place of Spaces.

Known data is written, backed up, destroyed, restored, and compared by row counts and
checksums. MongoDB cannot run here (no binaries): its part of the scripts is rendered
and shellchecked only (test_backup_scripts.py). Longer than most modules: each test is
one whole scenario, and they share the provisioning harness above them.
"""

from __future__ import annotations

import datetime
import json
import re

import mockcloud
from cloudinit import common, datastore
from model import conventions

from backup_sandbox import BackupSandbox, backup_payload, repository
from datastore_sandbox import password, tool


def passwords_for(settings):
    return {name: password() for name in datastore.password_names()}


# One provisioning run of the given steps, as role_steps runs them.
PROVISION = """
provision() {
    ( set -Eeu; trap 'echo "FAILED: $BASH_COMMAND" >&2' ERR; CHANGES=0; note_certificate_change; load_secrets; for s in "$@"; do "$s"; done; echo "CHANGES $CHANGES" )
    echo "CHECK provision $?"
}
"""

PG_CHECKSUM = (
    "SELECT count(*) || ' ' || md5(string_agg(id || ':' || payload, ',' ORDER BY id)) FROM items"
)
REDIS_KEYS = 2000


def redis_fingerprint(cli: str) -> str:
    """A line that changes if any key, value, list item or hash field changes."""
    keys = " ".join(f"key:{i}" for i in range(REDIS_KEYS))
    return (
        f'{{ echo "size $({cli} DBSIZE)"; {cli} MGET {keys} | sha256sum; '
        f"{cli} LRANGE queue 0 -1 | sha256sum; {cli} HGETALL profile | sha256sum; }}"
    )


def test_postgresql_and_redis_survive_destroy_and_restore(tmp_path):
    tool("restic", "restic")
    tool("psql", "postgresql-client")
    tool("redis-server", "redis-server")
    settings = mockcloud.stack_settings("staging", engines=["postgresql", "redis"])
    pw = passwords_for(settings)
    box = BackupSandbox(tmp_path, settings, pw, restic_password=password(), repository_url=repository())
    app, db = conventions.ENGINE_APP_USER, conventions.ENGINE_APP_DATABASE
    psql = "runuser -u postgres -- psql -X -A -t -v ON_ERROR_STOP=1"
    cli = f"REDISCLI_AUTH={pw['redis']} redis-cli --user {conventions.ENGINE_APP_USER} -h 127.0.0.1 -p {conventions.ENGINES['redis'].local_port}"
    app_tls = (f"PGPASSWORD={pw['postgresql']} psql -X -A -t \"host={box.address} port=5432 dbname={db} "
               f"user={app} sslmode=verify-full sslrootcert={conventions.CA_CERT_PATH}\"")
    fingerprints = f"""
fingerprints() {{
    echo "pg-app $({psql} -d {db} -c "{PG_CHECKSUM}") seq $({psql} -d {db} -c "SELECT last_value FROM items_id_seq")"
    echo "pg-reports $({psql} -d reports -c "{PG_CHECKSUM}")"
    echo "redis $({redis_fingerprint(cli)} | tr '\\n' ' ')"
}}
"""
    run = box.run(PROVISION + fingerprints + f"""
provision postgresql_steps redis_steps backup_steps
start_s3
check init {conventions.BACKUP_COMMAND} init
restic_first_snapshot() {{
    ( set -a; . {conventions.BACKUP_SECRETS_FILE}; RESTIC_CACHE_DIR={conventions.BACKUP_CACHE_DIR} restic snapshots --json ) \
        | python3 -c 'import json, sys; print(sorted(json.load(sys.stdin), key=lambda s: s["time"])[0]["short_id"])'
}}
# Known data: the app's database (owned by the app's login) and a second database.
{psql} -d {db} <<'SQL'
SET ROLE {app};
CREATE TABLE items (id bigserial PRIMARY KEY, payload text NOT NULL);
INSERT INTO items (payload) SELECT md5(g::text) || repeat('x', g % 50) FROM generate_series(1, 20000) g;
DELETE FROM items WHERE id % 7 = 0;
SQL
{psql} -c "CREATE DATABASE reports OWNER {app}"
{psql} -d reports -c "SET ROLE {app}; CREATE TABLE items (id bigserial PRIMARY KEY, payload text); INSERT INTO items (payload) SELECT 'r' || g FROM generate_series(1, 500) g"
for i in $(seq 0 {REDIS_KEYS - 1}); do echo "SET key:$i value-$i-$RANDOM"; done | {cli} >/dev/null
{cli} RPUSH queue a b c d e >/dev/null
{cli} HSET profile name ada lang en visits 42 >/dev/null
fingerprints | sed 's/^/BEFORE /'
check backup {conventions.BACKUP_COMMAND} run
check status {conventions.BACKUP_COMMAND} status
check dumps-cleaned test ! -e {conventions.BACKUP_SPOOL}/dumps
# The logs ride along: the engine's and the journal (sshd's, the firewall's).
check logs-in-snapshot bash -c "set -a; . {conventions.BACKUP_SECRETS_FILE}; RESTIC_CACHE_DIR={conventions.BACKUP_CACHE_DIR} restic ls latest | grep -x -e /var/log/postgresql -e /var/log/journal | sort | paste -sd ' ' | grep -qx '/var/log/journal /var/log/postgresql'"
# Lose everything.
{psql} -c "DROP DATABASE {db} WITH (FORCE)" -c "DROP DATABASE reports WITH (FORCE)"
# Key by key: the app's Redis user may not FLUSHALL.
{cli} --scan | xargs -r -n 500 env {cli} DEL >/dev/null
check lost test "$({cli} DBSIZE)" = 0
check restore-list {conventions.RESTORE_COMMAND} list
check restore {conventions.RESTORE_COMMAND} all
fingerprints | sed 's/^/AFTER /'
check app-logs-in test "$({app_tls} -c 'SELECT count(*) FROM items')" -gt 0
check app-owns {psql} -d {db} -c "SELECT 1 FROM pg_tables WHERE tablename = 'items' AND tableowner = '{app}'"
check backup-role-connects runuser -u {conventions.BACKUP_USER} -- psql -X -d {db} -c "SELECT count(*) FROM items"
# The next run's dump works on the restored data, as the timer would run it.
check backup-again {conventions.BACKUP_COMMAND} run
# A chosen snapshot: the first one, after the data has changed and been backed up again.
first=$(restic_first_snapshot)
{psql} -d {db} -c "SET ROLE {app}; INSERT INTO items (payload) VALUES ('later')"
check backup-changed {conventions.BACKUP_COMMAND} run
check restore-chosen {conventions.RESTORE_COMMAND} postgresql "$first"
fingerprints | sed 's/^/CHOSEN /'
# The configuration comes back beside /etc, without the repository's own secrets.
check restore-config {conventions.RESTORE_COMMAND} config
check config-restored cmp {conventions.BACKUP_SPOOL}/restored{datastore.POSTGRESQL_HBA} {datastore.POSTGRESQL_HBA}
check config-without-restic-secrets test ! -e {conventions.BACKUP_SPOOL}/restored{conventions.BACKUP_SECRETS_FILE}
""", timeout=240)
    out = run.output
    assert run.status("provision") == 0, out
    assert run.status("init") == 0, out
    assert run.status("backup") == 0, out
    assert run.status("status") == 0, out
    assert "status: ok" in run.completed.stdout
    assert run.status("dumps-cleaned") == 0, out
    assert run.status("logs-in-snapshot") == 0, out
    assert run.status("lost") == 0, out
    assert run.status("restore-list") == 0, out
    assert run.status("restore") == 0, out
    before = re.findall(r"^BEFORE (.*)$", run.completed.stdout, re.M)
    after = re.findall(r"^AFTER (.*)$", run.completed.stdout, re.M)
    assert len(before) == 3 and all(" " in line for line in before), out
    assert after == before, out
    assert re.search(r"^BEFORE pg-app 17143 [0-9a-f]{32} seq 20000$", run.completed.stdout, re.M), before
    assert f"redis size {REDIS_KEYS + 2} " in before[2]
    assert run.status("app-logs-in") == 0, out
    assert run.status("app-owns") == 0, out
    assert run.status("backup-role-connects") == 0, out
    assert run.status("backup-again") == 0, out
    assert run.status("backup-changed") == 0, out
    assert run.status("restore-chosen") == 0, out
    chosen = re.findall(r"^CHOSEN (.*)$", run.completed.stdout, re.M)
    assert chosen[:2] == before[:2], out  # PostgreSQL as in the first snapshot: 'later' is gone
    assert run.status("restore-config") == 0, out
    assert run.status("config-restored") == 0, out
    assert run.status("config-without-restic-secrets") == 0, out


def test_rabbitmq_definitions_survive_destroy_and_restore(tmp_path):
    tool("restic", "restic")
    tool("rabbitmq-server", "rabbitmq-server")
    settings = mockcloud.stack_settings("staging", engines=["rabbitmq"])
    pw = passwords_for(settings)
    box = BackupSandbox(tmp_path, settings, pw, restic_password=password(), repository_url=repository())
    vhost, app = conventions.ENGINE_APP_DATABASE, conventions.ENGINE_APP_USER
    ctl = "rabbitmqctl --quiet"
    ls = "rabbitmqctl --quiet --no-table-headers"
    run = box.run(PROVISION + f"""
provision rabbitmq_steps backup_steps
start_s3
check init {conventions.BACKUP_COMMAND} init
{ctl} add_vhost reports
{ctl} set_permissions -p reports {app} '^reports-.*' '.*' '.*'
rabbitmqctl --quiet eval 'rabbit_amqqueue:declare(rabbit_misc:r(<<"{vhost}">>, queue, <<"orders">>), true, false, [], none, <<"test">>).' >/dev/null
listing() {{
    echo "vhosts $({ls} list_vhosts | sort | tr '\\n' ' ')"
    echo "users $({ls} list_users | cut -f1 | sort | tr '\\n' ' ')"
    echo "perms $({ls} list_user_permissions {app} | sort | tr '\\n\\t' '  ')"
    echo "queues $({ls} list_queues -p {vhost} name durable | sort | tr '\\n\\t' '  ')"
}}
listing | sed 's/^/BEFORE /'
check backup {conventions.BACKUP_COMMAND} run
# Lose the definitions.
{ctl} delete_vhost reports
{ctl} delete_vhost {vhost}
{ctl} delete_user {app}
check lost bash -c "! {ls} list_vhosts | grep -qx {vhost}"
check restore {conventions.RESTORE_COMMAND} rabbitmq
listing | sed 's/^/AFTER /'
check app-authenticates rabbitmqctl --quiet authenticate_user {app} {pw['rabbitmq']}
""", timeout=240)
    out = run.output
    assert run.status("provision") == 0, out
    assert run.status("init") == 0, out
    assert run.status("backup") == 0, out
    assert run.status("lost") == 0, out
    assert run.status("restore") == 0, out
    before = re.findall(r"^BEFORE (.*)$", run.completed.stdout, re.M)
    after = re.findall(r"^AFTER (.*)$", run.completed.stdout, re.M)
    assert len(before) == 4, out
    assert "reports" in before[0] and vhost in before[0] and "orders true" in before[3], before
    assert after == before, out
    assert run.status("app-authenticates") == 0, out


def expected_kept(times: list[datetime.datetime], daily: int, weekly: int, monthly: int) -> set:
    """restic's policy: every snapshot within a day of the newest, and the newest of each
    of the last N days, ISO weeks, months."""
    assert conventions.BACKUP_KEEP_WITHIN == "1d"
    kept = {t for t in times if t >= max(times) - datetime.timedelta(days=1)}
    for count, period in ((daily, lambda t: t.date()), (weekly, lambda t: t.isocalendar()[:2]),
                          (monthly, lambda t: (t.year, t.month))):
        seen = []
        for t in sorted(times, reverse=True):
            if period(t) not in seen and len(seen) < count:
                seen.append(period(t))
                kept.add(t)
    return kept


def test_retention_keeps_what_the_settings_say(tmp_path):
    tool("restic", "restic")
    settings = mockcloud.stack_settings(
        "staging", engines=[], backupKeepDaily=3, backupKeepWeekly=2, backupKeepMonthly=2
    )
    box = BackupSandbox(tmp_path, settings, {}, restic_password=password(), repository_url=repository())
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0, tzinfo=None)
    # A daily snapshot at the backup hour for 75 days before today's run.
    times = [(now - datetime.timedelta(days=d)).replace(hour=settings.backup_hour_utc, minute=0, second=0)
             for d in range(1, 76)]
    host = conventions.backup_host(settings.stack, "datastore")
    made = "\n".join(
        f'restic backup --quiet --host {host} --tag platform --time "{t:%Y-%m-%d %H:%M:%S}" /etc/hostname'
        for t in times
    )
    run = box.run(PROVISION + f"""
provision backup_steps
start_s3
check init {conventions.BACKUP_COMMAND} init
set -a; . {conventions.BACKUP_SECRETS_FILE}; set +a
export RESTIC_CACHE_DIR={conventions.BACKUP_CACHE_DIR}
{made}
# Someone else's snapshots in the same bucket are not this series: never forgotten.
restic backup --quiet --host elsewhere --tag platform --time "2020-01-01 00:00:00" /etc/hostname
check backup {conventions.BACKUP_COMMAND} run
echo "SNAPSHOTS $(restic snapshots --json)"
""", timeout=240)
    out = run.output
    assert run.status("init") == 0, out
    assert run.status("backup") == 0, out
    (listing,) = re.findall(r"^SNAPSHOTS (.*)$", run.completed.stdout, re.M)
    snapshots = json.loads(listing)
    ours = [s for s in snapshots if s["hostname"] == host]
    assert [s for s in snapshots if s["hostname"] == "elsewhere"], "another host's snapshot was forgotten"
    kept = {datetime.datetime.fromisoformat(s["time"][:19]) for s in ours}
    today = max(kept)
    assert today >= now - datetime.timedelta(minutes=5), "today's run is not among the kept snapshots"
    expected = expected_kept(times + [today], daily=3, weekly=2, monthly=2)
    assert kept == expected
    assert 3 <= len(kept) <= 7


def test_status_reports_an_unreachable_repository_and_a_failed_run(tmp_path):
    tool("restic", "restic")
    settings = mockcloud.stack_settings("staging", engines=[])
    # Nothing listens on this port in the namespace.
    box = BackupSandbox(tmp_path, settings, {}, restic_password=password(), repository_url=repository(port=9))
    state = conventions.BACKUP_STATE_DIR
    run = box.run(PROVISION + f"""
provision backup_steps
check status-never {conventions.BACKUP_COMMAND} status
check backup {conventions.BACKUP_COMMAND} run
check failure-marker test -s {state}/last-failure
cat {state}/last-failure
check status {conventions.BACKUP_COMMAND} status
# An old success and no failure since: a missed backup.
rm {state}/last-failure
echo "$(( $(date +%s) - 27 * 3600 )) 2000-01-01T00:00:00Z 0123abcd" > {state}/last-success
check status-missed {conventions.BACKUP_COMMAND} status
check logged grep -q "backup FAILED at: send" {conventions.BACKUP_LOG}
# Before the backup push has run, a timer's run fails visibly too.
rm {conventions.BACKUP_SECRETS_FILE}
check backup-unconfigured {conventions.BACKUP_COMMAND} run
check unconfigured-marker grep -q "backup push" {state}/last-failure
""", timeout=200)
    out = run.output
    stdout = run.completed.stdout
    assert run.status("status-never") == 1, out
    assert "last success: never" in stdout
    assert run.status("backup") != 0, out
    assert run.status("failure-marker") == 0, out
    assert "send failed" in stdout
    assert run.status("status") == 1, out
    assert "FAILING: the last run failed" in stdout
    assert "UNREACHABLE: the repository s3:http://127.0.0.1:9/" in stdout
    assert run.status("status-missed") == 1, out
    assert "MISSED: no successful backup for 26h" in stdout
    assert run.status("logged") == 0, out
    assert run.status("backup-unconfigured") == 1, out
    assert run.status("unconfigured-marker") == 0, out


def test_a_freshly_built_datastore_gets_everything_back(tmp_path):
    """The droplet and its volume are gone: a new one is provisioned on an empty volume
    (same rendered files, same pushes) and `platform-restore all` brings the data back.

    The S3 server lives only as long as the namespace, so the "new droplet" is the same
    namespace with every engine stopped and the volume, the clusters' configuration, the
    platform's state and restic's cache wiped, then provisioned from scratch.
    """
    tool("restic", "restic")
    settings = mockcloud.stack_settings("staging", engines=["postgresql", "redis", "rabbitmq"])
    pw = passwords_for(settings)
    box = BackupSandbox(tmp_path, settings, pw, restic_password=password(), repository_url=repository())
    app, db = conventions.ENGINE_APP_USER, conventions.ENGINE_APP_DATABASE
    psql = "runuser -u postgres -- psql -X -A -t -v ON_ERROR_STOP=1"
    cli = f"REDISCLI_AUTH={pw['redis']} redis-cli --user {conventions.ENGINE_APP_USER} -h 127.0.0.1 -p {conventions.ENGINES['redis'].local_port}"
    ls = "rabbitmqctl --quiet --no-table-headers"
    steps = "postgresql_steps redis_steps rabbitmq_steps backup_steps"
    run = box.run(PROVISION + f"""
fingerprints() {{
    echo "pg $({psql} -d {db} -c "{PG_CHECKSUM}")"
    echo "redis $({redis_fingerprint(cli)} | tr '\\n' ' ')"
    echo "rabbitmq $({ls} list_vhosts | sort | tr '\\n' ' ') $({ls} list_queues -p {db} name durable | tr '\\n\\t' '  ')"
}}
provision {steps}
start_s3
check init {conventions.BACKUP_COMMAND} init
{psql} -d {db} -c "SET ROLE {app}; CREATE TABLE items (id bigserial PRIMARY KEY, payload text NOT NULL); INSERT INTO items (payload) SELECT md5(g::text) FROM generate_series(1, 5000) g"
for i in $(seq 0 {REDIS_KEYS - 1}); do echo "SET key:$i v$i"; done | {cli} >/dev/null
{cli} RPUSH queue a b >/dev/null
{cli} HSET profile name ada >/dev/null
rabbitmqctl --quiet add_vhost reports
rabbitmqctl --quiet eval 'rabbit_amqqueue:declare(rabbit_misc:r(<<"{db}">>, queue, <<"orders">>), true, false, [], none, <<"test">>).' >/dev/null
fingerprints | sed 's/^/BEFORE /'
check backup {conventions.BACKUP_COMMAND} run

# The droplet and its volume are gone.
systemctl stop "postgresql@$(postgresql_version)-main"
systemctl stop {datastore.STUNNEL_REDIS_UNIT}
systemctl stop redis-server
systemctl stop rabbitmq-server
# The Erlang VM may take a moment to exit after the broker has stopped.
for _ in $(seq 60); do pgrep -x 'postgres|redis-server|beam.smp' >/dev/null || break; sleep 0.5; done
check engines-stopped bash -c "! pgrep -a -x 'postgres|redis-server|beam.smp'"
find {conventions.DATA_MOUNT} -mindepth 1 -delete
rm -rf /etc/postgresql/*/main {conventions.PLATFORM_STATE}/* {conventions.BACKUP_CACHE_DIR} {conventions.BACKUP_SPOOL}
check volume-empty test -z "$(ls -A {conventions.DATA_MOUNT})"

# A new one: first-boot provisioning on an empty volume, then the pushes' provisioning.
provision {steps}
check empty-again test "$({psql} -d {db} -c "SELECT count(*) FROM pg_tables WHERE tablename = 'items'")" = 0
check restore {conventions.RESTORE_COMMAND} all
fingerprints | sed 's/^/AFTER /'
check app-authenticates-rabbitmq rabbitmqctl --quiet authenticate_user {app} {pw['rabbitmq']}
check status {conventions.BACKUP_COMMAND} status
""", timeout=400)
    out = run.output
    for label in ("init", "backup", "engines-stopped", "volume-empty", "empty-again", "restore",
                  "app-authenticates-rabbitmq"):
        assert run.status(label) == 0, f"{label}:\n{out[-8000:]}"
    assert re.findall(r"^CHECK provision (\d+)$", run.completed.stdout, re.M) == ["0", "0"], out
    before = re.findall(r"^BEFORE (.*)$", run.completed.stdout, re.M)
    after = re.findall(r"^AFTER (.*)$", run.completed.stdout, re.M)
    assert len(before) == 3 and before[0].startswith("pg 5000 "), out
    assert "orders true" in before[2] and "reports" in before[2], before
    assert after == before, out
    # The new droplet has not made a backup yet, but the series it continues is there.
    assert "last success: never" in run.completed.stdout
    assert re.search(r"^1 snapshots$", run.completed.stdout, re.M), out


def test_the_backup_push_installs_checks_and_refuses_a_repository_it_cannot_reach(tmp_path):
    """platform-push backup, as the program runs it: files root-only, the repository
    created by the check, the timer enabled; a wrong repository leaves nothing behind."""
    tool("restic", "restic")
    settings = mockcloud.stack_settings("staging", engines=[])
    restic_password = password()
    box = BackupSandbox(tmp_path, settings, {}, restic_password=restic_password,
                        repository_url=repository(), pushed=False)
    good = json.dumps(box.payload)
    bad = json.dumps(backup_payload(settings, restic_password, repository(port=9)))
    (tmp_path / "good.json").write_text(good)
    (tmp_path / "bad.json").write_text(bad)
    timer = f"{conventions.BACKUP_UNIT}.timer"
    run = box.run(PROVISION + f"""
provision backup_steps
provision backup_steps
start_s3
touch {conventions.PROVISIONED_MARKER}
check push-unreachable {conventions.PUSH_COMMAND} backup < "$T/bad.json"
check nothing-left bash -c "! ls {conventions.BACKUP_SECRETS_FILE} {conventions.BACKUP_RETENTION_FILE} {common.BACKUP_TIMER}"
check push {conventions.PUSH_COMMAND} backup < "$T/good.json"
check secrets-root-only test "$(stat -c '%a %U:%G' {conventions.BACKUP_SECRETS_FILE})" = "600 root:root"
check timer-installed test -s {common.BACKUP_TIMER}
check repository bash -c "set -a; . {conventions.BACKUP_SECRETS_FILE}; RESTIC_CACHE_DIR=$T/cache restic cat config"
check push-again {conventions.PUSH_COMMAND} backup < "$T/good.json"
cat "$T/systemctl.log"
""", timeout=200)
    out = run.output
    # Idempotent: the second provisioning run changes nothing.
    changes = re.findall(r"^CHANGES (\d+)$", run.completed.stdout, re.M)
    assert len(changes) == 2 and int(changes[0]) > 0 and changes[1] == "0", out
    assert run.status("push-unreachable") != 0, out
    assert "check failed; previous files restored" in out
    assert run.status("nothing-left") == 0, out
    assert run.status("push") == 0, out
    assert run.status("secrets-root-only") == 0, out
    assert run.status("timer-installed") == 0, out
    assert run.status("repository") == 0, out
    assert run.status("push-again") == 0 and "platform-push backup: no change" in out, out
    log = run.completed.stdout
    assert f"enable {timer}\n" in log and f"restart {timer}\n" in log


def test_a_database_the_backup_role_cannot_open_fails_the_run_after_the_rest_is_sent(tmp_path):
    tool("restic", "restic")
    tool("psql", "postgresql-client")
    settings = mockcloud.stack_settings("staging", engines=["postgresql"])
    box = BackupSandbox(tmp_path, settings, passwords_for(settings), restic_password=password(),
                        repository_url=repository())
    psql = "runuser -u postgres -- psql -X -A -t -v ON_ERROR_STOP=1"
    run = box.run(PROVISION + f"""
provision postgresql_steps backup_steps
start_s3
{conventions.BACKUP_COMMAND} init >/dev/null
{psql} -c "CREATE DATABASE hidden" -c "REVOKE CONNECT ON DATABASE hidden FROM PUBLIC"
check backup {conventions.BACKUP_COMMAND} run
cat {conventions.BACKUP_STATE_DIR}/last-failure
check no-success test ! -e {conventions.BACKUP_STATE_DIR}/last-success
check status {conventions.BACKUP_COMMAND} status
check app-restorable {conventions.RESTORE_COMMAND} postgresql
""", timeout=200)
    out = run.output
    assert run.status("backup") == 1, out
    assert re.search(r"PostgreSQL databases not in snapshot [0-9a-f]+ .*: hidden failed", run.completed.stdout), out
    assert run.status("no-success") == 0, out
    assert run.status("status") == 1 and "FAILING" in run.completed.stdout, out
    assert run.status("app-restorable") == 0, out  # the databases it could read were sent
