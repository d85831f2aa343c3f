"""The settings' parsers: each takes a raw value from the stack's config and returns the
typed one, or raises `Invalid` with the text of what is allowed (model/settings.py
puts that in its one list of problems).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from typing import Any, Callable

from . import conventions

# Each is matched against the whole value (fullmatch): `$` alone lets a final newline through.
_DOMAIN = re.compile(r"(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
_EMAIL = re.compile(r"[^@\s]+@([a-z0-9-]+\.)+[a-z]{2,63}", re.IGNORECASE)
_HTTPS_URL = re.compile(r"https://[^\s/]+(/\S*)?")
_SSH_KEY = re.compile(r"(?P<type>[a-z0-9@.-]+) (?P<body>[A-Za-z0-9+/]+={0,3})( .*)?")
# The key types sshd takes, each with the number of fields its key holds after its name
# (RFC 4253, 5656; OpenSSH's PROTOCOL.u2f): ed25519 the key; RSA e and n; ECDSA the curve
# and the point; a security key's ed25519 the key and the application.
_SSH_KEY_FIELDS = {"ssh-ed25519": 1, "ssh-rsa": 2, "ecdsa-sha2-nistp256": 2, "ecdsa-sha2-nistp384": 2,
                   "ecdsa-sha2-nistp521": 2, "sk-ssh-ed25519@openssh.com": 2}


class Invalid(ValueError):
    """Raised by a parser with the text of what is allowed."""


def _distinct(allowed: str, items: list[str], same: Callable[[str], Any] = str,
              shown: Callable[[str], str] = repr) -> None:
    """Raises Invalid naming the first entry listed more than once (`same` says which are
    the same entry): an entry twice in a list setting is a slip."""
    keys = [same(item) for item in items]
    for item, key in zip(items, keys):
        if keys.count(key) > 1:
            raise Invalid(f"{allowed}; {shown(item)} is listed {keys.count(key)} times")


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
        # Digits as written: int() alone also reads "1_0" as 10 and other scripts' digits.
        if isinstance(raw, bool) or not re.fullmatch(r"-?[0-9]+", str(raw).strip()):
            raise Invalid(allowed)
        value = int(str(raw))
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
    if not _DOMAIN.fullmatch(value):
        raise Invalid("a lower-case DNS name such as app.example.com")
    return value


def optional_domain_name(raw: Any) -> str:
    return "" if raw in (None, "") else domain_name(raw)


def domain_list(most: int) -> Callable[[Any], tuple[str, ...]]:
    """Distinct DNS names, at most `most` of them."""
    def parse(raw: Any) -> tuple[str, ...]:
        allowed = f"a list of at most {most} distinct lower-case DNS names such as [www.example.com] (may be empty)"
        value = _decoded(raw)
        if raw is None or isinstance(value, str):
            value = [value] if value else []
        if not isinstance(value, list):
            raise Invalid(allowed)
        names = [str(item) for item in value]
        for name in names:
            if not _DOMAIN.fullmatch(name):
                raise Invalid(f"{allowed}; {name!r} is not one")
        _distinct(allowed, names)
        if len(names) > most:
            raise Invalid(f"{allowed}; {len(names)} are listed")
        return tuple(names)

    return parse


def email(raw: Any) -> str:
    value = str(raw)
    if not _EMAIL.fullmatch(value):
        raise Invalid("an e-mail address such as ops@example.com")
    return value


def https_url(raw: Any) -> str:
    value = str(raw)
    if not _HTTPS_URL.fullmatch(value):
        raise Invalid("an https:// URL")
    return value


def optional_https_url(raw: Any) -> str:
    return "" if raw in (None, "") else https_url(raw)


def email_list(raw: Any) -> tuple[str, ...]:
    allowed = "a list of distinct e-mail addresses such as [ops@example.com] (may be empty)"
    value = _decoded(raw)
    if isinstance(value, str):
        value = [value] if value else []
    if not isinstance(value, list):
        raise Invalid(allowed)
    for item in value:
        if not _EMAIL.fullmatch(str(item)):
            raise Invalid(f"{allowed}; {str(item)!r} is not one")
    addresses = [str(item) for item in value]
    _distinct(allowed, addresses, same=str.lower)
    return tuple(addresses)


def cidr_list(raw: Any) -> tuple[str, ...]:
    allowed = "a non-empty list of distinct CIDRs such as [203.0.113.7/32]"
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
    _distinct(allowed, cidrs)
    return tuple(cidrs)


_RFC_1918 = tuple(ipaddress.ip_network(block) for block in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))


def vpc_range(raw: Any) -> str:
    allowed = "a private (RFC 1918) IPv4 range from /16 to /24, such as 10.110.0.0/20"
    try:
        network = ipaddress.ip_network(str(raw), strict=True)
    except ValueError:
        raise Invalid(allowed) from None
    if network.version != 4 or not any(network.subnet_of(block) for block in _RFC_1918) or \
            not 16 <= network.prefixlen <= 24:
        raise Invalid(allowed)
    return str(network)


def ssh_public_keys(raw: Any) -> tuple[str, ...]:
    return _ssh_key_list(raw, "a non-empty list of distinct OpenSSH public keys (ssh-ed25519 AAAA... you@host)", empty=False)


def deploy_keys(raw: Any) -> tuple[str, ...]:
    return _ssh_key_list(raw, "a list of distinct OpenSSH public keys (ssh-ed25519 AAAA... ci@host), or empty", empty=True)


def _ssh_key_list(raw: Any, allowed: str, empty: bool) -> tuple[str, ...]:
    value = _decoded(raw)
    if isinstance(value, str):
        value = [value] if value.strip() else []
    if not isinstance(value, list) or (not value and not empty):
        raise Invalid(allowed)
    for key in value:
        if not is_public_key(str(key).strip()):
            raise Invalid(f"{allowed}; {str(key)[:24]!r}... is not one")
    keys = [str(key).strip() for key in value]
    # The same key with another comment is the same key.
    _distinct(allowed, keys, same=lambda key: key.split()[:2], shown=lambda key: f"{key[:24]!r}...")
    return tuple(keys)


def is_public_key(line: str) -> bool:
    """An OpenSSH public key line whose base64 body holds, as sshd reads it, the type it is
    named by and that type's fields: a key cut short, or pasted under another type's name,
    would let no one in."""
    match = _SSH_KEY.fullmatch(line)
    if not match or match["type"] not in _SSH_KEY_FIELDS:
        return False
    try:
        blob = base64.b64decode(match["body"], validate=True)
    except binascii.Error:
        return False
    fields = []
    while blob:   # each field: a 4-byte big-endian length, then that many bytes
        size = int.from_bytes(blob[:4], "big")
        if len(blob) < 4 + size:
            return False
        fields.append(blob[4:4 + size])
        blob = blob[4 + size:]
    return fields[:1] == [match["type"].encode()] and len(fields) == 1 + _SSH_KEY_FIELDS[match["type"]]


def engine_set(raw: Any) -> tuple[str, ...]:
    allowed = "a list drawn from " + ", ".join(conventions.ENGINES) + " (may be empty)"
    value = _decoded(raw)
    if not isinstance(value, list):
        raise Invalid(allowed)
    unknown = [json.dumps(v) if not isinstance(v, str) else v for v in value
               if not isinstance(v, str) or v not in conventions.ENGINES]
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
            f"droplets, volume, buckets and tags are made from it)"
        )
    return value


# --- The apps' environment (appEnv, appSecrets) -------------------------------------------

ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
# One line of the apps' .env each: example-app/lib/env.js reads a value to the end of its
# line, and JavaScript's `.` stops at \r, U+2028 and U+2029 as at \n (the variable would be
# lost); no C string holds a NUL.
ENV_VALUE_BREAKS = {"\n": "a newline", "\r": "a carriage return", "\u2028": "U+2028", "\u2029": "U+2029",
                    "\0": "a NUL"}
# Per value: any token, URL or base64-encoded key fits; per map: the apps' whole
# environment stays far inside what Linux lets a process pass to the programs it starts
# (128 KiB per variable, about 2 MiB of arguments and environment in all).
ENV_VALUE_MAX_BYTES = 32 * 1024
ENV_MAP_MAX_BYTES = 256 * 1024
NAME_AT_FAULT = object()


class InvalidEntries(Invalid):
    """Entries of a map setting that are not allowed: (name, value, what is allowed) each;
    the value is NAME_AT_FAULT when the name itself is not allowed."""

    def __init__(self, entries: list[tuple[str, Any, str]]):
        self.entries = entries
        super().__init__("; ".join(allowed for _, _, allowed in entries))


def env_map(raw: Any) -> dict[str, str]:
    """Names of the apps' environment variables to their values, as the apps' .env holds them."""
    allowed = "a map of environment variable names to strings, such as {LOG_LEVEL: info} (may be empty)"
    value = _decoded(raw)
    if value in (None, ""):
        return {}
    if not isinstance(value, dict):
        raise Invalid(allowed)
    entries, bad = {}, []
    for name, item in value.items():
        name = str(name)
        problem = env_name_problem(name)
        if problem:
            bad.append((name, NAME_AT_FAULT, problem))
            continue
        text, problem = env_value(item)
        if problem:
            bad.append((name, item, problem))
            continue
        entries[name] = text
    if bad:
        raise InvalidEntries(bad)
    if sum(len(v.encode()) for v in entries.values()) > ENV_MAP_MAX_BYTES:
        raise Invalid(f"{allowed}, with at most {ENV_MAP_MAX_BYTES} bytes of values in all")
    return dict(sorted(entries.items()))


def env_name_problem(name: str) -> str | None:
    if not ENV_NAME.fullmatch(name):
        return "an environment variable name: capital letters A-Z, digits and _, not starting with a digit"
    if name in conventions.platform_app_env_names() or name.startswith(conventions.PLATFORM_ENV_PREFIXES):
        return (
            f"a name the platform does not set for the apps; it sets {', '.join(conventions.PLATFORM_APP_ENV)}, "
            "each engine's <ENGINE>_" + ", _".join(conventions.ENGINE_ENV_SUFFIXES) + " (POSTGRESQL_HOST ...) and "
            "every name starting with " + " or ".join(conventions.PLATFORM_ENV_PREFIXES)
        )
    return None


def env_value(item: Any) -> tuple[str, str | None]:
    """The value as the .env holds it, or what is wrong with it. A number or true/false set
    with `pulumi config set --path` arrives typed: its text is meant."""
    if isinstance(item, bool):
        item = "true" if item else "false"
    elif isinstance(item, int):
        item = str(item)
    if not isinstance(item, str):
        return "", "a string (a decimal number, a list or a map is not: quote it)"
    breaks = [what for char, what in ENV_VALUE_BREAKS.items() if char in item]
    if breaks:
        return "", f"a single line: no newline, carriage return, U+2028, U+2029 or NUL (it holds {breaks[0]})"
    if len(item.encode()) > ENV_VALUE_MAX_BYTES:
        return "", f"a string of at most {ENV_VALUE_MAX_BYTES} bytes (UTF-8)"
    return item, None
