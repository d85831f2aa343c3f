"""Every command a deploy runs, as data: small functions returning argument lists.

Nothing here runs anything (deploy/executor.py does), so the tests assert on exactly what
would be run on the operator's machine, the load balancer and each app server.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from cloudinit.app_server import APP_EXEC, APPS_JOURNAL, APPS_RELOAD, APPS_RESTART
from components import ssh
from model import app_contract, conventions
from model.app_contract import FILE as CONTRACT_FILE, Contract

from .records import Server, Stack

REMOTE_SCRIPT = Path(__file__).with_name("remote.sh")
# The start check, kept with the app servers' files (their env push runs it too).
START_CHECK_SCRIPT = Path(__file__).resolve().parents[1] / "cloudinit" / "app_server" / "start-check.js"
# releases/ (2750 deploy:app) is the gate: only group `app` gets past it. Inside, a release
# is readable by all, as the app user is "other" there: deploy, not in group `app`, cannot
# give files to that group (a chmod by it even clears the directory's setgid bit).
RELEASE_MODES = "Du=rwx,Dgo=rx,Fu+rw,Fgo+rX,Fgo-w"


@dataclass(frozen=True)
class Remote:
    """A command for one host: the ssh argv and what goes to its stdin."""

    argv: list[str]
    stdin: str | None = None


# --- ssh ---------------------------------------------------------------------------

def ssh_options(stack: Stack, control_dir: str | None = None, host: str | None = None) -> list[str]:
    """`host`: the droplet by the program's name (lb, app-1): its key in known_hosts is
    filed under the droplet's name (HostKeyAlias), so a changed key names the droplet."""
    options = ssh.openssh_options(stack.identity, stack.known_hosts, control_dir)
    if stack.known_hosts and host:
        options += ["-o", f"HostKeyAlias={conventions.droplet_name(stack.name, host)}"]
    return options


def known_hosts(stack: Stack) -> str:
    """The known_hosts a deploy pins: each droplet's key as its boot gate recorded it."""
    return "".join(ssh.host_key_line(conventions.droplet_name(stack.name, name), key)
                   for name, key in sorted(stack.host_keys.items()))


def jump_login(stack: Stack) -> str:
    """The deploy login on the LB: it may only forward to the app servers' SSH."""
    return ssh.login(stack.jump_host, conventions.DEPLOY_USER)


def ssh_via_jump(stack: Stack, control_dir: str | None = None, server: Server | None = None,
                 user: str = conventions.DEPLOY_USER) -> list[str]:
    """ssh to a private address through the LB (the deploy login's jump), as `user`; the
    host comes last."""
    jump = ssh.through(jump_login(stack), ssh_options(stack, host=conventions.LOAD_BALANCER))
    return ["ssh", *ssh_options(stack, control_dir, server and server.name), *jump, "-l", user]


def on_server(stack: Stack, server: Server, remote: list[str], control_dir: str | None = None,
              stdin: str | None = None, tty: bool = False) -> Remote:
    """`remote` on one app server as deploy; `tty`: with a terminal there (ssh -t: the jump
    host's deploy login has none, and needs none to pass the connection on)."""
    terminal = ["-t"] if tty else []
    return Remote([*ssh_via_jump(stack, control_dir, server), *terminal, server.address, shlex.join(remote)], stdin)


def as_operator_on_server(stack: Stack, server: Server, remote: list[str]) -> Remote:
    """`remote` on one app server as an operator (`ops`, sudo), through the same jump; a
    connection of its own, not kept (a deploy closes only its own shared ones)."""
    return Remote([*ssh_via_jump(stack, None, server, user=conventions.OPERATOR_USER), server.address,
                   shlex.join(remote)])


def on_load_balancer(stack: Stack, remote: list[str]) -> Remote:
    """A command on the LB as an operator (`ops`, sudo): the deploy login may only jump there."""
    return Remote(["ssh", *ssh_options(stack, host=conventions.LOAD_BALANCER),
                   ssh.login(stack.jump_host, conventions.OPERATOR_USER), shlex.join(remote)])


def maintenance(stack: Stack, action: str, holder: str | None = None) -> Remote:
    """platform-maintenance on [HOLDER] | off | status, on the LB."""
    return on_load_balancer(stack, ["sudo", "-n", conventions.MAINTENANCE_COMMAND, action, *([holder] if holder else [])])


def drain(stack: Stack, action: str, server: Server | None = None) -> Remote:
    """platform-drain on ADDRESS | off ADDRESS | status, on the LB: one app server out of
    the LB's pool (the LB's requests to it answered first), or back in."""
    return on_load_balancer(stack, ["sudo", "-n", conventions.DRAIN_COMMAND, action,
                                    *([server.address] if server else [])])


def restart_apps(stack: Stack, server: Server) -> Remote:
    """The apps' unit stopped and started again, as an operator: the deploy user may only
    reload it."""
    return as_operator_on_server(stack, server, ["sudo", "-n", *APPS_RESTART])


def through_jump_host(stack: Stack, server: Server) -> Remote:
    """The LB's host key and the deploy login's jump to one app server's SSH, alone: the
    LB runs no command for deploy, so the check is a forward (it ends with stdin)."""
    return Remote(["ssh", *ssh_options(stack, host=conventions.LOAD_BALANCER),
                   "-W", f"{server.address}:{conventions.SSH_PORT}", jump_login(stack)], stdin="")


# --- the server half (deploy/remote.sh) ------------------------------------------------

def prelude(stack: Stack) -> str:
    """The facts remote.sh reads, from their one home."""
    pool_name = conventions.app_pool_tls_name(stack.name)
    facts = {
        "RELEASES_DIR": conventions.RELEASES_DIR,
        "CURRENT_LINK": conventions.CURRENT_RELEASE_LINK,
        "LOCK_DIR": conventions.DEPLOY_LOCK_DIR,
        "CA_FILE": conventions.CA_CERT_PATH,
        "HEALTH_NAME": pool_name,
        # The app server's loopback listener: its LB port takes the LB's certificate only.
        "HEALTH_PORT": str(conventions.APP_LOCAL_TLS_PORT),
        "HEALTH_URL": f"https://{pool_name}:{conventions.APP_LOCAL_TLS_PORT}{conventions.HEALTH_PATH}",
        "APP_USER": conventions.APP_USER,
        "APPS_UNIT": conventions.APPS_UNIT,
        "LOG_DIR": conventions.PM2_LOG_DIR,
        "CONTRACT_FILE": CONTRACT_FILE,
    }
    return "".join(f"{key}={shlex.quote(value)}\n" for key, value in facts.items())


def script(stack: Stack) -> str:
    return prelude(stack) + REMOTE_SCRIPT.read_text()


def release_action(stack: Stack, server: Server, *args: str, control_dir: str | None = None) -> Remote:
    """remote.sh ACTION ARGS on an app server, as deploy."""
    return on_server(stack, server, ["bash", "-s", "--", *args], control_dir, stdin=script(stack))


def list_releases(stack, server, control_dir=None) -> Remote:
    return release_action(stack, server, "list", control_dir=control_dir)


def accept(stack, server, release_id, control_dir=None) -> Remote:
    return release_action(stack, server, "accept", release_id, control_dir=control_dir)


def switch(stack, server, release_id, control_dir=None) -> Remote:
    return release_action(stack, server, "switch", release_id, control_dir=control_dir)


def release_contract(stack, server, release_id, control_dir=None) -> Remote:
    """The platform.json release `release_id` carries on one server (empty: none)."""
    return release_action(stack, server, "contract", release_id, control_dir=control_dir)


def health(stack, server, timeout: int, control_dir=None) -> Remote:
    return release_action(stack, server, "health", str(timeout), control_dir=control_dir)


def activated(stack, server, release_id, control_dir=None) -> Remote:
    return release_action(stack, server, "activated", release_id, control_dir=control_dir)


def prune(stack, server, keep: int, control_dir=None) -> Remote:
    return release_action(stack, server, "prune", str(keep), control_dir=control_dir)


def runtime(stack, server, control_dir=None) -> Remote:
    """The node the apps run on one server, as node_runtime() says it here."""
    return release_action(stack, server, "runtime", control_dir=control_dir)


def status(stack, server, control_dir=None) -> Remote:
    """What runs on one server: its release, the apps' unit and processes, one /healthz."""
    return release_action(stack, server, "status", control_dir=control_dir)


def logs(stack, server, lines: int, since: str | None, follow: bool, processes: tuple[str, ...] = (),
         control_dir=None) -> Remote:
    """The apps' log lines on one server; with `follow`, until this command's stdin closes."""
    return release_action(stack, server, "logs", str(lines), since or "-", "follow" if follow else "once",
                          *processes, control_dir=control_dir)


def app_exec(stack, server, command: list[str], control_dir=None, tty: bool = False) -> Remote:
    """COMMAND as the app user, in the current release with the apps' environment: the
    deploy user's second sudo command, a fixed wrapper (cloudinit/app_server/sudoers)."""
    return on_server(stack, server, ["sudo", "-n", "-u", conventions.APP_USER, *APP_EXEC, "--", *command], control_dir,
                     tty=tty)


def release_command(stack, server, release_id: str, command: str, control_dir=None) -> Remote:
    """The contract's release command, as app-exec runs one, in release `release_id`
    (uploaded, not yet current)."""
    return on_server(stack, server, ["sudo", "-n", "-u", conventions.APP_USER, *APP_EXEC, "--release", release_id,
                                     "--", "sh", "-c", command], control_dir)


def start_check(stack, server, release_id: str, contract: Contract, health_timeout: int, control_dir=None) -> Remote:
    """Each process of release `release_id` that serves a route started once beside the
    running apps, as pm2 would start it, then stopped (cloudinit/app_server/start-check.js, on stdin):
    as app-exec runs a release command, so it runs nothing a release could not."""
    spec = {
        "processes": [{"name": p.name, "script": p.script, "health": contract.health if p.answers_health else None}
                      for p in contract.processes if p.serves],
        "ready_ms": conventions.PM2_READY_TIMEOUT_MS,
        "stop_ms": conventions.PM2_KILL_TIMEOUT_MS,
        "health_ms": health_timeout * 1000,
    }
    return on_server(stack, server, ["sudo", "-n", "-u", conventions.APP_USER, *APP_EXEC, "--release", release_id,
                                     "--", "node", "-", json.dumps(spec, separators=(",", ":"))], control_dir,
                     stdin=START_CHECK_SCRIPT.read_text())


def reload_apps(stack, server, control_dir=None) -> Remote:
    """pm2's graceful reload: the deploy user's one sudo command."""
    return on_server(stack, server, ["sudo", "-n", *APPS_RELOAD], control_dir)


def apps_journal(stack, server, since: int, lines: int, control_dir=None) -> Remote:
    """The apps' unit's journal from `since` (seconds since the epoch), its last `lines`
    entries: the deploy user's sudo wrapper, which checks both numbers."""
    return on_server(stack, server, ["sudo", "-n", *APPS_JOURNAL, str(since), str(lines)], control_dir)


def apps_journal_followed(stack, server, lines: int, control_dir=None) -> Remote:
    """Its last `lines` entries, then each new one until this command ends (journalctl
    --follow leaves with its reader, the ssh)."""
    return on_server(stack, server, ["sudo", "-n", *APPS_JOURNAL, "0", str(lines), "follow"], control_dir)


def lock(stack, server, holder: str, control_dir=None) -> Remote:
    """The deploy lock on one app server, as deploy: a directory in its home."""
    return release_action(stack, server, "lock", holder, control_dir=control_dir)


def unlock(stack, server, holder: str, control_dir=None) -> Remote:
    return release_action(stack, server, "unlock", holder, control_dir=control_dir)


def break_lock(stack, server, control_dir=None) -> Remote:
    return release_action(stack, server, "break-lock", control_dir=control_dir)


def upload(stack: Stack, server: Server, build_dir: str, release_id: str, control_dir: str | None = None) -> list[str]:
    """rsync the built release next to the others; unchanged files hard-link to `current`'s."""
    ssh = shlex.join(ssh_via_jump(stack, control_dir, server))
    return ["rsync", "--recursive", "--links", "--perms", "--times", "--delete", "--compress",
            f"--chmod={RELEASE_MODES}", f"--link-dest={conventions.CURRENT_RELEASE_LINK}/",
            "-e", ssh, f"{build_dir.rstrip('/')}/",
            f"{server.address}:{conventions.RELEASES_DIR}/{release_id}.partial/"]


# --- the build, on the operator's machine ---------------------------------------------

def git_commit(app_dir: str) -> list[str]:
    return ["git", "-C", app_dir, "rev-parse", "--short=7", "HEAD"]


def git_changes(app_dir: str) -> list[str]:
    return ["git", "-C", app_dir, "status", "--porcelain", "--", "."]


def copy_sources(app_dir: str, build_dir: str) -> list[str]:
    """The app's directory but what a release leaves out (app_contract.released, as rsync's
    filter rules: the first that matches a name decides), what the build reads included."""
    filters = [*(f"--exclude=/{name}" for name in app_contract.NOT_RELEASED_AT_ROOT),
               f"--include={app_contract.RELEASED_TEMPLATE}",
               *(f"--exclude={name}" for name in app_contract.NOT_RELEASED_ANYWHERE)]
    return ["rsync", "--recursive", "--links", "--perms", "--times", *filters,
            f"{app_dir.rstrip('/')}/", f"{build_dir.rstrip('/')}/"]


def node_runtime() -> list[str]:
    """`v22.11.0 linux x64`: what a native module is built for (its ABI is the major's)."""
    return ["node", "-p", 'process.version + " " + process.platform + " " + process.arch']


def install_dependencies(build_dir: str) -> list[str]:
    """Production dependencies exactly as the lockfile says."""
    return ["npm", "ci", "--omit=dev", "--no-audit", "--no-fund", "--prefix", build_dir]


def install_all_dependencies(build_dir: str) -> list[str]:
    """Dev dependencies too, for the app's build step (TypeScript, a bundler)."""
    return ["npm", "ci", "--include=dev", "--no-audit", "--no-fund", "--prefix", build_dir]


def build_step(build_dir: str, command: str) -> list[str]:
    """The contract's build command, by the shell, in the release being built."""
    return ["sh", "-c", f"cd {shlex.quote(build_dir)} && {command}"]


def prune_dev_dependencies(build_dir: str) -> list[str]:
    return ["npm", "prune", "--omit=dev", "--no-audit", "--no-fund", "--prefix", build_dir]


def close_connection(stack: Stack, control_dir: str, server: Server) -> list[str]:
    """Stop the shared connection to one app server."""
    return [*ssh_via_jump(stack, control_dir, server), "-O", "exit", server.address]
