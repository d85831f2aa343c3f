"""What a deploy knows of a stack: where its app servers are and how to reach them.

Shared by the commands (deploy/commands.py), the roll (deploy/roll.py) and the targets
that find them (deploy/targets.py), so none of those imports another for its records.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Server:
    name: str        # app-1, app-2, ...: as the program names them
    address: str     # private address, reached through the jump host


@dataclass(frozen=True)
class Stack:
    name: str
    jump_host: str                   # the LB's public (reserved) address
    servers: tuple[Server, ...]
    # The operator's private key file; None: ssh's own defaults (agent, ~/.ssh/config).
    identity: str | None = None
    # Each droplet's SSH host key by the program's name (lb, app-1, datastore), from the
    # stack's `host_keys` output: what each droplet's boot gate recorded at first contact.
    host_keys: dict[str, str] = field(default_factory=dict)
    # The known_hosts file written from host_keys: only those keys are accepted. None:
    # the operator's own known_hosts.
    known_hosts: str | None = None
