"""Emulated networks built from network namespaces, veth pairs and two bridges.

    host (lc-host 198.51.100.1, the proxy) ─┐
    lc-internet (198.51.100.200) ───────────┤ br-public ┐  both bridges live in the
    droplet lc-NAME eth0 (198.51.100.10+) ──┘            │  namespace lc-switch, which
    droplet lc-NAME eth1 (VPC range) ───────── br-vpc ───┘  routes nothing anywhere

Nothing is NATed or routed to the outside: droplets reach only the proxy and each other.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from . import config, shell


@dataclass(frozen=True)
class DropletNet:
    """Where one droplet sits on the emulated networks."""
    name: str
    slot: int                 # 0, 1, ...: picks its switch port names (and default addresses)
    vpc_cidr: str
    # Addresses a plan gave it (as a cloud assigns them); empty: chosen by slot.
    given_public_ip: str = ""
    given_vpc_ip: str = ""
    extra_public_ips: tuple[str, ...] = ()   # e.g. a reserved IP assigned to it

    @property
    def netns(self) -> str:
        return netns_name(self.name)

    @property
    def public_ip(self) -> str:
        return self.given_public_ip or str(config.PUBLIC_NET[config.FIRST_DROPLET_HOST + self.slot])

    @property
    def vpc_ip(self) -> str:
        return self.given_vpc_ip or str(ipaddress.ip_network(self.vpc_cidr)[config.FIRST_VPC_HOST + self.slot])

    @property
    def public_port(self) -> str:   # switch-side end of eth0
        return f"pub{self.slot}"

    @property
    def vpc_port(self) -> str:      # switch-side end of eth1
        return f"vpc{self.slot}"

    @property
    def addresses(self) -> list[str]:
        return [self.public_ip, *self.extra_public_ips, self.vpc_ip]


def netns_name(droplet: str) -> str:
    return config.PREFIX + droplet


def netns_path(netns: str) -> Path:
    return config.NETNS_DIR / netns


# --- command builders -------------------------------------------------------

def netns_add(netns: str) -> shell.Command:
    return ["ip", "netns", "add", netns]


def netns_delete(netns: str) -> shell.Command:
    return ["ip", "netns", "delete", netns]


def in_netns(netns: str, *argv: str) -> shell.Command:
    return ["ip", "netns", "exec", netns, *argv]


def ip(netns: str | None, *args: str) -> shell.Command:
    return ["ip", *(["-n", netns] if netns else []), *args]


def veth_pair(name: str, netns: str | None, peer: str, peer_netns: str) -> shell.Command:
    """One veth with each end created directly in its namespace (None = the host)."""
    return ["ip", "link", "add", name, *(["netns", netns] if netns else []),
            "type", "veth", "peer", "name", peer, "netns", peer_netns]


def sysctl(netns: str | None, key: str, value: str) -> shell.Command:
    cmd = ["sysctl", "-q", "-w", f"{key}={value}"]
    return in_netns(netns, *cmd) if netns else cmd


# --- state checks -----------------------------------------------------------

def netns_exists(netns: str) -> bool:
    return netns_path(netns).exists()


def link_exists(netns: str | None, link: str) -> bool:
    return shell.succeeds(ip(netns, "link", "show", "dev", link))


def list_netns() -> list[str]:
    return sorted(p.name for p in config.NETNS_DIR.glob("*")) if config.NETNS_DIR.is_dir() else []


# --- building ---------------------------------------------------------------

def ensure_netns(netns: str) -> None:
    if not netns_exists(netns):
        shell.run(netns_add(netns))
    shell.run(ip(netns, "link", "set", "lo", "up"))
    # Only IPv4 is emulated; stop IPv6 autoconfiguration chatter on every link.
    shell.run(sysctl(netns, "net.ipv6.conf.all.disable_ipv6", "1"))
    shell.run(sysctl(netns, "net.ipv6.conf.default.disable_ipv6", "1"))


def ensure_switch() -> None:
    """The bridges, the gateway address and the host's own link into br-public."""
    ensure_netns(config.SWITCH_NETNS)
    sw = config.SWITCH_NETNS
    # The switch must never route: the gateway address is a dead end on purpose.
    shell.run(sysctl(sw, "net.ipv4.ip_forward", "0"))
    for bridge in (config.PUBLIC_BRIDGE, config.VPC_BRIDGE):
        if not link_exists(sw, bridge):
            shell.run(ip(sw, "link", "add", bridge, "type", "bridge"))
        shell.run(ip(sw, "link", "set", bridge, "up"))
    gateway = f"{config.PUBLIC_GATEWAY_IP}/{config.PUBLIC_NET.prefixlen}"
    shell.run(ip(sw, "addr", "replace", gateway, "dev", config.PUBLIC_BRIDGE))

    if not link_exists(None, config.HOST_LINK):
        shell.run(veth_pair(config.HOST_LINK, None, "host0", sw))
    shell.run(ip(sw, "link", "set", "host0", "master", config.PUBLIC_BRIDGE, "up"))
    # No forwarding from this link on the host: the machine's own route out must stay
    # out of reach of the droplets even if the host forwards elsewhere.
    shell.run(sysctl(None, f"net.ipv4.conf.{config.HOST_LINK}.forwarding", "0"))
    shell.run(sysctl(None, f"net.ipv6.conf.{config.HOST_LINK}.disable_ipv6", "1"))
    host_ip = f"{config.HOST_PUBLIC_IP}/{config.PUBLIC_NET.prefixlen}"
    shell.run(ip(None, "addr", "replace", host_ip, "dev", config.HOST_LINK))
    shell.run(ip(None, "link", "set", config.HOST_LINK, "up"))


def plug(netns: str, inner: str, bridge: str, port: str, address: str, prefixlen: int) -> None:
    """A veth from netns (named `inner` there) to `bridge` (named `port` on the switch)."""
    if link_exists(config.SWITCH_NETNS, port) and not link_exists(netns, inner):
        # The other end of a namespace just deleted: the kernel removes it a moment later.
        shell.run(ip(config.SWITCH_NETNS, "link", "delete", port), check=False)
    if not link_exists(config.SWITCH_NETNS, port):
        shell.run(veth_pair(port, config.SWITCH_NETNS, inner, netns))
    shell.run(ip(config.SWITCH_NETNS, "link", "set", port, "master", bridge, "up"))
    shell.run(ip(netns, "addr", "replace", f"{address}/{prefixlen}", "dev", inner))
    shell.run(ip(netns, "link", "set", inner, "up"))


def ensure_internet_client() -> None:
    ensure_netns(config.INTERNET_NETNS)
    plug(config.INTERNET_NETNS, "eth0", config.PUBLIC_BRIDGE, "inet0",
         str(config.INTERNET_CLIENT_IP), config.PUBLIC_NET.prefixlen)


def ensure_droplet_net(net: DropletNet) -> None:
    ensure_netns(net.netns)
    plug(net.netns, "eth0", config.PUBLIC_BRIDGE, net.public_port, net.public_ip,
         config.PUBLIC_NET.prefixlen)
    for extra in net.extra_public_ips:
        shell.run(ip(net.netns, "addr", "replace", f"{extra}/32", "dev", "eth0"))
    vpc = ipaddress.ip_network(net.vpc_cidr)
    plug(net.netns, "eth1", config.VPC_BRIDGE, net.vpc_port, net.vpc_ip, vpc.prefixlen)
    shell.run(ip(net.netns, "route", "replace", "default", "via", str(config.PUBLIC_GATEWAY_IP)))


def ensure_network(nets: list[DropletNet]) -> None:
    ensure_switch()
    ensure_internet_client()
    for net in nets:
        ensure_droplet_net(net)


def delete_droplet_net(net: DropletNet) -> None:
    # Deleting the namespace destroys its veth ends, and with them the switch ports.
    if netns_exists(net.netns):
        shell.run(netns_delete(net.netns))


def internet_client(*argv: str) -> shell.Command:
    """A command run from the 'internet': a host on the public bridge, in no VPC."""
    return in_netns(config.INTERNET_NETNS, *argv)
