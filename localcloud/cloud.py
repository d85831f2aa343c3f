"""The local cloud as other code uses it: bring droplets up, look, tear down."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from . import droplet, firewall, image, network, package_cache, proxy, shell, state, volume

DEFAULT_VPC_CIDR = "10.20.0.0/24"


@dataclass(frozen=True)
class DropletSpec:
    name: str
    user_data: str
    tags: tuple[str, ...] = ()
    # Addresses the caller's plan assigned; empty: the local cloud picks by slot.
    public_ip: str = ""
    vpc_ip: str = ""
    extra_public_ips: tuple[str, ...] = ()   # reserved IPs assigned to this droplet
    quirks: droplet.BootQuirks = droplet.BootQuirks()   # a test's delays in its boot


@dataclass(frozen=True)
class DropletInfo:
    name: str
    public_ip: str
    vpc_ip: str
    tags: tuple[str, ...]
    running: bool
    volumes: dict[str, str] = field(default_factory=dict)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _net(name: str, rec: dict) -> network.DropletNet:
    return network.DropletNet(name, rec["slot"], rec["vpc_cidr"], rec.get("public_ip", ""),
                              rec.get("vpc_ip", ""), tuple(rec.get("extra_public_ips", ())))


def _given_addresses(fields: dict) -> tuple:
    return (fields.get("public_ip", ""), fields.get("vpc_ip", ""),
            tuple(fields.get("extra_public_ips", ())))


def _free_slot(used: set[int]) -> int:
    return next(i for i in range(len(used) + 1) if i not in used)


def up(specs: list[DropletSpec], vpc_cidr: str = DEFAULT_VPC_CIDR,
       wait: bool = True, timeout: float = 600) -> dict[str, DropletInfo]:
    """Make these droplets exist and run; reuse ones already up with the same user_data.

    A droplet whose user_data changed is destroyed and created again, as a change of
    user_data replaces a real droplet.
    """
    rootfs = image.build()
    current = state.load()
    for spec in specs:
        rec = current["droplets"].get(spec.name)
        if rec and (rec.get("user_data_sha256") != _digest(spec.user_data)
                    or _given_addresses(rec) != _given_addresses(vars(spec))):
            destroy(spec.name)
        elif rec and rec.get("vpc_cidr", vpc_cidr) != vpc_cidr:
            raise ValueError(f"{spec.name} exists in VPC {rec['vpc_cidr']}, not {vpc_cidr}")

    with state.editing() as s:
        for spec in specs:
            used = {r["slot"] for n, r in s["droplets"].items() if "slot" in r and n != spec.name}
            rec = s["droplets"].setdefault(spec.name, {})
            rec.setdefault("slot", _free_slot(used))
            rec.update(vpc_cidr=vpc_cidr, tags=list(spec.tags),
                       user_data_sha256=_digest(spec.user_data), image=str(rootfs),
                       public_ip=spec.public_ip, vpc_ip=spec.vpc_ip,
                       extra_public_ips=list(spec.extra_public_ips))
        recs = dict(s["droplets"])

    with shell.Step("network, proxy and package caches"):
        network.ensure_network([_net(sp.name, recs[sp.name]) for sp in specs])
        proxy.ensure_running()
        package_cache.ensure_running()
    with shell.Step(f"boot {', '.join(sp.name for sp in specs)}"):
        for spec in specs:
            if not droplet.is_running(spec.name):
                droplet.prepare(spec.name, rootfs, spec.user_data, spec.quirks)
                start(spec.name)
        if wait:
            for spec in specs:
                droplet.wait_cloud_init(spec.name, timeout)
    return {sp.name: info(sp.name) for sp in specs}


def start(name: str) -> int:
    """Boot a prepared droplet, its volumes presented (loop numbers change between runs)."""
    volume.refresh(name)
    return droplet.start(name)


def info(name: str) -> DropletInfo:
    rec = state.droplet(name)
    net = _net(name, rec)
    return DropletInfo(name, net.public_ip, net.vpc_ip, tuple(rec.get("tags", [])),
                       droplet.is_running(name), dict(rec.get("volumes", {})))


def status() -> dict[str, DropletInfo]:
    return {name: info(name) for name in sorted(state.load()["droplets"])}


def destroy(name: str) -> None:
    """Remove one droplet: its container, disk, namespace and cgroups."""
    droplet.stop(name)
    droplet.kill_cgroup(name)
    droplet.remove_cgroups(name)
    p = droplet.Paths(name)
    shell.run(["umount", "--lazy", str(p.root)], check=False)
    network.delete_droplet_net(_net(name, state.droplet(name)))
    import shutil
    shutil.rmtree(p.base, ignore_errors=True)
    with state.editing() as s:
        s["droplets"].pop(name, None)


def topology() -> firewall.Topology:
    """Droplet addresses and tags as the firewall rules refer to them."""
    addresses, tags = {}, {}
    for name, rec in state.load()["droplets"].items():
        addresses[name] = _net(name, rec).addresses
        for tag in rec.get("tags", []):
            tags.setdefault(tag, []).append(name)
    return firewall.Topology(addresses, tags)


def apply_firewalls(firewalls: list[firewall.Firewall]) -> str:
    return firewall.apply(firewalls, topology())


def internet_client(argv: list[str]) -> shell.Command:
    """Command running argv from a host on the public network, in no VPC."""
    return network.internet_client(*argv)
