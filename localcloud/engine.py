"""Runs the plan's commands the way the Pulumi engine runs a `pulumi up`.

What it reproduces (pkg/engine and pkg/cmd/pulumi/operations/up.go of pulumi/pulumi):
- a command starts as soon as everything it depends on exists: its droplet created (not
  booted: the local cloud starts the droplets, then calls this at once) and the commands
  it depends on done (`depends_on` and input dependencies, as the program registered them);
- up to `parallelism` at once, 4 x CPUs by default as in the CLI;
- only commands that are new or whose inputs changed run (the engine leaves the others);
- after a failure no new command starts; those running finish; the rest are not run, and
  a failed command is not recorded, so the next `up` runs it again, and one not run keeps
  its record from before (records.after_up);
- remote commands connect with pulumi-command's SSH client semantics (`pulumi_ssh`);
  local commands run on this machine with their environment, as pulumi-command's
  local Command does.
- an output of a command (a local command's stdout: a boot gate's host key) is known
  once it has run: the commands that read it start after it (they depend on it) with its
  value in place of the plan's placeholder (`with_outputs`), and `up` records it in the
  stack's state the same way (records.with_outputs).

`serial` is the order this local cloud used before: one command at a time, in dependency
order, after every droplet finished booting. The benchmark compares the two.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from . import pulumi_ssh
from .records import fill
from .plan import LocalCommand, RemoteCommand

ROOT = Path(__file__).resolve().parents[1]   # a local Command runs in the program's directory
DEFAULT_PARALLELISM = 4 * (os.cpu_count() or 1)
SHOWN_OUTPUT_LINES = 8


@dataclass
class CommandResult:
    name: str
    status: str                    # ok, failed, not run (after a failure), unchanged
    returncode: int | None
    output: str
    started: float                 # seconds since the run began
    seconds: float
    stdout: str = ""               # a local command's stdout alone, as pulumi-command records it

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "unchanged")


def say(line: str) -> None:
    print(f"[localcloud] {line}", flush=True)


def execute(c: RemoteCommand | LocalCommand) -> tuple:
    """(exit code, output) of a remote command; a local one's also its stdout alone,
    less one final newline (pulumi-command's `stdout` output)."""
    if isinstance(c, LocalCommand):
        proc = subprocess.run([*c.interpreter, c.create], env={**os.environ, **c.environment}, cwd=ROOT,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True)
        return proc.returncode, proc.stderr + proc.stdout, proc.stdout.removesuffix("\n")
    return pulumi_ssh.run(c.target, c.proxy, c.create, c.stdin, log=lambda line: say(f"{c.name}: {line}"))


def with_outputs(c: RemoteCommand | LocalCommand, known: dict[str, str]) -> RemoteCommand | LocalCommand:
    """The command as the engine would register it, now that the outputs it reads are known."""
    if not known:
        return c
    if isinstance(c, LocalCommand):
        return dataclasses.replace(c, environment=fill(c.environment, known))

    def hop(h):
        return h and dataclasses.replace(h, **{f.name: fill(getattr(h, f.name), known) for f in dataclasses.fields(h)})

    return dataclasses.replace(c, target=hop(c.target), proxy=hop(c.proxy), create=fill(c.create, known),
                               stdin=fill(c.stdin, known))


def outputs_of(commands, results: list[CommandResult]) -> dict[str, str]:
    """Placeholder -> stdout of each local command that ran and succeeded."""
    by_name = {r.name: r for r in results}
    return {c.unknown_stdout: by_name[c.name].stdout for c in commands
            if isinstance(c, LocalCommand) and c.unknown_stdout and c.name in by_name and by_name[c.name].status == "ok"}


def run(commands: list[RemoteCommand | LocalCommand], parallelism: int = DEFAULT_PARALLELISM,
        execute=execute) -> list[CommandResult]:
    """Run `commands` (in PUSH_ORDER-ranked dependency order) as the engine would."""
    start = time.monotonic()
    results: dict[str, CommandResult] = {}
    failed = threading.Event()

    def one(c) -> CommandResult:
        began = time.monotonic()
        via = f" via {c.proxy.host}" if isinstance(c, RemoteCommand) and c.proxy else ""
        where = f" on {c.target.host}{via}" if isinstance(c, RemoteCommand) else " on this machine"
        say(f"{c.name}: started{where} ({began - start:.1f}s)")
        try:
            code, output, *stdout = execute(c)
        except Exception as error:   # noqa: BLE001 (a crash of one command fails it, not the run)
            code, output, stdout = 255, f"{type(error).__name__}: {error}\n", []
        r = CommandResult(c.name, "ok" if code == 0 else "failed", code, output, began - start,
                          time.monotonic() - began, stdout[0] if stdout else "")
        say(f"{c.name}: exit {code} ({r.seconds:.1f}s)")
        for line in output.strip().splitlines()[-SHOWN_OUTPUT_LINES:]:
            say(f"  {c.name} | {line}")
        if not r.ok:
            failed.set()
        return r

    for c in commands:
        if not c.changed:
            results[c.name] = CommandResult(c.name, "unchanged", None, "", 0.0, 0.0)
    todo = [c for c in commands if c.changed]
    running: dict = {}
    with ThreadPoolExecutor(max_workers=parallelism) as pool:
        while todo or running:
            if not failed.is_set():
                done_names = {n for n, r in results.items() if r.ok}
                for c in [c for c in todo if c.needs <= done_names]:
                    if len(running) >= parallelism:
                        break
                    todo.remove(c)
                    known = outputs_of(commands, list(results.values()))
                    running[pool.submit(one, with_outputs(c, known))] = c
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                c = running.pop(future)
                results[c.name] = future.result()
    for c in todo:
        reason = "after a failure" if failed.is_set() else "a command it depends on failed"
        results[c.name] = CommandResult(c.name, "not run", None, reason, 0.0, 0.0)
        say(f"{c.name}: not run ({reason})")
    return [results[c.name] for c in commands]


def run_serially(commands: list[RemoteCommand | LocalCommand], execute=execute) -> list[CommandResult]:
    """One at a time, in the given order (the droplets already booted)."""
    return run(commands, parallelism=1, execute=execute)
