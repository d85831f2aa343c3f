"""How the project logs in to droplets over SSH: the one home of every option.

Three clients log in: pulumi-command (the program's pushes, Go's SSH client), OpenSSH
(the deploy tool, and the boot gate every push waits for) and the local cloud's runner
(which mirrors pulumi-command). Their options are read from here.

Host keys: the boot gate's login is each droplet's first contact and records its key
(trust on first use: the droplet is minutes old); every later login accepts only that key.

"""

from __future__ import annotations

import shlex

from model import conventions

# pulumi-command dials each hop (the jump host and the target) up to this many times,
# backing off from 0.1 s x 1.5 to 5 s between tries: about 4 minutes of "connection
# refused" while a droplet boots. Its default, 10, is over in about 11 seconds.
DIAL_ERROR_LIMIT = 60
# Seconds per TCP connect (pulumi-command's default).
PER_DIAL_TIMEOUT = 15

# How long the boot gate waits for a new droplet to take logins and finish its first-boot
# provisioning (packages, npm), and between tries.
BOOT_WAIT_SECONDS = 1800
BOOT_RETRY_SECONDS = 3

# The host key type the boot gate records and every later login pins. pulumi-command
# offers the server only the pinned key's type (Go's HostKeyAlgorithms), and each droplet
# has one key of each type, so the gate asks for this one.
HOST_KEY_TYPE = "ssh-ed25519"

# OpenSSH's options for every non-interactive login of ours.
OPENSSH_OPTIONS = ("BatchMode=yes", f"ConnectTimeout={PER_DIAL_TIMEOUT}", "ServerAliveInterval=15",
                   "LogLevel=ERROR")


def openssh_options(identity: str | None = None, known_hosts: str | None = None,
                    control_dir: str | None = None) -> list[str]:
    """OpenSSH's argv options. `identity`: a key file (else ssh's own defaults);
    `known_hosts`: a file of pinned keys, the only keys accepted (`pinned`); None keeps the
    operator's own known_hosts, trusting a new host once."""
    options = batch_options()
    if identity:
        options = ["-i", identity, "-o", "IdentitiesOnly=yes", *options]
    options += pinned(known_hosts) if known_hosts else ["-o", "StrictHostKeyChecking=accept-new"]
    if control_dir:
        # One connection per host for a whole run: each step is a round trip, not a login.
        options += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control_dir}/%C", "-o", "ControlPersist=60"]
    return options


def batch_options() -> list[str]:
    """OPENSSH_OPTIONS as argv, with no say on host keys."""
    return [arg for option in OPENSSH_OPTIONS for arg in ("-o", option)]


def pinned(known_hosts: str) -> list[str]:
    """Only the key `known_hosts` holds for the host is accepted: a changed or unknown key
    fails the handshake, before the login, so nothing is sent. The system's known_hosts
    is left out, so that file alone decides."""
    return ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes", "-o", f"HostKeyAlgorithms={HOST_KEY_TYPE}"]


def first_use(known_hosts: str) -> list[str]:
    """The boot gate's login to a new droplet: its key is accepted and written to
    `known_hosts` (an empty file), which the gate then reports (trust on first use)."""
    return ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=accept-new", "-o", f"HostKeyAlgorithms={HOST_KEY_TYPE}"]


def through(jump_login: str, options: list[str]) -> list[str]:
    """The option that reaches a private address through the jump host (the LB)."""
    proxy = ["ssh", *options, "-W", "%h:%p", jump_login]
    return ["-o", "ProxyCommand=" + shlex.join(proxy)]


def host_key_line(host: str, key: str) -> str:
    """A known_hosts line: `key` is the public host key as pulumi-command's `host_key` takes it."""
    return f"{host} {key.strip()}\n"


def login(host: str, user: str = conventions.OPERATOR_USER) -> str:
    return f"{user}@{host}"
