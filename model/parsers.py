"""The settings' parsers: each takes a raw value from the stack's config and returns the
typed one, or raises `Invalid` with the text of what is allowed (model/settings.py
puts that in its one list of problems).
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, Callable

from . import conventions

_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_EMAIL = re.compile(r"^[^@\s]+@([a-z0-9-]+\.)+[a-z]{2,63}$", re.IGNORECASE)
_SSH_KEY = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com)"
    r" [A-Za-z0-9+/]+={0,3}( .*)?$"
)


class Invalid(ValueError):
    """Raised by a parser with the text of what is allowed."""


def _decoded(raw: Any) -> Any:
    """Pulumi hands structured values over as JSON text."""
    if isinstance(raw, str) and raw[:1] in "[{":
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            pass
    return raw


def whole_number(low: int, high: int) -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        allowed = f"a whole number from {low} to {high}"
        if isinstance(raw, bool):
            raise Invalid(allowed)
        try:
            value = int(str(raw), 10)
        except ValueError:
            raise Invalid(allowed) from None
        if not low <= value <= high:
            raise Invalid(allowed)
        return value

    return parse


def one_of(choices: tuple) -> Callable[[Any], Any]:
    def parse(raw: Any) -> Any:
        for choice in choices:
            if str(raw) == str(choice):
                return choice
        raise Invalid("one of " + ", ".join(str(c) for c in choices))

    return parse


def boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if str(raw).lower() in ("true", "false"):
        return str(raw).lower() == "true"
    raise Invalid("true or false")


def domain_name(raw: Any) -> str:
    value = str(raw)
    if not _DOMAIN.match(value):
        raise Invalid("a lower-case DNS name such as app.example.com")
    return value


def optional_domain_name(raw: Any) -> str:
    return "" if raw in (None, "") else domain_name(raw)


def email(raw: Any) -> str:
    value = str(raw)
    if not _EMAIL.match(value):
        raise Invalid("an e-mail address such as ops@example.com")
    return value


def https_url(raw: Any) -> str:
    value = str(raw)
    if not re.match(r"^https://[^\s/]+(/\S*)?$", value):
        raise Invalid("an https:// URL")
    return value


def optional_https_url(raw: Any) -> str:
    return "" if raw in (None, "") else https_url(raw)


def email_list(raw: Any) -> tuple[str, ...]:
    allowed = "a list of e-mail addresses such as [ops@example.com] (may be empty)"
    value = _decoded(raw)
    if isinstance(value, str):
        value = [value] if value else []
    if not isinstance(value, list):
        raise Invalid(allowed)
    for item in value:
        if not _EMAIL.match(str(item)):
            raise Invalid(f"{allowed}; {str(item)!r} is not one")
    return tuple(str(item) for item in value)


def cidr_list(raw: Any) -> tuple[str, ...]:
    allowed = "a non-empty list of CIDRs such as [203.0.113.7/32]"
    value = _decoded(raw)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise Invalid(allowed)
    cidrs = []
    for item in value:
        try:
            cidrs.append(str(ipaddress.ip_network(str(item), strict=True)))
        except ValueError:
            raise Invalid(f"{allowed} ({item!r} is not one)") from None
    return tuple(cidrs)


def vpc_range(raw: Any) -> str:
    allowed = "a private (RFC 1918) IPv4 range from /16 to /24, such as 10.110.0.0/20"
    try:
        network = ipaddress.ip_network(str(raw), strict=True)
    except ValueError:
        raise Invalid(allowed) from None
    if network.version != 4 or not network.is_private or not 16 <= network.prefixlen <= 24:
        raise Invalid(allowed)
    return str(network)


def ssh_public_keys(raw: Any) -> tuple[str, ...]:
    return _ssh_key_list(raw, "a non-empty list of OpenSSH public keys (ssh-ed25519 AAAA... you@host)", empty=False)


def deploy_keys(raw: Any) -> tuple[str, ...]:
    return _ssh_key_list(raw, "a list of OpenSSH public keys (ssh-ed25519 AAAA... ci@host), or empty", empty=True)


def _ssh_key_list(raw: Any, allowed: str, empty: bool) -> tuple[str, ...]:
    value = _decoded(raw)
    if isinstance(value, str):
        value = [value] if value.strip() else []
    if not isinstance(value, list) or (not value and not empty):
        raise Invalid(allowed)
    for key in value:
        if not _SSH_KEY.match(str(key).strip()):
            raise Invalid(f"{allowed}; {str(key)[:24]!r}... is not one")
    return tuple(str(key).strip() for key in value)


def engine_set(raw: Any) -> tuple[str, ...]:
    allowed = "a list drawn from " + ", ".join(conventions.ENGINES) + " (may be empty)"
    value = _decoded(raw)
    if not isinstance(value, list):
        raise Invalid(allowed)
    unknown = [str(v) for v in value if v not in conventions.ENGINES]
    if unknown:
        raise Invalid(f"{allowed}; unknown: {', '.join(unknown)}")
    # Keep the canonical order so that the same set always renders the same files.
    return tuple(e for e in conventions.ENGINES if e in value)


def stack_name(raw: Any) -> str:
    """The stack's name as `pulumi.get_stack()` gives it (the stack alone, without an
    organization); conventions makes the droplets', volume's, bucket's and tags' names from it."""
    value = str(raw)
    if len(value) > conventions.STACK_NAME_MAX or not re.fullmatch(conventions.STACK_NAME_PATTERN, value):
        raise Invalid(
            f"a stack name of lowercase letters, digits and '-', starting with a letter, not ending "
            f"with '-', at most {conventions.STACK_NAME_MAX} characters (the names of its "
            f"droplets, volume, backup bucket and tags are made from it)"
        )
    return value
