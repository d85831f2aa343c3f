"""The operators' verbs on the stack booted by `python -m localcloud up` (marker
`localcloud`, root): `status`, `logs` (once and --follow, of pm2's files and of the journal) and `exec`, run as the CLI is,
with `--local` and the local cloud's operator key, as the deploy login through the LB.
They change nothing, so they run in any order on the session's stack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from localcloud import shell
from model import conventions

pytestmark = pytest.mark.localcloud

from on_the_local_stack import ROOT, STACK, app_servers, current_of, deploy_cli, on  # noqa: E402


def test_status_shows_every_server_healthy_on_its_release(plan, operator_key):
    result = deploy_cli("status", key=operator_key)
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    header, *rows = [line for line in result.stdout.splitlines() if line.startswith(("SERVER", "app-"))]
    assert header.split()[:2] == ["SERVER", "RELEASE"]
    servers = app_servers(plan)
    assert [row.split()[0] for row in rows] == [d.key for d in servers]
    for row, d in zip(rows, servers):
        fields = row.split()
        assert fields[1] == current_of(d.name), row
        assert fields[2] == "active", row
        assert " web " in row and " api " in row, f"both apps' workers listed: {row}"
        assert " ok 200: " in row, row


def test_logs_show_lines_of_every_server_each_prefixed_by_its_name(plan, operator_key):
    result = deploy_cli("logs", "--lines", "20", key=operator_key)
    print(result.stdout[-3000:], result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for d in app_servers(plan):
        assert any(line.startswith(f"[{d.key}] ") for line in lines), f"no line from {d.key}"
    assert all(line.startswith("[app-") for line in lines), "every line names its server"
    web = deploy_cli("logs", "--process", "web", "--since", "1d", "--lines", "5", key=operator_key)
    assert web.returncode == 0, web.stdout + web.stderr
    tags = {line.split()[1] for line in web.stdout.splitlines()}
    assert tags and tags <= {"web", "web.err"}, tags


@pytest.mark.parametrize("source, left_running", [
    ((), f"pgrep -u {conventions.DEPLOY_USER} -af 'tail -n'"),                       # pm2's files
    # the wrapper's, as root ([p]: the pattern does not match the shell that runs pgrep)
    (("--journal",), f"pgrep -af 'journalctl --unit=[{conventions.APPS_UNIT[0]}]{conventions.APPS_UNIT[1:]}'"),
])
def test_logs_follow_streams_from_every_server_until_interrupted_and_leaves_nothing_running(plan, operator_key,
                                                                                            source, left_running):
    servers = app_servers(plan)
    # -v: each command it runs is printed, so a Ctrl-C that does not end it shows where it waits.
    # SIGINT as a terminal's job has it: a suite started in the background by a shell without
    # job control inherits it ignored, and Python then never raises KeyboardInterrupt.
    follow = subprocess.Popen([sys.executable, "-m", "deploy", "logs", STACK, "--local", "-i", operator_key, "-v",
                               *source, "--follow", "--lines", "3"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + 120
        while seen != {d.key for d in servers} and time.monotonic() < deadline:
            line = follow.stdout.readline()
            if not line:
                break
            if line.startswith("[app-"):
                seen.add(line[1:line.index("]")])
        assert seen == {d.key for d in servers}, f"lines came from {seen} only"
        follow.send_signal(signal.SIGINT)   # Ctrl-C
        # Read on, as a terminal does: a writer blocked on a full pipe would never end.
        try:
            rest, _ = follow.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            follow.kill()
            rest, _ = follow.communicate()
            raise AssertionError(f"still running 90 s after Ctrl-C; its output meanwhile:\n{rest}")
        assert follow.returncode == 0, rest
    finally:
        if follow.poll() is None:
            follow.kill()
    # Their end travels back through the LB's sshd and each server's: on a busy machine
    # that takes a while; what must not happen is that they stay.
    deadline = time.monotonic() + 60
    for d in servers:
        shell.wait_until(lambda: on(d.name, f"{left_running} || true") == "", deadline - time.monotonic(),
                           lambda: f"{d.key}: still running after the follow ended: {on(d.name, left_running)}", every=1)


def test_exec_runs_in_the_apps_environment_as_app_and_returns_the_commands_exit_code(plan, operator_key):
    env = deploy_cli("exec", "--", "node", "-e", "console.log(process.env.POSTGRESQL_HOST ? 'env ok' : 'no env')",
                     key=operator_key)
    assert env.returncode == 0, env.stdout + env.stderr
    assert env.stdout.splitlines()[-1] == "env ok", env.stdout
    assert deploy_cli("exec", "--", "sh", "-c", "exit 7", key=operator_key).returncode == 7
    where = deploy_cli("exec", "--server", "app-2", "--", "sh", "-c", 'echo "$(id -un) $(pwd -P)"', key=operator_key)
    assert where.returncode == 0, where.stdout + where.stderr
    second = app_servers(plan)[1]
    assert where.stdout.splitlines()[-1] == (f"{conventions.APP_USER} {conventions.RELEASES_DIR}/"
                                             f"{current_of(second.name)}")
    # The deploy login itself still cannot read the apps' secrets.
    assert on(second.name, f"runuser -u {conventions.DEPLOY_USER} -- cat {conventions.APP_ENV_FILE} "
                           ">/dev/null 2>&1 && echo read || echo refused") == "refused"


def on_a_terminal(argv: list[str], dialogue: list[tuple[str, str]], timeout: float = 120) -> tuple[int, str]:
    """argv with a pseudo-terminal for stdin, stdout and stderr, as an operator's shell
    gives it: for each (awaited, typed), waits for `awaited` in the output, then types
    `typed`. Its exit code and everything it printed."""
    import pty
    import select
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(argv, cwd=ROOT, stdin=terminal, stdout=terminal, stderr=terminal, start_new_session=True)
    os.close(terminal)
    seen, deadline = b"", time.monotonic() + timeout
    try:
        for awaited, typed in [*dialogue, (None, None)]:
            while awaited is None or awaited.encode() not in seen:
                assert time.monotonic() < deadline, f"waited for {awaited!r}: {seen.decode(errors='replace')}"
                if not select.select([controller], [], [], 1)[0]:
                    if proc.poll() is not None and awaited is None:
                        break
                    continue
                try:
                    seen += os.read(controller, 4096)
                except OSError:   # the terminal closed: the command ended
                    break
            if typed is not None:
                os.write(controller, typed.encode())
        return proc.wait(timeout=30), seen.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(controller)


def test_exec_with_tty_runs_an_interactive_command_on_a_terminal_of_the_server(operator_key):
    """Node's REPL through the jump host (whose deploy login has no terminal) to app-1."""
    argv = [sys.executable, "-m", "deploy", "exec", STACK, "--local", "-i", operator_key, "--tty", "--", "node"]
    code, seen = on_a_terminal(argv, [("> ", "6*7\r"), ("42", ".exit\r")])
    assert code == 0, seen
    assert "Welcome to Node.js" in seen, seen
    # Without --tty the same command on the same terminal gets none on the server.
    argv = [sys.executable, "-m", "deploy", "exec", STACK, "--local", "-i", operator_key, "--", "tty"]
    code, seen = on_a_terminal(argv, [])
    assert code == 1 and "not a tty" in seen, seen


def test_exec_names_the_servers_that_exist_for_an_unknown_one(plan, operator_key):
    result = deploy_cli("exec", "--server", "app-9", "--", "true", key=operator_key)
    assert result.returncode == 1
    names = ", ".join(d.key for d in app_servers(plan))
    assert f"--server app-9: stack {STACK} has no such app server (it has {names})" in result.stdout


def through_lb(plan, path: str) -> tuple[str, str]:
    """(status, headers and body) of a GET through the LB, from the internet client."""
    from localcloud import checks
    seen = checks.from_internet(checks.curl_argv(f"https://{plan.domain}{path}", plan.domain, plan.lb.reserved_ips[0],
                                                 443, "-k", "-s", "-i"))
    return seen.stdout.split(" ", 2)[1], seen.stdout


def test_maintenance_on_serves_the_page_but_not_to_the_health_check_and_off_ends_it(plan, operator_key):
    try:
        on = deploy_cli("maintenance", "on", key=operator_key)
        assert on.returncode == 0 and on.stdout.startswith("LB: maintenance on: "), on.stdout + on.stderr
        status, answer = through_lb(plan, "/")
        assert status == "503" and f"retry-after: {conventions.MAINTENANCE_RETRY_AFTER_SECONDS}" in answer.lower()
        assert "right back" in answer
        assert through_lb(plan, "/api/hello")[0] == "503"
        assert through_lb(plan, conventions.HEALTH_PATH)[0] == "200", "the health check still asks the app servers"
        shown = deploy_cli("status", key=operator_key)
        assert shown.returncode == 0 and "LB: maintenance on: " in shown.stdout, shown.stdout
    finally:
        off = deploy_cli("maintenance", "off", key=operator_key)
    assert off.returncode == 0 and off.stdout == "LB: maintenance off\n", off.stdout + off.stderr
    assert through_lb(plan, "/")[0] == "200"
    assert "LB: maintenance off" in deploy_cli("status", key=operator_key).stdout
