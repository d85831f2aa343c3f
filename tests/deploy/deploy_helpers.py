"""What the deploy tests share (a module of its own: `conftest` names clash across folders)."""

from __future__ import annotations

import shutil

import pytest


def require_tool(name: str, package: str) -> str:
    """A missing tool fails the test (a skip would read as a pass)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: apt-get install {package}")
    return path
