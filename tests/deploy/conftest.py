"""Deploy tests: fast ones need bash, rsync, curl, openssl, git and npm on this machine;
those marked `localcloud` need the local stack up (`python -m localcloud up`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    config.addinivalue_line("markers", "localcloud: runs against the stack booted on the local cloud (root)")

