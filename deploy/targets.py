"""Where a stack's app servers are and how to reach them: `StackTarget`.

A deploy needs only the load balancer's public address (the jump host), each app
server's name and private address, and the operator's key. A real stack says so in its
Pulumi outputs (`pulumi stack output --json`); a stack on the local cloud in the state
`python -m localcloud up` keeps.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Protocol

from model import conventions

from .archive import OUTPUT, Store, store_from_outputs
from .executor import CommandFailed, Executor
from .notify import webhook_from_outputs
from .records import Server, Stack


class StackTarget(Protocol):
    def resolve(self) -> Stack: ...

    def archive_store(self) -> Store:
        """Where releases are archived; raises archive.NotArchived saying why when nowhere."""

    def alert_webhook_url(self) -> str:
        """Where deploy outcomes are posted; raises notify.NoWebhook saying why when nowhere."""


class TargetError(RuntimeError):
    pass


def app_servers(app_ips: list[str]) -> tuple[Server, ...]:
    """The program numbers app servers from 1 in the order of `private_ips.app`."""
    return tuple(Server(f"{conventions.APP_SERVER}-{n}", ip) for n, ip in enumerate(app_ips, start=1))


def address(stack: str, where: str, value) -> str:
    """An IPv4 address from the stack's outputs, checked before it reaches an ssh command
    line: anything else (`-oProxyCommand=...`, a name) is refused, naming the output."""
    try:
        return str(ipaddress.IPv4Address(value))
    except (ipaddress.AddressValueError, ValueError, TypeError):
        raise TargetError(f"stack {stack}: output {where} is {value!r}, not an IPv4 address") from None


def stack_from_outputs(stack: str, outputs: dict, identity: str | None = None) -> Stack:
    try:
        public_ip, app_ips, host_keys = outputs["public_ip"], outputs["private_ips"]["app"], dict(outputs["host_keys"])
    except (KeyError, TypeError) as missing:
        raise TargetError(f"stack {stack}: its outputs lack public_ip, private_ips.app or host_keys ({missing}); "
                          "run `pulumi up` with this version of the program first") from None
    checked = [address(stack, f"private_ips.app[{i}]", ip) for i, ip in enumerate(app_ips)]
    return Stack(stack, address(stack, "public_ip", public_ip), app_servers(checked), identity, host_keys=host_keys)


@dataclass
class PulumiStack:
    """A real stack: its outputs, read with the Pulumi CLI."""

    name: str
    executor: Executor
    identity: str | None = None
    _secret_outputs: dict | None = field(default=None, repr=False)   # read once per run

    def output_command(self) -> list[str]:
        return ["pulumi", "stack", "output", "--json", "--stack", self.name]

    def resolve(self) -> Stack:
        try:
            result = self.executor.check(f"pulumi outputs of {self.name}", self.output_command())
        except FileNotFoundError:
            raise TargetError("the Pulumi CLI is not installed (or not on PATH)") from None
        except CommandFailed as failed:
            raise TargetError(f"`pulumi stack output` failed for {self.name}: exit {failed.result.returncode}") from None
        return stack_from_outputs(self.name, json.loads(result.output), self.identity)

    def secret_output_command(self) -> list[str]:
        return ["pulumi", "stack", "output", "--json", "--show-secrets", "--stack", self.name]

    def secret_outputs(self) -> dict:
        """Every output, secrets shown: never printed (the executor does not show the command's output)."""
        if self._secret_outputs is None:
            try:
                result = self.executor.check(f"pulumi outputs of {self.name}, with secrets",
                                             self.secret_output_command(), secret_output=True)
            except FileNotFoundError:
                raise TargetError("the Pulumi CLI is not installed (or not on PATH)") from None
            except CommandFailed as failed:
                raise TargetError(f"`pulumi stack output --show-secrets` failed for {self.name}: "
                                  f"exit {failed.result.returncode}") from None
            self._secret_outputs = json.loads(result.output)
        return self._secret_outputs

    def alert_webhook_url(self) -> str:
        return webhook_from_outputs(f"stack {self.name}", self.secret_outputs())

    def archive_store(self) -> Store:
        return store_from_outputs(self.name, self.secret_outputs(), missing_why=(
            f"stack {self.name} has no {OUTPUT} output: its release bucket exists only with the setting "
            f"`backups: true` (if it is on, run `pulumi up` with this version of the program)"))


@dataclass
class LocalStack:
    """A stack booted by `python -m localcloud up`: what its last `up` deployed."""

    name: str
    identity: str | None = None

    def default_identity(self) -> str | None:
        # The local cloud's operator key (its public half joins the stack's sshPublicKeys,
        # so the operators push lets `deploy` log in with it).
        from localcloud import config
        return str(config.OPERATOR_KEY) if config.OPERATOR_KEY.exists() else None

    def resolve(self) -> Stack:
        from localcloud import plan
        try:
            deployed = plan.deployed(self.name)
        except SystemExit as missing:   # localcloud's own message: run `up` first
            raise TargetError(str(missing)) from None
        apps = sorted((d for d in deployed.droplets if d.key.startswith(f"{conventions.APP_SERVER}-")),
                      key=lambda d: int(d.key.rsplit("-", 1)[1]))
        if not apps:
            raise TargetError(f"local stack {self.name} has no app servers")
        identity = self.identity or self.default_identity()
        if identity is None:
            raise TargetError(f"local stack {self.name}: no operator key; pass --identity KEY (a key in the "
                              "stack's sshPublicKeys)")
        from localcloud import records
        host_keys = ((records.load(self.name) or {}).get("outputs") or {}).get("host_keys")
        if not host_keys:
            raise TargetError(f"local stack {self.name}: its state holds no host_keys output (an `up` of an "
                              "older version of the program): run `python -m localcloud up`")
        return Stack(self.name, deployed.lb.reserved_ips[0], tuple(Server(d.key, d.vpc_ip) for d in apps),
                     identity, host_keys=dict(host_keys))

    def archive_store(self) -> Store:
        from localcloud import records, spaces
        record = records.load(self.name) or {}
        why = (f"local stack {self.name}: its state holds no {OUTPUT} output (backups off, or an `up` of an "
               "older version of the program: run `python -m localcloud up`)")
        store = store_from_outputs(self.name, record.get("outputs") or {}, missing_why=why)
        # The Spaces stand-in's certificate is signed by the local cloud's own CA.
        return dataclasses.replace(store, ca_bundle=str(spaces.CA_CERT))

    def alert_webhook_url(self) -> str:
        from localcloud import records
        return webhook_from_outputs(f"local stack {self.name}", (records.load(self.name) or {}).get("outputs") or {})
