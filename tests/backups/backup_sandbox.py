"""The datastore sandbox of tests/roles, with what backups add: an S3 server and the paths
restic writes.

It is tests/roles/datastore_sandbox.py's namespace (the rendered files at their real
paths, engines started on them) with /usr/local, /var/backups and /var/cache overlaid
too (the rendered platform-backup and platform-restore are installed there, and must not
reach the host), and moto's S3 server on loopback standing in for Spaces. The fake
`systemctl` also stops units (a restore stops Redis) and is exported, so the rendered
scripts, which run as their own processes, use it as they would use systemd.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import cloudinit
import datastore_sandbox
from cloudinit import common
from model import conventions

# Loopback inside the namespace: nothing else listens there.
S3_PORT = 9000
BUCKET = "staging-backups"
S3_KEY_ID = "test-key-id"
S3_SECRET = "test-secret-key"

OVERLAID = "for dir in /etc /usr/sbin /usr/local /var/lib /var/log; do"
assert OVERLAID in datastore_sandbox.PRELUDE, "tests/roles/datastore_sandbox.py changed its overlays"

BACKUP_PRELUDE = r"""
mkdir -p /run/lock {log_dir}
export T
# What the rendered scripts find in place of systemd: the sandbox's units, plus stop.
systemctl() {{
    local verb=$1
    shift
    [ "${{1:-}}" = --quiet ] && shift
    local unit=${{1:-}}
    echo "$verb $unit" >> "$T/systemctl.log"
    case "$unit" in *.timer) return 0 ;; esac  # timers: recorded only
    case "$verb" in
        is-enabled|enable|daemon-reload) return 0 ;;
        is-active) unit_active "$unit" ;;
        start) unit_start "$unit" ;;
        stop) unit_stop "$unit"; while unit_active "$unit"; do sleep 0.1; done ;;
        restart) unit_stop "$unit"; unit_start "$unit" ;;
        *) echo "fake systemctl: $verb not handled" >&2; return 1 ;;
    esac
}}
export -f systemctl unit_active unit_start unit_stop wait_for_port
# platform-push runs `systemctl` as a program: this one calls the function above.
printf '#!/bin/bash\nsystemctl "$@"\n' > /usr/local/sbin/systemctl
chmod 0755 /usr/local/sbin/systemctl
start_s3() {{
    "{moto}" -H 127.0.0.1 -p {port} >>"$T/moto.log" 2>&1 &
    wait_for_port 127.0.0.1 {port}
}}
"""


def moto_server() -> str:
    found = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    assert found, "moto_server is missing: pip install -r requirements.txt (moto[server])"
    return found


def backup_payload(settings, restic_password: str, repository_url: str, webhook_url: str = "") -> dict[str, str]:
    """The `backup` push's files, as components/backups.py sends them (the S3 server's key)."""
    return {
        "backup.env": common.backup_env(
            repository=repository_url, password=restic_password, access_key=S3_KEY_ID, secret_key=S3_SECRET,
            host=conventions.backup_host(settings.stack, "datastore"), creates_repository=True,
        ),
        "alert.env": common.alert_env(webhook_url),
        **common.backup_schedule_files(settings),
    }


def repository(port: int = S3_PORT) -> str:
    return f"s3:http://127.0.0.1:{port}/{BUCKET}/{conventions.backup_repository_path(conventions.DATASTORE)}"


class BackupSandbox(datastore_sandbox.Sandbox):
    """A datastore sandbox whose backup push has run, pointing restic at `repository`."""

    def __init__(self, tmp: Path, settings, passwords, restic_password: str, repository_url: str,
                 pushed: bool = True, webhook_url: str = ""):
        super().__init__(tmp, settings, passwords)
        self.payload = backup_payload(settings, restic_password, repository_url, webhook_url)
        # Programs are executables on a droplet (cloud-init writes them with their mode).
        for program in cloudinit.programs(conventions.DATASTORE):
            (tmp / "root" / program.path.lstrip("/")).chmod(int(program.mode, 8))
        # The push table platform-push reads (cloud-init writes it at first boot).
        self._write(tmp / "root" / cloudinit.PUSH_TABLE.lstrip("/"), cloudinit.push_table(conventions.DATASTORE, settings))
        if not pushed:
            return
        targets = json.loads(cloudinit.push_table(conventions.DATASTORE, settings))["backup"]["files"]
        for name, text in self.payload.items():
            self._write(tmp / "root" / targets[name]["path"].lstrip("/"), text)
        for secret in (conventions.BACKUP_SECRETS_FILE, conventions.ALERT_SETTINGS_FILE):
            (tmp / "root" / secret.lstrip("/")).chmod(0o600)

    def run(self, script: str, timeout: float = 150):
        prelude = datastore_sandbox.PRELUDE
        try:
            datastore_sandbox.PRELUDE = prelude.replace(
                OVERLAID, "for dir in /etc /usr/sbin /usr/local /var/lib /var/log /var/backups /var/cache; do"
            )
            extra = BACKUP_PRELUDE.format(
                log_dir=conventions.PLATFORM_LOG_DIR, moto=moto_server(), port=S3_PORT
            )
            return super().run(extra + script, timeout=timeout)
        finally:
            datastore_sandbox.PRELUDE = prelude
