"""What the role tests import by name (a module named conftest is ambiguous across test
folders: pytest keeps one per folder, and `from conftest import` takes whichever came last).

A check whose tool is missing fails (it never skips): a skipped check would read as a pass.
"""

from __future__ import annotations

import shutil

import pytest

from components import conventions

ROLES = conventions.ROLES


def require_tool(name: str, package: str) -> str:
    """The tool's path; fails the test (never skips) when it is not installed."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if not path:
        pytest.fail(f"{name} is not installed: apt-get install {package}")
    return path
