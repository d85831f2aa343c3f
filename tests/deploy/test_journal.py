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

APP1 = """\
-- Boot 1a2b3c --
2026-12-04T15:12:04+0000 staging-app-1 systemd[1]: Reloading platform-apps.service - The platform's Node.js apps (pm2)...
2026-12-04T15:12:05+0000 staging-app-1 pm2-runtime[812]: 2026-12-04T15:12:05: PM2 log: App [api:1] starting in -cluster mode-
2026-12-04T15:12:05+0000 staging-app-1 pm2-runtime[812]: 2026-12-04T15:12:05: Error: Cannot find module 'pg'
2026-12-04T15:12:05+0000 staging-app-1 pm2-runtime[812]:     at Module._resolveFilename (node:internal/modules/cjs/loader:1145:15)
2026-12-04T15:12:20+0000 staging-app-1 platform-apps-reload[901]: │ 1  │ api       │ default     │ errored   │
2026-12-04T15:12:20+0000 staging-app-1 platform-apps-reload[897]: platform-apps-reload: pm2 gave up on api
"""


def test_what_the_apps_said_is_their_output_and_the_steps_verdicts_without_pm2s_bookkeeping():
    assert journal.apps_said(APP1, 20) == [
        "2026-12-04T15:12:05: Error: Cannot find module 'pg'",
        "    at Module._resolveFilename (node:internal/modules/cjs/loader:1145:15)",
        "platform-apps-reload: pm2 gave up on api"]


def test_what_the_apps_said_is_their_last_lines_only():
    text = "".join(f"2026-12-04T15:12:05+0000 h pm2-runtime[812]: line {n}\n" for n in range(50))
    assert [line.split()[-1] for line in journal.apps_said(text, 20)] == [str(n) for n in range(30, 50)]


def test_every_servers_entries_merge_in_time_order_without_the_host_and_a_boot_marker_is_left_out():
    app2 = "2026-12-04T15:12:05+0000 staging-app-2 pm2-runtime[77]: 2026-12-04T15:12:05: api listening\n"
    lines = journal.merged({"app-1": APP1, "app-2": app2})
    assert lines[0] == ("[app-1] 2026-12-04T15:12:04+0000 systemd[1]: Reloading platform-apps.service - The "
                        "platform's Node.js apps (pm2)...")
    assert lines[1:5] == [
        "[app-1] 2026-12-04T15:12:05+0000 pm2-runtime[812]: 2026-12-04T15:12:05: PM2 log: App [api:1] starting in "
        "-cluster mode-",
        "[app-1] 2026-12-04T15:12:05+0000 pm2-runtime[812]: 2026-12-04T15:12:05: Error: Cannot find module 'pg'",
        "[app-1] 2026-12-04T15:12:05+0000 pm2-runtime[812]:     at Module._resolveFilename "
        "(node:internal/modules/cjs/loader:1145:15)",
        "[app-2] 2026-12-04T15:12:05+0000 pm2-runtime[77]: 2026-12-04T15:12:05: api listening"]
    assert len(lines) == 7 and not any("Boot" in line for line in lines)


def test_the_wrapper_takes_two_numbers_up_to_the_bound_the_deploy_tool_knows(tmp_path):
    """The rendered wrapper, with a journalctl that says how it was called."""
    wrapper = tmp_path / "platform-apps-journal"
    wrapper.write_text(cloudinit.rendered_files(conventions.APP_SERVER, mockcloud.stack_settings("staging"))[
        app_server.APPS_JOURNAL_COMMAND])
    (tmp_path / "journalctl").write_text('#!/bin/sh\necho "journalctl $*"\n')
    (tmp_path / "journalctl").chmod(0o755)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(wrapper), *args], capture_output=True, text=True,
                              env={"PATH": f"{tmp_path}:/usr/bin:/bin"})

    newest = run("0", str(journal.MAX_LINES))
    assert newest.returncode == 0 and f"--lines={journal.MAX_LINES}" in newest.stdout, newest
    assert "--since=@1796397120" in run("1796397120", "20").stdout
    for refused in (("0", str(journal.MAX_LINES + 1)), ("0;id", "3"), ("0", "3", "--output=json"), ("x", "1")):
        said = run(*refused)
        assert said.returncode == 2 and f"at most {journal.MAX_LINES} lines" in said.stderr, (refused, said)
