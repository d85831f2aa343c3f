"""A fleet of app servers kept as data, for the deploy tests that run the roll logic and
the CLI with a fake executor (test_roll.py and the modules beside it).

The fake reads the very argument lists deploy builds (ssh through the jump host, rsync,
remote.sh actions on stdin) and answers as the servers would, so the tests assert on the
order of commands and on what each server ends up running.
"""

from __future__ import annotations

import io
import json
import shlex
from dataclasses import dataclass, field

from model import app_contract, conventions
from deploy.archive import NotArchived
from deploy.notify import NoWebhook
from deploy.executor import Executor, Result
from deploy.release import Build
from deploy.records import Server, Stack

SERVERS = (Server("app-1", "10.110.16.3"), Server("app-2", "10.110.16.4"), Server("app-3", "10.110.16.5"))
STACK = Stack("staging", "198.51.100.2", SERVERS, identity="/keys/operator")
OLD, NEW = "20261129T100000Z-aaaaaaa", "20261129T213005Z-bbbbbbb"


@dataclass
class FakeServer:
    releases: list[str] = field(default_factory=lambda: [OLD])
    current: str | None = OLD
    running: str | None = OLD           # what pm2 runs: `current` as of the last reload
    activated: list[str] = field(default_factory=lambda: [OLD])   # remote.sh's history
    runtime: str = "v22.11.0 linux x64"   # what its node says (remote.sh runtime)
    unit_changed: bool = False            # the apps' unit's file changed after the apps started
    restarts: int = 0                     # the apps' unit restarted (by an operator)
    idle: tuple[str, ...] = ()            # declared processes with no worker (pm2 gave up on them)


@dataclass
class Fleet(Executor):
    """An Executor whose commands land on simulated servers instead of a network."""

    servers: dict[str, FakeServer] = field(default_factory=dict)
    unhealthy: set[tuple[str, str]] = field(default_factory=set)   # (address, release) that never get healthy
    dies: set[tuple[str, str]] = field(default_factory=set)        # (address, release) pm2 gives up on: reload fails
    fails_to_start: set[tuple[str, str]] = field(default_factory=set)   # (address, release) its start check fails
    contracts: dict[str, str] = field(default_factory=dict)        # release: its platform.json, if not the default
    journal: dict[tuple[str, str], str] | None = field(default_factory=dict)   # (address, release): its journal
    journal_since: list[int] = field(default_factory=list)         # the SINCE of each journal asked
    lock_holder: str | None = None     # a deploy lock already held on every server
    log: list[tuple[str, str]] = field(default_factory=list)       # (host, action) in the order run
    argvs: list[list[str]] = field(default_factory=list)           # every command, as run
    locks: dict[str, str] = field(default_factory=dict)            # address: who holds its deploy lock
    release_command_exit: int = 0      # what the contract's release command exits with
    drained: set[str] = field(default_factory=set)   # addresses out of the LB's pool (platform-drain)
    drain_fails: bool = False          # platform-drain on: old LB workers outlive its wait
    operator_refused: bool = False     # the key is not an operator's: ops logins fail
    restart_breaks: set[str] = field(default_factory=set)   # addresses whose apps a restart leaves unhealthy

    def __post_init__(self):
        self.servers = self.servers or {s.address: FakeServer() for s in SERVERS}
        if self.lock_holder:
            self.locks = {address: self.lock_holder for address in self.servers}
        self.out = io.StringIO()

    def run(self, argv, *, input=None, timeout=900, progress=None):
        result = self.result_of(argv, input)
        for line in result.output.splitlines() if progress else ():
            progress(line)
        return result

    def result_of(self, argv, input):
        self.argvs.append(argv)
        if argv[0] == "rsync":
            address = argv[-1].split(":", 1)[0]
            rid = argv[-1].rsplit("/", 2)[-2].removesuffix(".partial")
            self.log.append((address, f"rsync {rid}"))
            self.servers[address].releases.append(rid + ".partial")
            return Result(argv, 0, "")
        assert argv[0] == "ssh"
        if "-O" in argv:
            return Result(argv, 0, "")
        if "-W" in argv:   # the jump check: the deploy login on the LB, forwarding only
            assert argv[-1] == f"{conventions.DEPLOY_USER}@{STACK.jump_host}" and input == ""
            assert argv[argv.index("-W") + 1] == f"{SERVERS[0].address}:{conventions.SSH_PORT}"
            return Result(argv, 0, "SSH-2.0-OpenSSH_9.2p1\n")
        host, remote = argv[-2], shlex.split(argv[-1])
        if remote == ["true"]:   # the host key check, before anything is sent
            return Result(argv, 0, "")
        if host == f"{conventions.OPERATOR_USER}@{STACK.jump_host}":
            return self.on_load_balancer(remote)
        if argv[argv.index("-l") + 1] == conventions.OPERATOR_USER:
            return self.as_operator(host, remote)
        assert host in self.servers, f"nothing runs anywhere but on the app servers: {host}"
        if remote[3:4] in (["lock"], ["unlock"], ["break-lock"]):
            return self.lock_action(argv, host, remote, input)
        return self.on_server(host, remote, input)

    def lock_action(self, argv, address, remote, script):
        """remote.sh's lock actions, as deploy on one app server."""
        assert remote[:3] == ["bash", "-s", "--"] and script.startswith("RELEASES_DIR=")
        action, *args = remote[3:]
        self.log.append(("lock", f"{action} {address}"))
        if action == "lock":
            if address in self.locks:
                return Result(argv, 3, f"held by {self.locks[address]}\n")
            self.locks[address] = args[0]
            return Result(argv, 0, "locked\n")
        if action == "unlock":
            assert self.locks.get(address) == args[0], "unlocks only its own lock"
            del self.locks[address]
            return Result(argv, 0, "")
        if action == "break-lock":
            holder = self.locks.pop(address, None)
            return Result(argv, 0, f"removed the lock of {holder}\n" if holder else "no lock was held\n")
        raise AssertionError(action)

    def on_load_balancer(self, remote):
        """platform-drain as ops on the LB (maintenance is test_operate's)."""
        assert remote[:3] == ["sudo", "-n", conventions.DRAIN_COMMAND], remote
        if self.operator_refused:
            return Result([], 255, f"{conventions.OPERATOR_USER}@{STACK.jump_host}: Permission denied (publickey).\n")
        action, *address = remote[3:]
        self.log.append(("lb", " ".join([action, *address])))
        if action == "status":
            return Result([], 0, "".join(f"{a}\n" for a in sorted(self.drained)))
        if action == "on":
            self.drained.add(address[0])
            if self.drain_fails:
                return Result([], 1, f"platform-drain: {address[0]} is marked down, but nginx workers from before "
                                     "still run after 60s (long requests or websockets to the pool): 1 of them\n")
            # As when the LB's workers from before its reload took a while: a line, then the result.
            return Result([], 0, f"{address[0]}: marked down; waiting up to 60s for the LB's workers from "
                                 "before the reload, which may still be answering its requests\n"
                                 f"{address[0]}: drained in 1s\n")
        assert action == "off", action
        self.drained.discard(address[0])
        return Result([], 0, f"{address[0]}: in the pool\n")

    def as_operator(self, address, remote):
        """What ops runs on an app server: the apps' unit restarted."""
        assert remote == ["sudo", "-n", "systemctl", "restart", conventions.APPS_UNIT], remote
        server = self.servers[address]
        self.log.append((address, "restart"))
        server.running, server.unit_changed, server.idle = server.current, False, ()
        server.restarts += 1
        if address in self.restart_breaks:
            self.unhealthy.add((address, server.running))
        return Result([], 0, "")

    def on_server(self, address, remote, script):
        server = self.servers[address]
        if remote[:5] == ["sudo", "-n", "-u", conventions.APP_USER, "/usr/local/sbin/platform-app-exec"]:
            if remote[7:10] == ["--", "node", "-"]:
                return self.start_check(address, remote, script)
            assert remote[5] == "--release" and remote[7:10] == ["--", "sh", "-c"], remote
            assert remote[6] in server.releases, "the release command runs in the uploaded release"
            self.log.append((address, f"release-command {remote[6]}: {remote[10]}"))
            return Result([], self.release_command_exit, "migrated\n" if not self.release_command_exit else "boom\n")
        if remote == ["sudo", "-n", "systemctl", "reload", conventions.APPS_UNIT]:
            self.log.append((address, "reload"))
            server.running = server.current
            if (address, server.running) in self.dies:
                return Result([], 1, "Job for platform-apps.service failed because the control process exited with "
                                     "error code.\nSee \"systemctl status platform-apps.service\" for details.\n")
            return Result([], 0, "")
        if remote[:3] == ["sudo", "-n", "/usr/local/sbin/platform-apps-journal"]:
            since, lines = remote[3:]   # logged without SINCE, a time: kept apart for the tests that look
            self.journal_since.append(int(since))
            self.log.append((address, f"journal {lines}"))
            if self.journal is None:   # provisioned before the wrapper: sudo refuses it
                return Result([], 1, "sudo: a password is required\n")
            return Result([], 0, self.journal.get((address, server.running), ""))
        assert remote[:3] == ["bash", "-s", "--"] and script.startswith("RELEASES_DIR=")
        action, *args = remote[3:]
        self.log.append((address, " ".join([action, *args])))
        if action == "list":
            previous = next((r for r in reversed(server.activated) if r != server.current), None)
            marks = lambda r: (" current" if r == server.current else "") + (" previous" if r == previous else "")  # noqa: E731
            return Result([], 0, "".join(f"{r} 1700000000{marks(r)}\n"
                                         for r in server.releases if not r.endswith(".partial")))
        if action == "activated":
            server.activated.append(args[0])
            return Result([], 0, "")
        if action == "accept":
            server.releases.remove(args[0] + ".partial")
            server.releases.append(args[0])
            return Result([], 0, "")
        if action == "switch":
            server.current = args[0]
            return Result([], 0, "")
        if action == "contract":   # what the build wrote: the default processes
            assert args[0] in server.releases, "only a release the server holds"
            return Result([], 0, self.contracts.get(args[0], json.dumps(app_contract.DEFAULT.as_json())))
        if action == "health":
            if (address, server.running) in self.unhealthy:
                return Result([], 1, "deploy: https://staging-app:8443/healthz did not answer 200 ... (last: 502)\n")
            return Result([], 0, "healthy\n")
        if action == "status":   # pm2-runtime (pid 100) up an hour, its unit's file 1 min or 2 h old; workers
            workers = "".join(f"process {pid} 600 node {conventions.CURRENT_RELEASE_LINK}/{name}/server.js\n"
                              for pid, name in ((120, "web"), (130, "api")) if name not in server.idle)
            health = "502 {}" if (address, server.running) in self.unhealthy else "200 {}"
            return Result([], 0, f"release {server.current}\nunit active 100\n"
                                 f"unitfile {60 if server.unit_changed else 7200}\n"
                                 f"process 100 3600 PM2 v6.0.13: God Daemon\n{workers}health {health}\n")
        if action == "prune":
            return Result([], 0, "")
        if action == "runtime":
            return Result([], 0, server.runtime + "\n")
        raise AssertionError(action)

    def start_check(self, address, remote, script):
        """The start check (cloudinit/app_server/start-check.js) in an uploaded release, as
        the app user: a line per process."""
        assert remote[5] == "--release" and script.startswith("// The start check"), remote
        release, spec = remote[6], json.loads(remote[10])
        assert release in self.servers[address].releases, "the start check runs in the uploaded release"
        self.log.append((address, f"start-check {release}"))
        if (address, release) in self.fails_to_start:
            return Result([], 1, "web: started (ready in 0.3s, stopped in 0.1s)\n"
                                 "api: FAILED: it exited (code 1) before it said ready\n"
                                 "  api: Error: Cannot find module 'pg'\n")
        return Result([], 0, "".join(f"{p['name']}: started (ready in 0.3s, stopped in 0.1s)\n"
                                     for p in spec["processes"]))

    def printed(self) -> str:
        return self.out.getvalue()


BUILD = Build(NEW, "/tmp/deploy-x/" + NEW)


@dataclass
class FakeTarget:
    """The stack a CLI test deploys to: STACK, with or without a bucket and a webhook."""
    store: object = None   # an archive.Store, or None: the stack has nowhere to archive
    webhook: str | None = None   # alertWebhookUrl, or None: no notifications

    def resolve(self):
        return STACK

    def archive_store(self):
        if self.store is None:
            raise NotArchived("this test stack has no bucket")
        return self.store

    def alert_webhook_url(self):
        if self.webhook is None:
            raise NoWebhook("this test stack has no webhook")
        return self.webhook
