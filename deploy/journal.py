"""The apps' unit's journal on an app server, as `platform-apps-journal` gives it to the
deploy user (journalctl's short-iso lines: time, host, identifier[pid], message).

It is complete where pm2's log files are not: pm2 in cluster mode loses what a worker
writes as it dies (its exception included), which reaches the journal through
pm2-runtime, each line under its process's name. A failed deploy shows what the apps
and the reload said there; `logs --journal` shows all of it, or one process's.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from cloudinit.app_server import APP_HEALTH_COMMAND, APPS_JOURNAL_MAX_LINES, APPS_RELOAD_COMMAND, START_CHECK_LOG_TAG
from model.app_contract import PROCESS_NAME

# What writes there: pm2-runtime (the apps' output, and pm2's own `PM2 log:` lines), the
# unit's reload steps (journald names each by its program), whose verdicts start with
# their names, and an env push's failed start check (what the processes wrote).
PM2_RUNTIME = "pm2-runtime"
UNIT_STEPS = tuple(os.path.basename(program) for program in (APPS_RELOAD_COMMAND, APP_HEALTH_COMMAND))
MAX_LINES = APPS_JOURNAL_MAX_LINES

# pm2 stamps each write of an app (`time: true` in the ecosystem file), in its files and
# on its bus: the first line of the write.
PM2_TIME = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}"
# pm2-runtime --formatted writes each of an app's lines as `<pm2 id>|<process> | <line>`,
# the name padded to the longest seen, the id `_old_<id>` for a worker a reload is
# replacing; its own lines are stamped `PM2 log:`/`PM2 error:`.
# So a pm2-runtime that has named one line writes only pm2's own bare: the lines after
# the first of a `PM2 error:` (a stack). One started before --formatted writes the apps'
# lines bare: they are the apps' still, without a name, until it next starts.
PM2_OWN = re.compile(rf"{PM2_TIME}: PM2 (log|error): ")
APP_LINE = re.compile(rf"(?:(?P<id>(?:_old_)?\d+)\|(?P<process>{PROCESS_NAME.pattern}) +\| )?"
                      rf"(?:{PM2_TIME}: )?(?P<line>.*)")
# An env push's failed start check names the process each of its lines is about: its
# verdict (`api: FAILED: ...`) and, indented, what the process wrote (`  api: ...`).
START_CHECK_LINE = re.compile(rf" {{0,2}}(?P<process>{PROCESS_NAME.pattern}): ")


@dataclass(frozen=True)
class Entry:
    time: str          # journalctl's, in UTC (the wrapper's), e.g. 2026-12-04T15:12:05+0000: sorts as text
    identifier: str    # pm2-runtime, platform-apps-reload, systemd...
    source: str        # identifier[pid]; an app's named line: its pm2 process, `0|api`
    message: str       # an app's line without pm2's stamp (the journal has the time)
    from_app: bool = False
    process: str = ""  # an app's named line, a start check's line: its process's name


def entries(journal: str) -> list[Entry]:
    """Each line of the journal; a line of another shape (a boot marker) is left out."""
    lines = []
    for line in journal.splitlines():
        fields = line.split(" ", 3)
        if len(fields) == 4 and fields[2].endswith(":"):
            at, source, message = fields[0], fields[2].removesuffix(":"), fields[3]
            identifier = source.split("[", 1)[0]
            app = APP_LINE.fullmatch(message) if identifier == PM2_RUNTIME and not PM2_OWN.match(message) else None
            lines.append((at, identifier, source, message, app))
    # The pm2-runtimes (identifier[pid]) that name the apps' lines.
    naming = {source for _, _, source, _, app in lines if app and app["process"] and "[" in source}
    found = []
    for at, identifier, source, message, app in lines:
        if app and (app["process"] or source not in naming):
            named = app["process"] or ""
            found.append(Entry(at, identifier, f"{app['id']}|{named}" if named else source, app["line"],
                               from_app=True, process=named))
        else:
            about = START_CHECK_LINE.match(message) if identifier == START_CHECK_LOG_TAG else None
            found.append(Entry(at, identifier, source, message, process=about["process"] if about else ""))
    return found


def apps_said(journal: str, last: int) -> list[str]:
    """The apps' lines (`api: ...`) and the reload steps' verdicts, without pm2's
    bookkeeping; a line said again and again (a crash loop's) once, at its last time, with
    its count; the last `last` of those."""
    said = [f"{e.process}: {e.message}" if e.process else e.message for e in entries(journal)
            if e.from_app or (e.identifier in UNIT_STEPS and e.message.startswith(e.identifier + ":"))]
    times = Counter(said)
    each_at_its_last = list(dict.fromkeys(reversed(said)))[::-1]
    return [f"{line} ({times[line]} times)" if times[line] > 1 else line for line in each_at_its_last[-last:]]


def merged(outputs: dict[str, str], processes: tuple[str, ...] = (), last: int = MAX_LINES) -> list[str]:
    """Every server's entries (only those of `processes` if named, each server's last
    `last`) in time order, `[server] time source: message`."""
    keyed = []
    for name, output in outputs.items():
        kept = [e for e in entries(output) if of_processes(e, processes)][-last:]
        keyed += [((e.time, name, number), f"[{name}] {shown(e)}") for number, e in enumerate(kept)]
    return [line for _, line in sorted(keyed)]


def followed(processes: tuple[str, ...], since: int) -> Callable[[str], str | None]:
    """What a followed journal's line shows (None: nothing): that of merged, for the
    entries of `processes` if named, from `since` (seconds since the epoch, 0: any) on."""
    # journalctl's times (in UTC: the wrapper sets it) sort as text.
    since_time = time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(since))

    def show(line: str) -> str | None:
        found = entries(line)
        if not found or not of_processes(found[0], processes) or found[0].time < since_time:
            return None
        return shown(found[0])
    return show


def of_processes(entry: Entry, processes: tuple[str, ...]) -> bool:
    """Whether `entry` is one of theirs; every entry is when none is named."""
    return not processes or entry.process in processes


def shown(entry: Entry) -> str:
    return f"{entry.time} {entry.source}: {entry.message}"
