"""How the project logs in to droplets over SSH: the one home of every option.

Three clients log in: pulumi-command (the program's pushes, Go's SSH client), OpenSSH
(the deploy tool, and the boot gate every push waits for) and the local cloud's runner
(which mirrors pulumi-command). Their options are read from here.
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

# OpenSSH's options for every non-interactive login of ours.
OPENSSH_OPTIONS = ("BatchMode=yes", f"ConnectTimeout={PER_DIAL_TIMEOUT}", "ServerAliveInterval=15",
                   "LogLevel=ERROR")


def openssh_options(identity: str | None = None, known_hosts: str | None = None,
                    control_dir: str | None = None) -> list[str]:
    """OpenSSH's argv options. `identity`: a key file (else ssh's own defaults);
    `known_hosts`: "/dev/null" checks no host key (droplets minutes old, keys not
    recorded yet), None keeps the operator's own known_hosts, trusting a new host once."""
    options = [arg for option in OPENSSH_OPTIONS for arg in ("-o", option)]
    if identity:
        options = ["-i", identity, "-o", "IdentitiesOnly=yes", *options]
    if known_hosts == "/dev/null":
        options += ["-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no"]
    elif known_hosts:
        options += ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=accept-new"]
    else:
        options += ["-o", "StrictHostKeyChecking=accept-new"]
    if control_dir:
        # One connection per host for a whole run: each step is a round trip, not a login.
        options += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control_dir}/%C", "-o", "ControlPersist=60"]
    return options


def through(jump_login: str, options: list[str]) -> list[str]:
    """The option that reaches a private address through the jump host (the LB)."""
    proxy = ["ssh", *options, "-W", "%h:%p", jump_login]
    return ["-o", "ProxyCommand=" + shlex.join(proxy)]


def login(host: str, user: str = conventions.OPERATOR_USER) -> str:
    return f"{user}@{host}"
