"""The apps' unit's journal on an app server, as `platform-apps-journal` gives it to the
deploy user (journalctl's short-iso lines: time, host, identifier[pid], message).

It is complete where pm2's log files are not: pm2 in cluster mode loses what a worker
writes as it dies (its exception included), which reaches the journal through
pm2-runtime. A failed deploy shows what the apps and the reload said there; `logs
--journal` shows all of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cloudinit.app_server import APP_HEALTH_COMMAND, APPS_JOURNAL_MAX_LINES, APPS_RELOAD_COMMAND

# What writes there: pm2-runtime (the apps' output, and pm2's own `PM2 log:` lines) and
# the unit's reload steps (journald names each by its program), whose verdicts start with
# their names.
PM2_RUNTIME = "pm2-runtime"
UNIT_STEPS = tuple(os.path.basename(program) for program in (APPS_RELOAD_COMMAND, APP_HEALTH_COMMAND))
MAX_LINES = APPS_JOURNAL_MAX_LINES


@dataclass(frozen=True)
class Entry:
    time: str          # journalctl's, e.g. 2026-12-04T15:12:05+0000: sorts as text
    identifier: str    # pm2-runtime, platform-apps-reload, systemd...
    source: str        # identifier[pid]
    message: str


def entries(journal: str) -> list[Entry]:
    """Each line of the journal; a line of another shape (a boot marker) is left out."""
    found = []
    for line in journal.splitlines():
        fields = line.split(" ", 3)
        if len(fields) < 4 or not fields[2].endswith(":"):
            continue
        source = fields[2].removesuffix(":")
        found.append(Entry(fields[0], source.split("[", 1)[0], source, fields[3]))
    return found


def apps_said(journal: str, last: int) -> list[str]:
    """The apps' output and the reload steps' verdicts, the last `last`, without pm2's
    bookkeeping: pm2 stamps the apps' lines, and a step's verdict names the step."""
    said = [e.message for e in entries(journal)
            if (e.identifier == PM2_RUNTIME and ": PM2 log: " not in e.message)
            or (e.identifier in UNIT_STEPS and e.message.startswith(e.identifier + ":"))]
    return said[-last:]


def merged(outputs: dict[str, str]) -> list[str]:
    """Every server's entries in time order, `[server] time source: message`."""
    keyed = [((e.time, name, number), f"[{name}] {e.time} {e.source}: {e.message}")
             for name, output in outputs.items() for number, e in enumerate(entries(output))]
    return [line for _, line in sorted(keyed)]
