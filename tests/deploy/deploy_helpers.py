"""What the deploy tests share (a module of its own: `conftest` names clash across folders)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deploy import commands
from deploy.records import Server, Stack

# The stack remote.sh's tests send its prelude for.
ONE_SERVER = Stack("staging", "198.51.100.2", (Server("app-1", "10.110.16.3"),))


def require_tool(name: str, package: str) -> str:
    """A missing tool fails the test (a skip would read as a pass)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: apt-get install {package}")
    return path


def script_for(layout: Path, **overrides: str) -> str:
    """The script as sent, with its facts pointed at the test's directories."""
    lines = []
    for line in commands.prelude(ONE_SERVER).splitlines():
        key = line.split("=", 1)[0]
        value = {"RELEASES_DIR": str(layout / "releases"), "CURRENT_LINK": str(layout / "releases" / "current"),
                 "LOCK_DIR": str(layout / "deploy.lock"), **overrides}.get(key)
        lines.append(f"{key}='{value}'" if value is not None else line)
    return "\n".join(lines) + "\n" + commands.REMOTE_SCRIPT.read_text()
