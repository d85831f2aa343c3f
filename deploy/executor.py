"""The one place deploy runs commands. Everything else builds argument lists.

Every command and every line of its output passes through `redact` before it is printed,
so a secret handed to the executor (a key, a token in the environment) never reaches a
terminal or a CI log. Lines are printed whole, one at a time, whichever thread says them
(the deploy, its start notification beside it, each server's stream in `follow`).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

REDACTED = "[REDACTED]"
# Environment variables whose values are secrets wherever they appear.
SECRET_ENV = ("NPM_TOKEN", "NODE_AUTH_TOKEN", "SPACES_ACCESS_KEY_ID", "SPACES_SECRET_ACCESS_KEY",
              "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "DIGITALOCEAN_TOKEN", "PULUMI_ACCESS_TOKEN")


@dataclass
class Result:
    argv: list[str]
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def last_line(self) -> str:
        """What a failure says last (ssh's and the scripts' reason), for one-line reports."""
        lines = [line for line in self.output.strip().splitlines() if line.strip()]
        return lines[-1] if lines else "(no output)"


class CommandFailed(RuntimeError):
    def __init__(self, what: str, result: Result):
        super().__init__(f"{what}: exit {result.returncode}")
        self.result = result


@dataclass
class Executor:
    secrets: list[str] = field(default_factory=lambda: [os.environ[n] for n in SECRET_ENV if os.environ.get(n)])
    verbose: bool = False
    out: object = sys.stdout
    _printing: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def redact(self, text: str) -> str:
        # Longest first, so a secret containing another is hidden whole.
        for secret in sorted((s for s in self.secrets if s), key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return text

    def say(self, line: str) -> None:
        text = self.redact(line) + "\n"
        with self._printing:   # one write per line: print() writes the line and its end apart
            self.out.write(text)
            self.out.flush()

    def run(self, argv: list[str], *, input: str | None = None, timeout: float = 900,
            secret_output: bool = False, progress: Callable[[str], None] | None = None) -> Result:
        """Run argv, output and errors together; never raises for a non-zero exit.

        secret_output: the output holds secrets not known yet (so not redactable): never print it.
        progress: called with each line of output as it comes, for a command that may take a
        while and says why (it prints through `say`, which redacts); no input then."""
        if self.verbose:
            self.say("$ " + shlex.join(argv))
        if progress is not None:
            assert input is None and not secret_output, "a command shown as it runs takes no input and shows no secret"
            result = self.streamed(argv, timeout, progress)
        else:
            try:
                proc = subprocess.run(argv, input=input, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, timeout=timeout)
                result = Result(argv, proc.returncode, proc.stdout)
            except subprocess.TimeoutExpired as expired:
                result = timed_out(argv, timeout, expired.output or "")
        if self.verbose and result.output.strip():
            for line in self.printable(result, secret_output):
                self.say("  | " + line)
        return result

    @staticmethod
    def streamed(argv: list[str], timeout: float, progress: Callable[[str], None]) -> Result:
        lines: list[str] = []

        def kept(line: str) -> None:
            lines.append(line)
            progress(line)

        proc, reader = relaying(argv, kept)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        reader.join(timeout=5)
        output = "".join(f"{line}\n" for line in lines)
        return timed_out(argv, timeout, output) if code is None else Result(argv, code, output)

    def check(self, what: str, argv: list[str], **kwargs) -> Result:
        """Run argv; on failure print its (redacted) output and raise CommandFailed."""
        result = self.run(argv, **kwargs)
        if not result.ok:
            for line in self.printable(result, kwargs.get("secret_output", False))[-20:]:
                self.say(f"  ! {line}")
            raise CommandFailed(what, result)
        return result

    def attached(self, argv: list[str]) -> int:
        """Run argv on this terminal (stdin, stdout and stderr its own); its exit code."""
        if self.verbose:
            self.say("$ " + shlex.join(argv))
        return subprocess.run(argv).returncode

    def follow(self, commands: dict[str, tuple[list[str], str]],
               shown: Callable[[str], str | None] = lambda line: line) -> dict[str, int]:
        """Run every command at once, each its script on stdin (left open: the far end reads
        it to know the caller is still there), printing each line as it comes as `shown`
        gives it (None: not at all), prefixed `[name] `, until all end or Ctrl-C; the exit
        codes by name (130 for those stopped)."""
        running: dict[str, subprocess.Popen] = {}
        threads = []
        for name, (argv, script) in commands.items():
            if self.verbose:
                self.say("$ " + shlex.join(argv))

            def show(line: str, name: str = name) -> None:
                if (text := shown(line)) is not None:
                    self.say(f"[{name}] {text}")

            running[name], thread = relaying(argv, show, script)
            threads.append(thread)
        codes: dict[str, int] = {}
        try:
            for name, proc in running.items():
                codes[name] = proc.wait()
        except KeyboardInterrupt:
            pass   # Ctrl-C reaches the ssh commands too (one process group): all are stopped
        finally:
            for name, proc in running.items():
                if proc.poll() is None:
                    proc.terminate()
                proc.wait()
                codes.setdefault(name, 130)
            for thread in threads:
                thread.join(timeout=5)
        return codes

    @staticmethod
    def printable(result: Result, secret_output: bool) -> list[str]:
        if secret_output:
            return ["(output not shown: it may hold secrets)"]
        return result.output.rstrip().splitlines()


def relaying(argv: list[str], each_line: Callable[[str], None],
             script: str | None = None) -> tuple[subprocess.Popen, threading.Thread]:
    """argv started, each line of its output and errors (its end stripped) handed to
    `each_line` as it comes, by a thread of its own; `script` written to its stdin, which is
    left open (the far end may read it to know the caller is still there); no stdin without."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL if script is None else subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if script is not None:
        proc.stdin.write(script)
        proc.stdin.flush()

    def relay() -> None:
        for line in proc.stdout:
            each_line(line.rstrip())

    thread = threading.Thread(target=relay, daemon=True)
    thread.start()
    return proc, thread


def timed_out(argv: list[str], timeout: float, output: str) -> Result:
    """A command killed at its timeout, with what it said until then (exit 124, as timeout(1))."""
    return Result(argv, 124, f"timed out after {timeout:.0f}s: {output}")
