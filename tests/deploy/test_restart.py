"""deploy restart: which servers' apps restart, in what order against the LB's pool, and
what is left when one does not come back (the fake fleet of fleet.py)."""

from __future__ import annotations

import dataclasses
import shlex

import deploy.__main__ as cli
from deploy import commands
from model import conventions

from fleet import NEW, OLD, SERVERS, STACK, FakeTarget, Fleet

A1, A2, A3 = (s.address for s in SERVERS)


def restart(fleet: Fleet, monkeypatch, *args: str) -> int:
    monkeypatch.setattr(cli, "target_of", lambda args, executor: FakeTarget())
    return cli.main(["restart", "staging", *args], executor=fleet)


def steps(fleet: Fleet) -> list[tuple[str, str]]:
    """The LB's pool changes and the restarts and health checks, in order."""
    return [(host, action) for host, action in fleet.log
            if host == "lb" and action != "status" or action in ("restart", "health 60")]


def test_the_drain_and_the_restart_run_as_ops_the_health_as_deploy():
    drain = commands.drain(STACK, "on", SERVERS[1])
    assert drain.argv[-2] == f"{conventions.OPERATOR_USER}@{STACK.jump_host}"
    assert shlex.split(drain.argv[-1]) == ["sudo", "-n", conventions.DRAIN_COMMAND, "on", A2]
    assert shlex.split(commands.drain(STACK, "status").argv[-1]) == ["sudo", "-n", conventions.DRAIN_COMMAND, "status"]
    restarted = commands.restart_apps(STACK, SERVERS[0])
    assert restarted.argv[-2] == A1 and restarted.argv[restarted.argv.index("-l") + 1] == conventions.OPERATOR_USER
    assert shlex.split(restarted.argv[-1]) == ["sudo", "-n", "systemctl", "restart", conventions.APPS_UNIT]
    assert not any("ControlPath" in a for a in restarted.argv), "a connection of its own, not deploy's shared one"


def test_only_the_servers_whose_unit_changed_restart_each_out_of_the_pool_meanwhile(monkeypatch):
    fleet = Fleet()
    fleet.servers[A1].unit_changed = fleet.servers[A3].unit_changed = True
    assert restart(fleet, monkeypatch) == 0
    assert steps(fleet) == [("lb", f"on {A1}"), (A1, "restart"), (A1, "health 60"), ("lb", f"off {A1}"),
                            ("lb", f"on {A3}"), (A3, "restart"), (A3, "health 60"), ("lb", f"off {A3}")]
    assert [s.restarts for s in fleet.servers.values()] == [1, 0, 1] and fleet.drained == set()
    assert fleet.locks == {}, "under the deploy lock, released at the end"
    assert [a for h, a in fleet.log if h == "lock"][:3] == [f"lock {A1}", f"lock {A2}", f"lock {A3}"]
    printed = fleet.printed()
    assert "[app-1] restarting the apps (its unit's file changed after the apps started)" in printed
    # The drain's lines as it says them: why it waits, then how long it took.
    assert (f"[app-1] drain: {A1}: marked down; waiting up to 60s for the LB's workers from before the reload, "
            f"which may still be answering its requests\n[app-1] drain: {A1}: drained in 1s\n[app-1] restarted") in printed
    assert "restart: done (app-1, app-3)" in printed


def test_nothing_changed_nothing_restarts(monkeypatch):
    fleet = Fleet()
    assert restart(fleet, monkeypatch) == 0
    assert steps(fleet) == [] and "restart: nothing to restart" in fleet.printed()


def test_a_server_whose_app_pm2_gave_up_on_is_restarted(monkeypatch):
    fleet = Fleet()
    fleet.servers[A2].idle = ("api",)
    assert restart(fleet, monkeypatch) == 0
    assert steps(fleet) == [("lb", f"on {A2}"), (A2, "restart"), (A2, "health 60"), ("lb", f"off {A2}")]
    assert "[app-2] restarting the apps (no worker of api: pm2 gave up on it, or it was stopped)" in fleet.printed()
    assert fleet.servers[A2].idle == ()


def test_a_server_that_does_not_come_back_healthy_stays_out_of_the_pool_and_the_next_run_brings_it_back(monkeypatch):
    fleet = Fleet(restart_breaks={A1})
    for server in fleet.servers.values():
        server.unit_changed = True
    assert restart(fleet, monkeypatch) == cli.EXIT_STOPPED
    assert steps(fleet) == [("lb", f"on {A1}"), (A1, "restart"), (A1, "health 60")]
    assert fleet.drained == {A1} and fleet.locks == {}
    assert "restart: app-1: its apps did not come back healthy; it stays out of the LB's pool until a restart " \
           "brings it back healthy" in fleet.printed()
    assert (A1, "journal 2000") in fleet.log, "what the apps said is shown, as a failed deploy's"
    assert "[app-1] what the apps and the reload said since the restart" in fleet.printed()
    # Fixed (here: a release that is healthy): the next run restarts it, as it is out of the
    # pool, and puts it back; then the others, still changed.
    fleet.log.clear()
    fleet.restart_breaks.clear()
    fleet.servers[A1].current = NEW
    assert restart(fleet, monkeypatch) == 0
    assert steps(fleet)[:4] == [("lb", f"on {A1}"), (A1, "restart"), (A1, "health 60"), ("lb", f"off {A1}")]
    assert "[app-1] restarting the apps (out of the LB's pool since an earlier restart or a failed bundle push)" in fleet.printed()
    assert fleet.drained == set() and all(s.restarts for s in fleet.servers.values())


def test_a_server_unhealthy_before_and_after_its_restart_goes_back_in_the_pool_as_it_was(monkeypatch):
    """The datastore down: every server unhealthy; a restart does not help, and a server kept
    out would stay out once the datastore is back."""
    fleet = Fleet(unhealthy={(a, OLD) for a in (A1, A2, A3)})
    assert restart(fleet, monkeypatch) == cli.EXIT_STOPPED
    assert steps(fleet) == [("lb", f"on {A1}"), (A1, "restart"), (A1, "health 60"), ("lb", f"off {A1}")]
    assert fleet.drained == set() and fleet.locks == {}
    assert "[app-1] restarting the apps (not healthy: the apps' unit active, /healthz 502)" in fleet.printed()
    assert ("restart: app-1: its apps did not come back healthy; it was not healthy before either: back in the "
            "LB's pool, as it was") in fleet.printed()
    # Out of the pool before (an earlier restart left it out): it stays out.
    fleet = Fleet(unhealthy={(A1, OLD)}, drained={A1})
    assert restart(fleet, monkeypatch) == cli.EXIT_STOPPED
    assert fleet.drained == {A1} and "it stays out of the LB's pool until a restart" in fleet.printed()


def test_a_drain_that_does_not_finish_puts_the_server_back_and_restarts_nothing(monkeypatch):
    fleet = Fleet(drain_fails=True)
    fleet.servers[A2].unit_changed = True
    assert restart(fleet, monkeypatch) == cli.EXIT_STOPPED
    assert steps(fleet) == [("lb", f"on {A2}"), ("lb", f"off {A2}")]
    assert fleet.drained == set() and all(s.restarts == 0 for s in fleet.servers.values())
    assert "app-2: could not be taken out of the LB's pool (exit 1: platform-drain: 10.110.16.4 is marked down, " \
           "but nginx workers from before still run after 60s" in fleet.printed()


def test_a_pool_of_one_is_restarted_in_place_saying_requests_fail_meanwhile(monkeypatch):
    fleet = Fleet()
    fleet.servers[A1].unit_changed = True
    alone = dataclasses.replace(STACK, servers=SERVERS[:1])
    monkeypatch.setattr(FakeTarget, "resolve", lambda self: alone)
    monkeypatch.setattr(cli, "target_of", lambda args, executor: FakeTarget())
    assert cli.main(["restart", "staging"], executor=fleet) == 0
    assert steps(fleet) == [(A1, "restart"), (A1, "health 60")], "no drain: the LB has no other server to send to"
    assert "[app-1] the only app server: requests fail while its apps restart" in fleet.printed()


def test_a_key_that_is_not_an_operators_is_refused_before_any_server_leaves_the_pool(monkeypatch):
    fleet = Fleet(operator_refused=True)
    fleet.servers[A1].unit_changed = True
    assert restart(fleet, monkeypatch) == cli.EXIT_STOPPED
    assert steps(fleet) == [] and fleet.locks == {}
    assert "restart: the LB's pool could not be read (it needs an operator's key (ops on the LB, sshPublicKeys)): " \
           "exit 255: ops@198.51.100.2: Permission denied (publickey)." in fleet.printed()
