"""python -m deploy {deploy|rollback|restart|releases|fetch|status|logs|exec|maintenance} STACK [--local] ...

  deploy STACK [--app DIR] [--keep N] [--health-timeout S] [--break-lock]
  rollback STACK [--to RELEASE]
  restart STACK [--health-timeout S] [--break-lock]
  releases STACK
  fetch STACK RELEASE [--into DIR]
  status STACK
  logs STACK [--follow] [--since 10m] [--process web ...] [--lines N] [--journal]
  exec STACK [--server app-N] [--tty] -- COMMAND [ARG...]
  maintenance STACK {on|off|status}

STACK is a Pulumi stack (its outputs via `pulumi stack output`), or with --local the
stack `python -m localcloud up` booted on this machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time

from . import (DEFAULT_APP_DIR, HEALTH_TIMEOUT_SECONDS, KEEP_RELEASES, LOG_LINES, archive, commands, operate, release,
               restart, restore)
from .notify import Notifier
from .archive import ArchiveError, NotArchived, Store
from .executor import CommandFailed, Executor
from .records import Stack
from .roll import Deployer, DeployError, Locked, Outcome, releases_table, summary
from .targets import LocalStack, PulumiStack, StackTarget, TargetError

EXIT_STOPPED = 1
EXIT_LOCKED = 3
OPERATOR_VERBS = ("status", "logs", "exec", "maintenance")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy", description=__doc__.split("\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("stack", help="the stack: staging, production, ...")
    common.add_argument("--local", action="store_true", help="the stack on this machine's local cloud")
    common.add_argument("-i", "--identity", help="the operator's SSH private key (default: ssh's own)")
    common.add_argument("-v", "--verbose", action="store_true", help="print every command (secrets redacted)")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("deploy", parents=[common], help="build, upload and roll out a release")
    d.add_argument("--app", default=DEFAULT_APP_DIR, help="the app directory (default: the example app)")
    d.add_argument("--keep", type=int, default=KEEP_RELEASES, help=f"releases kept per server (default {KEEP_RELEASES})")
    d.add_argument("--break-lock", action="store_true", help="remove a stale deploy lock first")
    r = sub.add_parser("rollback", parents=[common], help="switch every server back to the previous release")
    r.add_argument("--to", metavar="RELEASE", help="a named release instead of the previous one; from the release "
                                                   "archive (checked) when a server no longer holds it")
    r.add_argument("--break-lock", action="store_true", help="remove a stale deploy lock first")
    rs = sub.add_parser("restart", parents=[common], help="restart the apps where their unit's file changed since they "
                                                          "started or where they are down, one server at a time, each "
                                                          "out of the LB's pool meanwhile; needs ops on the LB and the "
                                                          "app servers")
    rs.add_argument("--break-lock", action="store_true", help="remove a stale deploy lock first")
    for command in (d, r, rs):
        command.add_argument("--health-timeout", type=int, default=HEALTH_TIMEOUT_SECONDS,
                             help=f"seconds a server may take to be healthy (default {HEALTH_TIMEOUT_SECONDS})")
    sub.add_parser("releases", parents=[common], help="what each server holds and which is current")
    f = sub.add_parser("fetch", parents=[common], help="download an archived release, its signature and sha256 checked")
    f.add_argument("release", help="the release id")
    f.add_argument("--into", default=".", help="the directory <release>.tar.gz is written to (default: here)")
    sub.add_parser("status", parents=[common], help="each server's release, apps and health; exit 1 if one is unhealthy")
    lg = sub.add_parser("logs", parents=[common], help="the apps' logs of every server, merged, each line [server]")
    lg.add_argument("--follow", "-f", action="store_true", help="then new lines from every server, until Ctrl-C")
    lg.add_argument("--since", help="only lines since: 30s, 10m, 2h, 1d, or YYYY-MM-DD[ HH:MM[:SS]] (servers' time)")
    lg.add_argument("--process", action="append", metavar="NAME", help="only this pm2 process's logs (web, api); repeatable")
    lg.add_argument("--lines", "-n", type=int, default=LOG_LINES, help=f"the last N lines of each log (default {LOG_LINES})")
    lg.add_argument("--journal", action="store_true", help="the apps' unit's journal instead of pm2's files: with what "
                                                           "a dying worker wrote, which the files lose")
    e = sub.add_parser("exec", parents=[common], help="a one-off command as the app user, in the current release "
                                                      "with the apps' environment; its exit code")
    e.add_argument("--server", help="the app server (default: the first, app-1)")
    e.add_argument("--tty", action="store_true", help="a terminal on the server, for an interactive command "
                                                      "(node's REPL, a console); needs one here")
    # The command is what follows `--` (split off before parsing: argparse's subcommands
    # mishandle it); the usage line says so.
    e.usage = "python -m deploy exec STACK [--local] [-i KEY] [--server app-N] [--tty] -- COMMAND [ARG...]"
    m = sub.add_parser("maintenance", parents=[common], help="on: the LB answers all but /healthz with the "
                                                             "maintenance page (503, Retry-After); needs ops on the LB")
    m.add_argument("action", choices=("on", "off", "status"))
    return p


def operate_checks(args, stack) -> None:
    """status, logs and exec's arguments, checked before any server is contacted."""
    if args.command == "logs":
        args.lines, args.process = operate.positive_lines(args.lines), operate.process_names(args.process)
        if args.journal:
            operate.journal_checks(args.lines)
            args.since = operate.journal_since(args.since, time.time())
        else:
            args.since = operate.since_words(args.since)
    if args.command == "exec":
        if not args.app_command:
            raise operate.UsageError("no command given: python -m deploy exec STACK [--server app-N] -- COMMAND ...")
        args.server = operate.pick_server(stack, args.server)
        if args.tty and not sys.stdin.isatty():
            raise operate.UsageError("--tty: stdin here is not a terminal (a pipe or a file), so there is none to "
                                     "give the command; run it without --tty")


def operate_verb(args, stack, executor: Executor, work: str) -> int:
    """status, logs, exec, maintenance: they read or run, and take no lock."""
    if args.command == "status":
        return operate.status(stack, executor, work)
    if args.command == "logs" and args.journal:
        return operate.journal_logs(stack, executor, args.lines, args.since, args.follow, args.process, work)
    if args.command == "logs":
        return operate.logs(stack, executor, args.lines, args.since, args.follow, args.process, work)
    if args.command == "maintenance":
        return operate.maintenance(stack, executor, args.action)
    return operate.app_exec(stack, executor, args.server, args.app_command, work, args.tty)


def fetch(args, target: StackTarget, executor: Executor) -> int:
    """Touches no server: the checked tarball for the README's restore by hand."""
    store = target.archive_store()
    executor.secrets.extend(store.secrets)
    path = restore.fetch(store, args.release, args.into)
    executor.say(f"{path}: signature and sha256 check (stack {store.stack}'s release signing key)")
    return 0


def target_of(args, executor: Executor) -> StackTarget:
    if args.local:
        return LocalStack(args.stack, args.identity)
    return PulumiStack(args.stack, executor, args.identity)


def archive_store(target: StackTarget, executor: Executor) -> Store | None:
    """Where this deploy archives its release; None (said why) when the stack has nowhere."""
    try:
        store = target.archive_store()
    except NotArchived as why:
        executor.say(f"the release will not be archived: {why}")
        return None
    executor.secrets.extend(store.secrets)   # redacted from every line printed from here on
    return store


def rollback(deployer: Deployer, to: str | None, target: StackTarget, executor: Executor, work: str) -> Outcome:
    """To the previous release, or to `to`: from the servers, or from the archive (checked)
    when one of them no longer holds it."""
    try:
        return deployer.rollback(to)
    except DeployError as problem:
        if to is None:
            raise
        lacking = problem
    try:
        store = target.archive_store()
    except NotArchived as why:
        raise DeployError(f"{lacking}. No archive to look in: {why}") from None
    executor.secrets.extend(store.secrets)
    if not archive.archived(store, to):
        raise DeployError(f"{lacking}. It is not archived either (no {store.url(to, archive.MANIFEST)})")
    executor.say(f"{to}: not on every server; fetching it from {store.url(to, archive.TARBALL)} ...")
    tarball = restore.fetch(store, to, work)
    executor.say(f"{to}: signature and sha256 check (stack {store.stack}'s release signing key)")
    build = release.Build(to, str(restore.unpack(tarball, os.path.join(work, "restored"), to)))
    return deployer.restore(build)


def pinned(stack: Stack, work: str) -> Stack:
    """The stack with a known_hosts of its droplets' recorded keys, the only ones accepted."""
    path = os.path.join(work, "known_hosts")
    with open(path, "w") as f:
        f.write(commands.known_hosts(stack))
    return dataclasses.replace(stack, known_hosts=path)


def split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """The deploy tool's arguments, and exec's command: everything after the first `--`."""
    if "--" not in argv:
        return argv, []
    at = argv.index("--")
    return argv[:at], argv[at + 1:]


def main(argv: list[str] | None = None, executor: Executor | None = None) -> int:
    own, app_command = split_command(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(own)
    if app_command and args.command != "exec":
        parser().error(f"{args.command}: takes no command after -- (only exec does)")
    args.app_command = app_command
    if getattr(args, "keep", 2) < 2:
        parser().error("--keep must be at least 2 (the current release and the one before it)")
    executor = executor or Executor(verbose=args.verbose)
    work = tempfile.mkdtemp(prefix="deploy-")
    deployer = notifier = None
    try:
        target = target_of(args, executor)
        if args.command == "fetch":
            return fetch(args, target, executor)
        stack = pinned(target.resolve(), work)
        operate_checks(args, stack)
        deployer = Deployer(stack, executor, getattr(args, "health_timeout", HEALTH_TIMEOUT_SECONDS), control_dir=work)
        if args.command in OPERATOR_VERBS:
            # No check of every server first: one that is down is a line of status's table,
            # not the end of it. Each connection still accepts only the recorded host keys.
            return operate_verb(args, stack, executor, work)
        deployer.check_host_keys()
        if args.command == "releases":
            for line in releases_table(deployer.releases()):
                executor.say(line)
            return 0
        store = archive_store(target, executor) if args.command == "deploy" else None
        deployer.lock(args.command, break_lock=args.break_lock)
        notifier = Notifier(stack.name, target, executor)
        if args.command == "restart":
            notifier.restart_started()
            notifier.restart_finished(restart.restart(deployer))
            return 0
        if args.command == "deploy":
            executor.say(f"building {args.app} ...")
            build = release.build(args.app, work, executor)
            executor.say(f"built {build.release_id} ({', '.join(p.name for p in build.contract.processes)})")
            deployer.check_runtime(build)
            notifier.deploy_started(build.release_id, deployer.holder)
            if store:
                # Before any server: a release that cannot be archived is not rolled out.
                archive.archive(store, build, work, executor)
            outcome: Outcome = deployer.deploy(build, args.keep)
        else:
            notifier.rollback_started(args.to)
            outcome = rollback(deployer, args.to, target, executor, work)
        for line in summary(outcome):
            executor.say(line)
        notifier.finished(outcome)
        return 0 if outcome.ok else EXIT_STOPPED
    except Locked as locked:
        executor.say(f"refused: {locked}")
        return EXIT_LOCKED
    except (TargetError, DeployError, ArchiveError, NotArchived, ValueError) as problem:
        executor.say(f"{args.command}: {problem}")
        if notifier:
            notifier.stopped(str(problem))
        return EXIT_STOPPED
    except CommandFailed as failed:
        executor.say(f"{args.command}: {failed}")
        for line in failed.result.output.strip().splitlines()[-10:]:
            executor.say(f"  ! {line}")
        if notifier:
            notifier.stopped(f"{failed}: {failed.result.last_line}")
        return EXIT_STOPPED
    finally:
        if deployer is not None:
            try:
                deployer.unlock()
            except CommandFailed as failed:
                executor.say(f"could not release the deploy lock: {failed}")
            for server in deployer.stack.servers:
                executor.run(commands.close_connection(deployer.stack, work, server), timeout=30)
        shutil.rmtree(work, ignore_errors=True)
        if notifier:   # the locks are released: the end may take the webhook's time
            notifier.stopped("interrupted before its end")   # still under way: Ctrl-C, or an error not named above
            notifier.send_end()   # last: a second Ctrl-C here skips nothing else


if __name__ == "__main__":
    sys.exit(main())
