"""The droplet lock: pushes and provisioning runs started together never interleave.

The rendered platform-push, platform-lock and platform-provision (with the real common
library) run at their real paths in role_checks.sandboxed, against a test push table
whose steps, and fake role steps, record when they start and end. Several pushes and a
provisioning run start at the same instant; the lock log's timestamps must show one
holder at a time, with every step inside its own holder's interval. The same harness
shows that provisioning's last line reaches its caller before provisioning exits.
"""

from __future__ import annotations

import datetime
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

import cloudinit
from cloudinit import common
from model import conventions

from role_checks import sandboxed

ROLE = conventions.LOAD_BALANCER
TEST_DIR = "/etc/platform/test"
# The log's lines: `<UTC time, ms> took|released droplet lock: <holder> (pid N)`.
LOCK_LINE = re.compile(r"^(\S+Z) (took|released) droplet lock: (.+) \(pid (\d+)\)$")
# Role steps that only record when provisioning runs: the lock is what is tested.
FAKE_ROLE_STEPS = """# shellcheck shell=bash
common_steps() { "$T/record" provision; }
role_steps() { if [ -e "$T/fail-role" ]; then false; fi; }
"""
# Records a step's start and end, and the holder it runs under ($PLATFORM_DROPLET_LOCK).
RECORD = f"""#!/bin/sh
echo "$1 ${{{conventions.DROPLET_LOCK_ENV}:-none}} start $(date +%s.%N)" >> "$T/steps.log"
sleep 0.4
echo "$1 ${{{conventions.DROPLET_LOCK_ENV}:-none}} end $(date +%s.%N)" >> "$T/steps.log"
"""


def push_kind(name: str, then: list[list[str]], check: list[list[str]] | None = None) -> dict:
    return {"files": {f"{name}.conf": {"path": f"{TEST_DIR}/{name}.conf", "mode": "0644", "owner": "root:root"}},
            "check": check or [], "then": then}


def prepare(tmp_path: Path, settings, table: dict) -> list[str]:
    """The sandbox's first lines: the rendered programs in place, a provisioned droplet."""
    context = cloudinit.template_context(ROLE, settings)
    files = {p.path: (cloudinit.render(p.template, **context), p.mode) for p in cloudinit.programs(ROLE)}
    files[common.ROLE_STEPS] = (FAKE_ROLE_STEPS, "0644")
    files[cloudinit.ROLE_ENV] = (cloudinit.role_env(ROLE, settings, cloudinit.config_files(ROLE, settings)), "0644")
    files[cloudinit.PUSH_TABLE] = (json.dumps(table), "0644")
    lines = [f"export T={shlex.quote(str(tmp_path))}"]
    for i, (path, (text, mode)) in enumerate(files.items()):
        (tmp_path / f"file{i}").write_text(text)
        lines.append(f'install -D -m {mode} "$T/file{i}" {path}')
    (tmp_path / "record").write_text(RECORD)
    (tmp_path / "record").chmod(0o755)
    for kind in table:
        (tmp_path / f"{kind}.json").write_text(json.dumps({f"{kind}.conf": f"{kind} settings\n"}))
    return lines + [f"mkdir -p {conventions.PLATFORM_STATE}", f"touch {conventions.PROVISIONED_MARKER}"]


def push(kind: str) -> str:
    return f'{conventions.PUSH_COMMAND} {kind} < "$T/{kind}.json"'


def utc(stamp: str) -> float:
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def holds(log: str) -> dict[int, tuple[str, float, float]]:
    """{pid: (holder, took, released)} from the lock log; each pid takes the lock once."""
    found: dict[int, dict] = {}
    for line in log.splitlines():
        match = LOCK_LINE.match(line)
        if match:
            stamp, event, holder, pid = match.groups()
            entry = found.setdefault(int(pid), {"holder": holder})
            assert event not in entry, f"pid {pid} {event} the lock twice:\n{log}"
            entry[event] = utc(stamp)
    return {pid: (e["holder"], e["took"], e["released"]) for pid, e in found.items()}


def steps(log: str) -> list[tuple[str, int, float, float]]:
    """(step, pid of the holder it ran under or 0, start, end) from the steps' records."""
    started = {}
    done = []
    for line in log.splitlines():
        name, holder, event, stamp = line.split()
        if event == "start":
            started[(name, holder)] = float(stamp)
        else:
            pid = int(holder) if holder.isdigit() else 0
            done.append((name, pid, started.pop((name, holder)), float(stamp)))
    assert not started, log
    return done


@pytest.fixture
def short_wait(monkeypatch):
    """The lock's bound, shortened: a wait that never ends fails the test, not the run."""
    def set_wait(seconds: int):
        monkeypatch.setattr(conventions, "DROPLET_LOCK_WAIT_SECONDS", seconds)
    return set_wait


def test_pushes_and_provisioning_started_together_run_one_at_a_time(tmp_path, staging_settings, short_wait):
    short_wait(30)
    record = str(tmp_path / "record")
    table = {
        "alpha": push_kind("alpha", then=[[record, "push-alpha"]]),
        "beta": push_kind("beta", then=[[record, "push-beta"]]),
        "gamma": push_kind("gamma", check=[[record, "check-gamma"]], then=[[record, "push-gamma"]]),
        # Like the datastore's secrets and tls pushes: the then-step runs provisioning,
        # which must run inside this push's hold, not wait for it.
        "provisioning": push_kind("provisioning", then=[[record, "push-provisioning"],
                                                       [conventions.PROVISION_COMMAND]]),
    }
    started = [*(push(kind) for kind in table), conventions.PROVISION_COMMAND]
    script = prepare(tmp_path, staging_settings, table)
    for i, command in enumerate(started):
        # Every one waits at the same barrier, then starts.
        script.append(f'(while [ ! -e "$T/go" ]; do sleep 0.01; done; {command} > "$T/out{i}" 2>&1;'
                      f' echo $? > "$T/status{i}") &')
    script += ['sleep 0.5; touch "$T/go"; wait',
               'for s in "$T"/status*; do echo "$(basename "$s") $(cat "$s")"; done',
               f"echo '== lock log'; cat {conventions.DROPLET_LOCK_LOG} 2>/dev/null; true"]
    result = sandboxed(tmp_path, "\n".join(script), timeout=100)
    outputs = "\n".join(f"--- {c}\n" + (tmp_path / f"out{i}").read_text() for i, c in enumerate(started)
                        if (tmp_path / f"out{i}").exists())
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(re.findall(r"^status\d+ (\d+)$", result.stdout, re.M)) == ["0"] * len(started), outputs
    lock_log = result.stdout.split("== lock log\n", 1)[1]

    ran = steps((tmp_path / "steps.log").read_text())
    ordered = sorted((start, end, name) for name, _, start, end in ran)
    assert len(ordered) == 7, ordered
    for (_, end, name), (start, _, after) in zip(ordered, ordered[1:]):
        assert end <= start, f"{name} and {after} overlap: {ordered}"

    held = holds(lock_log)
    assert sorted(h for h, _, _ in held.values()) == sorted(
        [*(f"push {kind}" for kind in table), "provision"]), lock_log
    intervals = sorted((took, released, holder) for holder, took, released in held.values())
    for (_, released, holder), (took, _, after) in zip(intervals, intervals[1:]):
        assert released <= took, f"{holder} and {after} overlap:\n{lock_log}"
    # Every step ran inside its own holder's interval (the log has milliseconds).
    for name, pid, start, end in ran:
        _, took, released = held[pid]
        assert took <= start and end <= released + 0.001, (name, lock_log)
    # Provisioning ran twice: on its own, and inside the push whose then-step ran it.
    by_holder = {held[pid][0]: name for name, pid, _, _ in ran if name == "provision"}
    assert by_holder == {"provision": "provision", "push provisioning": "provision"}, ran


def test_a_wait_beyond_the_bound_fails_naming_the_holder(tmp_path, staging_settings, short_wait):
    short_wait(1)
    # The slow push holds the lock until the three others have given up (no fixed time: on
    # a busy machine they may take seconds each).
    released = f"until [ -e {tmp_path}/release-slow ]; do sleep 0.05; done"
    table = {"slow": push_kind("slow", then=[["sh", "-c", released]]), "fast": push_kind("fast", then=[])}
    lock_log = conventions.DROPLET_LOCK_LOG
    script = prepare(tmp_path, staging_settings, table) + [
        f'{push("slow")} > "$T/slow.out" 2>&1 &',
        "slow=$!",
        f"until grep -q 'took droplet lock: push slow' {lock_log} 2>/dev/null; do sleep 0.05; done",
        f'{push("fast")}; echo "== fast $?"',
        f'{conventions.PROVISION_COMMAND}; echo "== provision $?"',
        # The variable alone lets no run skip the lock: the holder it names is no ancestor.
        f'{conventions.DROPLET_LOCK_ENV}=$slow {conventions.PROVISION_COMMAND}; echo "== pretender $?"',
        'touch "$T/release-slow"',
        f'wait; cat "$T/slow.out"; echo "== files $(ls {TEST_DIR})"',
        f"echo '== lock log'; cat {lock_log}",
    ]
    result = sandboxed(tmp_path, "\n".join(script), timeout=60)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    holder = r"push slow \(pid \d+\) since \S+Z"
    for label, who in (("fast", "push fast"), ("provision", "provision"), ("pretender", "provision")):
        assert f"== {label} 1" in out, out
        assert re.search(rf"platform-lock: {who} \(pid \d+\) waited 1s for the droplet lock; "
                         rf"it is still held by {holder}", out), out
    assert "platform-push slow: 1 file(s) changed" in out
    assert "== files slow.conf\n" in out
    assert "provisioning finished" not in out
    lock_lines = out.split("== lock log\n", 1)[1]
    assert re.search(rf"gave up on droplet lock: push fast \(pid \d+\) after 1s; held by {holder}", lock_lines)
    assert re.search(r"released droplet lock: push slow \(pid \d+\)$", lock_lines, re.M)


def test_a_push_that_waited_for_a_failed_provisioning_changes_nothing(tmp_path, staging_settings, short_wait):
    short_wait(30)
    # The failing push's provisioning fails once the later push waits for it.
    failing = (f"until grep -q 'waiting for droplet lock: push later' {conventions.DROPLET_LOCK_LOG}; do sleep 0.05;"
               f" done; echo 'step=test' > {conventions.PROVISION_FAILED_MARKER}; exit 1")
    table = {"failing": push_kind("failing", then=[["sh", "-c", failing]]), "later": push_kind("later", then=[])}
    script = prepare(tmp_path, staging_settings, table) + [
        f'{push("failing")} > "$T/failing.out" 2>&1 &',
        f"until grep -q 'took droplet lock: push failing' {conventions.DROPLET_LOCK_LOG} 2>/dev/null;"
        " do sleep 0.05; done",
        f'{push("later")}; echo "== later $?"',
        f'wait; cat "$T/failing.out"; echo "== files $(ls {TEST_DIR})"',
    ]
    result = sandboxed(tmp_path, "\n".join(script), timeout=60)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "platform-lock: push later" in out and "waits for the droplet lock, held by push failing" in out
    assert "== later 1" in out and "provisioning failed on this droplet" in out, out
    assert "== files failing.conf\n" in out, out


def test_provisionings_last_line_reaches_its_caller_before_it_exits(tmp_path, staging_settings, short_wait):
    # A tee that passes lines on half a second late, as a loaded droplet may schedule it:
    # the caller reads the output the moment provisioning exits (a systemd unit's end
    # would kill a tee left behind), and must find the last line there, failed or not.
    short_wait(30)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/tee").write_text(f'#!/bin/sh\nsleep 0.5\nexec {shutil.which("tee")} "$@"\n')
    (tmp_path / "bin/tee").chmod(0o755)
    provision = f'PATH="$T/bin:$PATH" {conventions.PROVISION_COMMAND} > "$T/out" 2>&1; echo "== status $?"; cat "$T/out"'
    script = prepare(tmp_path, staging_settings, {}) + [
        provision, 'touch "$T/fail-role"', "echo '== failing'", provision]
    result = sandboxed(tmp_path, "\n".join(script), timeout=60)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    succeeded, failed = out.split("== failing\n")
    assert "== status 0" in succeeded and re.search(r"provisioning finished: \d+ change\(s\)\n$", succeeded), out
    assert "== status 1" in failed and re.search(r"provisioning FAILED in step 'role \w+'", failed), out
