"""remote.sh's `status` and `logs`, the server half of the operators' verbs, run by bash:
logs from a temporary log directory as pm2 writes them, status with systemctl, ps and curl
stood in for by scripts that answer as an app server's do."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from deploy import operate
from deploy.records import Server

from deploy_helpers import script_for

WEB_OUT = "2026-12-02T06:00:00: web old\n2026-12-02T07:00:00: web new\n  and its second line\n"
API_ERR = "2026-12-02T06:59:00: api failed\n"
API_OUT = "2026-12-02T07:01:00: api listening\n"


@pytest.fixture
def logs_dir(tmp_path):
    logs = tmp_path / "pm2"
    logs.mkdir()
    (logs / "web.out.log").write_text(WEB_OUT)
    (logs / "web.error.log").write_text("")
    (logs / "api.error.log").write_text(API_ERR)
    (logs / "api.out.log").write_text(API_OUT)
    (tmp_path / "srv" / "releases").mkdir(parents=True)
    return logs


def run_logs(logs: Path, *args: str) -> subprocess.CompletedProcess:
    script = script_for(logs.parent / "srv", LOG_DIR=str(logs))
    return subprocess.run(["bash", "-s", "--", "logs", *args], input=script, capture_output=True, text=True,
                          timeout=60)


def test_logs_tags_each_line_with_its_process_and_stream(logs_dir):
    result = run_logs(logs_dir, "50", "-", "once")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted([
        "api.err 2026-12-02T06:59:00: api failed", "api 2026-12-02T07:01:00: api listening",
        "web 2026-12-02T06:00:00: web old", "web 2026-12-02T07:00:00: web new", "web   and its second line"])


def test_logs_since_keeps_later_lines_and_their_continuations(logs_dir):
    result = run_logs(logs_dir, "50", operate.since_words("2026-12-02T06:30"), "once")
    assert result.returncode == 0, result.stderr
    assert "web old" not in result.stdout
    assert "web 2026-12-02T07:00:00: web new\nweb   and its second line\n" in result.stdout
    assert "api failed" in result.stdout and "api listening" in result.stdout


def test_logs_of_one_process_and_the_last_lines_only(logs_dir):
    result = run_logs(logs_dir, "2", "-", "once", "api")
    assert result.stdout.splitlines() == ["api 2026-12-02T07:01:00: api listening",
                                          "api.err 2026-12-02T06:59:00: api failed"]
    result = run_logs(logs_dir, "1", "-", "once", "web")
    assert result.stdout.splitlines() == ["web   and its second line"]


@pytest.mark.parametrize("args, code, message", [
    (("50", "-", "once", "worker"), 1, "no logs in {logs} on"),
    (("ten", "-", "once"), 2, "bad line count 'ten'"),
    (("50", "-", "once", "../etc"), 2, "bad process name '../etc'"),
    (("50", "not a date", "once"), 2, "--since: date cannot read 'not a date'"),
])
def test_logs_refuses_what_it_cannot_do_and_says_why(logs_dir, args, code, message):
    result = run_logs(logs_dir, *args)
    assert result.returncode == code
    assert message.format(logs=logs_dir) in result.stderr


def test_logs_says_when_the_deploy_user_cannot_read_the_log_directory(logs_dir):
    result = run_logs(logs_dir.parent / "missing", "50", "-", "once")
    assert result.returncode == 1 and "cannot read" in result.stderr


def test_follow_streams_new_lines_and_ends_with_its_callers_stdin(logs_dir):
    script = script_for(logs_dir.parent / "srv", LOG_DIR=str(logs_dir))
    proc = subprocess.Popen(["bash", "-s", "--", "logs", "1", "-", "follow", "api"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proc.stdin.write(script)
        proc.stdin.flush()
        first = sorted(proc.stdout.readline().strip() for _ in range(2))
        assert first == ["api 2026-12-02T07:01:00: api listening", "api.err 2026-12-02T06:59:00: api failed"]
        with open(logs_dir / "api.out.log", "a") as log:
            log.write("2026-12-02T07:02:00: a new request\n")
        assert proc.stdout.readline() == "api 2026-12-02T07:02:00: a new request\n"
        proc.stdin.close()   # what the operator's ssh closing does
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    tails = subprocess.run(["pgrep", "-f", "--", f"tail .*{logs_dir}"], capture_output=True, text=True)
    assert tails.stdout == "", "no tail is left running"


STUBS = {
    # One call for the three properties, printed in systemd's order, not the one asked.
    "systemctl": """[ "$1 $3" = "show --property=ActiveState,MainPID,FragmentPath" ] || exit 1
echo MainPID=100
echo "ActiveState=${STUB_STATE:-active}"
echo "FragmentPath=${STUB_FRAGMENT:-}"
""",
    "ps": """cat <<'EOF'
  100  7200 node /usr/local/bin/pm2-runtime start /srv/app/ecosystem.config.js
  101  7190 PM2 v6.0.8: God Daemon (/srv/app/.pm2)
  120   300 node /srv/app/releases/current/web/server.js
  121   290 node /srv/app/releases/current/web/server.js
  130    40 node /srv/app/releases/current/api/server.js
EOF""",
    "curl": """body=${STUB_BODY:-'{"host":"a","engines":{"redis":{"status":"ok"}}}'}
printf '%s\\n%s' "$body" "${STUB_CODE:-200}" """,
}


def run_status(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    for name, body in STUBS.items():
        (stubs / name).write_text("#!/bin/bash\n" + body + "\n")
        (stubs / name).chmod(0o755)
    releases = tmp_path / "srv" / "releases"
    (releases / "R2").mkdir(parents=True, exist_ok=True)
    if not (releases / "current").is_symlink():
        (releases / "current").symlink_to(releases / "R2")
    script = script_for(tmp_path / "srv")
    return subprocess.run(["bash", "-s", "--", "status"], input=script, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", **env})


def test_status_reports_release_unit_processes_and_health_as_the_table_reads_them(tmp_path):
    unit_file = tmp_path / "platform-apps.service"
    unit_file.write_text("[Service]\n")
    changed = time.time() - 600
    os.utime(unit_file, (changed, changed))
    result = run_status(tmp_path, STUB_FRAGMENT=str(unit_file))
    age_now = time.time() - changed   # however long the run took
    assert result.returncode == 0, result.stderr
    status = operate.parse_status(Server("app-1", "10.0.0.3"), result.stdout)
    assert (status.release, status.unit_state, status.main_pid, status.unit_seconds) == ("R2", "active", 100, 7200)
    assert 600 <= status.unit_file_seconds <= age_now + 1 and status.unit_changed_since_start
    assert status.workers == {"web": [300, 290], "api": [40]}
    assert status.health_code == "200" and status.engines() == "redis ok" and status.healthy


def test_status_of_a_failing_server_is_unhealthy(tmp_path):
    result = run_status(tmp_path, STUB_CODE="503", STUB_BODY='{"engines":{"redis":{"status":"error"}}}')
    status = operate.parse_status(Server("app-1", "10.0.0.3"), result.stdout)
    assert status.health_code == "503" and status.engines() == "redis error" and not status.healthy
    result = run_status(tmp_path, STUB_STATE="failed")
    assert not operate.parse_status(Server("app-1", "10.0.0.3"), result.stdout).healthy
