"""The start check (cloudinit/app_server/start-check.js) run by node on this host, as the
deploy runs it on an app server (`node - SPEC`, the script on stdin, in the release's
directory), against small apps that
start well, die as they start, answer their health path 503, never say ready, or outlive
SIGINT (marker `sandbox`: node)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from deploy import commands

pytestmark = pytest.mark.sandbox   # node

LISTENS = """
const http = require('node:http');
const server = http.createServer((req, res) => { res.statusCode = STATUS; res.end(req.url); });
server.listen(Number(process.env.PORT), '127.0.0.1', () => { if (SAYS_READY) process.send('ready'); });
process.on('SIGINT', () => { console.log('SIGINT'); if (STOPS) server.close(() => process.exit(0)); });
console.log(`listening on ${process.env.PORT}`);
"""


def app(directory: Path, name: str, status: int = 200, says_ready: bool = True, stops: bool = True) -> str:
    source = LISTENS.replace("STATUS", str(status)).replace("SAYS_READY", str(says_ready).lower())
    (directory / name).write_text(source.replace("STOPS", str(stops).lower()))
    return name


def start_check(directory: Path, *processes: dict, ready_ms: int = 3000, stop_ms: int = 1000,
                health_ms: int = 2000) -> subprocess.CompletedProcess:
    spec = {"processes": list(processes), "ready_ms": ready_ms, "stop_ms": stop_ms, "health_ms": health_ms}
    return subprocess.run(["node", "-", json.dumps(spec)], input=commands.START_CHECK_SCRIPT.read_text(),
                          cwd=directory, capture_output=True, text=True, timeout=60)


def no_process_left(directory: Path) -> bool:
    return subprocess.run(["pgrep", "-f", str(directory)], capture_output=True).returncode == 1


def test_processes_that_start_say_ready_and_answer_health_pass_and_are_stopped(tmp_path):
    web, api = app(tmp_path, "web.js"), app(tmp_path, "api.js")
    result = start_check(tmp_path, {"name": "web", "script": web, "health": None},
                         {"name": "api", "script": api, "health": "/healthz"})
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("web: started (ready in ") and ", stopped in " in lines[0]
    assert lines[1].startswith("api: started (ready in ") and ", /healthz 200, stopped in " in lines[1], lines


def test_a_process_that_dies_as_it_starts_fails_with_what_it_wrote(tmp_path):
    (tmp_path / "api.js").write_text("console.error('bad release: exiting');\nprocess.exit(3);\n")
    result = start_check(tmp_path, {"name": "web", "script": app(tmp_path, "web.js"), "health": None},
                         {"name": "api", "script": "api.js", "health": "/healthz"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.splitlines()[1:] == [
        "api: FAILED: it exited (code 3) before it said ready", "  api: bad release: exiting"], result.stdout
    assert result.stdout.startswith("web: started"), "the others are still checked and stopped"


def test_a_health_path_that_does_not_answer_200_fails_after_the_health_wait(tmp_path):
    result = start_check(tmp_path, {"name": "api", "script": app(tmp_path, "api.js", status=503), "health": "/ready"})
    assert result.returncode == 1, result.stdout + result.stderr
    first, *said = result.stdout.splitlines()
    assert first.startswith("api: FAILED: /ready did not answer 200 within 2s (last: 503) (ready in "), first
    assert "stopped in" in first and said[0].startswith("  api: listening on "), result.stdout


def test_no_ready_is_waited_out_as_pm2_would_and_a_process_outliving_sigint_is_killed(tmp_path):
    quiet = app(tmp_path, "quiet.js", says_ready=False, stops=False)
    # Long enough for node to start and take SIGINT on a busy machine (it dies of it before).
    result = start_check(tmp_path, {"name": "web", "script": quiet, "health": None}, ready_ms=4000, stop_ms=500)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ("web: started (no 'ready' within 4s (pm2 waits as long for each worker), "
                                     "still running 0.5s after SIGINT: killed, as pm2 would)"), result.stdout
    assert no_process_left(tmp_path)


def test_a_script_that_is_missing_fails_naming_node_s_error(tmp_path):
    result = start_check(tmp_path, {"name": "api", "script": "api/server.js", "health": "/healthz"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith("api: FAILED: it exited (code 1) before it said ready\n")
    assert "Cannot find module" in result.stdout, result.stdout
