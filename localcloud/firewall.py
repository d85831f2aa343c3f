"""DigitalOcean-style cloud firewalls, enforced where the droplets cannot touch them.

Placement (measured on this machine): the droplets' namespace is shared with the
container, whose root can flush any table there (ufw, `nft flush ruleset`). So the
rules live in the switch namespace instead, in an `ip` family nftables table on the
forward hook. Bridged frames reach that hook through br_netfilter
(net.bridge.bridge-nf-call-iptables=1 in the switch namespace), and `ct state` works
there. The `bridge` family cannot be used: its conntrack (nf_conntrack_bridge) is
missing in this kernel ("Protocol error" on `ct state`). Because br_netfilter presents
the bridge, not the port, as the interface, droplets are matched by their addresses.

Semantics as on DigitalOcean: a droplet with a firewall attached accepts inbound
traffic only where a rule allows it, sends outbound traffic only where a rule allows
it, and return traffic of allowed connections always passes. Droplets with no
firewall are not filtered. Several firewalls on one droplet add up.

The proxy on the host stands in for the internet's package archives: an outbound rule
that lets a droplet reach port 80 or 443 of an address range holding the proxy's
address also lets it reach the proxy's own port.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from . import config, network, shell

ANY_PORT = ("", "all", "0", "1-65535")
PROXIED_PORTS = (80, 443)   # what the proxy stands in for


@dataclass(frozen=True)
class Rule:
    """One inbound (sources) or outbound (destinations) rule."""
    protocol: str                      # tcp | udp | icmp
    ports: str = "all"                 # "80", "8000-8100", "all"
    addresses: tuple[str, ...] = ()    # CIDRs or addresses
    tags: tuple[str, ...] = ()
    droplets: tuple[str, ...] = ()     # droplet names


@dataclass(frozen=True)
class Firewall:
    name: str
    inbound: tuple[Rule, ...] = ()
    outbound: tuple[Rule, ...] = ()
    droplets: tuple[str, ...] = ()     # droplet names it is attached to
    tags: tuple[str, ...] = ()         # ...and every droplet with one of these tags


@dataclass
class Topology:
    """What the rules' names and tags stand for."""
    addresses: dict[str, list[str]]                      # droplet name -> its addresses
    tags: dict[str, list[str]] = field(default_factory=dict)   # tag -> droplet names


def attached(fw: Firewall, topo: Topology) -> list[str]:
    names = set(fw.droplets)
    for tag in fw.tags:
        names.update(topo.tags.get(tag, []))
    return sorted(n for n in names if n in topo.addresses)


def peer_addresses(rule: Rule, topo: Topology) -> list[str] | None:
    """The rule's peers as IPv4 networks; None means 'anywhere'. [] means nobody."""
    nets = []
    for a in rule.addresses:
        net = ipaddress.ip_network(a, strict=False)
        if net.version != 4:
            continue            # only IPv4 is emulated
        if net.prefixlen == 0:
            return None
        nets.append(str(net) if net.prefixlen < 32 else str(net.network_address))
    names = list(rule.droplets)
    for tag in rule.tags:
        names += topo.tags.get(tag, [])
    for name in names:
        nets += topo.addresses.get(name, [])
    return sorted(set(nets))


def port_match(protocol: str, ports: str) -> str:
    if protocol == "icmp":
        return "ip protocol icmp"
    if ports.strip() in ANY_PORT:
        return f"meta l4proto {protocol}"
    return f"{protocol} dport {ports.strip()}"


def covers_proxy(rule: Rule) -> bool:
    if rule.protocol != "tcp":
        return False
    peers = [ipaddress.ip_network(a, strict=False) for a in rule.addresses]
    if not any(net.version == 4 and config.HOST_PUBLIC_IP in net for net in peers):
        return False
    if rule.ports.strip() in ANY_PORT:
        return True
    low, _, high = rule.ports.partition("-")
    return any(int(low) <= p <= int(high or low) for p in PROXIED_PORTS)


def rule_lines(rule: Rule, direction: str, topo: Topology) -> list[str]:
    """nft rule lines for one rule; direction 'in' matches sources, 'out' destinations."""
    peers = peer_addresses(rule, topo)
    if peers == []:
        return []
    field_ = "saddr" if direction == "in" else "daddr"
    peer = "" if peers is None else f"ip {field_} {{ {', '.join(peers)} }} "
    lines = [f"{peer}{port_match(rule.protocol, rule.ports)} accept"]
    if direction == "out" and covers_proxy(rule):
        lines.append(f"ip daddr {config.HOST_PUBLIC_IP} tcp dport {config.PROXY_PORT} accept")
    return lines


def chain_name(direction: str, droplet: str) -> str:
    return f"{direction}_" + re.sub(r"[^A-Za-z0-9_]", "_", droplet)


def render(firewalls: list[Firewall], topo: Topology) -> str:
    """The whole nftables table for these firewalls, replacing any previous one."""
    rules: dict[str, dict[str, list[str]]] = {}
    for fw in firewalls:
        for name in attached(fw, topo):
            per = rules.setdefault(name, {"in": [], "out": []})
            for r in fw.inbound:
                per["in"] += rule_lines(r, "in", topo)
            for r in fw.outbound:
                per["out"] += rule_lines(r, "out", topo)

    # Two base chains: an 'accept' ends only its own base chain, so a packet between
    # two firewalled droplets must pass the sender's egress AND the receiver's ingress.
    egress, ingress, chains = [], [], []
    for name, per in sorted(rules.items()):
        addrs = ", ".join(topo.addresses[name])
        egress.append(f"ip saddr {{ {addrs} }} jump {chain_name('out', name)}")
        ingress.append(f"ip daddr {{ {addrs} }} jump {chain_name('in', name)}")
        for direction in ("in", "out"):
            body = ["ct state established,related accept", *dict.fromkeys(per[direction]), "drop"]
            chains.append(_chain(chain_name(direction, name), body))
    base = [
        _chain("egress", ["type filter hook forward priority filter - 1; policy accept;", *egress]),
        _chain("ingress", ["type filter hook forward priority filter; policy accept;", *ingress]),
    ]
    table = f"table ip {config.NFT_TABLE} {{\n" + "".join(base + chains) + "}\n"
    # Declaring then deleting makes the load an atomic replace whether or not it existed.
    return f"table ip {config.NFT_TABLE} {{}}\ndelete table ip {config.NFT_TABLE}\n" + table


def _chain(name: str, body: list[str]) -> str:
    return f"  chain {name} {{\n" + "".join(f"    {line}\n" for line in body) + "  }\n"


def load_command() -> shell.Command:
    return network.in_netns(config.SWITCH_NETNS, "nft", "-f", "-")


def remove_command() -> shell.Command:
    return network.in_netns(config.SWITCH_NETNS, "nft", "delete", "table", "ip", config.NFT_TABLE)


def apply(firewalls: list[Firewall], topo: Topology) -> str:
    """Enforce exactly these firewalls (replacing earlier ones); returns the ruleset."""
    # Bridged IPv4 must pass the ip-family hooks of the switch for the table to see it.
    shell.run(network.sysctl(config.SWITCH_NETNS, "net.bridge.bridge-nf-call-iptables", "1"))
    text = render(firewalls, topo)
    shell.run(load_command(), input=text)
    return text


def clear() -> None:
    if network.netns_exists(config.SWITCH_NETNS):
        shell.run(remove_command(), check=False)
