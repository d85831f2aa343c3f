"""The roll logic and the CLI with a fake executor: the fleet of fleet.py, servers kept
as data, answering the very argument lists deploy builds, so these tests assert on the
order of commands and on what each server ends up running.
"""

from __future__ import annotations

import io
import json
import shlex
import threading
import time

import pytest

from deploy import __main__ as cli
from deploy import commands, roll
from deploy.executor import Executor, Result
from deploy.release import Build
from model.app_contract import Contract, Process

from fleet import BUILD, NEW, OLD, SERVERS, STACK, FakeTarget, Fleet


def test_a_deploy_uploads_everywhere_first_then_rolls_one_server_at_a_time():
    fleet = Fleet()
    outcome = roll.Deployer(STACK, fleet).deploy(BUILD, keep=5)
    assert outcome.ok
    server_log = [(host, action) for host, action in fleet.log if host != "lock"]
    a1, a2, a3 = (s.address for s in SERVERS)
    assert server_log == [
        (a1, "list"), (a2, "list"), (a3, "list"),
        (a1, f"rsync {NEW}"), (a1, f"accept {NEW}"),
        (a2, f"rsync {NEW}"), (a2, f"accept {NEW}"),
        (a3, f"rsync {NEW}"), (a3, f"accept {NEW}"),
        (a1, f"contract {NEW}"), (a1, f"start-check {NEW}"), (a1, f"switch {NEW}"), (a1, "reload"),
        (a1, "health 60"),
        (a1, f"activated {NEW}"),
        (a2, f"contract {NEW}"), (a2, f"start-check {NEW}"), (a2, f"switch {NEW}"), (a2, "reload"),
        (a2, "health 60"),
        (a2, f"activated {NEW}"),
        (a3, f"contract {NEW}"), (a3, f"start-check {NEW}"), (a3, f"switch {NEW}"), (a3, "reload"),
        (a3, "health 60"),
        (a3, f"activated {NEW}"),
        (a1, "prune 5"), (a2, "prune 5"), (a3, "prune 5"),
    ]
    assert all(s.running == NEW for s in fleet.servers.values())


def test_a_server_that_does_not_get_healthy_is_switched_back_and_the_roll_stops():
    fleet = Fleet(unhealthy={(SERVERS[1].address, NEW)})
    outcome = roll.Deployer(STACK, fleet).deploy(BUILD, keep=5)
    assert not outcome.ok
    first, second, third = (fleet.servers[s.address] for s in SERVERS)
    assert first.running == NEW                       # done before the bad one
    assert (second.current, second.running) == (OLD, OLD)   # switched back and reloaded
    assert (third.current, third.running) == (OLD, OLD)     # never touched
    a2, a3 = SERVERS[1].address, SERVERS[2].address
    assert [a for h, a in fleet.log if h == a2][-8:] == [
        f"switch {NEW}", "reload", "health 60", "journal 2000", f"switch {OLD}", "reload", "health 60",
        f"activated {OLD}"]
    assert fleet.servers[a2].activated == [OLD, OLD], "the release that failed is never recorded as healthy"
    assert [a for h, a in fleet.log if h == a3 and a.startswith(("switch", "reload"))] == []
    assert not [a for h, a in fleet.log if a.startswith("prune")], "nothing is pruned after a failed roll"
    text = "\n".join(roll.summary(outcome))
    assert "deploy: STOPPED" in text
    assert f"app-2: {NEW} failed" in text and f"switched back to {OLD}" in text
    assert "app-3: not touched" in text


def test_a_release_that_fails_its_start_check_is_never_switched_to_and_the_roll_stops_there():
    a1, a2, a3 = (s.address for s in SERVERS)
    fleet = Fleet(fails_to_start={(a2, NEW)})
    outcome = roll.Deployer(STACK, fleet).deploy(BUILD, keep=5)
    assert not outcome.ok
    assert [a for h, a in fleet.log if h == a2][-3:] == [f"accept {NEW}", f"contract {NEW}", f"start-check {NEW}"], \
        "no switch, no reload"
    assert [a for h, a in fleet.log if h == a3 and a.startswith(("contract", "start-check", "switch", "reload"))] == []
    assert (fleet.servers[a1].running, fleet.servers[a2].running, fleet.servers[a3].running) == (NEW, OLD, OLD)
    assert fleet.servers[a2].current == OLD and fleet.journal_since == [], "nothing ran there: no journal to show"
    said = fleet.printed()
    assert ("[app-2] FAILED app-2: start 20261129T213005Z-bbbbbbb once beside the running apps: exit 1: api: FAILED: "
            "it exited (code 1) before it said ready; not switched: still on 20261129T100000Z-aaaaaaa") in said
    assert "  ! " + "  api: Error: Cannot find module 'pg'" in said, "what the process wrote is shown"
    text = "\n".join(roll.summary(outcome))
    assert f"app-2: {NEW} failed (app-2: start {NEW} once beside the running apps: exit 1: api: FAILED: " in text
    assert f"not switched: still on {OLD}" in text and "app-3: not touched" in text
    # The start check is run with the release's processes that serve a route, and pm2's waits.
    command = next(argv for argv in fleet.argvs if "node" in argv[-1])
    assert json.loads(shlex.split(command[-1])[-1]) == {
        "processes": [{"name": "web", "script": "web/server.js", "health": None},
                      {"name": "api", "script": "api/server.js", "health": "/healthz"}],
        "ready_ms": 10000, "stop_ms": 8000, "health_ms": 60000}


def test_the_start_check_leaves_workers_alone_and_asks_the_api_at_the_contracts_health_path():
    contract = Contract((Process("site", "dist/site.js", "/"), Process("api", "api/server.js", "/api/", 2),
                         Process("worker", "worker.js")), health="/ready")
    command = commands.start_check(STACK, SERVERS[0], NEW, contract, 25)
    assert json.loads(shlex.split(command.argv[-1])[-1])["processes"] == [
        {"name": "site", "script": "dist/site.js", "health": None},
        {"name": "api", "script": "api/server.js", "health": "/ready"}]
    assert command.stdin == commands.START_CHECK_SCRIPT.read_text() and command.stdin.startswith("// The start check")


JOURNAL = """\
2026-11-29T21:30:08+0000 staging-app-1 systemd[1]: Reloading platform-apps.service - The platform's Node.js apps (pm2)...
2026-11-29T21:30:08+0000 staging-app-1 platform-apps-reload[901]: [PM2] Applying action reloadProcessId on app [api]
2026-11-29T21:30:09+0000 staging-app-1 pm2-runtime[812]: 2026-11-29T21:30:09: PM2 log: App [api:1] starting in -cluster mode-
2026-11-29T21:30:09+0000 staging-app-1 pm2-runtime[812]: 1|api  | 2026-11-29T21:30:09: Error: Cannot find module 'pg'
2026-11-29T21:30:09+0000 staging-app-1 pm2-runtime[812]: 1|api  |     at Module._resolveFilename (node:internal/modules/cjs/loader:1145:15)
2026-11-29T21:30:09+0000 staging-app-1 pm2-runtime[812]: 2026-11-29T21:30:09: PM2 log: App [api:1] exited with code [1] via signal [SIGINT]
2026-11-29T21:30:19+0000 staging-app-1 platform-apps-reload[901]: │ 1  │ api       │ default     │ errored   │
2026-11-29T21:30:19+0000 staging-app-1 platform-apps-reload[897]: platform-apps-reload: pm2 gave up on api: it kept exiting
2026-11-29T21:30:19+0000 staging-app-1 systemd[1]: Reload failed for platform-apps.service - The platform's Node.js apps (pm2).
"""


def test_a_release_pm2_gives_up_on_stops_at_the_reload_shows_what_the_apps_said_and_is_switched_back():
    a1 = SERVERS[0].address
    fleet = Fleet(dies={(a1, NEW)}, journal={(a1, NEW): JOURNAL})
    before = time.time()
    outcome = roll.Deployer(STACK, fleet).deploy(BUILD, keep=5)
    assert not outcome.ok
    assert [a for h, a in fleet.log if h == a1][-7:] == [
        f"switch {NEW}", "reload", "journal 2000", f"switch {OLD}", "reload", "health 60", f"activated {OLD}"]
    said = fleet.printed()
    assert "[app-1] FAILED app-1: reload the apps: exit 1" in said
    assert ("[app-1] what the apps and the reload said since the switch (the last 3 lines):\n"
            "[app-1]   api: Error: Cannot find module 'pg'\n"
            "[app-1]   api:     at Module._resolveFilename (node:internal/modules/cjs/loader:1145:15)\n"
            "[app-1]   platform-apps-reload: pm2 gave up on api: it kept exiting\n") in said, said
    assert before - 6 <= fleet.journal_since[0] <= before, "from just before the switch"
    assert all(s.running == OLD for s in fleet.servers.values())


def test_a_server_without_the_journal_wrapper_still_switches_back_and_says_why_nothing_is_shown():
    fleet = Fleet(dies={(SERVERS[0].address, NEW)}, journal=None)
    outcome = roll.Deployer(STACK, fleet).deploy(BUILD, keep=5)
    assert not outcome.ok and all(s.running == OLD for s in fleet.servers.values())
    assert ("[app-1] the apps' journal could not be read (exit 1: sudo: a password is required); a server "
            "provisioned before this version has no journal wrapper: pulumi up with this one") in fleet.printed()


def test_the_cli_exits_non_zero_when_the_roll_stops_and_still_releases_the_lock(monkeypatch):
    fleet = Fleet(unhealthy={(SERVERS[0].address, NEW)})
    monkeypatch.setattr(cli.release, "build", lambda app, work, executor: BUILD)
    monkeypatch.setattr(cli, "target_of", lambda args, executor: FakeTarget())
    assert cli.main(["deploy", "staging"], executor=fleet) == cli.EXIT_STOPPED
    assert fleet.locks == {}
    assert all(s.running == OLD for s in fleet.servers.values())
    a1, a2, a3 = (s.address for s in SERVERS)
    assert [a for h, a in fleet.log if h == "lock"] == [
        f"lock {a1}", f"lock {a2}", f"lock {a3}", f"unlock {a3}", f"unlock {a2}", f"unlock {a1}"]


def test_a_second_deploy_is_refused_naming_who_holds_the_lock_and_since_when(monkeypatch):
    fleet = Fleet(lock_holder="alice@laptop since 2026-11-29T21:30:05Z (deploy, pid 4242)")
    monkeypatch.setattr(cli, "target_of", lambda args, executor: FakeTarget())
    monkeypatch.setattr(cli.release, "build", lambda *a: pytest.fail("a refused deploy builds nothing"))
    assert cli.main(["deploy", "staging"], executor=fleet) == cli.EXIT_LOCKED
    assert ("refused: staging is locked: a deploy by alice@laptop since 2026-11-29T21:30:05Z (deploy, pid 4242) "
            "holds it (on app-1). If that deploy is no longer running, run again with --break-lock.") in fleet.printed()
    assert set(fleet.locks.values()) == {fleet.lock_holder}, "the other deploy's locks stay"
    assert all(s.current == OLD for s in fleet.servers.values())


def test_break_lock_removes_a_stale_lock_says_whose_and_deploys(monkeypatch):
    fleet = Fleet(lock_holder="alice@laptop since 2026-11-28T09:00:00Z (deploy, pid 4242)")
    monkeypatch.setattr(cli, "target_of", lambda args, executor: FakeTarget())
    monkeypatch.setattr(cli.release, "build", lambda app, work, executor: BUILD)
    assert cli.main(["deploy", "staging", "--break-lock"], executor=fleet) == 0
    assert "removed the lock of alice@laptop since 2026-11-28T09:00:00Z" in fleet.printed()
    addresses = [s.address for s in SERVERS]
    assert [a for h, a in fleet.log if h == "lock"] == (
        [f"break-lock {a}" for a in addresses] + [f"lock {a}" for a in addresses]
        + [f"unlock {a}" for a in reversed(addresses)])
    assert fleet.locks == {}
    assert all(s.running == NEW for s in fleet.servers.values())


def test_rollback_returns_every_server_to_the_release_before_current():
    fleet = Fleet()
    roll.Deployer(STACK, fleet).deploy(BUILD, keep=5)
    outcome = roll.Deployer(STACK, fleet).rollback(None)
    assert outcome.ok
    assert all((s.current, s.running) == (OLD, OLD) for s in fleet.servers.values())


def test_a_rollback_checks_its_releases_start_as_the_server_holds_it():
    a1, a2, _ = (s.address for s in SERVERS)
    fleet = Fleet()
    roll.Deployer(STACK, fleet).deploy(BUILD, keep=5)
    fleet.fails_to_start = {(a2, OLD)}
    outcome = roll.Deployer(STACK, fleet).rollback(None)
    assert not outcome.ok
    assert [a for h, a in fleet.log if h == a1][-6:] == [
        f"contract {OLD}", f"start-check {OLD}", f"switch {OLD}", "reload", "health 60", f"activated {OLD}"]
    assert [a for h, a in fleet.log if h == a2][-2:] == [f"contract {OLD}", f"start-check {OLD}"]
    assert [fleet.servers[a].running for a in (a1, a2)] == [OLD, NEW]
    assert f"app-2: {OLD} failed (" in "\n".join(roll.summary(outcome))


def test_a_release_whose_platform_json_is_not_a_contract_is_not_switched_to_naming_the_problem():
    fleet = Fleet(contracts={NEW: '{"processes": {"api": {"script": "api/server.js", "serves": "/v2/"}}}'})
    outcome = roll.Deployer(STACK, fleet).deploy(BUILD, keep=5)
    assert not outcome.ok and all(s.running == OLD for s in fleet.servers.values())
    assert not [a for _, a in fleet.log if a.startswith(("start-check", "switch"))]
    said = fleet.printed()
    assert f"[app-1] FAILED app-1: {NEW}/platform.json: 3 problem(s): processes.api.serves: '/v2/' is not " in said
    fleet = Fleet(contracts={NEW: "{not json"})
    roll.Deployer(STACK, fleet).deploy(BUILD, keep=5)
    assert f"[app-1] FAILED app-1: {NEW}/platform.json: 1 problem(s): not JSON: " in fleet.printed()


def test_rollback_to_a_named_release_refuses_before_touching_anything_when_a_server_lacks_it():
    fleet = Fleet()
    roll.Deployer(STACK, fleet).deploy(BUILD, keep=5)
    fleet.servers[SERVERS[2].address].releases.remove(OLD)
    with pytest.raises(roll.DeployError, match=f"app-3: does not hold {OLD}"):
        roll.Deployer(STACK, fleet).rollback(OLD)
    assert all(s.running == NEW for s in fleet.servers.values())


def test_releases_lists_each_server_newest_first_with_the_current_one_marked():
    fleet = Fleet()
    roll.Deployer(STACK, fleet).deploy(BUILD, keep=5)
    lines = roll.releases_table(roll.Deployer(STACK, fleet).releases())
    assert lines[:3] == ["app-1 (10.110.16.3):", f"  * {NEW}", f"    {OLD}"]


def test_secrets_are_redacted_in_commands_and_output():
    out = io.StringIO()
    executor = Executor(secrets=["s3cr3t-token", "s3cr3t"], verbose=True, out=out)
    executor.run(["sh", "-c", "echo token=s3cr3t-token; echo pw=s3cr3t", "s3cr3t"])
    printed = out.getvalue()
    assert "s3cr3t" not in printed
    assert "token=[REDACTED]" in printed and "pw=[REDACTED]" in printed


def test_secrets_from_the_environment_are_redacted(monkeypatch):
    monkeypatch.setenv("NPM_TOKEN", "npm_abcdef123456")
    out = io.StringIO()
    executor = Executor(out=out)
    executor.say("npm error: //registry/:_authToken=npm_abcdef123456")
    assert out.getvalue() == "npm error: //registry/:_authToken=[REDACTED]\n"


def test_a_command_run_with_progress_is_shown_line_by_line_as_it_runs():
    """`deploy restart`'s drain may wait a minute and says so as it starts waiting."""
    executor = Executor(secrets=[], out=io.StringIO())
    shown = []
    result = executor.run(["bash", "-c", "echo waiting; sleep 2; echo done >&2; exit 3"],
                          progress=lambda line: shown.append((line, time.monotonic())))
    ended = time.monotonic()
    assert [line for line, _ in shown] == ["waiting", "done"]
    assert ended - shown[0][1] > 1, "the first line was shown only once the command had ended"
    assert (result.returncode, result.output, result.last_line) == (3, "waiting\ndone\n", "done")
    # 3 s: time for bash to start and say its line on a busy machine.
    timed_out = executor.run(["bash", "-c", "echo started; sleep 30"], timeout=3, progress=lambda line: None)
    assert (timed_out.returncode, timed_out.output) == (124, "timed out after 3s: started\n")


class SlowTerminal(io.StringIO):
    """A terminal that takes a moment per write, as a slow pipe or SSH session does."""

    def write(self, text: str) -> int:
        time.sleep(0.001)
        return super().write(text)


def test_lines_said_from_several_threads_are_printed_whole():
    """The deploy says its lines while its start notification may say one beside it, and
    `follow` relays every server's lines at once."""
    executor = Executor(secrets=[], out=SlowTerminal())
    said = {f"thread-{n}": [f"thread-{n} line {i}" for i in range(40)] for n in range(4)}
    threads = [threading.Thread(target=lambda lines=lines: [executor.say(line) for line in lines])
               for lines in said.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    printed = executor.out.getvalue().splitlines()
    assert sorted(printed) == sorted(line for lines in said.values() for line in lines)


def test_keep_below_two_is_refused(capsys):
    with pytest.raises(SystemExit):
        cli.main(["deploy", "staging", "--keep", "1"], executor=Fleet())
    assert "--keep must be at least 2" in capsys.readouterr().err


def test_rollback_skips_a_release_that_never_ran_healthy():
    """A stopped deploy leaves its release on disk, newest of all; rollback returns to the
    release that ran before the current one, not to that one."""
    fleet = Fleet()
    roll.Deployer(STACK, fleet).deploy(BUILD, keep=5)                 # OLD -> NEW everywhere
    fleet.unhealthy = {(SERVERS[0].address, "20261129T220000Z-badbad0")}
    roll.Deployer(STACK, fleet).deploy(Build("20261129T220000Z-badbad0", "/tmp/x"), keep=5)   # stops, back on NEW
    outcome = roll.Deployer(STACK, fleet).rollback(None)
    assert outcome.ok
    assert all((s.current, s.running) == (OLD, OLD) for s in fleet.servers.values())


def test_a_changed_host_key_stops_the_deploy_naming_the_droplet_before_anything_is_sent(monkeypatch):
    class Changed(Fleet):
        def run(self, argv, *, input=None, timeout=900):
            if argv[0] == "ssh" and argv[-2:] == [SERVERS[1].address, "true"]:
                return Result(argv, 255, "Host key for staging-app-2 has changed and you have requested strict "
                                         "checking.\nHost key verification failed.\n")
            return super().run(argv, input=input, timeout=timeout)

    fleet = Changed()
    monkeypatch.setattr(cli, "target_of", lambda args, executor: FakeTarget())
    assert cli.main(["deploy", "staging"], executor=fleet) == cli.EXIT_STOPPED
    assert fleet.log == [] and fleet.locks == {}   # no lock, no upload, no switch
    said = fleet.out.getvalue()
    assert "deploy: staging-app-2: host key: exit 255" in said and "Host key for staging-app-2 has changed" in said


def test_a_lock_held_on_a_later_server_refuses_the_deploy_and_the_locks_taken_before_it_are_let_go(monkeypatch):
    """Deploys that see the pool differently still meet on a server they share: the one that
    finds app-2 held is refused there and releases app-1, which it had taken."""
    a1, a2, a3 = (s.address for s in SERVERS)
    fleet = Fleet(locks={a2: "bob@ci since 2026-11-29T21:30:05Z (deploy, pid 7)"})
    monkeypatch.setattr(cli, "target_of", lambda args, executor: FakeTarget())
    monkeypatch.setattr(cli.release, "build", lambda *a: pytest.fail("a refused deploy builds nothing"))
    assert cli.main(["deploy", "staging"], executor=fleet) == cli.EXIT_LOCKED
    assert "a deploy by bob@ci since 2026-11-29T21:30:05Z (deploy, pid 7) holds it (on app-2)" in fleet.printed()
    assert fleet.locks == {a2: "bob@ci since 2026-11-29T21:30:05Z (deploy, pid 7)"}, "app-1 let go, app-2 untouched"
    assert [a for h, a in fleet.log if h == "lock"] == [f"lock {a1}", f"lock {a2}", f"unlock {a1}"]
    assert all(s.current == OLD for s in fleet.servers.values())
