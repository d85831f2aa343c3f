"""How the program reaches droplets after first boot: SSH through the load balancer.

First-boot data never changes in normal operation (a change would replace the droplet),
so whatever does change (certificates, the LB's upstream list, passwords, the app's
environment) is pushed over SSH by a pulumi-command `Command` that re-runs when its
payload changes. Each payload goes to `platform-push <kind>` on the droplet, which knows
where that kind of payload belongs, checks it and reloads only what it changed.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass

import pulumi
import pulumi_command as command
import pulumi_tls as tls

from cloudinit import common as common_files

from . import conventions
from .pki import ServerCertificate
from .settings import Settings


class AutomationKey(pulumi.ComponentResource):
    """The stack's own SSH key for pulumi-command; its private half lives only in state, as a secret."""

    def __init__(self, name: str, opts: pulumi.ResourceOptions | None = None):
        super().__init__("node-platform:index:AutomationKey", name, None, opts)
        key = tls.PrivateKey(f"{name}-key", algorithm="ED25519", opts=pulumi.ResourceOptions(parent=self))
        # pulumi-tls ends the line with a newline; authorized_keys entries and DO's API want the bare key.
        self.public_key_openssh: pulumi.Output[str] = key.public_key_openssh.apply(str.strip)
        self.private_key_pem: pulumi.Output[str] = pulumi.Output.secret(key.private_key_openssh)
        self.register_outputs({"public_key_openssh": self.public_key_openssh})


@dataclass(frozen=True)
class SshRoute:
    """How to log in to one droplet: directly (the LB) or through the LB as jump host."""

    host: pulumi.Input[str]
    key: AutomationKey
    jump_host: pulumi.Input[str] | None = None

    def connection(self) -> command.remote.ConnectionArgs:
        proxy = None
        if self.jump_host is not None:
            proxy = command.remote.ProxyConnectionArgs(
                host=self.jump_host,
                user=conventions.OPERATOR_USER,
                private_key=self.key.private_key_pem,
            )
        return command.remote.ConnectionArgs(
            host=self.host,
            user=conventions.OPERATOR_USER,
            private_key=self.key.private_key_pem,
            proxy=proxy,
            dial_error_limit=60,  # a new droplet takes a minute or two to take SSH logins
        )


def push_command(kind: str) -> str:
    """The command line a push runs on the droplet; the payload arrives on stdin."""
    return shlex.join(["sudo", conventions.PUSH_COMMAND, kind])


def payload(files: dict[str, pulumi.Input[str]]) -> pulumi.Output[str]:
    """The files of one push as JSON; secret when any of them is."""
    return pulumi.Output.all(**files).apply(lambda resolved: json.dumps(resolved, sort_keys=True))


def push_identity(
    name: str,
    *,
    route: SshRoute,
    role: str,
    settings: Settings,
    cert: ServerCertificate,
    parent: pulumi.Resource,
) -> None:
    """What every droplet receives after boot: its TLS identity and the operators' keys."""
    push(
        f"{name}-tls-push",
        route=route,
        kind="tls",
        files={"ca.crt": cert.ca_cert_pem, "server.crt": cert.cert_pem, "server.key": cert.key_pem},
        parent=parent,
    )
    push(
        f"{name}-operators-push",
        route=route,
        kind="operators",
        files=common_files.operator_keys(role, settings),
        parent=parent,
    )


def push(
    name: str,
    *,
    route: SshRoute,
    kind: str,
    files: dict[str, pulumi.Input[str]],
    parent: pulumi.Resource,
    depends_on: list[pulumi.Resource] | None = None,
) -> command.remote.Command:
    """Deliver `files` to `platform-push <kind>`; runs again whenever their content changes."""
    body = payload(files)
    return command.remote.Command(
        name,
        connection=route.connection(),
        create=push_command(kind),
        stdin=body,
        triggers=[body.apply(lambda text: hashlib.sha256(text.encode()).hexdigest())],
        opts=pulumi.ResourceOptions(parent=parent, depends_on=depends_on or []),
    )
