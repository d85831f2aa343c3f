"""Deploy, roll back and list releases: the order of things, one server at a time.

A deploy uploads the release to every server first (nothing switches if an upload
fails), then per server: start its serving processes once beside the running apps (the
start check), switch `current`, reload pm2 gracefully, wait for health. A server whose
start check fails is not switched; the first one that does not become healthy is
switched back to the release it ran; either way the roll stops there: the servers after
it never left the old release.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import socket
import time
from dataclasses import dataclass, field

from model import app_contract, conventions
from model.app_contract import Contract

from . import commands, journal
from .commands import Remote
from .executor import CommandFailed, Executor, Result
from .release import Build, runtime_problem
from .records import Server, Stack

LOCKED_EXIT = 3  # remote.sh's exit when someone else holds the lock
# A migration may take a while; the deploy waits this long for the release command.
RELEASE_COMMAND_SECONDS = 1800
# A server that fails its step shows the last lines the apps and the reload wrote to the
# apps' unit's journal, read from at most its last JOURNAL_READ entries.
APPS_SAID_LINES = 20
JOURNAL_READ = 2000


@dataclass(frozen=True)
class Holdings:
    """What one server holds: releases oldest first, the current one, and the previous
    one: the last that ran healthy before it (a release that never did is not it)."""

    server: Server
    releases: tuple[str, ...]
    current: str | None
    previous: str | None = None


def parse_list(server: Server, output: str) -> Holdings:
    releases, current, previous = [], None, None
    for line in output.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        releases.append(fields[0])
        if "current" in fields[2:]:
            current = fields[0]
        if "previous" in fields[2:]:
            previous = fields[0]
    return Holdings(server, tuple(releases), current, previous)


@dataclass
class Step:
    server: Server
    from_release: str | None
    to_release: str
    ok: bool = False
    seconds: float = 0.0
    problem: str = ""
    refused_at_start: bool = False   # the start check failed: never switched
    switched_back: bool = False


@dataclass
class Outcome:
    action: str
    steps: list[Step] = field(default_factory=list)
    untouched: list[Server] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps) and not self.untouched


class Locked(RuntimeError):
    pass


class DeployError(RuntimeError):
    pass


def holder_text(action: str, now: dt.datetime | None = None) -> str:
    """Who takes the lock, for the next one who finds it taken."""
    since = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{getpass.getuser()}@{socket.gethostname()} since {since} ({action}, pid {os.getpid()})"


@dataclass
class Deployer:
    stack: Stack
    executor: Executor
    health_timeout: int = conventions.APP_HEALTH_TIMEOUT_SECONDS
    control_dir: str | None = None
    holder: str = ""
    locked: list[Server] = field(default_factory=list)   # the servers whose lock this deploy holds

    def say(self, line: str) -> None:
        self.executor.say(line)

    def remote(self, what: str, command: Remote) -> Result:
        return self.executor.check(what, command.argv, input=command.stdin)

    def check_host_keys(self) -> None:
        """Pass the LB to the first app server's SSH, then log in to every app server once,
        before anything is sent: a host key that is not the one recorded at the droplet's
        first contact stops the run here, naming the droplet (the logins stay open for the
        steps after, with a control_dir)."""
        if self.stack.servers:
            self.remote(f"{conventions.droplet_name(self.stack.name, conventions.LOAD_BALANCER)}: host key, and "
                        f"the jump to {self.stack.servers[0].name}",
                        commands.through_jump_host(self.stack, self.stack.servers[0]))
        for server in self.stack.servers:
            self.remote(f"{conventions.droplet_name(self.stack.name, server.name)}: host key",
                        commands.on_server(self.stack, server, ["true"], self.control_dir))

    # --- the lock ----------------------------------------------------------------------
    # On every app server, in the pool's order, as deploy (no privilege): it guards what
    # a deploy changes there (releases, `current`, the history), so two deploys never touch
    # one server at once, even when they see the pool differently. A deploy that finds
    # one held lets go of those it took and is refused.

    def lock(self, action: str, break_lock: bool = False) -> None:
        if break_lock:
            for server in self.stack.servers:
                result = self.remote(f"{server.name}: break the deploy lock",
                                     commands.break_lock(self.stack, server, self.control_dir))
                self.say(f"{self.stack.name}: [{server.name}] {result.output.strip()}")
        holder = holder_text(action)
        self.holder = holder
        for server in self.stack.servers:
            command = commands.lock(self.stack, server, holder, self.control_dir)
            result = self.executor.run(command.argv, input=command.stdin)
            if result.returncode == LOCKED_EXIT:
                held = result.output.strip().removeprefix("held by ")
                self.unlock()
                raise Locked(f"{self.stack.name} is locked: a deploy by {held} holds it (on {server.name}). If "
                             f"that deploy is no longer running, run again with --break-lock.")
            if not result.ok:
                self.unlock()
                raise CommandFailed(f"{server.name}: take the deploy lock", result)
            self.locked.append(server)   # only now is this server's lock ours to release

    def unlock(self) -> None:
        """Release every lock this deploy took, last first; each is tried (a failure is
        raised once all were)."""
        failed = None
        while self.locked:
            server = self.locked.pop()
            try:
                self.remote(f"{server.name}: release the deploy lock",
                            commands.unlock(self.stack, server, self.holder, self.control_dir))
            except CommandFailed as failure:
                failed = failed or failure
        self.holder = ""
        if failed:
            raise failed

    # --- what the servers hold ---------------------------------------------------------

    def holdings(self, server: Server) -> Holdings:
        result = self.remote(f"{server.name}: list releases",
                             commands.list_releases(self.stack, server, self.control_dir))
        return parse_list(server, result.output)

    def upload(self, server: Server, build: Build) -> None:
        start = time.monotonic()
        self.executor.check(f"{server.name}: upload {build.release_id}",
                            commands.upload(self.stack, server, build.directory, build.release_id, self.control_dir))
        self.remote(f"{server.name}: accept {build.release_id}",
                    commands.accept(self.stack, server, build.release_id, self.control_dir))
        self.say(f"[{server.name}] uploaded {build.release_id} ({time.monotonic() - start:.1f}s)")

    def check_runtime(self, build: Build) -> None:
        """Before anything is uploaded: the Node.js major the release declares, and its
        compiled addons' Node.js, OS and CPU, are each server's."""
        problems = []
        for server in self.stack.servers:
            runtime = self.remote(f"{server.name}: node's version", commands.runtime(self.stack, server, self.control_dir))
            if problem := runtime_problem(build, server.name, runtime.output.strip()):
                problems.append(problem)
        if problems:
            raise DeployError("; ".join(dict.fromkeys(problems)) + ". Nothing was uploaded")

    def release_command(self, build: Build) -> None:
        """The contract's release command (migrations), once, on the first server, in the
        new release with the apps' environment, before any server switches."""
        server = self.stack.servers[0]
        self.say(f"[{server.name}] release command: {build.contract.release}")
        command = commands.release_command(self.stack, server, build.release_id, build.contract.release,
                                           self.control_dir)
        result = self.executor.run(command.argv, timeout=RELEASE_COMMAND_SECONDS)
        if not result.ok:
            raise DeployError(f"the release command failed on {server.name} (exit {result.returncode}: "
                              f"{result.last_line}); no server was switched, every one still runs its release")

    # --- one server, then the next ------------------------------------------------------

    def release_contract(self, server: Server, release_id: str) -> Contract:
        """The app contract release `release_id` carries on `server` (ContractError if it is
        not one): what its processes are, as pm2 will read them there."""
        result = self.remote(f"{server.name}: the contract of {release_id}",
                             commands.release_contract(self.stack, server, release_id, self.control_dir))
        if not result.output.strip():
            return app_contract.DEFAULT
        where = f"{server.name}: {release_id}/{app_contract.FILE}"
        try:
            data = json.loads(result.output)
        except ValueError as bad:
            raise app_contract.ContractError(where, [f"not JSON: {bad}"]) from None
        return app_contract.parse(data, where)

    def start_check(self, server: Server, release_id: str) -> None:
        """The release's serving processes started once beside the running apps, then
        stopped: a release that dies as it starts never reaches pm2's reload, which would
        delete the old workers once the new ones' ready wait ran out."""
        contract = self.release_contract(server, release_id)
        result = self.remote(f"{server.name}: start {release_id} once beside the running apps",
                             commands.start_check(self.stack, server, release_id, contract, self.health_timeout,
                                                  self.control_dir))
        for line in result.output.splitlines():
            self.say(f"[{server.name}]   {line}")

    def switch_and_check(self, server: Server, release_id: str) -> None:
        self.remote(f"{server.name}: switch to {release_id}",
                    commands.switch(self.stack, server, release_id, self.control_dir))
        self.remote(f"{server.name}: reload the apps", commands.reload_apps(self.stack, server, self.control_dir))
        self.remote(f"{server.name}: health", commands.health(self.stack, server, self.health_timeout, self.control_dir))
        self.remote(f"{server.name}: record {release_id}",
                    commands.activated(self.stack, server, release_id, self.control_dir))

    def roll(self, outcome: Outcome, plan: list[tuple[Holdings, str]]) -> Outcome:
        for number, (held, to_release) in enumerate(plan):
            server = held.server
            step = Step(server, held.current, to_release)
            outcome.steps.append(step)
            start = time.monotonic()
            if not self.starts(step):
                step.seconds = time.monotonic() - start
                outcome.untouched = [h.server for h, _ in plan[number + 1:]]
                return outcome
            self.say(f"[{server.name}] {held.current or '(none)'} -> {to_release}: switching, reloading, "
                     f"waiting for health (up to {self.health_timeout}s)")
            switched_at = time.time()
            try:
                self.switch_and_check(server, to_release)
            except CommandFailed as failed:
                step.seconds = time.monotonic() - start
                step.problem = f"{failed}: {failed.result.last_line}"
                self.say(f"[{server.name}] FAILED {step.problem}")
                self.show_apps_journal(server, switched_at)
                self.switch_back(step)
                outcome.untouched = [h.server for h, _ in plan[number + 1:]]
                return outcome
            step.ok = True
            step.seconds = time.monotonic() - start
            self.say(f"[{server.name}] healthy on {to_release} ({step.seconds:.1f}s)")
        return outcome

    def starts(self, step: Step) -> bool:
        """The start check for one step; a failure says what failed and leaves the server
        as it was (it never switched)."""
        self.say(f"[{step.server.name}] starting {step.to_release}'s processes once beside the running apps")
        try:
            self.start_check(step.server, step.to_release)
        except CommandFailed as failed:
            failures = [line for line in failed.result.output.splitlines() if ": FAILED: " in line]
            step.problem = f"{failed}: {'; '.join(failures) or failed.result.last_line}"
        except app_contract.ContractError as bad:
            step.problem = f"{bad.args[0].splitlines()[0]} {'; '.join(bad.problems)}"
        if step.problem:
            step.refused_at_start = True
            self.say(f"[{step.server.name}] FAILED {step.problem}; not switched: still on "
                     f"{step.from_release or '(none)'}")
            return False
        return True

    def show_apps_journal(self, server: Server, since: float, event: str = "the switch") -> None:
        """What the apps' unit said since `event` (as Kamal shows a failed container's
        log): the apps' output and the reload's verdict. From the journal, not pm2's log
        files, which lose what a worker writes as it dies (pm2 in cluster mode). From a few
        seconds before the switch: the droplet's clock may lag this one's."""
        command = commands.apps_journal(self.stack, server, int(since) - 5, JOURNAL_READ, self.control_dir)
        result = self.executor.run(command.argv, timeout=120)
        if not result.ok:
            self.say(f"[{server.name}] the apps' journal could not be read (exit {result.returncode}: "
                     f"{result.last_line}); a server provisioned before this version has no journal wrapper: "
                     f"pulumi up with this one")
            return
        said = journal.apps_said(result.output, APPS_SAID_LINES)
        self.say(f"[{server.name}] what the apps and the reload said since {event} (the last {len(said)} lines):")
        for line in said:
            self.say(f"[{server.name}]   {line}")

    def switch_back(self, step: Step) -> None:
        if step.from_release is None:
            self.say(f"[{step.server.name}] had no release before; nothing to switch back to")
            return
        self.say(f"[{step.server.name}] switching back to {step.from_release}")
        try:
            self.switch_and_check(step.server, step.from_release)
            step.switched_back = True
            self.say(f"[{step.server.name}] back on {step.from_release}, healthy")
        except CommandFailed as failed:
            self.say(f"[{step.server.name}] switching back FAILED too: {failed}: {failed.result.last_line}")

    # --- the commands -----------------------------------------------------------------

    def deploy(self, build: Build, keep: int) -> Outcome:
        outcome = Outcome("deploy")
        held = [self.holdings(server) for server in self.stack.servers]
        for server in self.stack.servers:
            self.upload(server, build)
        if build.contract.release:
            self.release_command(build)
        self.roll(outcome, [(h, build.release_id) for h in held])
        if outcome.ok:
            for server in self.stack.servers:
                removed = self.remote(f"{server.name}: prune", commands.prune(self.stack, server, keep, self.control_dir))
                for line in removed.output.split("\n"):
                    if line.strip():
                        self.say(f"[{server.name}] {line.strip()}")
        return outcome

    def rollback_plan(self, to: str | None) -> list[tuple[Holdings, str]]:
        plan, problems = [], []
        for server in self.stack.servers:
            held = self.holdings(server)
            target = to or held.previous
            if target is None:
                problems.append(f"{server.name}: no release before {held.current}")
            elif target not in held.releases:
                problems.append(f"{server.name}: does not hold {target} (it holds {', '.join(held.releases)})")
            else:
                plan.append((held, target))
        if problems:
            raise DeployError("cannot roll back: " + "; ".join(problems))
        return plan

    def rollback(self, to: str | None) -> Outcome:
        return self.roll(Outcome("rollback"), self.rollback_plan(to))

    def restore(self, build: Build) -> Outcome:
        """Roll back to a release from the archive: uploaded to each server that lacks it
        (all first, as a deploy's), then switched to one server after the other."""
        held = [self.holdings(server) for server in self.stack.servers]
        for h in held:
            if build.release_id not in h.releases:
                self.upload(h.server, build)
        return self.roll(Outcome("rollback"), [(h, build.release_id) for h in held])

    def releases(self) -> list[Holdings]:
        return [self.holdings(server) for server in self.stack.servers]


def summary(outcome: Outcome) -> list[str]:
    lines = [f"{outcome.action}: {'done' if outcome.ok else 'STOPPED'}"]
    for step in outcome.steps:
        if step.ok:
            lines.append(f"  {step.server.name}: {step.to_release} (healthy in {step.seconds:.1f}s)")
        elif step.refused_at_start:
            lines.append(f"  {step.server.name}: {step.to_release} failed ({step.problem}); not switched: still on "
                         f"{step.from_release or '(none)'}")
        else:
            back = f"switched back to {step.from_release}" if step.switched_back else "NOT switched back: check it"
            lines.append(f"  {step.server.name}: {step.to_release} failed ({step.problem}); {back}")
    for server in outcome.untouched:
        lines.append(f"  {server.name}: not touched (still on its release)")
    return lines


def releases_table(holdings: list[Holdings]) -> list[str]:
    lines = []
    for held in holdings:
        lines.append(f"{held.server.name} ({held.server.address}):")
        for release in reversed(held.releases):
            lines.append(f"  {'*' if release == held.current else ' '} {release}")
        if not held.releases:
            lines.append("    (no releases)")
    return lines
