"""The one place commands are run and the processes they start are watched. Everything
else builds argument lists."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

Command = list[str]

VERBOSE = bool(os.environ.get("LOCALCLOUD_VERBOSE"))


class CommandError(RuntimeError):
    def __init__(self, cmd: Command, returncode: int, output: str):
        super().__init__(f"{' '.join(cmd)} exited {returncode}: {output.strip()[-2000:]}")
        self.cmd, self.returncode, self.output = cmd, returncode, output


def run(cmd: Command, *, check: bool = True, input: str | None = None,
        timeout: float | None = 600) -> subprocess.CompletedProcess:
    """Run cmd, capturing stdout and stderr together as text."""
    if VERBOSE:
        print("+ " + " ".join(cmd), file=sys.stderr)
    proc = subprocess.run(cmd, input=input, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    proc.stderr = ""   # it is in stdout, in order; a string, so callers may join the two
    if check and proc.returncode != 0:
        raise CommandError(cmd, proc.returncode, proc.stdout)
    return proc


def succeeds(cmd: Command, timeout: float | None = 60) -> bool:
    return run(cmd, check=False, timeout=timeout).returncode == 0


class Step:
    """Print a progress line with its duration: image builds and boots take a while."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self):
        self.start = time.monotonic()
        print(f"[localcloud] {self.what} ...", flush=True)
        return self

    def __exit__(self, *exc):
        took = time.monotonic() - self.start
        print(f"[localcloud] {self.what}: {'failed' if exc[0] else 'done'} in {took:.1f}s", flush=True)
        return False


def alive(pid: int | None) -> bool:
    """The process has not ended. A zombie has: it waits only for its parent to collect
    its status, and that parent is often this very process (it started the launchers and
    daemons), which would otherwise wait for itself until its timeout."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, TypeError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"   # the state follows the command name


def wait_until(check, timeout: float, what: str | Callable[[], str], every: float = 0.2):
    """check()'s first true result, asked every `every` seconds for `timeout` seconds (and
    once at the end); else TimeoutError naming `what` (a callable: asked then, to tell what
    it found). To give up sooner (the process awaited has died), check() raises."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what() if callable(what) else what}: not ready after {timeout:.0f}s")
        time.sleep(every)
    return result
