"""Backup alerts, for real: the rendered platform-backup runs in the datastore sandbox with
restic and moto's S3 server, and posts its alerts to a webhook receiver on loopback.

The receiver speaks HTTPS with a certificate from the sandbox's throwaway CA, which the
sandbox adds to the system's trusted bundle (inside its overlay of /etc): the script
verifies the webhook's certificate and refuses plain http, so the tests use no override
the droplets would not have. systemd is not here: the tests run the commands the alert
units run (`check after-failure` for OnFailure=, `check` for the hourly timer), and
systemd-analyze checks the units that call them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cloudinit
import mockcloud
from cloudinit import common
from model import conventions

from backup_sandbox import S3_SECRET, BackupSandbox, repository
from datastore_sandbox import password, tool

DS = conventions.DATASTORE
BACKUP = conventions.BACKUP_COMMAND
STATE = conventions.BACKUP_STATE_DIR
RECEIVER = Path(__file__).with_name("webhook_receiver.py")
WEBHOOK_PORT = 9443
# The path is what makes an incoming webhook's URL a secret.
WEBHOOK_SECRET_PART = "T000/B000/XXXXSECRETPATH"
WEBHOOK = f"https://localhost:{WEBHOOK_PORT}/hooks/{WEBHOOK_SECRET_PART}"
# The last run's success marker, 27 hours old: past BACKUP_MAX_AGE_HOURS.
OLD_SUCCESS = f'echo "$(( $(date +%s) - 27 * 3600 )) 2000-01-01T00:00:00Z 0123abcd" > {STATE}/last-success'

# One provisioning run of the backup steps, as role_steps runs them.
PROVISION = """
( set -Eeu; trap 'echo "FAILED: $BASH_COMMAND" >&2' ERR; CHANGES=0; backup_steps; echo "CHANGES $CHANGES" )
"""


def receiver_prelude(tmp: Path) -> str:
    """Shell functions: the receiver, trusting its CA, counting what it got, curl's argv kept."""
    curl = tool("curl", "curl")
    (tmp / "curl-wrapper").write_text(f'#!/bin/bash\nprintf "%s\\n" "$*" >> "$T/curl-argv"\nexec {curl} "$@"\n')
    return f"""
install -m 0755 "$T/curl-wrapper" /usr/local/bin/curl
trust_receiver() {{ cat {conventions.CA_CERT_PATH} >> /etc/ssl/certs/ca-certificates.crt; }}
start_receiver() {{
    "{sys.executable}" "{RECEIVER}" {WEBHOOK_PORT} {conventions.SERVER_CERT_PATH} {conventions.SERVER_KEY_PATH} \\
        "$T/received.jsonl" "${{1:-200}}" >>"$T/receiver.log" 2>&1 &
    RECEIVER_PID=$!
    wait_for_port 127.0.0.1 {WEBHOOK_PORT}
}}
stop_receiver() {{ kill "$RECEIVER_PID"; wait "$RECEIVER_PID" 2>/dev/null; }}
count() {{ echo "COUNT $1 $(cat "$T/received.jsonl" 2>/dev/null | wc -l)"; }}
"""


def counts(run) -> dict[str, int]:
    return {label: int(n) for label, n in re.findall(r"^COUNT (\S+) (\d+)$", run.completed.stdout, re.M)}


def received(tmp: Path) -> list[dict]:
    path = tmp / "received.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def texts(tmp: Path) -> list[str]:
    messages = received(tmp)
    for m in messages:
        assert m["path"] == f"/hooks/{WEBHOOK_SECRET_PART}" and m["content_type"] == "application/json", m
        assert set(json.loads(m["body"])) == {"text"}, m  # what Slack and Mattermost take
    return [json.loads(m["body"])["text"] for m in messages]


def assert_no_secret_leaked(tmp: Path, run, *secrets: str) -> None:
    """Neither the messages, the log, the output nor curl's argv (ps shows it) hold a secret."""
    log = tmp / "ov" / "_var_log.up" / conventions.BACKUP_LOG.removeprefix("/var/log/")
    argv = tmp / "curl-argv"
    places = {"messages": "\n".join(m["body"] for m in received(tmp)), "output": run.output,
              "log": log.read_text() if log.exists() else "", "argv": argv.read_text() if argv.exists() else ""}
    for secret in (WEBHOOK_SECRET_PART, *secrets):
        for where, text in places.items():
            assert secret not in text, f"{secret!r} in {where}"


def sandbox(tmp_path, webhook=WEBHOOK, port=None):
    tool("restic", "restic")
    settings = mockcloud.stack_settings("staging", engines=[])
    restic_password = password()
    box = BackupSandbox(tmp_path, settings, {}, restic_password=restic_password,
                        repository_url=repository() if port is None else repository(port=port), webhook_url=webhook)
    return box, restic_password


def test_a_failed_run_alerts_once_with_where_it_failed(tmp_path):
    # Nothing listens on port 9: the repository is unreachable, the run fails at "send".
    box, restic_password = sandbox(tmp_path, port=9)
    run = box.run(receiver_prelude(tmp_path) + PROVISION + f"""
trust_receiver
start_receiver
check first-check {BACKUP} check
count first-check
check test-alert {BACKUP} test-alert
count test-alert
check backup {BACKUP} run
# What {conventions.BACKUP_ALERT_UNIT}.service runs, started by the backup unit's OnFailure=.
MONITOR_SERVICE_RESULT=exit-code check alert {BACKUP} check after-failure
count alert
# The hourly check in the same state: nothing more.
check hourly {BACKUP} check
count hourly
check status {BACKUP} status
echo "HOST $(uname -n)"
""", timeout=200)
    out = run.output
    assert run.status("first-check") == 0, out
    assert run.status("test-alert") == 0, out
    assert run.status("backup") == 1, out
    assert run.status("alert") == 0, out
    assert run.status("hourly") == 0, out
    assert counts(run) == {"first-check": 0, "test-alert": 1, "alert": 2, "hourly": 2}, out
    test, text = texts(tmp_path)
    (host,) = re.findall(r"^HOST (.*)$", run.completed.stdout, re.M)
    assert test == f"[staging] test alert from {host}: backup alerts arrive here."
    assert text.startswith("[staging] datastore backup FAILED: the run of ")
    assert re.search(r"failed at: send failed \(exit \d+\), on " + re.escape(host) + r"\. ", text), text
    assert text.endswith(f"Details: sudo {BACKUP} status")
    assert run.status("status") == 1 and "FAILING: the last run failed" in run.completed.stdout
    assert re.search(r"^alerts: to the webhook; last alert: \d{4}-\d\d-\d\dT", run.completed.stdout, re.M), out
    assert_no_secret_leaked(tmp_path, run, restic_password, S3_SECRET)


def test_a_missed_backup_alerts_once_and_the_recovery_says_so(tmp_path, monkeypatch):
    # A run gives up on the lock within seconds here, not minutes.
    monkeypatch.setattr(conventions, "BACKUP_LOCK_WAIT_SECONDS", 2)
    box, restic_password = sandbox(tmp_path)
    lock = "/run/lock/platform-backup.lock"
    run = box.run(receiver_prelude(tmp_path) + PROVISION + f"""
trust_receiver
start_s3
start_receiver
check init {BACKUP} init
{OLD_SUCCESS}
check missed {BACKUP} check
count missed
check missed-again {BACKUP} check
count missed-again
check status-missed {BACKUP} status
check backup {BACKUP} run
check recovered {BACKUP} check
count recovered
check recovered-again {BACKUP} check
count recovered-again
# A run the unit could not even start recording (the lock held for longer than a run waits
# for it: a run that hangs) fails the unit too, and alerts through OnFailure= all the same.
flock {lock} sleep 60 &
HOLDER=$!
for _ in $(seq 50); do flock -n {lock} true || break; sleep 0.1; done
check locked {BACKUP} run
MONITOR_SERVICE_RESULT=exit-code check unit-failed {BACKUP} check after-failure
count unit-failed
kill $HOLDER
""", timeout=200)
    out = run.output
    for label in ("init", "missed", "missed-again", "backup", "recovered", "recovered-again", "unit-failed"):
        assert run.status(label) == 0, f"{label}:\n{out}"
    assert counts(run) == {"missed": 1, "missed-again": 1, "recovered": 2, "recovered-again": 2,
                           "unit-failed": 3}, out
    missed, recovered, unit_failed = texts(tmp_path)
    assert missed.startswith(
        f"[staging] datastore backup MISSED: no successful backup for {conventions.BACKUP_MAX_AGE_HOURS}h or more "
        "(last success: 2000-01-01T00:00:00Z snapshot 0123abcd (27h ago)), on "), missed
    assert run.status("status-missed") == 1 and "MISSED: no successful backup" in run.completed.stdout
    assert re.match(r"\[staging\] datastore backup recovered: last success \d{4}-\S+Z snapshot [0-9a-f]{8,64} \(0h ago\), on ",
                    recovered), recovered
    assert run.status("locked") == 1, out
    assert "failed at: a step it could not record: the unit ended with exit-code (journalctl -u platform-backup)" \
        in unit_failed, unit_failed
    assert_no_secret_leaked(tmp_path, run, restic_password, S3_SECRET)


def test_without_a_webhook_the_alert_is_logged_and_status_shows_it(tmp_path):
    box, _ = sandbox(tmp_path, webhook="", port=9)
    run = box.run(receiver_prelude(tmp_path) + PROVISION + f"""
check backup {BACKUP} run
check alert {BACKUP} check after-failure
check status {BACKUP} status
check curl-not-called test ! -e "$T/curl-argv"
check logged grep -q "ALERT (logged only: no alertWebhookUrl): \\[staging\\] datastore backup FAILED: .*send failed" \
    {conventions.BACKUP_LOG}
""", timeout=200)
    out = run.output
    assert run.status("backup") == 1, out
    assert run.status("alert") == 0, out
    assert run.status("curl-not-called") == 0, out
    assert run.status("logged") == 0, out
    assert run.status("status") == 1 and "FAILING: the last run failed" in run.completed.stdout
    assert re.search(rf"^alerts: to {conventions.BACKUP_LOG} only \(no alertWebhookUrl\); last alert: \d{{4}}-",
                     run.completed.stdout, re.M), out


def test_a_failing_webhook_is_bounded_retried_and_verified(tmp_path):
    """A webhook that errors, is down or never answers costs about a minute at most and is
    tried again by the next check; one whose certificate is not trusted is refused (curl
    exit 60)."""
    box, _ = sandbox(tmp_path, port=9)
    run = box.run(receiver_prelude(tmp_path) + PROVISION + f"""
check backup {BACKUP} run
start_receiver
check untrusted {BACKUP} check after-failure
count untrusted
stop_receiver
trust_receiver
start_receiver 500
started=$(date +%s)
check erroring {BACKUP} check
echo "SECONDS erroring $(( $(date +%s) - started ))"
count erroring
stop_receiver
started=$(date +%s)
check down {BACKUP} check
echo "SECONDS down $(( $(date +%s) - started ))"
start_receiver hang
started=$(date +%s)
check hanging {BACKUP} check
echo "SECONDS hanging $(( $(date +%s) - started ))"
count hanging
stop_receiver
start_receiver
check delivered {BACKUP} check
count delivered
check quiet {BACKUP} check
count quiet
""", timeout=300)
    out = run.output
    assert run.status("backup") == 1, out
    assert run.status("untrusted") == 1, out
    assert "alert NOT delivered to the webhook (curl exit 60)" in out
    # curl's first try and its retries reached the erroring webhook and the silent one.
    found = counts(run)
    hanging = found.pop("hanging") - found["erroring"]
    assert found == {"untrusted": 0, "erroring": 1 + 3, "delivered": 5 + hanging, "quiet": 5 + hanging}, out
    assert hanging >= 2, f"the silent webhook was not tried again: {out}"
    assert run.status("erroring") == 1 and run.status("down") == 1 and run.status("hanging") == 1, out
    seconds = dict(re.findall(r"^SECONDS (\S+) (\d+)$", run.completed.stdout, re.M))
    assert all(int(seconds[case]) < 90 for case in ("erroring", "down", "hanging")), seconds
    assert run.status("delivered") == 0 and run.status("quiet") == 0, out
    assert len(set(texts(tmp_path))) == 1  # the same alert, delivered at last


# --- The units and files, checked by the programs that read them -------------------------------


def test_systemd_reads_the_alert_units_and_the_backup_unit_names_its_alert(tmp_path):
    analyze = tool("systemd-analyze", "systemd")
    settings = mockcloud.stack_settings("staging")
    files = cloudinit.rendered_files(DS, settings)
    units = {
        common.BACKUP_SERVICE: f"{conventions.BACKUP_UNIT}.service",
        common.BACKUP_ALERT_SERVICE: f"{conventions.BACKUP_ALERT_UNIT}.service",
        common.BACKUP_CHECK_SERVICE: f"{conventions.BACKUP_CHECK_UNIT}.service",
        common.BACKUP_CHECK_TIMER: f"{conventions.BACKUP_CHECK_UNIT}.timer",
    }
    assert f"OnFailure={conventions.BACKUP_ALERT_UNIT}.service\n" in files[common.BACKUP_SERVICE]
    assert f"ExecStart={BACKUP} check after-failure\n" in files[common.BACKUP_ALERT_SERVICE]
    assert f"ExecStart={BACKUP} check\n" in files[common.BACKUP_CHECK_SERVICE]
    # systemd checks that ExecStart exists; the script is not installed on this machine.
    for path, name in units.items():
        (tmp_path / name).write_text(files[path].replace(BACKUP, shutil.which("true")))

    def verify():
        return subprocess.run([analyze, "verify", *(f"./{n}" for n in units.values())],
                              cwd=tmp_path, capture_output=True, text=True)

    result = verify()
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    normalized = subprocess.run([analyze, "calendar", "hourly"], capture_output=True, text=True)
    assert "Normalized form: *-*-* *:00:00" in normalized.stdout
    # The check can fail: an alert unit that is not there is reported.
    (tmp_path / units[common.BACKUP_ALERT_SERVICE]).unlink()
    assert "platform-backup-alert.service" in verify().stderr


def test_provisioning_enables_the_hourly_check_and_changes_nothing_the_second_time(tmp_path):
    box, _ = sandbox(tmp_path)
    run = box.run(PROVISION + PROVISION + 'cat "$T/systemctl.log"', timeout=120)
    changes = re.findall(r"^CHANGES (\d+)$", run.completed.stdout, re.M)
    assert len(changes) == 2 and int(changes[0]) > 0 and changes[1] == "0", run.output
    # The sandbox's systemctl answers that timers are enabled and active: provisioning asked.
    for verb in ("is-enabled", "is-active"):
        assert f"{verb} {conventions.BACKUP_CHECK_UNIT}.timer\n" in run.completed.stdout
    for path in (common.BACKUP_ALERT_SERVICE, common.BACKUP_CHECK_SERVICE, common.BACKUP_CHECK_TIMER):
        assert (tmp_path / "ov" / "_etc.up" / path.removeprefix("/etc/")).is_file(), path
