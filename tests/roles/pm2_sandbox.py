"""pm2 for real in the role tests (tests/roles/test_app_server.py,
test_app_contract_pm2.py): pm2 at the pinned major and the example app's dependencies,
installed once per session with npm as provisioning does (fixtures in conftest.py), and
the apps' unit's reload and a script in a private mount namespace."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import cloudinit
from cloudinit import app_server
from model import conventions as c

from render_helpers_lb_app import in_namespace, require, run, settings

REPO = Path(__file__).resolve().parents[2]


def app_files(engines=None) -> dict[str, str]:
    return cloudinit.rendered_files(c.APP_SERVER, settings(engines))


def install_pm2(prefix: Path) -> Path:
    """pm2 at the pinned major, installed with npm like provisioning does (but in `prefix`)."""
    result = run([require("npm"), "install", "--global", "--prefix", str(prefix), "--no-fund", "--no-audit",
                  f"pm2@{c.PM2_MAJOR}"])
    assert result.returncode == 0, result.stderr
    return prefix / "bin"


def install_example_app_modules(work: Path) -> Path:
    """The example app's dependencies from its lockfile, as the droplet installs them."""
    for name in ("package.json", "package-lock.json"):
        shutil.copy(REPO / "example-app" / name, work / name)
    result = run([require("npm"), "ci", "--omit=dev", "--no-fund", "--no-audit", "--prefix", str(work)])
    assert result.returncode == 0, result.stderr
    return work / "node_modules"


def run_pm2_script(root: Path, script: str, pm2_home: Path, timeout: float):
    """`script` in the namespace over `root`; its result and its "KEY value" lines. pm2's
    daemon is stopped whatever happens: it must not hold the apps' ports after a failure."""
    try:
        result = subprocess.run(in_namespace(root, ["bash", "-c", script]), capture_output=True, text=True,
                                timeout=timeout)
    finally:
        pid_file = pm2_home / "pm2.pid"
        if pid_file.exists():
            subprocess.run(["kill", pid_file.read_text().strip()], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result, {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in result.stdout.splitlines() if " " in line}


def apps_reload(tmp_path: Path) -> str:
    """The apps' unit's reload as a command: its ExecReload script run as the app user, with
    pm2 from PATH (the root step after it, the health path, runs on the local stack)."""
    unit = app_files()[app_server.APPS_UNIT_FILE]
    reloads = [line.removeprefix("ExecReload=") for line in unit.splitlines() if line.startswith("ExecReload=")]
    assert reloads == [app_server.APPS_RELOAD_COMMAND, f"+{app_server.APP_HEALTH_COMMAND}"]
    reload = reloads[0]
    script = tmp_path / "platform-apps-reload"
    script.write_text(app_files()[reload].replace(f"{c.PM2_BIN_DIR}/pm2", "pm2"))
    return f"bash {script}"


def apps_start(pm2_home: Path) -> str:
    """The apps' unit's start as a command: its Environment= and ExecStart, pm2 from PATH,
    PM2_HOME in the test's directory."""
    unit = app_files()[app_server.APPS_UNIT_FILE]
    settings_ = [line.removeprefix("Environment=") for line in unit.splitlines() if line.startswith("Environment=")]
    (start,) = [line.removeprefix("ExecStart=") for line in unit.splitlines() if line.startswith("ExecStart=")]
    return " ".join(["env", *settings_, f"PM2_HOME={pm2_home}", start.replace(f"{c.PM2_BIN_DIR}/", "")])
