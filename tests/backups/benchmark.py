"""Backup and restore times for a stated dataset, on this machine (figures for the README).

    venv/bin/python tests/backups/benchmark.py [--rows 1000000] [--keys 200000]

Runs the rendered platform-backup and platform-restore in the datastore sandbox (as the
tests do) against PostgreSQL and Redis started on their rendered configs, with moto's S3
server on loopback as the bucket: the network to Spaces is not part of the figures.
"""

from __future__ import annotations

import argparse
import re
import secrets
import string
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parents[1] / "tests" / "roles"), str(HERE)]

import mockcloud  # noqa: E402
from backup_sandbox import BackupSandbox, repository  # noqa: E402
from cloudinit import datastore  # noqa: E402
from components import conventions  # noqa: E402


def password() -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="PostgreSQL rows (about 100 bytes each)")
    parser.add_argument("--keys", type=int, default=200_000, help="Redis keys (about 40 bytes of value each)")
    args = parser.parse_args()
    settings = mockcloud.stack_settings("staging", engines=["postgresql", "redis"])
    pw = {name: password() for name in datastore.password_names()}
    db = conventions.ENGINE_APP_DATABASE
    psql = "runuser -u postgres -- psql -X -A -t -v ON_ERROR_STOP=1"
    cli = f"REDISCLI_AUTH={pw['redis']} redis-cli --user {conventions.ENGINE_APP_USER} -h 127.0.0.1 -p {conventions.ENGINES['redis'].local_port}"
    with tempfile.TemporaryDirectory() as tmp:
        box = BackupSandbox(Path(tmp), settings, pw, restic_password=password(), repository_url=repository())
        run = box.run(f"""
( set -Eeu; CHANGES=0; note_certificate_change; load_secrets; postgresql_steps; redis_steps; backup_steps ) >/dev/null 2>&1
start_s3
{conventions.BACKUP_COMMAND} init >/dev/null 2>&1
{psql} -d {db} -c "CREATE TABLE items (id bigserial PRIMARY KEY, payload text); INSERT INTO items (payload) SELECT md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) FROM generate_series(1, {args.rows}) g"
awk 'BEGIN {{ for (i = 1; i <= {args.keys}; i++) printf "SET key:%d %040d\\n", i, i }}' | {cli} >/dev/null
echo "SIZE postgresql $({psql} -d {db} -c "SELECT pg_size_pretty(pg_database_size('{db}'))")"
echo "SIZE redis $({cli} DBSIZE) keys"
timed() {{
    local label=$1 s e rc
    shift
    s=$(date +%s%3N); "$@" >/dev/null 2>&1; rc=$?; e=$(date +%s%3N)
    echo "TIME $label $(( (e - s) / 1000 )).$(( (e - s) % 1000 / 100 ))s (exit $rc)"
}}
timed backup {conventions.BACKUP_COMMAND} run
{psql} -d {db} -c "UPDATE items SET payload = 'changed' WHERE id % 100 = 0" >/dev/null
timed second-backup-1%-changed {conventions.BACKUP_COMMAND} run
timed restore-all {conventions.RESTORE_COMMAND} all
echo "SIZE repository $( (set -a; . {conventions.BACKUP_SECRETS_FILE}; RESTIC_CACHE_DIR={conventions.BACKUP_CACHE_DIR} restic stats --mode raw-data) | grep -i 'total size' | tr -s ' ')"
""", timeout=3600)
    out = run.completed.stdout
    print(re.sub(r"^(?!SIZE|TIME|RC).*\n", "", out, flags=re.M) or run.output[-4000:])
    times = re.findall(r"^TIME .*$", out, re.M)
    return 0 if len(times) == 3 and all(t.endswith("(exit 0)") for t in times) else 1


if __name__ == "__main__":
    sys.exit(main())
