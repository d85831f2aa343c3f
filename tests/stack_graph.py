"""Reading a mock deployment the way an operator reads a stack: droplets by role, rules by port."""

from __future__ import annotations

from dataclasses import dataclass
import json
import shlex
from typing import Any, Iterator

import yaml

import mockcloud
from model import conventions

DROPLET = "digitalocean:index/droplet:Droplet"
FIREWALL = "digitalocean:index/firewall:Firewall"
COMMAND = "command:remote:Command"


def of_type(deployment: mockcloud.Deployment, type_token: str) -> list[mockcloud.Resource]:
    return [r for r in deployment.resources if r.type == type_token]


def droplets(deployment: mockcloud.Deployment, role: str | None = None) -> list[mockcloud.Resource]:
    """The droplets carrying `role`'s tag (all droplets without a role)."""
    found = of_type(deployment, DROPLET)
    if role is None:
        return found
    tag = conventions.role_tag(deployment.settings.stack, role)
    return [d for d in found if tag in d.state["tags"]]


def droplet(deployment: mockcloud.Deployment, name: str) -> mockcloud.Resource:
    return deployment.named(name, ":Droplet")


def pushes(deployment: mockcloud.Deployment) -> dict[str, mockcloud.Resource]:
    return {r.name: r for r in of_type(deployment, COMMAND)}


def backup_pushes(deployment: mockcloud.Deployment) -> dict[str, mockcloud.Resource]:
    return {name: r for name, r in pushes(deployment).items() if shlex.split(r.state["create"])[-1] == "backup"}


def backup_env(push: mockcloud.Resource) -> dict[str, str]:
    """A backup push's backup.env, as the droplet's shell reads it."""
    text = json.loads(mockcloud.plain(push.inputs["stdin"]))["backup.env"]
    return {k: shlex.split(v)[0] if v else "" for k, v in (line.split("=", 1) for line in text.splitlines())}


@dataclass(frozen=True)
class Opening:
    """One way in: `port` is open to `source` (a CIDR, or `tag:<name>`)."""

    port: str
    protocol: str
    source: str


def openings(firewall: mockcloud.Resource) -> set[Opening]:
    found = set()
    for rule in firewall.state.get("inboundRules") or []:
        sources = [*(rule.get("sourceAddresses") or []), *(f"tag:{t}" for t in rule.get("sourceTags") or [])]
        # A rule that names no source at all would be refused by DigitalOcean; count it as
        # open so that it can never hide.
        for source in sources or ["<none>"]:
            found.add(Opening(str(rule.get("portRange")), rule["protocol"], source))
    return found


def firewalls_of(deployment: mockcloud.Deployment, droplet_resource: mockcloud.Resource) -> list[mockcloud.Resource]:
    """The cloud firewalls that apply to a droplet: those naming one of its tags or its id."""
    tags = set(droplet_resource.state["tags"])
    return [
        f
        for f in of_type(deployment, FIREWALL)
        if tags & set(f.state.get("tags") or [])
        or int(droplet_resource.id) in [int(i) for i in f.state.get("dropletIds") or []]
    ]


def reachable(deployment: mockcloud.Deployment, droplet_resource: mockcloud.Resource) -> set[Opening]:
    """Every (port, source) a droplet accepts, across every firewall that applies to it."""
    return set().union(*(openings(f) for f in firewalls_of(deployment, droplet_resource)))


def tag(deployment: mockcloud.Deployment, role: str) -> str:
    return "tag:" + conventions.role_tag(deployment.settings.stack, role)


def strings_outside_secrets(value: Any) -> Iterator[str]:
    """Every string in an engine-side value that is not inside a secret wrapper."""
    if mockcloud.is_secret(value):
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_outside_secrets(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_outside_secrets(item)


def secret_values(deployment: mockcloud.Deployment) -> dict[str, str]:
    """Every generated secret of the stack, by where it came from."""
    found = {}
    for r in deployment.resources:
        if r.type.endswith(":RandomPassword"):
            found[f"{r.name}.result"] = r.state["result"]
        if r.type.endswith(":PrivateKey"):
            found[f"{r.name}.privateKeyPem"] = r.state["privateKeyPem"]
            found[f"{r.name}.privateKeyOpenssh"] = r.state["privateKeyOpenssh"]
        if r.type.endswith(":SpacesKey"):
            found[f"{r.name}.secretKey"] = r.state["secretKey"]
    return found


def fingerprints(secret: str) -> list[str]:
    """Forms a secret may take inside another text: as is, JSON-escaped, or unwrapped.

    Never single lines of a key: a private key's encoding holds its public half too, and
    that is meant to be seen (in certificates, authorized_keys).
    """
    forms = [secret, json.dumps(secret)[1:-1]]
    if "PRIVATE KEY" in secret:
        forms.append("".join(line for line in secret.splitlines() if "-----" not in line))
    return forms


def readable_text(user_data: str) -> str:
    """A cloud-config as the droplet reads it: the YAML decoded, every string joined."""
    config = load_yaml(user_data)
    files = [entry["content"] for entry in config.get("write_files", [])]
    return user_data + "\n" + "\n".join([*strings_outside_secrets(config), *files])


def load_yaml(text: str) -> Any:
    """PyYAML's C loader when built with libyaml: the cloud-configs are tens of KiB."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


ENGINE_PORTS = {name: str(engine.tls_port) for name, engine in conventions.ENGINES.items()}
