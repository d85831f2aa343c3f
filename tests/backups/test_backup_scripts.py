"""The backup scripts and units as rendered, checked by the programs that read them:
shellcheck, systemd-analyze; MongoDB's commands as text (no binaries here)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

import cloudinit
import mockcloud
from cloudinit import common
from model import conventions

from datastore_sandbox import tool

DS = conventions.DATASTORE


@pytest.mark.parametrize("engines", [list(conventions.ENGINES), [], ["mongodb"]], ids=["all", "none", "mongodb"])
def test_backup_scripts_pass_shellcheck(tmp_path, engines):
    shellcheck = tool("shellcheck", "shellcheck")
    settings = mockcloud.stack_settings("staging", engines=engines)
    files = cloudinit.rendered_files(DS, settings)
    for path in (conventions.BACKUP_LIBRARY, conventions.BACKUP_COMMAND, conventions.RESTORE_COMMAND):
        (tmp_path / path.rsplit("/", 1)[1]).write_text(files[path])
    # shellcheck reads what a script sources but reports only the script: each file on its own.
    result = subprocess.run(
        [shellcheck, "--shell=bash", "--severity=style", "--external-sources",
         "backup.sh", "platform-backup", "platform-restore"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The library is found next to the scripts by that name: the check covered it.
    assert "# shellcheck source=backup.sh" in files[conventions.BACKUP_COMMAND]
    assert conventions.BACKUP_LIBRARY.endswith("/backup.sh")


def test_mongodb_is_dumped_and_restored_without_its_password_in_argv():
    """No MongoDB here: what the scripts would run is checked as text."""
    settings = mockcloud.stack_settings("staging", engines=["mongodb"])
    files = cloudinit.rendered_files(DS, settings)
    backup, restore = files[conventions.BACKUP_COMMAND], files[conventions.RESTORE_COMMAND]
    library = files[conventions.BACKUP_LIBRARY]
    assert "mongodump --quiet --config=" in backup and "--archive=" in backup and "--gzip" in backup
    assert "mongorestore --quiet --config=" in restore and "--drop" in restore
    assert "printf 'password: %s\\n' \"$MONGODB_PASSWORD\"" in library
    assert "--password" not in backup + restore + library


def test_the_timer_runs_at_the_backup_hour_and_catches_up():
    analyze = tool("systemd-analyze", "systemd")
    for hour in (0, 3, 23):
        settings = mockcloud.stack_settings("staging", backupHourUtc=hour)
        timer = common.backup_schedule_files(settings)[f"{conventions.BACKUP_UNIT}.timer"]
        (calendar,) = re.findall(r"^OnCalendar=(.*)$", timer, re.M)
        assert calendar == f"*-*-* {hour:02d}:00:00 UTC"
        normalized = subprocess.run([analyze, "calendar", calendar], capture_output=True, text=True)
        assert normalized.returncode == 0, normalized.stderr
        assert f"Normalized form: *-*-* {hour:02d}:00:00 UTC" in normalized.stdout
        assert "Persistent=true" in timer


def test_systemd_reads_the_service_and_the_timer(tmp_path):
    analyze = tool("systemd-analyze", "systemd")
    settings = mockcloud.stack_settings("staging")
    service = cloudinit.rendered_files(DS, settings)[common.BACKUP_SERVICE]
    assert f"ExecStart={conventions.BACKUP_COMMAND} run\n" in service
    # systemd checks that ExecStart exists; the script is not installed on this machine.
    (tmp_path / f"{conventions.BACKUP_UNIT}.service").write_text(
        service.replace(conventions.BACKUP_COMMAND, shutil.which("true")))
    timer = common.backup_schedule_files(settings)[f"{conventions.BACKUP_UNIT}.timer"]
    (tmp_path / f"{conventions.BACKUP_UNIT}.timer").write_text(timer)
    units = [f"./{conventions.BACKUP_UNIT}.timer", f"./{conventions.BACKUP_UNIT}.service"]
    result = subprocess.run([analyze, "verify", *units], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    # The check can fail: a broken schedule is refused.
    (tmp_path / f"{conventions.BACKUP_UNIT}.timer").write_text(timer.replace("OnCalendar=*-*-* ", "OnCalendar=bogus "))
    broken = subprocess.run([analyze, "verify", *units], cwd=tmp_path, capture_output=True, text=True)
    assert broken.returncode != 0
