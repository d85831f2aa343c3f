"""The README's runbook "the datastore droplet is gone", run on the booted staging stack:
both of its branches, the volume survived and the volume is gone too.

Known data goes into every enabled engine (through the app and directly), a backup goes
to the Spaces stand-in, the datastore droplet and its volume are destroyed, `up` builds a
new one (a new droplet on an empty volume, the pushes re-run) and `platform-restore all`
brings the data back: the fingerprints match and the apps work again without a redeploy.

It replaces the datastore, so it runs after the other tests of the shared stack and
leaves the stack healthy on two app servers.
"""

from __future__ import annotations

import re
import uuid

import pytest

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


def on_datastore(s, script: str, timeout: float = 600):
    return s.run("datastore", ["bash", "-c", script], timeout=timeout)


def notes_in(s) -> dict:
    proc = s.https("/api/notes", "-w", "\n%{http_code}")
    body, _, code = proc.stdout.rpartition("\n")
    assert code == "200", proc.stdout + (proc.stderr or "")
    import json
    return {name: [n["text"] for n in (r.get("result") or [])] for name, r in json.loads(body)["engines"].items()}


def test_a_new_datastore_on_the_surviving_volume_takes_the_data_over(local_stack):
    """Runbook step 1: the droplet is gone, its volume is not. No restore: the new droplet
    mounts the volume and its engines take their data over (PostgreSQL's cluster files are
    kept on the volume for this)."""
    s = local_stack
    s.wait_healthy()
    note = f"kept-volume-{uuid.uuid4()}"
    post(s, note)
    seeded = on_datastore(s, SEED)
    assert seeded.returncode == 0, seeded.stdout
    before = on_datastore(s, FINGERPRINTS).stdout
    old = s.plan.droplet("datastore")
    stack.lose(s.plan, "datastore", keep_volumes=True)
    s.up(stack.plan(s.plan.stack))
    new = s.plan.droplet("datastore")
    assert (new.id, new.vpc_ip) != (old.id, old.vpc_ip), "a new droplet at a new address"
    assert on_datastore(s, FINGERPRINTS).stdout == before
    s.wait_healthy(timeout=240)
    notes = notes_in(s)
    assert note in notes["postgresql"] and note in notes["redis"], notes


def post(s, note: str) -> None:
    posted = s.https("/api/notes", "-X", "POST", "-H", "content-type: application/json",
                     "--data", f'{{"text": "{note}"}}', "-o", "/dev/null", "-w", "%{http_code}")
    assert posted.stdout == "201", posted.stdout + (posted.stderr or "")


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
