"""The apps' unit's journal as the deploy tool reads it (deploy/journal.py): what a failed
server shows, `logs --journal`'s merge of every server, and the wrapper that gives it."""

from __future__ import annotations

import subprocess

import pytest

import cloudinit
import mockcloud
from cloudinit import app_server
from deploy import journal
from model import conventions

pytestmark = pytest.mark.fast

# As pm2-runtime --formatted writes it: each app line under `<pm2 id>|<process>` (a
# worker being replaced `_old_<id>`), the first line of a write stamped by pm2, pm2's own
# lines stamped `PM2 log:`.
APP1 = """\
-- Boot 1a2b3c --
2026-12-04T15:12:04+0000 staging-app-1 systemd[1]: Reloading platform-apps.service - The platform's Node.js apps (pm2)...
2026-12-04T15:12:05+0000 staging-app-1 pm2-runtime[812]: 2026-12-04T15:12:05: PM2 log: App [api:1] starting in -cluster mode-
2026-12-04T15:12:05+0000 staging-app-1 pm2-runtime[812]: 0|web  | 2026-12-04T15:12:05: web listening on 3000
2026-12-04T15:12:05+0000 staging-app-1 pm2-runtime[812]: _old_2|web  | 2026-12-04T15:12:05: web: SIGINT, closing
2026-12-04T15:12:05+0000 staging-app-1 pm2-runtime[812]: 1|api  | 2026-12-04T15:12:05: Error: Cannot find module 'pg'
2026-12-04T15:12:05+0000 staging-app-1 pm2-runtime[812]: 1|api  |     at Module._resolveFilename (node:internal/modules/cjs/loader:1145:15)
2026-12-04T15:12:20+0000 staging-app-1 platform-apps-reload[901]: │ 1  │ api       │ default     │ errored   │
2026-12-04T15:12:20+0000 staging-app-1 platform-apps-reload[897]: platform-apps-reload: pm2 gave up on api
"""


def test_what_the_apps_said_is_their_named_output_and_the_steps_verdicts_without_pm2s_bookkeeping():
    assert journal.apps_said(APP1, 20) == [
        "web: web listening on 3000",
        "web: web: SIGINT, closing",
        "api: Error: Cannot find module 'pg'",
        "api:     at Module._resolveFilename (node:internal/modules/cjs/loader:1145:15)",
        "platform-apps-reload: pm2 gave up on api"]


def test_a_line_said_again_and_again_is_shown_once_at_its_last_time_with_its_count():
    crash = "".join(f"2026-12-04T15:12:{n:02}+0000 h pm2-runtime[8]: {n % 2}|api  | 2026-12-04T15:12:{n:02}: {line}\n"
                    for n in range(16) for line in ("Error: boom", "    at start (server.js:1)"))
    verdict = "2026-12-04T15:12:20+0000 h platform-apps-reload[9]: platform-apps-reload: pm2 gave up on api\n"
    assert journal.apps_said("2026-12-04T15:11:59+0000 h pm2-runtime[8]: 0|api  | once\n" + crash + verdict, 20) == [
        "api: once", "api: Error: boom (16 times)", "api:     at start (server.js:1) (16 times)",
        "platform-apps-reload: pm2 gave up on api"]


def test_what_the_apps_said_is_their_last_lines_only():
    text = "".join(f"2026-12-04T15:12:05+0000 h pm2-runtime[812]: 0|api  | line {n}\n" for n in range(50))
    assert [line.split()[-1] for line in journal.apps_said(text, 20)] == [str(n) for n in range(30, 50)]


def test_an_apps_unit_started_before_names_were_written_still_shows_the_apps_lines_bare():
    bare = ("2026-12-04T15:12:05+0000 h pm2-runtime[812]: 2026-12-04T15:12:05: PM2 log: App [api:1] online\n"
            "2026-12-04T15:12:05+0000 h pm2-runtime[812]: 2026-12-04T15:12:05: Error: boom\n"
            "2026-12-04T15:12:05+0000 h pm2-runtime[812]:     at start (server.js:1)\n")
    assert journal.apps_said(bare, 20) == ["Error: boom", "    at start (server.js:1)"]
    assert journal.merged({"app-1": bare}, processes=("api",)) == []


def test_a_pm2_runtime_that_names_the_apps_lines_writes_only_pm2s_own_bare_as_a_stack_after_pm2_error():
    before_restart = ("2026-12-04T15:10:00+0000 h pm2-runtime[700]: 2026-12-04T15:10:00: Error: boom\n"
                      "2026-12-04T15:10:00+0000 h pm2-runtime[700]:     at start (server.js:1)\n")
    named = ("2026-12-04T15:12:05+0000 h pm2-runtime[812]: 0|api  | 2026-12-04T15:12:05: api: SIGINT, closing\n"
             "2026-12-04T15:12:06+0000 h pm2-runtime[812]: 2026-12-04T15:12:06: PM2 error: Error while calling getconf\n"
             "2026-12-04T15:12:06+0000 h pm2-runtime[812]: Error: spawn getconf ENOENT\n"
             "2026-12-04T15:12:06+0000 h pm2-runtime[812]:     at ChildProcess._handle.onexit (node:internal/child_process:284:19)\n")
    assert journal.apps_said(before_restart + named, 20) == [
        "Error: boom", "    at start (server.js:1)", "api: api: SIGINT, closing"]
    assert journal.merged({"app-1": named})[-1] == (
        "[app-1] 2026-12-04T15:12:06+0000 pm2-runtime[812]:     at ChildProcess._handle.onexit "
        "(node:internal/child_process:284:19)")


def test_every_servers_entries_merge_in_time_order_each_app_line_under_its_process():
    app2 = "2026-12-04T15:12:05+0000 staging-app-2 pm2-runtime[77]: 0|api  | 2026-12-04T15:12:05: api listening\n"
    lines = journal.merged({"app-1": APP1, "app-2": app2})
    assert lines[0] == ("[app-1] 2026-12-04T15:12:04+0000 systemd[1]: Reloading platform-apps.service - The "
                        "platform's Node.js apps (pm2)...")
    assert lines[1:7] == [
        "[app-1] 2026-12-04T15:12:05+0000 pm2-runtime[812]: 2026-12-04T15:12:05: PM2 log: App [api:1] starting in "
        "-cluster mode-",
        "[app-1] 2026-12-04T15:12:05+0000 0|web: web listening on 3000",
        "[app-1] 2026-12-04T15:12:05+0000 _old_2|web: web: SIGINT, closing",
        "[app-1] 2026-12-04T15:12:05+0000 1|api: Error: Cannot find module 'pg'",
        "[app-1] 2026-12-04T15:12:05+0000 1|api:     at Module._resolveFilename (node:internal/modules/cjs/loader:1145:15)",
        "[app-2] 2026-12-04T15:12:05+0000 0|api: api listening"]
    assert len(lines) == 9 and not any("Boot" in line for line in lines)


def test_only_the_processes_asked_each_servers_last_lines_of_theirs():
    app2 = "".join(f"2026-12-04T15:12:0{n}+0000 staging-app-2 pm2-runtime[77]: 0|api  | api {n}\n" for n in range(5))
    assert journal.merged({"app-1": APP1, "app-2": app2}, processes=("api",), last=2) == [
        "[app-2] 2026-12-04T15:12:03+0000 0|api: api 3",
        "[app-2] 2026-12-04T15:12:04+0000 0|api: api 4",
        "[app-1] 2026-12-04T15:12:05+0000 1|api: Error: Cannot find module 'pg'",
        "[app-1] 2026-12-04T15:12:05+0000 1|api:     at Module._resolveFilename (node:internal/modules/cjs/loader:1145:15)"]
    assert journal.merged({"app-1": APP1}, processes=("web", "worker")) == [
        "[app-1] 2026-12-04T15:12:05+0000 0|web: web listening on 3000",
        "[app-1] 2026-12-04T15:12:05+0000 _old_2|web: web: SIGINT, closing"]


def test_the_wrapper_takes_two_numbers_or_0_lines_follow_up_to_the_bound_the_deploy_tool_knows(tmp_path):
    """The rendered wrapper, with a journalctl that says how it was called."""
    wrapper = tmp_path / "platform-apps-journal"
    wrapper.write_text(cloudinit.rendered_files(conventions.APP_SERVER, mockcloud.stack_settings("staging"))[
        app_server.APPS_JOURNAL_COMMAND])
    (tmp_path / "journalctl").write_text('#!/bin/sh\necho "journalctl $*"\n')
    (tmp_path / "journalctl").chmod(0o755)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(wrapper), *args], capture_output=True, text=True,
                              env={"PATH": f"{tmp_path}:/usr/bin:/bin"})

    followed = run("0", "5", "follow")
    assert followed.returncode == 0 and followed.stdout.endswith("--lines=5 --follow\n"), followed
    newest = run("0", str(journal.MAX_LINES))
    assert newest.returncode == 0 and f"--lines={journal.MAX_LINES}" in newest.stdout, newest
    assert "--since=@1796397120" in run("1796397120", "20").stdout
    for refused in (("0", str(journal.MAX_LINES + 1)), ("0;id", "3"), ("0", "3", "--output=json"), ("x", "1"),
                    ("60", "3", "follow"), ("0", "3", "follow", "x"), ()):
        said = run(*refused)
        assert said.returncode == 2 and f"at most {journal.MAX_LINES} lines" in said.stderr, (refused, said)
        assert "journalctl" not in said.stdout, (refused, said)


def test_a_failed_start_checks_lines_are_those_of_the_process_they_name():
    """`--process api` after an env push the apps died with shows what api wrote there."""
    check = "".join(f"2026-12-04T15:13:00+0000 staging-app-1 {app_server.START_CHECK_LOG_TAG}[950]: {line}\n" for line in (
        "web: started (ready)", "api: FAILED: exited with code 1 as it started", "  api: API_TOKEN is not set"))
    assert journal.merged({"app-1": APP1 + check}, processes=("api",))[-2:] == [
        f"[app-1] 2026-12-04T15:13:00+0000 {app_server.START_CHECK_LOG_TAG}[950]: api: FAILED: exited with code 1 as it "
        "started",
        f"[app-1] 2026-12-04T15:13:00+0000 {app_server.START_CHECK_LOG_TAG}[950]:   api: API_TOKEN is not set"]
    assert journal.merged({"app-1": check}, processes=("web",)) == [
        f"[app-1] 2026-12-04T15:13:00+0000 {app_server.START_CHECK_LOG_TAG}[950]: web: started (ready)"]
    assert journal.apps_said(check, 20) == [], "the start check's processes are not the running apps"


def test_a_followed_line_shows_as_merged_does_for_the_processes_asked_since_the_moment_asked():
    show = journal.followed(("api",), since=1796396700)   # 2026-12-04 15:05 UTC
    line = "2026-12-04T15:0{}:00+0000 staging-app-1 pm2-runtime[7]: 0|{}  | 2026-12-04T15:0{}:00: {}"
    assert show(line.format(6, "api", 6, "Error: boom")) == "2026-12-04T15:06:00+0000 0|api: Error: boom"
    assert show(line.format(5, "api", 5, "at 15:05")) is not None, "since is inclusive"
    assert show(line.format(4, "api", 4, "too early")) is None
    assert show(line.format(6, "web", 6, "another process")) is None
    assert show("-- Boot 1a2b3c --") is None
    assert journal.followed((), 0)(line.format(1, "web", 1, "any")) == "2026-12-04T15:01:00+0000 0|web: any"
