"""The README's runbooks for a lost droplet, run on the booted staging stack, after every
role has backed its configuration up to its own repository in the Spaces stand-in.

- The LB and the datastore are gone at once, the datastore's volume survived: one `up`
  builds both anew. The new LB serves its Let's Encrypt certificate from its backups
  instead of asking the ACME server again (Let's Encrypt issues 5 duplicate certificates a
  week); the new datastore mounts the volume and its engines take their data over, no
  restore.
- The datastore and its volume are gone: a backup first, then `up` builds a new droplet on
  an empty volume and `platform-restore all` brings the data back.

Known data goes into every enabled engine (through the app and directly); each time the
fingerprints match and the apps serve it again without a redeploy. The two losses share
what they can: one rebuild for two droplets is one boot less of the suite.

It replaces droplets, so it runs after the other tests of the shared stack and leaves the
stack healthy on two app servers.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest

from cloudinit import common, load_balancer
from model import conventions
from localcloud import spaces, stack

pytestmark = pytest.mark.localcloud
RUNS_LAST_ON_THE_STACK = True   # tests/conftest.py

APP, DB = conventions.ENGINE_APP_USER, conventions.ENGINE_APP_DATABASE
ROWS, KEYS = 20000, 1000

SHELL = f"""set -euo pipefail
. {conventions.BACKUP_LIBRARY}
load_engine_secrets
psql() {{ runuser -u postgres -- psql -X -A -t -v ON_ERROR_STOP=1 -d {DB} "$@"; }}
rcli() {{ REDISCLI_AUTH=$REDIS_PASSWORD redis-cli --user {APP} -h 127.0.0.1 -p {conventions.ENGINES["redis"].local_port} "$@"; }}
rmq() {{ rabbitmqctl --quiet "$@"; }}
rmq_list() {{ rabbitmqctl --quiet --no-table-headers "$@"; }}
"""

SEED = SHELL + f"""
psql -c "SET ROLE {APP}; DROP TABLE IF EXISTS restore_probe; CREATE TABLE restore_probe (id bigserial PRIMARY KEY, payload text NOT NULL);
         INSERT INTO restore_probe (payload) SELECT md5(g::text) FROM generate_series(1, {ROWS}) g"
for i in $(seq 1 {KEYS}); do echo "SET probe:$i v$i"; done | rcli >/dev/null
rmq add_vhost probe-vhost >/dev/null
rmq eval 'rabbit_amqqueue:declare(rabbit_misc:r(<<"{DB}">>, queue, <<"probe-orders">>), true, false, [], none, <<"test">>).' >/dev/null
"""

FINGERPRINTS = SHELL + f"""
echo "pg $(psql -c "SELECT count(*) || ' ' || md5(string_agg(id || ':' || payload, ',' ORDER BY id)) FROM restore_probe" 2>&1)"
echo "redis $(for i in $(seq 1 {KEYS}); do echo "GET probe:$i"; done | rcli | sha256sum)"
echo "rabbitmq $(rmq_list list_vhosts | sort | tr '\\n' ' ')| $(rmq_list list_queues -p {DB} name durable | sort | tr '\\n\\t' '  ')"
"""


def served_certificate(s) -> str:
    """The serial and fingerprint of the certificate the LB serves to the internet."""
    proc = s.internet(["sh", "-c", f"openssl s_client -connect {s.address}:443 -servername {s.domain}"
                       " </dev/null 2>/dev/null | openssl x509 -noout -serial -fingerprint -sha256"])
    assert proc.returncode == 0 and "Fingerprint=" in proc.stdout, proc.stdout + (proc.stderr or "")
    return proc.stdout


# Each role backs up to a bucket of its own (its resource in the program).
ROLE_BUCKETS = {conventions.DATASTORE: "datastore-backups", conventions.LOAD_BALANCER: "lb-backups",
                conventions.APP_SERVER: "app-backups"}


def snapshot_objects(s, role: str) -> list[str]:
    bucket = s.plan.bucket(ROLE_BUCKETS[role]).name
    listed = spaces.client().list_objects_v2(Bucket=bucket, Prefix=f"{conventions.backup_repository_path(role)}/snapshots/")
    return [o["Key"] for o in listed.get("Contents", [])]


def backup_unit_idle(s, name: str, timeout: float = 600) -> str:
    """Waits out a run of the backup unit (the LB's deploy hook, or the daily timer): a run
    by hand meanwhile is refused by the lock. Returns the unit's state."""
    deadline = time.monotonic() + timeout
    while True:
        state = s.run(name, ["systemctl", "is-active", f"{conventions.BACKUP_UNIT}.service"]).stdout.strip()
        if state not in ("activating", "active", "reloading") or time.monotonic() > deadline:
            return state
        time.sleep(2)


def on_datastore(s, script: str, timeout: float = 600):
    return s.run("datastore", ["bash", "-c", script], timeout=timeout)


def notes_in(s) -> dict:
    proc = s.https("/api/notes", "-w", "\n%{http_code}")
    body, _, code = proc.stdout.rpartition("\n")
    assert code == "200", proc.stdout + (proc.stderr or "")
    return {name: [n["text"] for n in (r.get("result") or [])] for name, r in json.loads(body)["engines"].items()}


def post(s, note: str) -> None:
    posted = s.https("/api/notes", "-X", "POST", "-H", "content-type: application/json",
                     "--data", f'{{"text": "{note}"}}', "-o", "/dev/null", "-w", "%{http_code}")
    assert posted.stdout == "201", posted.stdout + (posted.stderr or "")


def test_every_droplet_backs_its_configuration_up_to_its_roles_repository(local_stack):
    s = local_stack
    # The certificate went to the backups when it was issued: certbot's deploy hook
    # started the backup unit (this test runs its backups as a command, not as the unit).
    assert backup_unit_idle(s, "lb") == "inactive"
    hooked = s.run("lb", ["journalctl", "--no-pager", "-u", f"{conventions.BACKUP_UNIT}.service"])
    assert "backup finished: snapshot" in hooked.stdout, hooked.stdout
    for droplet in s.plan.droplets:
        backup_unit_idle(s, droplet.name)
        # systemd has the daily run and the hourly check scheduled (the `backup` push enabled
        # the first, provisioning the second).
        for timer in (conventions.BACKUP_UNIT, conventions.BACKUP_CHECK_UNIT):
            active = s.run(droplet.name, ["systemctl", "is-active", f"{timer}.timer"])
            assert active.stdout.strip() == "active", f"{droplet.name} {timer}.timer: {active.stdout}"
        backup = s.run(droplet.name, [conventions.BACKUP_COMMAND, "run"], timeout=600)
        assert backup.returncode == 0, droplet.name + backup.stdout + (backup.stderr or "")
        status = s.run(droplet.name, [conventions.BACKUP_COMMAND, "status"], timeout=180)
        assert status.returncode == 0 and "status: ok" in status.stdout, droplet.name + status.stdout
        # What the hourly timer starts runs as a unit and finds nothing to alert.
        check = s.run(droplet.name, ["systemctl", "start", f"{conventions.BACKUP_CHECK_UNIT}.service"], timeout=300)
        assert check.returncode == 0, droplet.name + check.stdout + (check.stderr or "")
        alerted = s.run(droplet.name, ["cut", "-f1", f"{conventions.BACKUP_STATE_DIR}/alerted"])
        assert alerted.stdout.strip() == "ok", droplet.name + alerted.stdout + (alerted.stderr or "")
    for role in conventions.ROLES:
        assert snapshot_objects(s, role), f"no snapshot in restic/{role}"
    # What an app server's snapshot holds comes back as it is on the server.
    (app, *_) = s.app_servers()
    restored = s.run(app, [conventions.RESTORE_COMMAND, "config"], timeout=300)
    assert restored.returncode == 0, restored.stdout + (restored.stderr or "")
    for path in (common.NGINX_SITE, conventions.APP_ENV_FILE, conventions.ECOSYSTEM_FILE):
        same = s.run(app, ["cmp", f"{conventions.BACKUP_SPOOL}/restored{path}", path])
        assert same.returncode == 0, path + same.stdout + (same.stderr or "")
    # The repository's own settings stay out of it.
    secrets = s.run(app, ["test", "-e", f"{conventions.BACKUP_SPOOL}/restored{conventions.BACKUP_SECRETS_FILE}"])
    assert secrets.returncode == 1


def test_the_lb_and_the_datastore_lost_at_once_one_up_builds_both_and_they_take_their_state_back(local_stack):
    s = local_stack
    s.wait_healthy()
    certificate = served_certificate(s)
    # The LB's backups hold the certificate (the deploy hook's run, finished).
    assert backup_unit_idle(s, "lb") == "inactive"
    assert snapshot_objects(s, conventions.LOAD_BALANCER)
    note = f"kept-volume-{uuid.uuid4()}"
    post(s, note)
    seeded = on_datastore(s, SEED)
    assert seeded.returncode == 0, seeded.stdout
    data = on_datastore(s, FINGERPRINTS).stdout

    old = {key: s.plan.droplet(key) for key in ("lb", "datastore")}
    stack.lose(s.plan, "lb")
    stack.lose(s.plan, "datastore", keep_volumes=True)
    s.up(stack.plan(s.plan.stack))
    new = {key: s.plan.droplet(key) for key in old}
    assert new["lb"].id != old["lb"].id, "a new LB, not the old one restarted"
    assert (new["datastore"].id, new["datastore"].vpc_ip) != (old["datastore"].id, old["datastore"].vpc_ip), \
        "a new datastore at a new address"

    # The datastore's engines took the volume's data over (PostgreSQL's cluster files are
    # kept on the volume for this).
    assert on_datastore(s, FINGERPRINTS).stdout == data
    s.wait_healthy(timeout=300)
    notes = notes_in(s)
    assert note in notes["postgresql"] and note in notes["redis"], notes
    # The LB serves the same certificate, from its backups, not a new one from the ACME server.
    assert served_certificate(s) == certificate
    journal = s.run("lb", ["journalctl", "--no-pager", "-u", f"{load_balancer.CERTIFICATE_UNIT}.service"])
    assert "restored the certificate for" in journal.stdout, journal.stdout
    assert "Requesting a certificate" not in journal.stdout, journal.stdout


def test_the_datastore_is_lost_rebuilt_and_restored_from_the_spaces_stand_in(local_stack):
    s = local_stack
    assert s.plan.overrides["spacesEndpoint"] == spaces.ENDPOINT
    s.wait_healthy()
    note = f"before-the-loss-{uuid.uuid4()}"
    post(s, note)
    seeded = on_datastore(s, SEED)
    assert seeded.returncode == 0, seeded.stdout + (seeded.stderr or "")
    before = on_datastore(s, FINGERPRINTS).stdout
    assert re.search(rf"^pg {ROWS} [0-9a-f]{{32}}$", before, re.M), before
    assert "probe-vhost" in before and "probe-orders true" in before, before

    backup = s.run("datastore", [conventions.BACKUP_COMMAND, "run"], timeout=900)
    assert backup.returncode == 0, backup.stdout + (backup.stderr or "")
    status = s.run("datastore", [conventions.BACKUP_COMMAND, "status"], timeout=120)
    assert status.returncode == 0 and "status: ok" in status.stdout, status.stdout
    snapshot = re.search(r"^last success: .* snapshot ([0-9a-f]{8})", status.stdout, re.M).group(1)
    bucket = s.plan.bucket("datastore-backups").name
    stored = spaces.client().list_objects_v2(Bucket=bucket, Prefix=conventions.BACKUP_REPOSITORY_PREFIX)
    assert any("/snapshots/" in o["Key"] for o in stored.get("Contents", [])), "the snapshot is in the stand-in"

    # The droplet and its volume are gone; `up` refreshes and builds them anew.
    old = s.plan.droplet("datastore")
    stack.lose(s.plan, "datastore")
    s.up(stack.plan(s.plan.stack))
    new = s.plan.droplet("datastore")
    assert new.id != old.id, "a new droplet, not the old one restarted"
    assert new.vpc_ip != old.vpc_ip, "a new private address: the apps learn it by the program's push"
    empty = on_datastore(s, SHELL + "psql -c \"SELECT count(*) FROM pg_tables WHERE tablename = 'restore_probe'\"")
    assert empty.stdout.strip() == "0", f"the new volume starts empty: {empty.stdout}"

    listed = s.run("datastore", [conventions.RESTORE_COMMAND, "list"], timeout=300)
    assert listed.returncode == 0 and snapshot in listed.stdout, listed.stdout + (listed.stderr or "")
    restored = s.run("datastore", [conventions.RESTORE_COMMAND, "all"], timeout=900)
    assert restored.returncode == 0, restored.stdout + (restored.stderr or "")
    assert on_datastore(s, FINGERPRINTS).stdout == before

    # The apps were not redeployed: the .env push brought the new address, and they
    # reconnected by themselves to the restored data.
    report = s.wait_healthy(timeout=240)
    assert all(e["status"] in ("ok", "disabled") for e in report["engines"].values()), report
    notes = notes_in(s)
    assert note in notes["postgresql"] and note in notes["redis"], notes
