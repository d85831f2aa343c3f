"""The stack's plan: the Pulumi program under the mock engine, read as the local cloud
needs it (droplets, firewalls, volumes, buckets and the commands to run).

    p = plan.plan("staging")     # the program's run from the last `up`'s state

The plan is `mockcloud.deploy` of the stack's settings with LOCAL_OVERRIDES applied:
only the settings that cannot work on this machine. Droplets get the addresses the plan
gave them; the cloud firewalls, the volume and the commands (pulumi-command's pushes and
boot gates) are the plan's own resources.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from types import SimpleNamespace

from model import conventions

from . import acme, config, firewall, records, shell, spaces
from .pulumi_ssh import Hop

# The settings that cannot work here, and why. Everything else is the stack's own.
LOCAL_OVERRIDES_WHY = {
    "image": "the local droplets boot a Debian 12 image",
    "nodeMajor": "Debian 12's own nodejs is 18; NodeSource's repository is not reachable here",
    "acmeDirectory": "the local ACME server (pebble) on the host stands in for Let's Encrypt",
    "engines": "MongoDB's apt repository is not reachable here; the other engines stay",
    "adminCidrs": "the host runs the remote commands (as pulumi would), so its address joins the admin range",
    "spacesEndpoint": "moto's S3 server on the host stands in for Spaces (localcloud/spaces.py)",
    "sshPublicKeys": "the local cloud's operator key joins the stack's, so local deploys log in (config.OPERATOR_KEY)",
}


# Overrides made from the stack's own value: a change to it is honoured, overridden the same way.
FOLLOWS_THE_STACK = {"engines", "adminCidrs", "sshPublicKeys"}


def local_overrides(stack_config: dict) -> dict:
    """LOCAL_OVERRIDES for a stack: one visible dict, printed by `up`."""
    admin = list(stack_config.get("adminCidrs") or [])
    operators = list(stack_config.get("sshPublicKeys") or [])
    return {
        "image": "debian-12-x64",
        "nodeMajor": 18,
        "acmeDirectory": acme.DIRECTORY_URL,
        "engines": [e for e in stack_config.get("engines", []) if e != "mongodb"],
        "adminCidrs": admin + [f"{config.HOST_PUBLIC_IP}/32"],
        "spacesEndpoint": spaces.ENDPOINT,
        "sshPublicKeys": operators + [operator_public_key()],
    }


def operator_public_key() -> str:
    """The local cloud's operator key, made once (root-only, like ~/.ssh)."""
    key = config.OPERATOR_KEY
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shell.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "localcloud-operator", "-f", str(key)])
    return key.with_suffix(".pub").read_text().strip()


# Among commands free to start, these go first: the boot gates, the platform, then certificates before
# anything that needs them, the app's payload before the LB sends it traffic.
PUSH_ORDER = ("boot-gate", "bundle", "tls", "secrets", "env", "example-app", "upstreams")
REMOTE_COMMAND = "command:remote:Command"
LOCAL_COMMAND = "command:local:Command"


@dataclass(frozen=True)
class PlannedDroplet:
    key: str                       # the program's resource name: lb, app-1, datastore
    name: str                      # the droplet's name (and hostname): staging-lb, ...
    id: str
    user_data: str
    tags: tuple[str, ...]
    public_ip: str
    vpc_ip: str
    reserved_ips: tuple[str, ...] = ()


@dataclass(frozen=True)
class RemoteCommand:
    """A pulumi-command remote Command: `create` on the target, through the proxy if any."""
    name: str
    kind: str                      # what `platform-push <kind>` receives
    target: Hop
    proxy: Hop | None
    create: str
    stdin: str = field(repr=False)  # holds secrets: never printed
    needs: frozenset[str] = frozenset()   # the commands it depends on
    changed: bool = True           # new, or its inputs changed: the engine runs it


@dataclass(frozen=True)
class LocalCommand:
    """A pulumi-command local Command: `create` on the machine running the program."""
    name: str
    create: str
    interpreter: tuple[str, ...]
    environment: dict = field(repr=False, hash=False, compare=False)   # may hold secrets
    needs: frozenset[str] = frozenset()
    changed: bool = True
    # What the program saw of its stdout: the mock engine's placeholder (mockcloud.unknown_stdout)
    # when it is to run; the engine puts what it prints in its place. Empty when unchanged.
    unknown_stdout: str = ""

    @property
    def kind(self) -> str:
        return "boot-gate" if self.name.endswith("-boot-gate") else "local"


@dataclass(frozen=True)
class PlannedVolume:
    name: str
    size_mb: int
    filesystem: str | None
    label: str | None
    droplet: str                   # droplet name it is attached to


@dataclass(frozen=True)
class PlannedBucket:
    name: str
    versioning: bool
    key: str = ""                  # the program's resource name: datastore-backups, lb-backups, ...


@dataclass(frozen=True)
class PlannedKey:
    """A SpacesKey as DigitalOcean made it: the stand-in lets it reach its granted buckets only."""
    name: str
    access_key: str
    secret_key: str = field(repr=False)
    grants: tuple = ()             # ({"bucket": ..., "permission": ...}, ...)


@dataclass
class Plan:
    stack: str
    domain: str
    overrides: dict
    vpc_cidr: str
    droplets: list[PlannedDroplet]
    firewalls: list[firewall.Firewall]
    volumes: list[PlannedVolume]
    commands: list[RemoteCommand | LocalCommand]
    buckets: list[PlannedBucket] = field(default_factory=list)
    keys: list[PlannedKey] = field(default_factory=list, repr=False)
    record: dict | None = field(default=None, repr=False)   # saved as the stack's state by `up`

    def droplet(self, key_or_name: str) -> PlannedDroplet:
        for d in self.droplets:
            if key_or_name in (d.key, d.name):
                return d
        raise KeyError(f"no droplet {key_or_name!r} in the plan: "
                       + ", ".join(d.name for d in self.droplets))

    def bucket(self, key: str) -> PlannedBucket:
        """A bucket by its resource name in the program (`lb-backups`, `release-archive-bucket`)."""
        for b in self.buckets:
            if b.key == key:
                return b
        raise KeyError(f"no bucket {key!r} in the plan: " + ", ".join(b.key for b in self.buckets))

    def with_tag(self, suffix: str) -> list[PlannedDroplet]:
        return [d for d in self.droplets if any(t.endswith(suffix) for t in d.tags)]

    @property
    def lb(self) -> PlannedDroplet:
        (lb,) = [d for d in self.droplets if d.reserved_ips]
        return lb

    def topology(self) -> firewall.Topology:
        """Only this stack's droplets: others on the local cloud are none of its business."""
        tags: dict[str, list[str]] = {}
        for d in self.droplets:
            for tag in d.tags:
                tags.setdefault(tag, []).append(d.name)
        return firewall.Topology({d.name: [d.public_ip, *d.reserved_ips, d.vpc_ip]
                                  for d in self.droplets}, tags)


# --- the plan ---------------------------------------------------------------

def plan(stack: str = "staging", changes: dict | None = None) -> Plan:
    """Run the program under the mock engine from the state of the last `up`, as
    `pulumi up` starts from the stack's state: unchanged resources keep their keys,
    passwords and addresses, so their droplets are reused. Saved only by `up`.

    `changes` are settings set for this run, as `pulumi config set` would
    (e.g. {"appServerCount": 3}); they cannot change a local override, but the
    overrides that add to the stack's value (FOLLOWS_THE_STACK) follow a changed one."""
    import mockcloud   # the program and the SDK load only when a plan is wanted
    overrides = local_overrides({**mockcloud.stack_file_config(stack), **(changes or {})})
    clash = set(changes or {}) & set(overrides) - FOLLOWS_THE_STACK
    if clash:
        raise ValueError(f"{sorted(clash)}: set for this machine by LOCAL_OVERRIDES; see stack.LOCAL_OVERRIDES_WHY")
    settings = mockcloud.stack_settings(stack, **{**(changes or {}), **overrides})
    deployment = mockcloud.deploy(settings, previous=records.previous_deployment(records.refreshed(records.load(stack))))
    p = plan_from(deployment.resources, deployment.mocks.options, stack, settings, overrides)
    p.record = records.deployment_record(deployment.mocks, settings, overrides, deployment.outputs)
    return p


def deployed(stack: str = "staging") -> Plan:
    """What the last `up` deployed (for check, status, shell, down): the program's
    current code may differ, as a changed program differs from a stack's state."""
    record = records.load(stack)
    if record is None:
        raise SystemExit(f"no local stack {stack!r}: run `python -m localcloud up` first")
    settings = SimpleNamespace(domain=record["domain"], vpc_ip_range=record["vpc_ip_range"])
    return plan_from(records.resources(record), {}, stack, settings, record["overrides"])


def plan_from(resources, options: dict, stack: str, settings, overrides: dict) -> Plan:
    by_type: dict[str, list] = {}
    for r in resources:
        by_type.setdefault(records.kind(r.type), []).append(r)
    reserved: dict[str, list[str]] = {}
    addresses = {r.id: r.state["ipAddress"] for r in by_type.get("ReservedIp", [])}
    for a in by_type.get("ReservedIpAssignment", []):
        reserved.setdefault(str(int(a.state["dropletId"])), []).append(a.state["ipAddress"])
    droplets = [
        PlannedDroplet(r.name, r.state["name"], r.id, r.state["userData"], tuple(r.state.get("tags", [])),
                       r.state["ipv4Address"], r.state["ipv4AddressPrivate"], tuple(reserved.get(r.id, [])))
        for r in by_type.get("Droplet", [])
    ]
    by_id = {d.id: d.name for d in droplets}
    unassigned = set(addresses.values()) - {ip for ips in reserved.values() for ip in ips}
    if unassigned:
        raise ValueError(f"reserved IPs assigned to no droplet: {sorted(unassigned)}")
    firewalls = [firewall_of(r.state, by_id) for r in by_type.get("Firewall", [])]
    volumes = volumes_of(by_type.get("Volume", []), by_type.get("VolumeAttachment", []), by_id)
    commands = ordered_commands([r for r in resources if r.type in (REMOTE_COMMAND, LOCAL_COMMAND)], options)
    buckets = [PlannedBucket(b.state["name"], bool((b.state.get("versioning") or {}).get("enabled")), b.name)
               for b in by_type.get("SpacesBucket", [])]
    keys = [PlannedKey(k.state["name"], k.state["accessKey"], k.state["secretKey"],
                       tuple({"bucket": g.get("bucket") or "", "permission": g["permission"]}
                             for g in k.state.get("grants") or ()))
            for k in by_type.get("SpacesKey", [])]
    (vpc,) = by_type.get("Vpc", [None])
    return Plan(stack, settings.domain, overrides, vpc.state["ipRange"] if vpc else settings.vpc_ip_range,
                droplets, firewalls, volumes, commands, buckets, keys)


def rule_of(rule: dict, direction: str, by_id: dict[str, str]) -> firewall.Rule:
    peer = "source" if direction == "in" else "destination"
    return firewall.Rule(
        protocol=rule["protocol"],
        ports=rule.get("portRange") or "all",
        addresses=tuple(rule.get(f"{peer}Addresses") or ()),
        tags=tuple(rule.get(f"{peer}Tags") or ()),
        droplets=tuple(by_id[str(int(i))] for i in rule.get(f"{peer}DropletIds") or ()),
    )


def firewall_of(fw: dict, by_id: dict[str, str]) -> firewall.Firewall:
    """A digitalocean.Firewall's state as the local cloud's firewall."""
    return firewall.Firewall(
        name=fw["name"],
        inbound=tuple(rule_of(r, "in", by_id) for r in fw.get("inboundRules") or ()),
        outbound=tuple(rule_of(r, "out", by_id) for r in fw.get("outboundRules") or ()),
        droplets=tuple(by_id[str(int(i))] for i in fw.get("dropletIds") or ()),
        tags=tuple(fw.get("tags") or ()),
    )


def volumes_of(volumes, attachments, by_id: dict[str, str]) -> list[PlannedVolume]:
    attached = {a.state["volumeId"]: by_id[str(int(a.state["dropletId"]))] for a in attachments}
    return [PlannedVolume(v.state["name"], int(float(v.state["size"]) * 1024),
                          v.state.get("initialFilesystemType"), v.state.get("initialFilesystemLabel"),
                          attached[v.id])
            for v in volumes if v.id in attached]


def command_of(r, needs: frozenset[str] = frozenset()) -> RemoteCommand | LocalCommand:
    changed = not getattr(r, "unchanged", False)
    if r.type == LOCAL_COMMAND:
        return LocalCommand(r.name, r.state["create"], tuple(r.state.get("interpreter") or ("/bin/sh", "-c")),
                            dict(r.state.get("environment") or {}), needs, changed,
                            r.state.get("stdout") or "" if changed else "")
    conn = r.state["connection"]
    argv = shlex.split(r.state["create"])
    kind = "bundle" if conventions.BUNDLE_COMMAND in argv else "drain" if conventions.DRAIN_COMMAND in argv else argv[-1]
    return RemoteCommand(r.name, kind, Hop.from_state(conn),
                         Hop.from_state(conn["proxy"]) if conn.get("proxy") else None,
                         r.state["create"], r.state.get("stdin") or "", needs, changed)


def ordered_commands(commands, options: dict) -> list[RemoteCommand | LocalCommand]:
    """The plan's commands in dependency order (each after those it depends on, by the
    dependencies the program registered); PUSH_ORDER among the free ones."""
    names = {r.name for r in commands}
    needs = {}
    for r in commands:
        request = options.get((r.type, r.name))
        needs[r.name] = frozenset({u.rsplit("::", 1)[-1] for u in (request.dependencies if request else [])} & names)
    todo = sorted((command_of(r, needs[r.name]) for r in commands), key=rank)
    done: list = []
    while todo:
        ready = next((c for c in todo if not c.needs - {d.name for d in done}), None)
        if ready is None:
            raise ValueError(f"commands depend on each other in a cycle: {[c.name for c in todo]}")
        done.append(ready)
        todo.remove(ready)
    return done


def rank(c) -> tuple:
    return (PUSH_ORDER.index(c.kind) if c.kind in PUSH_ORDER else len(PUSH_ORDER), c.name)
