"""What the role tests import by name (a module named conftest is ambiguous across test
folders: pytest keeps one per folder, and `from conftest import` takes whichever came last).

A check whose tool is missing fails (it never skips): a skipped check would read as a pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from model import conventions

ROLES = conventions.ROLES


def require_tool(name: str, package: str) -> str:
    """The tool's path; fails the test (never skips) when it is not installed."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if not path:
        pytest.fail(f"{name} is not installed: apt-get install {package}")
    return path


def sandboxed(tmp_path: Path, script: str, *, network: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs a bash script with private copy-on-write /etc, /var/lib, /var/log, /usr/local,
    an empty /run/lock (the droplet lock's home) and its own processes; `network`: a
    private network too."""
    require_tool("unshare", "util-linux")
    if os.geteuid() != 0:
        pytest.fail("the sandbox needs root (mount namespaces and overlays)")
    mounts = []
    for i, lower in enumerate(("/etc", "/var/lib", "/var/log", "/usr/local")):
        upper, work = tmp_path / f"ov{i}/upper", tmp_path / f"ov{i}/work"
        upper.mkdir(parents=True)
        work.mkdir(parents=True)
        mounts.append(f"mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={work} {lower}")
    mounts.append("mkdir -p /run/lock && mount -t tmpfs tmpfs /run/lock")
    setup = " && ".join(mounts)
    # A private PID namespace too: whatever the script leaves running dies with it.
    argv = ["unshare", "-m", "--propagation", "private", "--pid", "--fork", "--kill-child", "--mount-proc",
            *(["-n"] if network else []),
            "bash", "-c", f"set -e; {setup}; set +e\n{script}"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def sshd_effective(tmp_path: Path, drop_in: str, user: str = "ops") -> subprocess.CompletedProcess:
    """`sshd -T` of a full sshd_config that Includes the drop-in, with a throwaway host key."""
    sshd = require_tool("sshd", "openssh-server")
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "drop-in.conf").write_text(drop_in)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", tmp_path / "host_key"], check=True)
    (tmp_path / "sshd_config").write_text(
        f"Include {tmp_path}/drop-in.conf\nHostKey {tmp_path}/host_key\nUsePAM yes\n")
    # sshd -t insists on its privilege separation directory.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    subprocess.run([sshd, "-t", "-f", tmp_path / "sshd_config"], check=False)
    return subprocess.run([sshd, "-T", "-f", tmp_path / "sshd_config", "-C", f"user={user},host=h,addr=192.0.2.9"],
                          capture_output=True, text=True)
