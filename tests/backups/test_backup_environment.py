"""What a backup starts as another user (the dumps as `backup` or `postgres`, a private
Redis as `redis`) gets none of restic's settings: /proc/PID/environ is that user's to read.

The rendered backup library runs for real (bash, runuser) with a secrets file like the
`backup` push's, and each helper's child prints its environment."""

from __future__ import annotations

import shlex
import subprocess

import cloudinit
import mockcloud
from model import conventions

SECRET_VALUES = {"RESTIC_REPOSITORY": "s3:https://spaces.invalid/bucket/restic/datastore",
                 "RESTIC_PASSWORD": "repository-password-1", "AWS_ACCESS_KEY_ID": "key-id-2",
                 "AWS_SECRET_ACCESS_KEY": "key-secret-3"}


def test_processes_started_as_other_users_get_no_restic_secret(tmp_path):
    settings = mockcloud.stack_settings("staging")
    library = tmp_path / "backup.sh"
    library.write_text(cloudinit.rendered_files(conventions.DATASTORE, settings)[conventions.BACKUP_LIBRARY])
    secrets = tmp_path / "backup.env"
    secrets.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in SECRET_VALUES.items()) + "BACKUP_HOST=ds\n")
    script = f"""
set -e
. {library}
SECRETS_FILE={secrets}
load_backup_settings
echo "== root"; env
echo "== backup user"; as_backup_user env
echo "== nobody"; as_user nobody env
"""
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    root, others = result.stdout.split("== backup user", 1)
    assert all(value in root for value in SECRET_VALUES.values())     # restic, run as root, has them
    for value in SECRET_VALUES.values():
        assert value not in others, f"{value} reached a process of another user"
    assert "== nobody" in others
