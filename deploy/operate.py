"""The verbs operators use every day: status, logs, exec, maintenance. Each reads or runs,
as the deploy login through the LB, and changes nothing a deploy owns (no lock is taken);
maintenance, and status's line on the LB's pool, log in to the LB as an operator (`ops`):
the deploy login only jumps there.

The argument checks, the parsing of what the servers answer and the table are here; the
commands are built in deploy/commands.py, the server half is deploy/remote.sh.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from model import app_contract, conventions

from . import commands, journal
from .executor import CommandFailed, Executor
from .records import Server, Stack

# The apps' processes: each pm2 worker's command line is `node <current>/<script>`, the
# script the release's platform.json declares for it (the default without the file).
DURATION = re.compile(r"(?P<count>[1-9][0-9]*)(?P<unit>[smhd])")
MOMENT = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2})?)?")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# pm2's prefix on each write (the ecosystem's `time`).
STAMP = re.compile(rf"^(?P<tag>\S+) (?P<stamp>{journal.PM2_TIME}): ")
EXIT_UNHEALTHY = 1


class UsageError(ValueError):
    pass


# --- arguments -----------------------------------------------------------------------

def pick_server(stack: Stack, name: str | None) -> Server:
    """The server by its name; the first (app-1) when none is named."""
    if name is None:
        return stack.servers[0]
    for server in stack.servers:
        if server.name == name:
            return server
    raise UsageError(f"--server {name}: stack {stack.name} has no such app server "
                     f"(it has {', '.join(s.name for s in stack.servers)})")


def since_words(since: str | None) -> str | None:
    """--since as `date -d` reads it on the server: 10m, 2h, 1d, 30s, or a moment in the
    server's time (2026-12-02 07:00, 2026-12-02T07:00:00)."""
    if since is None:
        return None
    if match := DURATION.fullmatch(since):
        return f"{match['count']} {UNITS[match['unit']]} ago"
    if MOMENT.fullmatch(since):
        return since.replace("T", " ")
    raise UsageError(f"--since {since!r}: give a duration (30s, 10m, 2h, 1d) or a moment "
                     "(YYYY-MM-DD, YYYY-MM-DD HH:MM[:SS], in the servers' time)")


def journal_since(since: str | None, now: float) -> int:
    """--since for --journal as its wrapper takes it: seconds since the epoch, 0 for no
    bound. A moment is in the servers' time: UTC on the images."""
    since_words(since)   # the same words, refused the same way
    if since is None:
        return 0
    if match := DURATION.fullmatch(since):
        return int(now) - int(match["count"]) * SECONDS[match["unit"]]
    try:
        moment = dt.datetime.fromisoformat(since.replace(" ", "T"))
    except ValueError as problem:
        raise UsageError(f"--since {since!r}: not a moment ({problem})") from None
    return max(0, int(moment.replace(tzinfo=dt.timezone.utc).timestamp()))


def journal_checks(lines: int) -> None:
    """--journal reads the apps' unit's journal up to its wrapper's bound."""
    if lines > journal.MAX_LINES:
        raise UsageError(f"--lines {lines}: at most {journal.MAX_LINES} with --journal")


def process_names(names: list[str] | None) -> tuple[str, ...]:
    for name in names or ():
        if not app_contract.PROCESS_NAME.fullmatch(name):
            raise UsageError(f"--process {name!r}: a pm2 process name ({app_contract.PROCESS_NAME_RULE}), as "
                             "platform.json names them: web, api")
    return tuple(names or ())


def positive_lines(lines: int) -> int:
    if lines < 1:
        raise UsageError(f"--lines {lines}: at least 1")
    return lines


# --- status ----------------------------------------------------------------------------

@dataclass
class ServerStatus:
    server: Server
    reachable: bool = True
    problem: str = ""
    release: str = ""
    unit_state: str = "unknown"
    main_pid: int = 0
    unit_seconds: int | None = None        # how long the apps' unit has run
    unit_file_seconds: int | None = None   # how long ago its file changed
    workers: dict[str, list[int]] = field(default_factory=dict)   # app -> each worker's uptime
    declared: tuple[str, ...] = ()          # the processes the current release declares
    health_code: str = "000"
    health_body: str = ""

    @property
    def healthy(self) -> bool:
        return (self.reachable and self.unit_state == "active" and self.health_code == "200"
                and not self.idle_processes)

    @property
    def idle_processes(self) -> list[str]:
        """Declared processes without a worker: pm2 gave up on them, or they were stopped."""
        return [name for name in self.declared if name not in self.workers] if self.unit_state == "active" else []

    @property
    def unit_changed_since_start(self) -> bool:
        """The unit's file changed after the apps started: it applies at their next start."""
        return None not in (self.unit_seconds, self.unit_file_seconds) and self.unit_file_seconds < self.unit_seconds

    def engines(self) -> str:
        """/healthz's verdict per engine, as the API reports it."""
        try:
            report = json.loads(self.health_body)["engines"]
            return ", ".join(f"{name} {r.get('status', '?')}" for name, r in sorted(report.items()))
        except (ValueError, KeyError, TypeError, AttributeError):
            return self.health_body[:80]


def declared_scripts(contract_json: str | None) -> dict[str, str]:
    """Each declared process's command line as ps shows it, to its name."""
    try:
        contract = app_contract.parse(json.loads(contract_json)) if contract_json else app_contract.DEFAULT
    except ValueError:
        contract = app_contract.DEFAULT
    return {f"node {conventions.CURRENT_RELEASE_LINK}/{p.script}": p.name for p in contract.processes}


def parse_status(server: Server, output: str) -> ServerStatus:
    status = ServerStatus(server)
    pids: dict[int, int] = {}
    lines = output.splitlines()
    names = declared_scripts(next((line.partition(" ")[2] for line in lines if line.startswith("contract ")), None))
    status.declared = tuple(dict.fromkeys(names.values()))
    for line in lines:
        kind, _, rest = line.partition(" ")
        if kind == "release":
            status.release = rest.strip()
        elif kind == "unit":
            fields = rest.split()
            status.unit_state = fields[0] if fields else "unknown"
            status.main_pid = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
        elif kind == "unitfile" and rest.strip().lstrip("-").isdigit():
            status.unit_file_seconds = int(rest)
        elif kind == "process":
            fields = rest.split(None, 2)
            if len(fields) < 3 or not (fields[0].isdigit() and fields[1].isdigit()):
                continue
            pid, seconds, args = int(fields[0]), int(fields[1]), fields[2]
            pids[pid] = seconds
            if name := names.get(args.strip()):
                status.workers.setdefault(name, []).append(seconds)
        elif kind == "health":
            code, _, body = rest.partition(" ")
            status.health_code, status.health_body = code or "000", body.strip()
    status.unit_seconds = pids.get(status.main_pid)
    return status


def duration(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60}m"
    if seconds >= 60:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def status_table(statuses: list[ServerStatus]) -> list[str]:
    rows = [("SERVER", "RELEASE", "APPS UNIT", "PROCESSES (workers, youngest up)", "HEALTH")]
    for s in statuses:
        if not s.reachable:
            rows.append((s.server.name, "?", "?", "?", f"UNREACHABLE: {s.problem}"))
            continue
        unit = f"{s.unit_state} {duration(s.unit_seconds)}" if s.unit_state == "active" else s.unit_state.upper()
        if s.unit_changed_since_start:
            unit += f" (its file changed {duration(s.unit_file_seconds)} ago: restart applies it)"
        processes = ", ".join(sorted([*(f"{name} {len(up)} up {duration(min(up))}" for name, up in s.workers.items()),
                                      *(f"{name} NONE" for name in s.idle_processes)]))
        verdict = "ok" if s.healthy else "UNHEALTHY"
        rows.append((s.server.name, s.release or "(none)", unit, processes or "(none)",
                     f"{verdict} {s.health_code}: {s.engines()}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[-1]]).rstrip() for row in rows]


def read_status(stack: Stack, server: Server, executor: Executor, control_dir: str | None = None) -> ServerStatus:
    """One server's status, or an unreachable one naming why (the exit and the last line)."""
    command = commands.status(stack, server, control_dir)
    result = executor.run(command.argv, input=command.stdin, timeout=60)
    if result.ok:
        return parse_status(server, result.output)
    return ServerStatus(server, reachable=False, problem=f"exit {result.returncode}: {result.last_line}")


def status(stack: Stack, executor: Executor, control_dir: str | None = None) -> int:
    statuses = [read_status(stack, server, executor, control_dir) for server in stack.servers]
    for line in status_table(statuses):
        executor.say(line)
    executor.say(f"LB: {maintenance_state(stack, executor)}")
    try:
        executor.say(f"LB: {pool_state(stack, drained_addresses(stack, executor))}")
    except CommandFailed:
        pass   # the maintenance line above already says the LB needs an operator's key
    return 0 if all(s.healthy for s in statuses) else EXIT_UNHEALTHY


def drained_addresses(stack: Stack, executor: Executor) -> set[str]:
    """The app servers' addresses the LB sends no request to (platform-drain: a restart that
    did not come back healthy leaves its server so). CommandFailed when the LB does not say
    (a key that is not an operator's)."""
    result = executor.run(commands.drain(stack, "status").argv, timeout=60)
    if not result.ok:
        raise CommandFailed("the LB's pool", result)
    return set(result.output.split())


def pool_state(stack: Stack, drained: set[str]) -> str:
    out = [server.name for server in stack.servers if server.address in drained]
    if not out:
        return "every app server in its pool"
    return f"out of its pool: {', '.join(out)} (restart puts each back once healthy)"


# --- maintenance ---------------------------------------------------------------------------

OPERATOR_KEY_NEEDED = f"it needs an operator's key ({conventions.OPERATOR_USER} on the LB, sshPublicKeys)"


def maintenance_state(stack: Stack, executor: Executor) -> str:
    """"maintenance on: WHO since WHEN", "maintenance off", or why it is not known."""
    command = commands.maintenance(stack, "status")
    result = executor.run(command.argv, timeout=60)
    if result.ok:
        return result.output.strip()
    return f"maintenance unknown ({OPERATOR_KEY_NEEDED}; exit {result.returncode}: {result.last_line})"


def maintenance(stack: Stack, executor: Executor, action: str) -> int:
    """on: the LB serves the maintenance page (503, Retry-After) to all but the health check."""
    holder = f"{getpass.getuser()}@{socket.gethostname()}" if action == "on" else None
    command = commands.maintenance(stack, action, holder)
    result = executor.run(command.argv, timeout=60)
    if not result.ok:
        executor.say(f"maintenance {action}: failed on the LB ({OPERATOR_KEY_NEEDED}): exit {result.returncode}: "
                     f"{result.last_line}")
        return 1
    executor.say(f"LB: {result.output.strip()}")
    return 0



# --- logs ------------------------------------------------------------------------------

def merged(outputs: dict[str, str]) -> list[str]:
    """Every server's lines in time order, `[server] process line`: pm2's stamps sort as
    text; a line without one (the rest of a multi-line write) keeps to the one before it."""
    keyed = []
    for name, output in outputs.items():
        stamp = ""
        for number, line in enumerate(output.splitlines()):
            if match := STAMP.match(line):
                stamp = match["stamp"]
            keyed.append(((stamp, name, number), f"[{name}] {line}"))
    return [line for _, line in sorted(keyed)]


def logs(stack: Stack, executor: Executor, lines: int, since: str | None, follow: bool,
         processes: tuple[str, ...], control_dir: str | None = None) -> int:
    built = {server.name: commands.logs(stack, server, lines, since, follow, processes, control_dir)
             for server in stack.servers}
    if follow:
        return follow_each(executor, built)
    outputs, failed = each_servers_output(executor, built)
    for line in merged(outputs):
        executor.say(line)
    return 1 if failed else 0


def follow_each(executor: Executor, built: dict[str, commands.Remote],
                shown: Callable[[str], str | None] = lambda line: line) -> int:
    """Each server's command followed at once until Ctrl-C, its lines as `shown` gives
    them: 0 when each ended by itself or by Ctrl-C (130)."""
    codes = executor.follow({name: (c.argv, c.stdin or "") for name, c in built.items()}, shown)
    failed = {name: code for name, code in codes.items() if code not in (0, 130)}
    for name, code in failed.items():
        executor.say(f"logs: [{name}] ended with exit {code}")
    return 1 if failed else 0


def each_servers_output(executor: Executor, built: dict[str, commands.Remote]) -> tuple[dict[str, str], bool]:
    """Each server's command, one after the other: the outputs of those that succeeded,
    and whether one failed (each failure said, naming its server)."""
    outputs, failed = {}, False
    for name, command in built.items():
        result = executor.run(command.argv, input=command.stdin, timeout=120)
        if not result.ok:
            failed = True
            executor.say(f"logs: [{name}] exit {result.returncode}: {result.output.strip()}")
            continue
        outputs[name] = result.output
    return outputs, failed


def journal_logs(stack: Stack, executor: Executor, lines: int, since: int, follow: bool, processes: tuple[str, ...],
                 control_dir: str | None = None) -> int:
    """The last `lines` entries of the apps' unit's journal on every server since `since`
    (0: any), merged in time order: what pm2's files lose (a dying worker's last words).
    With `processes`, the last `lines` of theirs among as many entries as the wrapper gives.
    With `follow`, each server's last `lines` entries, those of `processes` since `since`
    shown, then each new one, as logs --follow does with the files."""
    if follow:
        return follow_each(executor, {server.name: commands.apps_journal_followed(stack, server, lines, control_dir)
                                      for server in stack.servers}, journal.followed(processes, since))
    asked = journal.MAX_LINES if processes else lines
    outputs, failed = each_servers_output(executor, {
        server.name: commands.apps_journal(stack, server, since, asked, control_dir) for server in stack.servers})
    for line in journal.merged(outputs, processes, lines):
        executor.say(line)
    return 1 if failed else 0


# --- exec ------------------------------------------------------------------------------

def app_exec(stack: Stack, executor: Executor, server: Server, command: list[str], control_dir: str | None = None,
             tty: bool = False) -> int:
    """The command's own exit code (ssh's 255 when the server could not be reached)."""
    return executor.attached(commands.app_exec(stack, server, command, control_dir, tty).argv)
