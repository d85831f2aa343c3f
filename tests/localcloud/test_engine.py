"""The local cloud's runner behaves as the Pulumi engine and pulumi-command do.

The scheduling (engine.run) with a recording executor; the SSH client's tries, waits and
refused handshakes (pulumi_ssh) against real sshd processes on loopback.
"""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from localcloud import engine, pulumi_ssh
from localcloud.plan import LocalCommand

from sshd_on_loopback import connections, free_port

# --- scheduling -----------------------------------------------------------------------


def local(name: str, needs=(), changed=True) -> LocalCommand:
    return LocalCommand(name, "true", ("/bin/sh", "-c"), {}, frozenset(needs), changed)


class Recorder:
    """An executor that sleeps, fails where told, and records when each command ran."""

    def __init__(self, seconds: float = 0.3, fail: set[str] = frozenset(), slow: dict[str, float] | None = None):
        self.seconds, self.fail, self.slow, self.spans, self.lock = seconds, fail, slow or {}, {}, threading.Lock()
        self.t0 = time.monotonic()

    def __call__(self, c):
        began = time.monotonic() - self.t0
        time.sleep(self.slow.get(c.name, self.seconds))
        with self.lock:
            self.spans[c.name] = (began, time.monotonic() - self.t0)
        return (1, "failed on purpose\n") if c.name in self.fail else (0, "")

    def most_at_once(self) -> int:
        edges = sorted([(b, 1) for b, _ in self.spans.values()] + [(e, -1) for _, e in self.spans.values()],
                       key=lambda edge: (edge[0], edge[1]))
        return max(itertools.accumulate(step for _, step in edges))


def test_independent_commands_start_together_up_to_the_parallelism():
    rec = Recorder()
    results = engine.run([local(f"c{i}") for i in range(6)], parallelism=4, execute=rec)
    assert all(r.status == "ok" for r in results)
    assert rec.most_at_once() == 4
    first = sorted(b for b, _ in rec.spans.values())[:4]
    assert max(first) - min(first) < 0.2   # the first four started at the same instant


def test_a_command_starts_as_soon_as_what_it_depends_on_is_done_and_not_before():
    rec = Recorder(seconds=0.2)
    commands = [local("gate"), local("slow"), local("push", needs={"gate"})]
    rec_slow = {"slow"}

    def execute(c):
        if c.name in rec_slow:
            time.sleep(1.0)
        return rec(c)

    engine.run(commands, parallelism=8, execute=execute)
    assert rec.spans["push"][0] >= rec.spans["gate"][1]
    assert rec.spans["push"][0] < rec.spans["slow"][1]   # it did not wait for an unrelated command


def test_after_a_failure_nothing_new_starts_and_the_failed_command_is_reported():
    # b outlasts a's failure by far, so the failure comes first however loaded the machine.
    rec = Recorder(seconds=0.05, fail={"a"}, slow={"b": 1.5})
    commands = [local("a"), local("b"), local("after-a", needs={"a"}), local("after-b", needs={"b"})]
    results = {r.name: r for r in engine.run(commands, parallelism=2, execute=rec)}
    assert results["a"].status == "failed" and results["a"].returncode == 1
    assert results["b"].status == "ok"            # already running: it finishes
    assert results["after-a"].status == "not run" and results["after-b"].status == "not run"
    assert set(rec.spans) == {"a", "b"}


def test_only_new_or_changed_commands_run():
    rec = Recorder(seconds=0.01)
    results = engine.run([local("kept", changed=False), local("new", needs={"kept"})], execute=rec)
    assert [r.status for r in results] == ["unchanged", "ok"] and set(rec.spans) == {"new"}


def test_a_local_command_runs_here_with_its_environment():
    c = LocalCommand("echo", 'printf "%s\\n" "$GREETING"; echo said >&2', ("/bin/sh", "-c"), {"GREETING": "hello"})
    assert engine.execute(c) == (0, "said\nhello\n", "hello")   # stdout alone, less its final newline


# --- pulumi-command's dial semantics ---------------------------------------------------


def test_the_waits_between_tries_are_pulumis():
    waits = list(itertools.islice(pulumi_ssh.delays(), 12))
    assert waits[:4] == pytest.approx([0.1, 0.15, 0.225, 0.3375])
    assert waits[-1] == 5.0 and max(waits) == 5.0
    # Ten refused dials, the default limit: about 11 seconds of waiting, then the error.
    assert sum(waits[:10]) == pytest.approx(11.33, abs=0.01)


def test_a_dial_is_tried_limit_plus_one_times():
    tries, slept = [], []

    def refused():
        tries.append(1)
        raise ConnectionRefusedError("connection refused")

    with pytest.raises(pulumi_ssh.DialFailed, match="after 10 failed attempts"):
        pulumi_ssh.with_retries("Dial", 10, refused, log=lambda line: None, sleep=slept.append)
    assert len(tries) == 11 and len(slept) == 10


# --- against real sshd ----------------------------------------------------------------

@pytest.mark.sandbox  # runs sshd (root)
def test_a_command_runs_with_its_stdin_and_exit_code(sshd):
    start, hop = sshd
    port, _ = start("open", lets_in=True)
    code, output = pulumi_ssh.run(hop(port), None, "cat; echo to-stderr >&2; exit 3", "payload\n", log=print)
    assert code == 3 and "payload" in output and "to-stderr" in output


@pytest.mark.sandbox  # runs sshd (root)
def test_through_a_jump_host_a_refused_login_is_not_tried_again(sshd):
    start, hop = sshd
    jump, _ = start("jump", lets_in=True)
    target, target_log = start("refusing", lets_in=False)
    before, began = connections(target_log), time.monotonic()
    code, output = pulumi_ssh.run(hop(target, limit=3), hop(jump), "true", log=print)
    assert code == 255 and "use of closed network connection" in output
    assert connections(target_log) - before == 1          # one handshake, over one connection
    assert time.monotonic() - began < 5          # three waits of 0.1-0.225 s, then the error


@pytest.mark.sandbox  # runs sshd (root)
def test_directly_a_refused_login_is_tried_again_on_a_new_connection(sshd):
    start, hop = sshd
    target, target_log = start("refusing", lets_in=False)
    before = connections(target_log)
    code, output = pulumi_ssh.run(hop(target, limit=3), None, "true", log=print)
    assert code == 255 and "after 3 failed attempts" in output
    assert connections(target_log) - before == 4


@pytest.mark.sandbox  # runs sshd (root)
def test_the_jump_host_has_its_own_limit(sshd):
    start, hop = sshd
    target, _ = start("open", lets_in=True)
    closed = free_port()   # nothing listens: every dial to the jump host is refused
    tries = []
    code, output = pulumi_ssh.run(hop(target, limit=60), hop(closed, limit=2), "true",
                                  log=lambda line: tries.append(line))
    assert code == 255 and output.startswith("proxy: Dial proxy: after 2 failed attempts")
