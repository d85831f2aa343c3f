"""How the program reaches droplets after first boot: SSH through the load balancer.

First-boot data never changes (a change would replace the droplet), so everything else
is pushed over SSH by pulumi-command `Command`s that re-run when their payload changes:
first the platform itself (the role's bundle: scripts, units, config files, settings),
then what comes on top of it (certificates, the LB's upstream list, passwords, the app's
environment), each to `platform-push <kind>` on the droplet, which knows where that kind
of payload belongs, checks it and reloads only what it changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_command as command
import pulumi_digitalocean as do
import pulumi_tls as tls

import cloudinit
from cloudinit import common as common_files

from . import ssh

from model import conventions
from .pki import ServerCertificate
from model.settings import Settings


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
    """How to log in to one droplet: directly (the LB) or through the LB as jump host.

    `ready` is what every push to it waits for: its boot gate, then its platform.
    `host_key` is the droplet's SSH host key as its gate recorded it at first contact,
    `jump_host_key` the jump host's: pulumi-command accepts only these keys (a changed one
    fails the handshake, before the login, so no payload is sent)."""

    host: pulumi.Input[str]
    key: AutomationKey
    jump_host: pulumi.Input[str] | None = None
    ready: pulumi.Resource | None = None
    host_key: pulumi.Input[str] | None = None
    jump_host_key: pulumi.Input[str] | None = None

    def connection(self) -> command.remote.ConnectionArgs:
        proxy = None
        if self.jump_host is not None:
            # The jump host needs the same patience: it may be booting too.
            proxy = command.remote.ProxyConnectionArgs(
                host=self.jump_host,
                user=conventions.OPERATOR_USER,
                private_key=self.key.private_key_pem,
                dial_error_limit=ssh.DIAL_ERROR_LIMIT,
                per_dial_timeout=ssh.PER_DIAL_TIMEOUT,
                host_key=self.jump_host_key,
            )
        return command.remote.ConnectionArgs(
            host=self.host,
            user=conventions.OPERATOR_USER,
            private_key=self.key.private_key_pem,
            proxy=proxy,
            dial_error_limit=ssh.DIAL_ERROR_LIMIT,
            per_dial_timeout=ssh.PER_DIAL_TIMEOUT,
            host_key=self.host_key,
        )


BOOT_GATE_SCRIPT = Path(__file__).with_name("wait-for-boot.sh")


def route_to(
    name: str,
    *,
    droplet: do.Droplet,
    host: pulumi.Input[str],
    key: AutomationKey,
    parent: pulumi.Resource,
    via: SshRoute | None = None,
) -> SshRoute:
    """The route to a new droplet (through `via`, the jump host's route), and its boot gate.

    pulumi-command starts a push as soon as the droplet exists, while it boots. Its SSH
    client retries refused connections but not a refused login (through a jump host a
    failed handshake is final), and a booting droplet refuses logins until cloud-init has
    written the `ops` user and key and /run/nologin is gone. And a connection through the
    LB opened before the LB's provisioning turns its host firewall on loses its replies
    once it does (the firewall never saw it start). So a local command on the machine
    running `pulumi up` first retries a real login until the droplet has finished first
    boot; the bundle push depends on it, and a droplet behind the LB waits for the LB's
    `ready` (its platform in place) first. It runs again when the droplet is replaced.

    The gate's login is the droplet's first contact: it prints the droplet's host key
    (trust on first use), which the route pins; through the LB it accepts only the key the
    LB's gate recorded."""
    jump_host = via.host if via else None
    environment = {
        "PLATFORM_SSH_KEY": key.private_key_pem,
        "PLATFORM_SSH_LOGIN": pulumi.Output.from_input(host).apply(ssh.login),
        "PLATFORM_SSH_JUMP": pulumi.Output.from_input(jump_host).apply(ssh.login) if via else "",
        "PLATFORM_SSH_JUMP_HOST_KEY": via.host_key if via else "",
    }
    gate = command.local.Command(
        f"{name}-boot-gate",
        create=boot_gate_script(),
        interpreter=["/bin/bash", "-c"],
        environment=environment,
        triggers=[droplet.id],
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[via.ready] if via and via.ready else []),
    )
    return SshRoute(host=host, key=key, jump_host=jump_host, ready=gate, host_key=gate.stdout,
                    jump_host_key=via.host_key if via else None)


def boot_gate_script() -> str:
    """The gate's bash script, with the SSH options and the markers from their one home."""
    facts = {
        "@SSH_OPTIONS@": shlex.join(ssh.batch_options()),
        # Files in the gate's own directory: the droplet's key, recorded; the jump host's, checked.
        "@FIRST_USE_OPTIONS@": shlex.join(ssh.first_use("seen")),
        "@PINNED_OPTIONS@": shlex.join(ssh.pinned("pinned")),
        "@HOST_KEY_TYPE@": ssh.HOST_KEY_TYPE,
        "@WAIT_SECONDS@": str(ssh.BOOT_WAIT_SECONDS),
        "@RETRY_SECONDS@": str(ssh.BOOT_RETRY_SECONDS),
        "@FIRST_BOOT_DONE@": conventions.FIRST_BOOT_MARKER,
    }
    text = BOOT_GATE_SCRIPT.read_text()
    for placeholder, value in facts.items():
        text = text.replace(placeholder, value)
    return text


def install_platform(
    name: str,
    *,
    route: SshRoute,
    bundle: cloudinit.Bundle,
    parent: pulumi.Resource,
    after: list[pulumi.Resource] | None = None,
) -> SshRoute:
    """Push the role's bundle once the droplet takes logins; returns the route whose pushes
    wait for it. A new bundle (any change to a droplet's files or the role's settings)
    runs again: the droplet installs it, provisions, and goes back to the previous one if
    that fails, naming the step. `after`: what must be done first (the pool's previous
    member, so a change rolls through the pool one server at a time)."""
    platform = command.remote.Command(
        f"{name}-bundle-push",
        connection=route.connection(),
        create=bundle_command(bundle),
        stdin=bundle.payload,
        triggers=[bundle.digest],
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[*filter(None, [route.ready]), *(after or [])]),
    )
    return dataclasses.replace(route, ready=platform)


def bundle_command(bundle: cloudinit.Bundle) -> str:
    """The command line that hands a droplet the bundle (on stdin) to store and install."""
    return shlex.join(["sudo", conventions.BUNDLE_COMMAND, bundle.digest])


def drain_for_push(
    name: str,
    *,
    lb: SshRoute,
    address: pulumi.Input[str],
    bundle: cloudinit.Bundle,
    cert: ServerCertificate,
    parent: pulumi.Resource,
    after: list[pulumi.Resource],
) -> command.remote.Command:
    """An app server out of the LB's pool for its bundle and certificate pushes, which run
    after it: each may reload its nginx, which closes the kept-alive connections the LB
    holds to it, and the LB does not send again a POST it was sending on one. Runs again
    with each new bundle or certificate (a renewal); the LB's script decides whether there
    is anything to drain."""
    return _drain_step(f"{name}-drain", "for-push", lb=lb, address=address,
                       triggers=[bundle.digest, sha256(cert.cert_pem)], parent=parent, depends_on=after)


def back_in_pool(
    name: str,
    *,
    lb: SshRoute,
    address: pulumi.Input[str],
    drain: command.remote.Command,
    pushes: list[pulumi.Resource],
    parent: pulumi.Resource,
) -> command.remote.Command:
    """The server back in the LB's pool once its pushes are done. Runs again whenever its drain
    has run: its trigger is the drain's id, new on each run (pulumi-command replaces a
    Command whose triggers change). A bundle's trigger would not do: after a failed push the
    engine runs nothing after it and keeps this step's old trigger, and the next `up` may
    have no new bundle (the change reverted), only the drain to run again. The LB's script
    puts back only a server its drain took out."""
    return _drain_step(f"{name}-undrain", "after-push", lb=lb, address=address, triggers=[drain.id],
                       parent=parent, depends_on=pushes)


def _drain_step(name: str, step: str, *, lb: SshRoute, address: pulumi.Input[str], triggers: list,
                parent: pulumi.Resource, depends_on: list[pulumi.Resource]) -> command.remote.Command:
    return command.remote.Command(
        name,
        connection=lb.connection(),
        create=pulumi.Output.from_input(address).apply(
            lambda ip: shlex.join(["sudo", conventions.DRAIN_COMMAND, step, ip])),
        triggers=triggers,
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[*filter(None, [lb.ready]), *depends_on]),
    )


def first_bundle(
    name: str,
    *,
    route: SshRoute,
    bundle: cloudinit.Bundle,
    parent: pulumi.Resource,
) -> command.remote.Command:
    """A new pool member's first platform, at once, whatever the other members do.

    A pool's bundle push waits for the member before it, so a new bundle never reaches two
    serving members at once. A droplet with no platform yet serves nothing: this installs
    its first bundle as soon as it takes logins, so a new pool (or a scale-out) provisions
    its members side by side, and the member's own bundle push then finds that bundle in
    place. Once a droplet has a platform this only drains its input: a new bundle goes
    through the pool's roll."""
    has_platform = shlex.join(["sudo", "test", "-e", conventions.CURRENT_BUNDLE])
    install = bundle_command(bundle)
    in_place = f"a platform is in place: bundle {bundle.digest[:12]} comes with the pool's roll"
    return command.remote.Command(
        f"{name}-first-bundle",
        connection=route.connection(),
        create=f"if {has_platform}; then cat >/dev/null; echo {shlex.quote(in_place)}; else {install}; fi",
        stdin=bundle.payload,
        triggers=[bundle.digest],
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[*filter(None, [route.ready])]),
    )


def sha256(text: pulumi.Input[str]) -> pulumi.Output[str]:
    """A trigger that changes with `text` and shows nothing of it (it may be a secret)."""
    return pulumi.Output.from_input(text).apply(lambda value: hashlib.sha256(value.encode()).hexdigest())


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
    tls_after: list[pulumi.Resource] | None = None,
) -> command.remote.Command:
    """What every droplet receives after boot: its TLS identity and its logins' keys (the
    operators', and deployKeys for the deploy login where there is one).
    Returns the TLS push (a server serves TLS only once it is done); `tls_after`: what it
    waits for besides the droplet's platform (an app server's drain)."""
    tls = push(
        f"{name}-tls-push",
        route=route,
        kind="tls",
        files={"ca.crt": cert.ca_cert_pem, "server.crt": cert.cert_pem, "server.key": cert.key_pem},
        parent=parent,
        depends_on=tls_after,
    )
    push(
        f"{name}-operators-push",
        route=route,
        kind="operators",
        files=operator_files(role, settings, route.key),
        parent=parent,
    )
    return tls


def operator_files(role: str, settings: Settings, key: AutomationKey) -> dict[str, pulumi.Output[str]]:
    """The `operators` push's files, each login's keys (the program's own key among them)."""
    keys = key.public_key_openssh.apply(lambda own: common_files.operator_keys(role, settings, own))
    return {login: keys.apply(lambda by_login, login=login: by_login[login]) for login in common_files.ssh_logins(role)}


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
        triggers=[sha256(body)],
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[*filter(None, [route.ready]), *(depends_on or [])]),
    )
