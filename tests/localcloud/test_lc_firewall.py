"""Translation of DigitalOcean firewall rules into the nftables table of the switch."""

from localcloud import config, firewall as fw

TOPO = fw.Topology(
    addresses={"web-1": ["198.51.100.10", "10.20.0.2"], "web-2": ["198.51.100.11", "10.20.0.3"],
               "db": ["198.51.100.12", "10.20.0.4"]},
    tags={"web": ["web-1", "web-2"], "empty": []},
)


def chain(text: str, name: str) -> list[str]:
    body = text.split(f"chain {name} {{\n", 1)[1].split("  }\n", 1)[0]
    return [line.strip() for line in body.splitlines()]


def test_inbound_from_tag_resolves_to_tagged_droplets_addresses():
    text = fw.render([fw.Firewall("db-fw", droplets=("db",),
                                  inbound=(fw.Rule("tcp", "6379", tags=("web",)),))], TOPO)
    assert chain(text, "in_db") == [
        "ct state established,related accept",
        "ip saddr { 10.20.0.2, 10.20.0.3, 198.51.100.10, 198.51.100.11 } tcp dport 6379 accept",
        "drop",
    ]
    # no outbound rule: everything new going out is dropped (DigitalOcean semantics)
    assert chain(text, "out_db") == ["ct state established,related accept", "drop"]
    assert "ip daddr { 198.51.100.12, 10.20.0.4 } jump in_db" in chain(text, "ingress")
    assert "ip saddr { 198.51.100.12, 10.20.0.4 } jump out_db" in chain(text, "egress")


def test_droplets_without_firewall_are_not_filtered():
    text = fw.render([fw.Firewall("f", droplets=("db",))], TOPO)
    assert "web_1" not in text and "web-1" not in text


def test_attachment_by_tag_and_port_forms():
    text = fw.render([fw.Firewall("web-fw", tags=("web",), inbound=(
        fw.Rule("tcp", "80", addresses=("0.0.0.0/0", "::/0")),
        fw.Rule("tcp", "8000-8100", addresses=("203.0.113.7", "10.20.0.0/24")),
        fw.Rule("udp", "all", droplets=("db",)),
        fw.Rule("icmp", addresses=("0.0.0.0/0",)),
    ))], TOPO)
    assert chain(text, "in_web_1") == chain(text, "in_web_2") == [
        "ct state established,related accept",
        "tcp dport 80 accept",                       # from anywhere: no address match
        "ip saddr { 10.20.0.0/24, 203.0.113.7 } tcp dport 8000-8100 accept",
        "ip saddr { 10.20.0.4, 198.51.100.12 } meta l4proto udp accept",
        "ip protocol icmp accept",
        "drop",
    ]


def test_rule_whose_tag_has_no_droplets_allows_nothing():
    text = fw.render([fw.Firewall("f", droplets=("db",),
                                  inbound=(fw.Rule("tcp", "22", tags=("empty",)),))], TOPO)
    assert chain(text, "in_db") == ["ct state established,related accept", "drop"]


def test_firewalls_on_one_droplet_add_up():
    a = fw.Firewall("a", droplets=("db",), inbound=(fw.Rule("tcp", "22", addresses=("0.0.0.0/0",)),))
    b = fw.Firewall("b", tags=("web",), inbound=(fw.Rule("tcp", "80", addresses=("0.0.0.0/0",)),))
    c = fw.Firewall("c", droplets=("db",), inbound=(fw.Rule("tcp", "5432", tags=("web",)),))
    text = fw.render([a, b, c], TOPO)
    assert chain(text, "in_db")[1:3] == [
        "tcp dport 22 accept",
        "ip saddr { 10.20.0.2, 10.20.0.3, 198.51.100.10, 198.51.100.11 } tcp dport 5432 accept"]


def test_outbound_to_internet_on_web_ports_opens_the_proxy_only_then():
    proxy_line = f"ip daddr {config.HOST_PUBLIC_IP} tcp dport {config.PROXY_PORT} accept"
    web_out = fw.Firewall("o", droplets=("db",), outbound=(fw.Rule("tcp", "443", addresses=("0.0.0.0/0",)),))
    assert proxy_line in chain(fw.render([web_out], TOPO), "out_db")
    for rule in (fw.Rule("tcp", "22", addresses=("0.0.0.0/0",)),
                 fw.Rule("udp", "all", addresses=("0.0.0.0/0",)),
                 fw.Rule("tcp", "80", addresses=("10.20.0.0/24",))):
        text = fw.render([fw.Firewall("o", droplets=("db",), outbound=(rule,))], TOPO)
        assert proxy_line not in text, rule


def test_render_replaces_the_table_atomically():
    text = fw.render([], TOPO)
    lines = text.splitlines()
    assert lines[:2] == [f"table ip {config.NFT_TABLE} {{}}", f"delete table ip {config.NFT_TABLE}"]
    assert "hook forward priority filter - 1" in text   # egress before ingress


def test_load_command_runs_nft_in_the_switch_namespace():
    assert fw.load_command() == ["ip", "netns", "exec", config.SWITCH_NETNS, "nft", "-f", "-"]
