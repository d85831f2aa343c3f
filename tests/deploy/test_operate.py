"""The operators' verbs (status, logs, exec): the commands built, the arguments refused
before any server is contacted, the status table and its exit code, the merged logs."""

from __future__ import annotations

import io
import shlex

import pytest

import deploy.__main__ as cli
from deploy import commands, operate
from deploy.executor import Executor, Result
from deploy.records import Server, Stack
from model import conventions

APP1, APP2 = Server("app-1", "10.110.16.3"), Server("app-2", "10.110.16.4")
STACK = Stack("staging", "198.51.100.2", (APP1, APP2), identity="/keys/operator")


def remote_argv(command) -> list[str]:
    return shlex.split(command.argv[-1])


def test_status_and_logs_run_remote_sh_as_deploy_without_sudo():
    status = commands.status(STACK, APP1)
    assert status.argv[-2] == APP1.address and remote_argv(status) == ["bash", "-s", "--", "status"]
    assert status.argv[status.argv.index("-l") + 1] == conventions.DEPLOY_USER
    assert f"APPS_UNIT={conventions.APPS_UNIT}\n" in status.stdin and f"APP_USER={conventions.APP_USER}\n" in status.stdin
    logs = commands.logs(STACK, APP2, 20, "10 minutes ago", True, ("web", "api"))
    assert logs.argv[-2] == APP2.address
    assert remote_argv(logs) == ["bash", "-s", "--", "logs", "20", "10 minutes ago", "follow", "web", "api"]
    assert f"LOG_DIR={conventions.PM2_LOG_DIR}\n" in logs.stdin
    assert remote_argv(commands.logs(STACK, APP1, 50, None, False)) == ["bash", "-s", "--", "logs", "50", "-", "once"]


def test_exec_sends_the_command_word_for_word_to_the_wrapper_as_app():
    command = ["sh", "-c", "echo \"$POSTGRESQL_HOST\"; exit 7", "it's", "--server"]
    built = commands.app_exec(STACK, APP2, command)
    assert built.argv[-2] == APP2.address and built.stdin is None
    assert remote_argv(built) == ["sudo", "-n", "-u", conventions.APP_USER, "/usr/local/sbin/platform-app-exec", "--",
                                  *command]


def test_exec_with_tty_asks_for_a_terminal_on_the_app_server_alone():
    """-t for the last hop only: the jump host's deploy login may have no terminal (PermitTTY no)."""
    plain, with_tty = commands.app_exec(STACK, APP2, ["node"]), commands.app_exec(STACK, APP2, ["node"], tty=True)
    assert with_tty.argv[-3:-1] == ["-t", APP2.address]
    assert with_tty.argv[:-3] == plain.argv[:-2] and "-t" not in plain.argv
    assert remote_argv(with_tty) == remote_argv(plain)


@pytest.mark.parametrize("since, words", [("10m", "10 minutes ago"), ("30s", "30 seconds ago"), ("2h", "2 hours ago"),
                                          ("1d", "1 days ago"), ("2026-12-02", "2026-12-02"),
                                          ("2026-12-02T07:00", "2026-12-02 07:00"), (None, None)])
def test_since_becomes_words_date_reads(since, words):
    assert operate.since_words(since) == words


@pytest.mark.parametrize("argv, message", [
    (["logs", "staging", "--since", "yesterday"],
     "logs: --since 'yesterday': give a duration (30s, 10m, 2h, 1d) or a moment"),
    (["logs", "staging", "--since", "0m"], "logs: --since '0m': give a duration"),
    (["logs", "staging", "--since", "10m\n"], "logs: --since '10m\\n': give a duration"),
    (["logs", "staging", "--lines", "0"], "logs: --lines 0: at least 1"),
    (["logs", "staging", "--process", "web;reboot"], "logs: --process 'web;reboot': a pm2 process name"),
    (["logs", "staging", "--journal", "--process", "API"], "logs: --process 'API': a pm2 process name (a lower-case"),
    (["logs", "staging", "--journal", "--lines", "10000"], "logs: --lines 10000: at most 9999 with --journal"),
    (["logs", "staging", "--journal", "--since", "yesterday"], "logs: --since 'yesterday': give a duration"),
    (["logs", "staging", "--journal", "--since", "2026-13-01"], "logs: --since '2026-13-01': not a moment (month must"),
    (["exec", "staging", "--server", "app-9", "--", "true"],
     "exec: --server app-9: stack staging has no such app server (it has app-1, app-2)"),
    (["exec", "staging"], "exec: no command given: python -m deploy exec STACK [--server app-N] -- COMMAND"),
    (["exec", "staging", "--tty", "--", "node"], "exec: --tty: stdin here is not a terminal (a pipe or a file)"),
])
def test_arguments_are_refused_before_any_server_is_contacted(monkeypatch, argv, message):
    out = io.StringIO()
    monkeypatch.setattr(cli, "target_of", lambda args, executor: FixedTarget())
    assert cli.main(argv, NoRunExecutor(out=out)) == 1
    assert out.getvalue().startswith(message), out.getvalue()


@pytest.mark.parametrize("since, epoch", [(None, 0), ("10m", 1764860000 - 600), ("1d", 1764860000 - 86400),
                                          ("2026-12-04", 1796342400), ("2026-12-04 15:12", 1796397120)])
def test_since_for_the_journal_is_seconds_since_the_epoch_a_moment_in_utc(since, epoch):
    assert operate.journal_since(since, now=1764860000.7) == epoch


def test_logs_journal_asks_each_servers_wrapper_and_merges_their_entries(monkeypatch):
    line = "2026-12-04T15:12:0{} staging-app-{} pm2-runtime[7]: 0|{}  | 2026-12-04T15:12:0{}: {}\n"
    executor = Answers({APP1.address: Result([], 0, line.format(5, 1, "api", 5, "Error: boom")),
                        APP2.address: Result([], 0, line.format(4, 2, "web", 4, "web listening"))})
    monkeypatch.setattr(cli, "target_of", lambda args, executor: FixedTarget())
    monkeypatch.setattr(cli.time, "time", lambda: 1764860000.0)
    assert cli.main(["logs", "staging", "--journal", "--since", "10m", "-n", "30"], executor) == 0
    assert [shlex.split(argv[-1]) for argv in executor.ran] == [
        ["sudo", "-n", "/usr/local/sbin/platform-apps-journal", str(1764860000 - 600), "30"]] * 2
    assert executor.out.getvalue().splitlines()[-2:] == [
        "[app-2] 2026-12-04T15:12:04 0|web: web listening",
        "[app-1] 2026-12-04T15:12:05 0|api: Error: boom"]


def test_logs_journal_follow_asks_each_servers_wrapper_to_follow_and_shows_the_process_since_when_asked(monkeypatch):
    journal_of = "".join(f"2026-12-04T15:{m}:00+0000 staging-app-1 pm2-runtime[7]: 0|{p}  | {p} at {m}\n"
                         for m, p in (("01", "api"), ("05", "web"), ("06", "api")))
    executor = Answers({APP1.address: Result([], 0, journal_of), APP2.address: Result([], 0, "")})
    monkeypatch.setattr(cli, "target_of", lambda args, executor: FixedTarget())
    monkeypatch.setattr(cli.time, "time", lambda: 1796396700.0)   # 2026-12-04 15:05 UTC
    argv = ["logs", "staging", "--journal", "--follow", "--since", "1m", "--process", "api", "-n", "7"]
    assert cli.main(argv, executor) == 0
    assert [shlex.split(argv[-1]) for argv in executor.ran] == [
        ["sudo", "-n", "/usr/local/sbin/platform-apps-journal", "0", "7", "follow"]] * 2
    assert executor.out.getvalue().splitlines() == ["[app-1] 2026-12-04T15:06:00+0000 0|api: api at 06"]


def test_logs_journal_of_a_process_reads_as_much_as_the_wrapper_gives_and_shows_that_ones_last(monkeypatch):
    line = "2026-12-04T15:12:0{} staging-app-{} pm2-runtime[7]: 0|{}  | {}\n"
    executor = Answers({APP1.address: Result([], 0, line.format(5, 1, "api", "Error: boom")),
                        APP2.address: Result([], 0, line.format(4, 2, "web", "web listening"))})
    monkeypatch.setattr(cli, "target_of", lambda args, executor: FixedTarget())
    assert cli.main(["logs", "staging", "--journal", "--process", "api", "-n", "30"], executor) == 0
    assert [shlex.split(argv[-1]) for argv in executor.ran] == [
        ["sudo", "-n", "/usr/local/sbin/platform-apps-journal", "0", "9999"]] * 2
    assert executor.out.getvalue().splitlines() == ["[app-1] 2026-12-04T15:12:05 0|api: Error: boom"]


def test_a_command_after_dashes_is_exec_only():
    with pytest.raises(SystemExit):
        cli.main(["status", "staging", "--", "true"], NoRunExecutor())


class FixedTarget:
    def resolve(self) -> Stack:
        return STACK


class NoRunExecutor(Executor):
    def run(self, argv, **kwargs):
        raise AssertionError(f"ran {argv}")

    def attached(self, argv):
        raise AssertionError(f"ran {argv}")


class Answers(Executor):
    """Each server's answer to `status`/`logs`, by its address; records what it ran."""

    def __init__(self, answers: dict[str, Result], **kwargs):
        super().__init__(out=io.StringIO(), **kwargs)
        self.answers, self.ran, self.lb = answers, [], []

    def run(self, argv, **kwargs):
        if argv[-3:-1] == ["-O", "exit"]:   # closing the shared connection
            return Result(argv, 0, "")
        if argv[-2] == f"ops@{STACK.jump_host}":   # the LB, as an operator: maintenance, its pool
            self.lb.append(argv)
            if conventions.DRAIN_COMMAND in argv[-1]:
                return self.answers.get("pool", self.answers.get("lb", Result(argv, 0, "")))
            return self.answers.get("lb", Result(argv, 0, "maintenance off\n"))
        self.ran.append(argv)
        return self.answers[argv[-2]]

    def follow(self, commands, shown=lambda line: line):
        """Each server's answer as the lines that came before its ssh ended."""
        for name, (argv, _) in commands.items():
            self.ran.append(argv)
            for line in self.answers[argv[-2]].output.splitlines():
                if (text := shown(line)) is not None:
                    self.say(f"[{name}] {text}")
        return {name: 130 for name in commands}


HEALTHY = """release 20261202-0700-abc1234
unit active 100
unitfile 86400
process 100 7200 node /usr/local/bin/pm2-runtime start /srv/app/ecosystem.config.js
process 120 300 node /srv/app/releases/current/web/server.js
process 121 290 node /srv/app/releases/current/web/server.js
process 130 40 node /srv/app/releases/current/api/server.js
health 200 {"host":"app-1","engines":{"postgresql":{"status":"ok"},"redis":{"status":"disabled"}}}
"""


def test_status_prints_one_table_and_exits_zero_when_every_server_is_healthy():
    executor = Answers({a.address: Result([], 0, HEALTHY) for a in STACK.servers})
    assert operate.status(STACK, executor) == 0
    lines = executor.out.getvalue().splitlines()
    assert lines[0].split()[:3] == ["SERVER", "RELEASE", "APPS"]
    for line, server in zip(lines[1:], ("app-1", "app-2")):
        assert line.split()[:4] == [server, "20261202-0700-abc1234", "active", "2h0m"], line
        assert "api 1 up 40s, web 2 up 4m" in line and line.endswith("ok 200: postgresql ok, redis disabled")
    assert lines[3:] == ["LB: maintenance off", "LB: every app server in its pool"]


def test_status_names_a_declared_process_without_a_worker_and_exits_one():
    """pm2 gave up on api (it kept exiting as it started): no worker of it runs."""
    gave_up = "".join(line + "\n" for line in HEALTHY.splitlines() if "/api/" not in line)
    executor = Answers({APP1.address: Result([], 0, gave_up), APP2.address: Result([], 0, HEALTHY)})
    assert operate.status(STACK, executor) == operate.EXIT_UNHEALTHY
    app1, app2 = executor.out.getvalue().splitlines()[1:3]
    assert "api NONE, web 2 up 4m" in app1 and "UNHEALTHY 200" in app1, app1
    assert "api 1 up 40s, web 2 up 4m" in app2 and " ok 200" in app2, app2


def test_status_says_when_the_apps_unit_changed_after_they_started_and_it_is_no_fault():
    changed = HEALTHY.replace("unitfile 86400", "unitfile 600")
    executor = Answers({APP1.address: Result([], 0, changed), APP2.address: Result([], 0, HEALTHY)})
    assert operate.status(STACK, executor) == 0
    app1, app2 = executor.out.getvalue().splitlines()[1:3]
    assert " active 2h0m (its file changed 10m ago: restart applies it) " in app1, app1
    assert "its file changed" not in app2, "changed before the apps started: nothing pending"


def test_status_exits_non_zero_naming_the_unhealthy_and_the_unreachable_server():
    sick = HEALTHY.replace("health 200", "health 503").replace('"postgresql":{"status":"ok"}',
                                                                '"postgresql":{"status":"error"}')
    executor = Answers({APP1.address: Result([], 0, sick),
                        APP2.address: Result([], 255, "ssh: connect to host 10.110.16.4 port 22: No route to host")})
    assert operate.status(STACK, executor) == operate.EXIT_UNHEALTHY
    app1, app2 = executor.out.getvalue().splitlines()[1:3]
    assert app1.endswith("UNHEALTHY 503: postgresql error, redis disabled")
    assert app2.startswith("app-2") and app2.endswith("UNREACHABLE: exit 255: ssh: connect to host 10.110.16.4 "
                                                      "port 22: No route to host")


def test_status_with_the_apps_stopped_is_unhealthy_even_if_something_answers():
    stopped = "release R1\nunit inactive 0\nhealth 200 {}\n"
    status = operate.parse_status(APP1, stopped)
    assert not status.healthy and status.workers == {}
    assert "INACTIVE" in operate.status_table([status])[1]


def test_logs_merge_every_servers_lines_in_time_order_each_prefixed_by_its_server():
    executor = Answers({
        APP1.address: Result([], 0, "web 2026-12-02T07:00:02: b\nweb   b's second line\n"
                                    "api 2026-12-02T07:00:04: d\n"),
        APP2.address: Result([], 0, "web 2026-12-02T07:00:01: a\napi.err 2026-12-02T07:00:03: c\n"),
    })
    assert operate.logs(STACK, executor, 50, None, False, ()) == 0
    assert executor.out.getvalue().splitlines() == [
        "[app-2] web 2026-12-02T07:00:01: a",
        "[app-1] web 2026-12-02T07:00:02: b",
        "[app-1] web   b's second line",
        "[app-2] api.err 2026-12-02T07:00:03: c",
        "[app-1] api 2026-12-02T07:00:04: d",
    ]
    assert [argv[-2] for argv in executor.ran] == [APP1.address, APP2.address]


def test_logs_show_what_they_have_and_exit_non_zero_when_a_server_fails():
    executor = Answers({APP1.address: Result([], 0, "web 2026-12-02T07:00:02: b\n"),
                        APP2.address: Result([], 1, "deploy: deploy cannot read /var/log/platform/pm2 on app-2")})
    assert operate.logs(STACK, executor, 50, None, False, ()) == 1
    assert executor.out.getvalue().splitlines() == [
        "logs: [app-2] exit 1: deploy: deploy cannot read /var/log/platform/pm2 on app-2",
        "[app-1] web 2026-12-02T07:00:02: b"]


def test_follow_prefixes_each_servers_lines_as_they_come_and_keeps_stdin_open():
    """Executor.follow with local commands standing in for the ssh: each reads its script
    from stdin and answers; stdin stays open after it (remote.sh's follow runs until it
    closes), which a read with a timeout sees (status > 128: timed out, not at its end)."""
    executor = Executor(out=io.StringIO())
    app1 = ["bash", "-c", 'read -r line; echo "got $line"; read -r -t 1 _; echo "stdin $([ $? -gt 128 ] && echo open)"']
    codes = executor.follow({"app-1": (app1, "one\n"), "app-2": (["bash", "-c", "read -r l; echo $l; exit 3"], "two\n")})
    assert codes == {"app-1": 0, "app-2": 3}
    lines = executor.out.getvalue().splitlines()
    assert sorted(lines) == ["[app-1] got one", "[app-1] stdin open", "[app-2] two"]


def test_follow_shows_each_line_as_shown_gives_it_and_none_that_it_drops():
    executor = Executor(out=io.StringIO())
    codes = executor.follow({"app-1": (["printf", "keep\\ndrop\\n"], "")},
                            shown=lambda line: None if line == "drop" else line.upper())
    assert codes == {"app-1": 0} and executor.out.getvalue().splitlines() == ["[app-1] KEEP"]


def test_status_through_the_cli_shows_the_table_with_a_server_down_pinning_host_keys(monkeypatch):
    """No all-servers login check first (a deploy has one): the server that is down is a row."""
    monkeypatch.setattr(cli, "target_of", lambda args, executor: FixedTarget())
    executor = Answers({APP1.address: Result([], 0, HEALTHY),
                        APP2.address: Result([], 255, "Host key verification failed.")})
    assert cli.main(["status", "staging"], executor) == operate.EXIT_UNHEALTHY
    rows = executor.out.getvalue().splitlines()
    assert rows[1].startswith("app-1") and rows[2].endswith("UNREACHABLE: exit 255: Host key verification failed.")
    assert [argv[-2] for argv in executor.ran] == [APP1.address, APP2.address], "status only, once per server"
    for argv in executor.ran:
        assert "StrictHostKeyChecking=yes" in argv and any(a.startswith("UserKnownHostsFile=") for a in argv)


# --- maintenance ---------------------------------------------------------------------------

def test_maintenance_runs_the_lbs_own_command_as_an_operator_with_sudo():
    on = commands.maintenance(STACK, "on", "alice@laptop")
    assert on.argv[-2] == f"{conventions.OPERATOR_USER}@{STACK.jump_host}" and on.stdin is None
    assert remote_argv(on) == ["sudo", "-n", conventions.MAINTENANCE_COMMAND, "on", "alice@laptop"]
    assert remote_argv(commands.maintenance(STACK, "off")) == ["sudo", "-n", conventions.MAINTENANCE_COMMAND, "off"]


def test_maintenance_on_says_what_the_lb_answered_and_a_deploy_only_key_is_told_what_it_needs():
    executor = Answers({"lb": Result([], 0, "maintenance on: alice@laptop since 2026-12-02T10:00:00Z\n")})
    assert operate.maintenance(STACK, executor, "on") == 0
    assert executor.out.getvalue() == "LB: maintenance on: alice@laptop since 2026-12-02T10:00:00Z\n"
    assert remote_argv(Result(executor.lb[0], 0, ""))[3:4] == ["on"]
    refused = Answers({"lb": Result([], 255, "ops@198.51.100.2: Permission denied (publickey).")})
    assert operate.maintenance(STACK, refused, "off") == 1
    assert refused.out.getvalue().strip() == (
        "maintenance off: failed on the LB (it needs an operator's key (ops on the LB, sshPublicKeys)): exit 255: "
        "ops@198.51.100.2: Permission denied (publickey).")


def test_status_says_maintenance_is_unknown_without_an_operators_key_and_keeps_its_exit_code():
    executor = Answers({**{a.address: Result([], 0, HEALTHY) for a in STACK.servers},
                        "lb": Result([], 255, "Permission denied (publickey).")})
    assert operate.status(STACK, executor) == 0
    assert executor.out.getvalue().splitlines()[-1].startswith("LB: maintenance unknown (it needs an operator's key")


def test_status_names_a_server_the_lb_sends_no_request_to():
    executor = Answers({**{a.address: Result([], 0, HEALTHY) for a in STACK.servers},
                        "pool": Result([], 0, f"{APP2.address}\n")})
    assert operate.status(STACK, executor) == 0
    assert executor.out.getvalue().splitlines()[-1] == "LB: out of its pool: app-2 (restart puts each back once healthy)"


def test_maintenance_takes_on_off_or_status_only(capsys):
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["maintenance", "staging", "sideways"])
    assert "invalid choice: 'sideways'" in capsys.readouterr().err


def test_status_names_the_workers_by_the_scripts_the_current_release_declares():
    contract = ('contract {"processes": {"site": {"script": "dist/site.js", "serves": "/", "instances": 1}, '
                '"api": {"script": "api/server.js", "serves": "/api/", "instances": 1}, '
                '"jobs": {"script": "worker/index.js", "instances": 1}}}')
    answer = HEALTHY.replace("release 20261202-0700-abc1234\n", f"release R2\n{contract}\n").replace(
        "process 121 290 node /srv/app/releases/current/web/server.js\n",
        "process 121 290 node /srv/app/releases/current/dist/site.js\nprocess 122 50 node "
        "/srv/app/releases/current/worker/index.js\n")
    status = operate.parse_status(APP1, answer)
    assert {name: len(up) for name, up in status.workers.items()} == {"site": 1, "api": 1, "jobs": 1}
    assert "jobs 1 up 50s" in operate.status_table([status])[1]
