"""The cloud firewall matrix, as data: which role takes what, from whom.

Rules name tags, not droplet ids, so growing the app-server pool needs no firewall
edit. The Pulumi components turn these rules into `digitalocean.Firewall`s; the local
cloud enforces the very same rules on its emulated links; ufw on each droplet mirrors
them.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import conventions

ANYWHERE = ("0.0.0.0/0", "::/0")


@dataclass(frozen=True)
class Inbound:
    port: int
    from_cidrs: tuple[str, ...] = ()
    from_tags: tuple[str, ...] = ()
    protocol: str = "tcp"


@dataclass(frozen=True)
class Outbound:
    protocol: str
    to_cidrs: tuple[str, ...] = ANYWHERE


# Every droplet may open connections out (package updates, ACME, Spaces); replies
# to those are let back in by the firewall's connection tracking.
OUTBOUND = (Outbound("tcp"), Outbound("udp"), Outbound("icmp"))


def inbound_rules(role: str, *, stack: str, admin_cidrs: tuple[str, ...], engines: tuple[str, ...]) -> tuple[Inbound, ...]:
    """What `role` accepts. Anything not listed here is dropped."""
    lb_tag = (conventions.role_tag(stack, conventions.LOAD_BALANCER),)
    app_tag = (conventions.role_tag(stack, conventions.APP_SERVER),)
    if role == conventions.LOAD_BALANCER:
        return (
            Inbound(conventions.HTTP_PORT, from_cidrs=ANYWHERE),
            Inbound(conventions.HTTPS_PORT, from_cidrs=ANYWHERE),
            Inbound(conventions.SSH_PORT, from_cidrs=admin_cidrs),
        )
    if role == conventions.APP_SERVER:
        return (
            Inbound(conventions.APP_TLS_PORT, from_tags=lb_tag),
            Inbound(conventions.SSH_PORT, from_tags=lb_tag),
        )
    if role == conventions.DATASTORE:
        engine_ports = tuple(
            Inbound(conventions.ENGINES[name].tls_port, from_tags=app_tag) for name in engines
        )
        return engine_ports + (Inbound(conventions.SSH_PORT, from_tags=lb_tag),)
    raise ValueError(f"unknown role {role!r}")
