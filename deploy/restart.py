"""deploy restart: the apps' unit started again where its file changed since the apps
started (`status` marks such a server) or where they are down, one server at a time, none
cutting a request.

A platform upgrade that changes the unit (its command, its environment) leaves the
running apps as they are: restarting the unit stops every app on that server at once,
so provisioning never does. Apps down stay down: pm2 gives up on a process that keeps
exiting as it starts (one that cannot reach its database after a reboot, say) and never
tries it again. Here, per server, under the deploy lock: out of the LB's
pool (platform-drain, as ops: the LB's workers that sent it requests finish them first),
the unit restarted (as ops: the deploy login may only reload it), its health waited for,
back in the pool. A server that does not come back healthy stays out of the pool and the
restart stops there; a server left out of the pool is restarted by the next run, which
puts it back once healthy. One that served unhealthy before (its datastore down, say) goes
back in the pool as it was: kept out, it would stay out once the cause is gone.
"""

from __future__ import annotations

import time

from . import commands
from .executor import CommandFailed
from .operate import OPERATOR_KEY_NEEDED, ServerStatus, drained_addresses, read_status
from .records import Server
from .roll import Deployer, DeployError


def drained(deployer: Deployer) -> set[str]:
    try:
        return drained_addresses(deployer.stack, deployer.executor)
    except CommandFailed as failed:
        raise DeployError(f"the LB's pool could not be read ({OPERATOR_KEY_NEEDED}): exit {failed.result.returncode}: "
                          f"{failed.result.last_line}") from None


def server_status(deployer: Deployer, server: Server) -> ServerStatus:
    status = read_status(deployer.stack, server, deployer.executor, deployer.control_dir)
    if not status.reachable:
        raise DeployError(f"{server.name}: its status could not be read ({status.problem}); nothing was restarted")
    return status


def why_restart(status: ServerStatus, out_of_pool: set[str]) -> str | None:
    """Why this server's apps restart, or None when they run as they should."""
    if status.server.address in out_of_pool:
        return "out of the LB's pool since an earlier restart or a failed bundle push"
    if status.unit_changed_since_start:
        return "its unit's file changed after the apps started"
    if status.idle_processes:
        return f"no worker of {', '.join(status.idle_processes)}: pm2 gave up on it, or it was stopped"
    if not status.healthy:
        return f"not healthy: the apps' unit {status.unit_state}, /healthz {status.health_code}"
    return None


def restart(deployer: Deployer) -> list[str]:
    """The servers restarted, in order (none when each ran as it should)."""
    stack, say = deployer.stack, deployer.say
    out_of_pool = drained(deployer)
    statuses = {server.name: server_status(deployer, server) for server in stack.servers}
    reasons = {name: why for name, status in statuses.items() if (why := why_restart(status, out_of_pool))}
    if not reasons:
        say("restart: nothing to restart: every server's apps run, healthy, on their unit's current file")
        return []
    for server in stack.servers:
        if server.name in reasons:
            served_unhealthy = not statuses[server.name].healthy and server.address not in out_of_pool
            restart_one(deployer, server, reasons[server.name], alone=len(stack.servers) == 1,
                        served_unhealthy=served_unhealthy)
    say(f"restart: done ({', '.join(reasons)})")
    return list(reasons)


def restart_one(deployer: Deployer, server: Server, reason: str, alone: bool, served_unhealthy: bool = False) -> None:
    """`served_unhealthy`: it was in the LB's pool, not healthy, before: if the restart does
    not make it healthy it goes back in the pool, no worse than it was."""
    stack, say = deployer.stack, deployer.say
    start = time.monotonic()
    say(f"[{server.name}] restarting the apps ({reason})")
    if alone:
        say(f"[{server.name}] the only app server: requests fail while its apps restart")
    else:
        # The drain may wait up to a minute for the LB's requests to it and says so as it
        # starts waiting: its lines are shown as they come; its last says how long it took.
        result = deployer.executor.run(commands.drain(stack, "on", server).argv, timeout=300,
                                       progress=lambda line: say(f"[{server.name}] drain: {line}"))
        if not result.ok:
            deployer.executor.run(commands.drain(stack, "off", server).argv, timeout=300)
            raise DeployError(f"{server.name}: could not be taken out of the LB's pool (exit {result.returncode}: "
                              f"{result.last_line}); its apps were not restarted")
    started_at = time.time()
    try:
        deployer.remote(f"{server.name}: restart the apps", commands.restart_apps(stack, server))
        deployer.remote(f"{server.name}: health",
                        commands.health(stack, server, deployer.health_timeout, deployer.control_dir))
    except CommandFailed as failed:
        say(f"[{server.name}] FAILED {failed}: {failed.result.last_line}")
        deployer.show_apps_journal(server, started_at, "the restart")
        if alone:
            kept = ""
        elif served_unhealthy:
            back_in_pool(deployer, server)
            kept = "; it was not healthy before either: back in the LB's pool, as it was"
        else:
            kept = "; it stays out of the LB's pool until a restart brings it back healthy"
        raise DeployError(f"{server.name}: its apps did not come back healthy{kept}") from None
    if not alone:
        back_in_pool(deployer, server)
    say(f"[{server.name}] restarted, healthy{'' if alone else ' and back in the pool'} "
        f"({time.monotonic() - start:.1f}s)")


def back_in_pool(deployer: Deployer, server: Server) -> None:
    deployer.remote(f"{server.name}: back in the LB's pool", commands.drain(deployer.stack, "off", server))
