"""The plan runs as `pulumi up` runs it, and the program copies with what that order meets.

On the session's first `up` (tests/conftest.py: first_boot_quirks) every push started as
soon as its droplet existed, many at once, while the LB answered SSH 30 s late and app-1
refused logins for its first minute. Then pushes and provisioning runs sent to one droplet
at the same instant never interleave.
"""

from __future__ import annotations

import re
from datetime import datetime

import pytest

from localcloud import engine, plan

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


def test_pushes_started_while_their_droplets_were_still_provisioning(first_boot):
    """The datastore's pushes all started within seconds of each other and long before its
    provisioning (minutes of apt) was over: they waited on the droplet, not in the runner."""
    store = [r for r in first_boot.commands if r.name.startswith("datastore-") and r.name.endswith("-push")]
    starts = sorted(r.started for r in store)
    assert len(store) >= 3 and starts[-1] - starts[0] < 60, {r.name: round(r.started) for r in store}
    assert min(r.seconds for r in store) > 60   # each waited for first-boot provisioning


def test_pushes_through_an_lb_whose_sshd_started_30s_late_succeeded(first_boot, local_stack):
    gate = results(first_boot)["lb-login-gate"]
    assert gate.status == "ok" and gate.seconds >= 25, gate
    behind = [c.name for c in first_boot.plan.commands if isinstance(c, plan.RemoteCommand) and c.proxy]
    assert behind and all(results(first_boot)[name].ok for name in behind)
    assert local_stack.run("lb", ["test", "-e", "/etc/systemd/system/ssh.service.d/localcloud-boot.conf"]).returncode == 0


def test_a_droplet_that_refused_logins_did_not_fail_the_up(first_boot, local_stack):
    gate = results(first_boot)["app-1-login-gate"]
    assert gate.status == "ok" and gate.seconds >= 55, gate
    journal = local_stack.run("app-1", ["journalctl", "-b", "-u", "ssh", "--no-pager"]).stdout
    refused = re.findall(r"(Invalid user ops|Access denied for user ops|nologin)", journal)
    assert refused, journal[-2000:]
    assert all(r.ok for r in first_boot.commands if r.name.startswith("app-1-"))


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
    from components import conventions
    now = local_stack.run("datastore", ["date", "-u", "+%Y-%m-%dT%H:%M:%S.%3NZ"]).stdout.strip()
    since = datetime.fromisoformat(now.replace("Z", "+00:00"))
    pushes = [c for c in local_stack.plan.commands
              if isinstance(c, plan.RemoteCommand) and c.name.startswith("datastore-")]
    template = pushes[0]
    provisioning = [plan.RemoteCommand(f"provision-{i}", "provision", template.target, template.proxy,
                                       f"sudo {conventions.PROVISION_COMMAND}", "") for i in range(3)]
    sent = [*provisioning, *(plan.RemoteCommand(f"{c.name}-{i}", c.kind, c.target, c.proxy, c.create, c.stdin)
                             for c in pushes for i in range(2))]
    outcome = engine.run(sent, parallelism=len(sent))
    assert {r.name: r.output[-300:] for r in outcome if not r.ok} == {}
    assert max(r.started for r in outcome) - min(r.started for r in outcome) < 2   # all at once
    log = local_stack.run("datastore", ["cat", conventions.DROPLET_LOCK_LOG]).stdout
    spans = lock_spans(log, since)
    assert len(spans) >= len(sent), log[-3000:]
    for (_, released, holder), (took, _, next_holder) in zip(spans, spans[1:]):
        assert released <= took, f"{holder} still held the lock when {next_holder} took it"
