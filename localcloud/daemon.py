"""The local cloud's host services (proxy, ACME server, Spaces stand-in) as background
processes: started once, found again by their pid file, stopped by teardown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import shell


@dataclass(frozen=True)
class Daemon:
    pid_file: Path
    log: Path
    # In the command line (NUL-separated arguments) or the environment of our process only:
    # a recycled pid is not mistaken for it, and teardown finds it without its pid file.
    marker: bytes

    def is_ours(self, pid: int | str) -> bool:
        # The environment too: a program may write its title over its command line (verdaccio).
        try:
            return any(self.marker in Path(f"/proc/{pid}/{f}").read_bytes() for f in ("cmdline", "environ"))
        except OSError:
            return False

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        return pid if self.is_ours(pid) else None

    def start(self, argv: list[str], env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, env={**os.environ, **(env or {})}, cwd=cwd)
        self.pid_file.write_text(str(proc.pid))
        return proc

    def wait_listening(self, proc: subprocess.Popen, address: str, port: int, what: str,
                       timeout: float = 30, every: float = 0.1) -> None:
        """Until the process just started accepts connections on address:port; it exiting
        first, or the time running out, is an error naming its log."""
        def listening() -> bool:
            try:
                socket.create_connection((address, port), timeout=1).close()
                return True
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"{what} exited; see {self.log}") from None
                return False
        shell.wait_until(listening, timeout, f"{what}: not listening on {address}:{port}; see {self.log}", every)

    def wait_answering(self, probe: list[str], what: str, timeout: float = 30) -> None:
        """Until `probe` (a command asking the service) succeeds; this daemon exiting first,
        or the time running out, is an error naming its log."""
        def answering() -> bool:
            if shell.succeeds(probe, timeout=10):
                return True
            if not self.running_pid():
                raise RuntimeError(f"{what} exited; see {self.log}")
            return False
        shell.wait_until(answering, timeout, f"{what}: no answer; see {self.log}", every=0.5)

    def strays(self) -> list[int]:
        """Our processes whose pid file is gone (a deleted state directory, a killed run)."""
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and self.is_ours(proc.name):
                found.append(int(proc.name))
        return [pid for pid in found if pid != os.getpid()]

    def stop(self, timeout: float = 5) -> None:
        for pid in {self.running_pid(), *self.strays()} - {None}:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + timeout
            while shell.alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
