"""Remove everything the local cloud made, also what a killed run left behind.

It works from what is on the machine (our name prefix on namespaces and cgroups, our
directories in mount and loop tables), not only from the state file, and every step
is safe to repeat.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from . import acme, config, droplet, network, package_cache, proxy, shell, spaces, state, volume


def our_cgroup_droplets() -> list[str]:
    names = set()
    for h in config.CGROUP_HIERARCHIES:
        if h.is_dir():
            names.update(d.name[len(config.PREFIX):] for d in h.glob(config.PREFIX + "*") if d.is_dir())
    return sorted(names)


def our_mounts() -> list[str]:
    """Mount points under our droplet directories, deepest first."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(str(config.DROPLETS_DIR) + "/"):
            points.append(point)
    return sorted(points, key=lambda p: -p.count("/"))


def umount_command(point: str) -> shell.Command:
    return ["umount", "--lazy", point]   # lazy: a dead container's leftovers may hold it


def stop_all_droplets(timeout: float = 20) -> None:
    names = sorted(set(state.load()["droplets"]) | set(our_cgroup_droplets()))
    # Ask every nspawn to power its container off, all at once, then wait.
    for name in names:
        for pid in droplet.cgroup_pids(name):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd-nspawn":
                    os.kill(pid, signal.SIGTERM)
            except (OSError, ProcessLookupError):
                pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(droplet.cgroup_pids(n) for n in names):
        time.sleep(0.2)
    for name in names:
        droplet.kill_cgroup(name)     # whatever did not stop in time
        droplet.remove_cgroups(name)


def teardown(keep_volumes: bool = False) -> None:
    with shell.Step("teardown"):
        stop_all_droplets()
        for point in our_mounts():
            shell.run(umount_command(point), check=False)
        for loop in volume.our_loops():
            shell.run(volume.losetup_detach_command(loop), check=False)
        for service in (proxy, acme, spaces, package_cache):
            service.stop()
        # Deleting the switch namespace also removes the host's lc-host link (its peer).
        for ns in network.list_netns():
            if ns.startswith(config.PREFIX):
                shell.run(network.netns_delete(ns), check=False)
        if network.link_exists(None, config.HOST_LINK):
            shell.run(network.ip(None, "link", "delete", config.HOST_LINK), check=False)
        shutil.rmtree(config.DROPLETS_DIR, ignore_errors=True)
        if not keep_volumes:
            shutil.rmtree(config.VOLUMES_DIR, ignore_errors=True)
        state.clear()


def leftovers() -> dict[str, list[str]]:
    """What of ours is still on the machine; all empty after a good teardown."""
    procs = []
    for name in our_cgroup_droplets():
        procs += [str(p) for p in droplet.cgroup_pids(name)]
    services = (proxy.DAEMON, *acme.DAEMONS.values(), spaces.DAEMON, spaces.UNCHECKED, *package_cache.DAEMONS)
    procs += [str(pid) for d in services for pid in sorted({d.running_pid(), *d.strays()} - {None})]
    return {
        "netns": [n for n in network.list_netns() if n.startswith(config.PREFIX)],
        "links": [config.HOST_LINK] if network.link_exists(None, config.HOST_LINK) else [],
        "mounts": our_mounts(),
        "loops": volume.our_loops(),
        "cgroups": our_cgroup_droplets(),
        "processes": procs,
    }
