"""What the deploy login may do on an app server for the operators' verbs, run for real in
a private mount namespace: the exec wrapper through the rendered sudoers with sudo itself,
and the apps' logs readable by deploy (as provisioning makes their directory) before and
after logrotate's rotation. Users app and deploy exist in the namespace only."""

from __future__ import annotations

import re
import shlex

import pytest

import cloudinit
from cloudinit import app_server
from model import conventions as c

from render_helpers_lb_app import in_namespace, nginx_tree, require, run, settings

pytestmark = pytest.mark.sandbox

LOGROTATE = "/etc/logrotate.d/platform-pm2"
WRAPPER_STAGED = "/srv/staged/platform-app-exec"


def app_files() -> dict[str, str]:
    return cloudinit.rendered_files(c.APP_SERVER, settings())


USERS = f"""
groupadd --system {c.APP_USER}
useradd --system --gid {c.APP_USER} --no-create-home --home-dir {c.APP_HOME} --shell /usr/sbin/nologin {c.APP_USER}
useradd --system --user-group --no-create-home --home-dir {c.DEPLOY_HOME} --shell /bin/bash {c.DEPLOY_USER}
as_deploy() {{ runuser -u {c.DEPLOY_USER} -- "$@"; }}
"""

EXEC_SCRIPT = USERS + f"""
set -u
# /usr/local/sbin is the host's: a tmpfs over it, in this namespace only.
mount -t tmpfs tmpfs /usr/local/sbin
install -m 0755 {WRAPPER_STAGED} {app_server.APP_EXEC_COMMAND}
chmod 0440 /etc/sudoers.d/platform-deploy
# The layout provisioning makes: releases deploy's (group app), .env root:app 0640.
install -d -m 0755 {c.APP_ROOT}
install -d -m 2750 -o {c.DEPLOY_USER} -g {c.APP_USER} {c.RELEASES_DIR}
install -d -m 0750 -o root -g {c.APP_USER} $(dirname {c.APP_ENV_FILE})
printf 'POSTGRESQL_HOST=10.110.16.9\\n# a comment\\nAPP_GREETING=hello world = yes\\n' > {c.APP_ENV_FILE}
chown root:{c.APP_USER} {c.APP_ENV_FILE}; chmod 0640 {c.APP_ENV_FILE}
exec_as_app() {{ as_deploy sudo -n -u {c.APP_USER} {app_server.APP_EXEC_COMMAND} "$@"; }}
said=$(exec_as_app true 2>&1); echo "NORELEASE $said exit $?"
as_deploy mkdir {c.RELEASES_DIR}/r1
as_deploy ln -s {c.RELEASES_DIR}/r1 {c.CURRENT_RELEASE_LINK}
echo "ENV $(exec_as_app sh -c 'echo "$POSTGRESQL_HOST|$APP_GREETING|$PWD|$(id -un)|$NODE_ENV|$PLATFORM_ENV_FILE"')"
exec_as_app sh -c 'echo out; echo err >&2; exit 7'; echo "CODE $?"
echo "ARGS $(exec_as_app printf '[%s]' 'two words' '$HOME' '--help')"
said=$(exec_as_app 2>&1); echo "NOCOMMAND $said exit $?"
echo "DEPLOYREADS $(as_deploy cat {c.APP_ENV_FILE} >/dev/null 2>&1 && echo yes || echo no)"
said=$(as_deploy sudo -n {app_server.APP_EXEC_COMMAND} id -un 2>&1); echo "ASROOT $said exit $?"
said=$(as_deploy sudo -n -u {c.APP_USER} /bin/sh -c true 2>&1); echo "ASAPPSHELL $said exit $?"
said=$({app_server.APP_EXEC_COMMAND} true 2>&1); echo "DIRECT $said exit $?"
# A deploy's release command: in the uploaded release, not `current`.
as_deploy mkdir {c.RELEASES_DIR}/r2
echo "INRELEASE $(exec_as_app --release r2 -- sh -c 'echo "$PWD|$POSTGRESQL_HOST"')"
echo "DASHES $(exec_as_app -- printf '[%s]' --release)"
as_deploy ln -s /etc {c.RELEASES_DIR}/r3
for bad in r3 r9 ../etc current ''; do
  said=$(exec_as_app --release "$bad" -- pwd 2>&1); echo "BADRELEASE [$bad] $said exit $?"
done
"""


def test_deploy_runs_the_exec_wrapper_as_app_only_in_the_release_with_the_apps_environment(tmp_path):
    require("sudo")
    files = app_files()
    root = nginx_tree(tmp_path / "ns", {
        app_server.SUDOERS_FILE: files[app_server.SUDOERS_FILE],
        WRAPPER_STAGED: files[app_server.APP_EXEC_COMMAND],
    })
    result = run(in_namespace(root, ["bash", "-c", EXEC_SCRIPT]))
    output = result.stdout + result.stderr
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in result.stdout.splitlines() if " " in line}
    assert lines.get("NORELEASE") == f"platform-app-exec: no release at {c.CURRENT_RELEASE_LINK} exit 1", output
    # .env as the apps read it (the value to the end of the line), as app, in `current`.
    assert lines["ENV"] == (f"10.110.16.9|hello world = yes|{c.CURRENT_RELEASE_LINK}|{c.APP_USER}|production|"
                            f"{c.APP_ENV_FILE}"), output
    assert lines["CODE"] == "7" and "out\n" in result.stdout and "err\n" in result.stderr, output
    assert lines["ARGS"] == "[two words][$HOME][--help]", "arguments pass through untouched"
    assert lines["NOCOMMAND"].startswith("platform-app-exec: no command given") and lines["NOCOMMAND"].endswith("exit 2")
    # deploy itself still cannot read the secrets; sudo gives it the wrapper as app and nothing else.
    assert lines["DEPLOYREADS"] == "no"
    # sudo's own refusal (the wrapper's would say so and exit 2).
    for attempt in ("ASROOT", "ASAPPSHELL"):
        assert "a password is required" in lines[attempt] and lines[attempt].endswith("exit 1"), output
    assert lines["DIRECT"].startswith(f"platform-app-exec: runs as {c.APP_USER} only"), output
    assert lines["INRELEASE"] == f"{c.RELEASES_DIR}/r2|10.110.16.9", output
    assert lines["DASHES"] == "[--release]", "after --, a word is the command's"
    bad = [line for line in result.stdout.splitlines() if line.startswith("BADRELEASE ")]
    assert bad == [f"BADRELEASE [r3] platform-app-exec: no release r3 in {c.RELEASES_DIR} exit 1",
                   f"BADRELEASE [r9] platform-app-exec: no release r9 in {c.RELEASES_DIR} exit 1",
                   *[f"BADRELEASE [{b}] platform-app-exec: --release '{b}' is not a release id "
                     "(usage: platform-app-exec [--release ID] [--] COMMAND [ARG...]) exit 2"
                     for b in ("../etc", "current", "")]], output


def log_dir_mode(provision: str) -> tuple[str, str]:
    (found,) = re.findall(rf"ensure_dir {re.escape(c.PM2_LOG_DIR)} (\d+) (\S+)", provision)
    return found


def test_deploy_reads_the_apps_logs_as_provisioning_leaves_them_and_after_a_rotation(tmp_path):
    files = app_files()
    mode, owner = log_dir_mode(files[app_server.PROGRAMS[0].path])
    root = nginx_tree(tmp_path / "ns", {LOGROTATE: files[LOGROTATE]})
    log = f"{c.PM2_LOG_DIR}/web.out.log"
    script = USERS + f"""
set -eu
install -d -m 0755 {c.PLATFORM_LOG_DIR}
rm -rf {c.PM2_LOG_DIR}
install -d -m {mode} -o {owner.split(':')[0]} -g {owner.split(':')[1]} {c.PM2_LOG_DIR}
# pm2 writes as app with the unit's umask (022).
runuser -u {c.APP_USER} -- sh -c 'umask 022; echo "2026-12-02T07:00:00: first" > {log}'
echo "BEFORE $(as_deploy cat {log})"
echo "WRITE $(as_deploy sh -c 'echo x >> {log}' 2>/dev/null && echo yes || echo no)"
echo "CREATE $(as_deploy touch {c.PM2_LOG_DIR}/new.log 2>/dev/null && echo yes || echo no)"
logrotate -f {LOGROTATE}
runuser -u {c.APP_USER} -- sh -c 'echo "2026-12-02T07:00:01: second" >> {log}'
echo "AFTER $(as_deploy cat {log})"
echo "ROTATED $(as_deploy cat {log}.1)"
echo "OTHERS $(stat -c %A {c.PM2_LOG_DIR} | cut -c8-10)"
"""
    require("logrotate")
    result = run(in_namespace(root, ["bash", "-c", script]))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in result.stdout.splitlines() if " " in line}
    assert lines["BEFORE"] == "2026-12-02T07:00:00: first", output
    assert lines["WRITE"] == "no" and lines["CREATE"] == "no", "deploy reads the logs, never writes them"
    assert lines["AFTER"] == "2026-12-02T07:00:01: second", output
    assert lines["ROTATED"] == "2026-12-02T07:00:00: first", output
    assert lines["OTHERS"] == "---", "nobody but app and group deploy gets in"


def test_the_wrapper_is_a_program_the_bundle_installs():
    assert any(p.path == app_server.APP_EXEC_COMMAND and p.mode == "0755" for p in app_server.PROGRAMS)
    assert shlex.split(app_files()[app_server.SUDOERS_FILE].splitlines()[-1])[-1] == "PLATFORM_APP_EXEC"
