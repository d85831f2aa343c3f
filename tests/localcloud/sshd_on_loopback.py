"""sshd processes on loopback for the tests of pulumi-command's mirrored SSH client
(test_engine.py, test_host_keys.py); the `sshd` fixture (conftest.py) starts them."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from localcloud import pulumi_ssh, shell

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def loopback_sshd(tmp_path: Path):
    """(start, hop): start(name, lets_in) starts an sshd on loopback that lets this user in
    with a key, or refuses it; hop(port) is pulumi-command's connection to one. Every sshd
    started is stopped at the end."""
    if not os.path.exists(SSHD):
        pytest.fail("sshd is missing: apt-get install openssh-server (in .ci/apt-packages.txt)")
    os.makedirs("/run/sshd", exist_ok=True)
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    host_key = tmp_path / "host"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    started = []

    def start(name: str, lets_in: bool, host_key: Path = host_key) -> tuple[int, Path]:
        """`host_key`: the private host key file (else one shared by every sshd here)."""
        port, log = free_port(), tmp_path / f"{name}.log"
        keys = tmp_path / f"{name}.keys"
        keys.write_text(key.with_suffix(".pub").read_text() if lets_in else "")
        os.chmod(keys, 0o600)
        config = tmp_path / f"{name}.conf"
        config.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile none\n"
                          f"AuthorizedKeysFile {keys}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
                          "PermitRootLogin prohibit-password\nAllowTcpForwarding yes\nLogLevel VERBOSE\n")
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=open(log, "w"))
        started.append(proc)

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0
        shell.wait_until(listening, 10, lambda: f"sshd {name} did not start: {log.read_text()}", every=0.05)
        # The probe's connection is logged by the child sshd forks for it, which may take a
        # while on a busy machine: counted from here on, it is there.
        shell.wait_until(lambda: connections(log), 30, lambda: f"sshd {name} logged no connection: {log.read_text()}",
                         every=0.05)
        return port, log

    def hop(port: int, limit: int = 10) -> pulumi_ssh.Hop:
        import getpass
        return pulumi_ssh.Hop("127.0.0.1", getpass.getuser(), key.read_text(), port, limit, 5)

    try:
        yield start, hop
    finally:
        for proc in started:
            proc.terminate()
            proc.wait(10)


def connections(log) -> int:
    """TCP connections sshd accepted (the fixture's readiness probe is one). The child
    sshd logs each before it sends its banner: a client that got one is counted."""
    return log.read_text().count("Connection from 127.0.0.1")
