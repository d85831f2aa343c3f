"""The plan runs as `pulumi up` runs it, and the program copes with what that order meets.

On the session's first `up` (tests/conftest.py: first_boot_quirks) every boot gate started
as soon as its droplet existed, while the LB answered SSH 30 s late and then refused
logins until a minute into its boot; every bundle push started as soon as its gate let
it, and the other pushes as soon as the platform was in place, several to one droplet at once. Then pushes and provisioning runs sent to one droplet at
the same instant never interleave.
"""

from __future__ import annotations

import re
from datetime import datetime

import pytest

from localcloud import engine, plan, stack

pytestmark = pytest.mark.localcloud


@pytest.fixture(scope="module")
def first_boot(local_stack):
    if local_stack.first_boot is None:
        pytest.skip("the stack was already up when the session started: its first boot is not this session's "
                    "(`python -m localcloud down`, then run again)")
    return local_stack.first_boot


def results(up) -> dict[str, engine.CommandResult]:
    return {r.name: r for r in up.commands}


def test_every_command_of_the_first_up_succeeded(first_boot):
    assert {r.name: r.status for r in first_boot.commands if r.status != "ok"} == {}


def test_the_gates_started_with_the_droplets_and_the_pushes_as_soon_as_they_opened(first_boot):
    done = results(first_boot)
    gates = {name: r for name, r in done.items() if name.endswith("-boot-gate")}
    assert gates and done["lb-boot-gate"].started < 1, done["lb-boot-gate"]
    for c in first_boot.plan.commands:
        if c.name in gates or not c.needs:
            continue
        opened = max(done[n].started + done[n].seconds for n in c.needs)
        # A free slot of the engine's parallelism may be what it waited for.
        assert done[c.name].started >= opened, c.name
    store = [done[c.name] for c in first_boot.plan.commands
             if c.name.startswith("datastore-") and c.name.endswith("-push") and c.name != "datastore-bundle-push"
             and not {n for n in c.needs if not n.endswith("-boot-gate")} - {"datastore-bundle-push"}]
    starts = sorted(r.started for r in store)
    assert len(store) >= 3 and starts[-1] - starts[0] < 5, {r.name: round(r.started, 1) for r in store}


def journal(local_stack, key: str, unit: str) -> list[tuple[float, str]]:
    """(seconds since the droplet's boot, message) of a unit's journal entries."""
    import json
    lines = local_stack.run(key, ["journalctl", "-b", "-o", "json", "--no-pager",
                                  "--output-fields=MESSAGE,_SYSTEMD_UNIT"]).stdout.splitlines()
    entries = [json.loads(line) for line in lines if line.strip()]
    boot = int(entries[0]["__MONOTONIC_TIMESTAMP"])
    return [((int(e["__MONOTONIC_TIMESTAMP"]) - boot) / 1e6, str(e.get("MESSAGE")))
            for e in entries if e.get("_SYSTEMD_UNIT") == unit]


def test_pushes_through_an_lb_that_answered_late_and_refused_logins_succeeded(first_boot, local_stack):
    ssh = journal(local_stack, "lb", "ssh.service")
    listening = [t for t, message in ssh if message.startswith("Server listening")]
    assert listening and listening[0] >= 30, ssh[:5]
    refused = [t for t, message in ssh if "ops" in message and re.search(r"nologin|not allowed|Access denied", message)]
    assert refused, [message for _, message in ssh][:40]
    # On the droplet's own clock (the engine's starts a moment after the boot): the gate's
    # login came once the refusals were over, a minute or more into the boot.
    accepted = [t for t, message in ssh if message.startswith("Accepted publickey for ops ")]
    assert accepted and accepted[0] > max(refused) and accepted[0] >= 60, (accepted[:3], refused[-3:])
    done = results(first_boot)
    assert done["lb-boot-gate"].ok
    behind = [c.name for c in first_boot.plan.commands if isinstance(c, plan.RemoteCommand) and c.proxy]
    assert behind and all(done[name].ok for name in behind)


# --- one droplet, many changes at the same instant -------------------------------------

LOCK_LINE = re.compile(r"^(\S+) (took|released) droplet lock: (.+)$")


def lock_spans(log: str, since: datetime) -> list[tuple[datetime, datetime, str]]:
    """(took, released, holder) of every hold in the droplet lock's log after `since`."""
    spans, open_ = [], {}
    for line in log.splitlines():
        m = LOCK_LINE.match(line.strip())
        if not m:
            continue
        at = datetime.fromisoformat(m[1].replace("Z", "+00:00"))
        if at < since:
            continue
        if m[2] == "took":
            open_[m[3]] = at
        elif m[3] in open_:
            spans.append((open_.pop(m[3]), at, m[3]))
    return sorted(spans)


def test_pushes_and_provisioning_sent_at_the_same_instant_never_overlap(local_stack):
    from model import conventions
    now = local_stack.run("datastore", ["date", "-u", "+%Y-%m-%dT%H:%M:%S.%3NZ"]).stdout.strip()
    since = datetime.fromisoformat(now.replace("Z", "+00:00"))
    # As the stack's state holds them: with the host keys their gates recorded.
    pushes = [c for c in stack.deployed(local_stack.plan.stack).commands
              if isinstance(c, plan.RemoteCommand) and c.name.startswith("datastore-")]
    template = pushes[0]
    provisioning = [plan.RemoteCommand(f"provision-{i}", "provision", template.target, template.proxy,
                                       f"sudo {conventions.PROVISION_COMMAND}", "") for i in range(3)]
    # Each push once (8 at once with provisioning): beyond sshd's MaxStartups (10) pending
    # logins a droplet drops new connections, and no `pulumi up` sends one droplet that many.
    sent = [*provisioning, *(plan.RemoteCommand(c.name, c.kind, c.target, c.proxy, c.create, c.stdin)
                             for c in pushes)]
    outcome = engine.run(sent, parallelism=len(sent))
    assert {r.name: r.output[-300:] for r in outcome if not r.ok} == {}
    assert max(r.started for r in outcome) - min(r.started for r in outcome) < 2   # all at once
    log = local_stack.run("datastore", ["cat", conventions.DROPLET_LOCK_LOG]).stdout
    spans = lock_spans(log, since)
    assert len(spans) >= len(sent), log[-3000:]
    for (_, released, holder), (took, _, next_holder) in zip(spans, spans[1:]):
        assert released <= took, f"{holder} still held the lock when {next_holder} took it"
