import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # the repo root

from localcloud import config as lc_config  # noqa: E402


def missing_host_tools() -> list[str]:
    tools = ["debootstrap", "systemd-nspawn", "ip", "nft", "losetup", "mkfs.ext4", "nsenter"]
    return [t for t in tools if not shutil.which(t)]


@pytest.fixture(scope="session")
def needs_root():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    missing = missing_host_tools()
    if missing:
        pytest.fail(f"host tools missing: {missing}; apt-get install {' '.join(lc_config.HOST_PACKAGES)}")


@pytest.fixture
def sshd(tmp_path):
    """(start, hop) for sshd processes on loopback (sshd_on_loopback.py), stopped after the test."""
    from sshd_on_loopback import loopback_sshd
    with loopback_sshd(tmp_path) as started:
        yield started
