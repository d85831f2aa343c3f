"""A whole stack of the program, booted on the local cloud from the program's own plan.

    plan = stack.plan("staging")        # the Pulumi program under the mock engine
    stack.up(plan)                      # droplets, volume, firewalls, cloud-init, pushes
    stack.check(plan)                   # the basic path, from the internet client

The plan is `mockcloud.deploy` of the stack's settings with LOCAL_OVERRIDES applied:
only the settings that cannot work on this machine. Droplets get the addresses the plan
gave them; the cloud firewalls, the volume and the remote commands (pulumi-command's
pushes, over real SSH through the LB as jump host) are the plan's own resources.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from . import acme, cloud, config, droplet, firewall, shell, spaces, state, volume

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


# Pushes run in this order when the plan's dependencies leave them free: certificates
# before anything that needs them, the app's payload before the LB sends it traffic.
PUSH_ORDER = ("tls", "secrets", "env", "example-app", "upstreams")


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
class Login:
    user: str
    host: str
    private_key: str


@dataclass(frozen=True)
class RemoteCommand:
    name: str
    kind: str                      # what `platform-push <kind>` receives
    login: Login
    jump: Login | None
    create: str
    stdin: str = field(repr=False)  # holds secrets: never printed


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


@dataclass
class Plan:
    stack: str
    domain: str
    overrides: dict
    vpc_cidr: str
    droplets: list[PlannedDroplet]
    firewalls: list[firewall.Firewall]
    volumes: list[PlannedVolume]
    commands: list[RemoteCommand]
    buckets: list[PlannedBucket] = field(default_factory=list)
    record: dict | None = field(default=None, repr=False)   # saved as the stack's state by `up`

    def droplet(self, key_or_name: str) -> PlannedDroplet:
        for d in self.droplets:
            if key_or_name in (d.key, d.name):
                return d
        raise KeyError(f"no droplet {key_or_name!r} in the plan: "
                       + ", ".join(d.name for d in self.droplets))

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

def state_file(stack: str) -> Path:
    """The stack's state, as Pulumi keeps one: outputs (keys, passwords) of the last run.

    Holds secrets, so root-only."""
    return config.STATE_ROOT / "stacks" / f"{stack}.json"


def deployment_record(mocks, settings, overrides: dict, outputs: dict | None = None) -> dict:
    """What a run of the program leaves in the stack's state file."""
    return {
        "domain": settings.domain, "vpc_ip_range": settings.vpc_ip_range, "overrides": overrides,
        # The stack outputs, as `pulumi stack output --json --show-secrets` gives them (deploy reads them).
        "outputs": outputs or {},
        "resources": [{"type": r.type, "name": r.name, "id": r.id, "inputs": r.inputs, "state": r.state}
                      for r in mocks.resources],
        "raw_state": [[t, n, st] for (t, n), st in mocks._raw_state.items()],
        "retired_addresses": sorted(mocks.retired_addresses),
        "last_id": mocks.last_id,
    }


def save_record(stack: str, record: dict) -> None:
    path = state_file(stack)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    os.replace(path.with_suffix(".tmp"), path)


def load_record(stack: str) -> dict | None:
    try:
        return json.loads(state_file(stack).read_text())
    except (OSError, ValueError):
        return None


def _resources(record: dict) -> list:
    import mockcloud
    return [mockcloud.Resource(r["type"], r["name"], r["id"], r["inputs"], r["state"])
            for r in record["resources"]]


def previous_deployment(record: dict | None):
    """The last `up`'s state in the shape mockcloud.deploy(previous=) reads, or None."""
    if not record:
        return None
    from cryptography.hazmat.primitives import serialization
    resources = _resources(record)
    keys = {r.state["privateKeyPem"]: serialization.load_pem_private_key(r.state["privateKeyPem"].encode(), None)
            for r in resources if r.type.endswith("PrivateKey")}
    mocks = SimpleNamespace(resources=resources, _keys=keys,
                            _raw_state={(t, n): st for t, n, st in record["raw_state"]},
                            retired_addresses=set(record.get("retired_addresses", ())),
                            last_id=int(record.get("last_id", 0)))
    return SimpleNamespace(mocks=mocks)


def plan(stack: str = "staging", changes: dict | None = None) -> Plan:
    """Run the program under the mock engine from the state of the last `up`, as
    `pulumi up` starts from the stack's state: unchanged resources keep their keys,
    passwords and addresses, so their droplets are reused. Saved only by `up`.

    `changes` are settings set for this run, as `pulumi config set` would
    (e.g. {"appServerCount": 3}); they cannot change a local override."""
    import mockcloud   # the program and the SDK load only when a plan is wanted
    overrides = local_overrides(mockcloud.stack_file_config(stack))
    clash = set(changes or {}) & set(overrides)
    if clash:
        raise ValueError(f"{sorted(clash)}: set for this machine by LOCAL_OVERRIDES; see stack.LOCAL_OVERRIDES_WHY")
    settings = mockcloud.stack_settings(stack, **(changes or {}), **overrides)
    deployment = mockcloud.deploy(settings, previous=previous_deployment(refreshed(load_record(stack))))
    p = plan_from(deployment.resources, deployment.mocks.options, stack, settings, overrides)
    p.record = deployment_record(deployment.mocks, settings, overrides, deployment.outputs)
    return p


def refreshed(record: dict | None) -> dict | None:
    """The record less the droplets and volumes gone from this machine, as `pulumi refresh`
    finds what was deleted outside the program: the next run creates them anew."""
    if not record:
        return record
    on_machine = state.load()["droplets"]
    gone = set()
    for r in record["resources"]:
        kind, name = _suffix(r["type"]), r["state"].get("name", "")
        if (kind == "Droplet" and name not in on_machine) or (kind == "Volume" and not volume.image_file(name).exists()):
            gone.add((r["type"], r["name"]))
            print(f"[localcloud] refresh: {kind.lower()} {name} is gone; the program creates it anew", flush=True)
    retired = {r["state"].get(field) for r in record["resources"] if (r["type"], r["name"]) in gone
               for field in ("ipv4Address", "ipv4AddressPrivate")} - {None}
    return {**record,
            "resources": [r for r in record["resources"] if (r["type"], r["name"]) not in gone],
            "raw_state": [[t, n, st] for t, n, st in record["raw_state"] if (t, n) not in gone],
            "retired_addresses": sorted(set(record.get("retired_addresses", ())) | retired),
            "last_id": max([int(record.get("last_id", 0)), *(int(r["id"]) for r in record["resources"] if r["id"].isdigit())])}


def deployed(stack: str = "staging") -> Plan:
    """What the last `up` deployed (for check, status, shell, down): the program's
    current code may differ, as a changed program differs from a stack's state."""
    record = load_record(stack)
    if record is None:
        raise SystemExit(f"no local stack {stack!r}: run `python -m localcloud up` first")
    settings = SimpleNamespace(domain=record["domain"], vpc_ip_range=record["vpc_ip_range"])
    return plan_from(_resources(record), {}, stack, settings, record["overrides"])


def _suffix(resource_type: str) -> str:
    return resource_type.rsplit(":", 1)[-1]


def plan_from(resources, options: dict, stack: str, settings, overrides: dict) -> Plan:
    by_type: dict[str, list] = {}
    for r in resources:
        by_type.setdefault(_suffix(r.type), []).append(r)
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
    commands = ordered_commands(by_type.get("Command", []), options)
    buckets = [PlannedBucket(b.state["name"], bool((b.state.get("versioning") or {}).get("enabled")))
               for b in by_type.get("SpacesBucket", [])]
    (vpc,) = by_type.get("Vpc", [None])
    return Plan(stack, settings.domain, overrides, vpc.state["ipRange"] if vpc else settings.vpc_ip_range,
                droplets, firewalls, volumes, commands, buckets)


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


def _login(conn: dict) -> Login:
    return Login(conn["user"], conn["host"], conn["privateKey"])


def command_of(r) -> RemoteCommand:
    conn = r.state["connection"]
    kind = shlex.split(r.state["create"])[-1]
    return RemoteCommand(r.name, kind, _login(conn), _login(conn["proxy"]) if conn.get("proxy") else None,
                         r.state["create"], r.state.get("stdin") or "")


def ordered_commands(commands, options: dict) -> list[RemoteCommand]:
    """The plan's remote commands in dependency order; PUSH_ORDER among the free ones."""
    urns = {}
    for r in commands:
        request = options.get((r.type, r.name))
        urns[r.name] = {u.rsplit("::", 1)[-1] for u in (request.dependencies if request else [])}
    names = {r.name for r in commands}
    rank = lambda c: (PUSH_ORDER.index(c.kind) if c.kind in PUSH_ORDER else len(PUSH_ORDER), c.name)  # noqa: E731
    todo = sorted((command_of(r) for r in commands), key=rank)
    done: list[RemoteCommand] = []
    while todo:
        ready = next((c for c in todo if not (urns[c.name] & names) - {d.name for d in done}), None)
        if ready is None:
            raise ValueError(f"remote commands depend on each other in a cycle: {[c.name for c in todo]}")
        done.append(ready)
        todo.remove(ready)
    return done


# --- remote commands over real SSH ------------------------------------------

SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
               "-o", "ConnectTimeout=15", "-o", "LogLevel=ERROR")


def ssh_base(key_file: str, known_hosts: str) -> list[str]:
    return ["ssh", "-i", key_file, "-o", f"UserKnownHostsFile={known_hosts}", *SSH_OPTIONS]


def jump_option(jump: Login, key_file: str, known_hosts: str) -> list[str]:
    proxy = [*ssh_base(key_file, known_hosts), "-W", "%h:%p", f"{jump.user}@{jump.host}"]
    return ["-o", "ProxyCommand=" + shlex.join(proxy)]


def ssh_command(login: Login, key_file: str, known_hosts: str, remote: str,
                jump: Login | None = None, jump_key_file: str = "") -> list[str]:
    via = jump_option(jump, jump_key_file or key_file, known_hosts) if jump else []
    return [*ssh_base(key_file, known_hosts), *via, f"{login.user}@{login.host}", remote]


def _write_key(directory: str, name: str, text: str) -> str:
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    return path


def run_ssh(login: Login, remote: str, *, jump: Login | None = None, stdin: str | None = None,
            attempts: int = 5, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run `remote` on the droplet as pulumi-command does; keys live in 0600 temp files
    only while it runs. Retries while SSH itself fails (exit 255), as a new droplet may
    not take logins yet."""
    with tempfile.TemporaryDirectory(prefix="lc-ssh-") as tmp:
        key = _write_key(tmp, "key", login.private_key)
        jump_key = _write_key(tmp, "jump-key", jump.private_key) if jump else ""
        argv = ssh_command(login, key, os.path.join(tmp, "known_hosts"), remote, jump, jump_key)
        for attempt in range(1, attempts + 1):
            proc = subprocess.run(argv, input=stdin or "", stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=timeout)
            if proc.returncode != 255 or attempt == attempts:
                return proc
            time.sleep(3 * attempt)
    raise AssertionError("unreachable")


@dataclass
class PushResult:
    name: str
    returncode: int
    output: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_commands(p: Plan) -> list[PushResult]:
    results = []
    for c in p.commands:
        start = time.monotonic()
        proc = run_ssh(c.login, c.create, jump=c.jump, stdin=c.stdin)
        r = PushResult(c.name, proc.returncode, proc.stdout, time.monotonic() - start)
        via = f" via {c.jump.host}" if c.jump else ""
        print(f"[localcloud] {c.name}: `{c.create}` on {c.login.host}{via} -> exit {r.returncode}"
              f" ({r.seconds:.1f}s)", flush=True)
        for line in r.output.strip().splitlines()[-8:]:
            print(f"[localcloud]   | {line}", flush=True)
        results.append(r)
    return results


# --- bringing it up ---------------------------------------------------------

def print_overrides(p: Plan) -> None:
    print(f"[localcloud] stack {p.stack}: LOCAL_OVERRIDES (the only settings changed for this machine):")
    for key, value in p.overrides.items():
        print(f"[localcloud]   {key} = {json.dumps(value)}   # {LOCAL_OVERRIDES_WHY[key]}")


def specs(p: Plan) -> list[cloud.DropletSpec]:
    return [cloud.DropletSpec(d.name, d.user_data, d.tags, d.public_ip, d.vpc_ip, d.reserved_ips)
            for d in p.droplets]


@dataclass
class DropletReport:
    name: str
    cloud_init: str                # cloud-init status --long
    provisioned: bool
    provision_failed: str          # the failure marker's text, if any
    provision_log_tail: str


def wait_for_cloud_init(p: Plan, timeout: float = 1800) -> dict[str, str]:
    """Poll every droplet, printing each change of status; returns the last status of each."""
    start, last, shown = time.monotonic(), {}, time.monotonic()
    pending = [d.name for d in p.droplets]
    while pending and time.monotonic() - start < timeout:
        for name in list(pending):
            status = droplet.cloud_init_status(name) if droplet.is_running(name) else "not running"
            if status != last.get(name):
                print(f"[localcloud] {name}: cloud-init {status} ({time.monotonic() - start:.0f}s)", flush=True)
                last[name] = status
            if status in ("done", "error", "degraded", "disabled"):
                pending.remove(name)
        if time.monotonic() - shown > PROGRESS_EVERY:
            shown = time.monotonic()
            for name in pending:
                print(f"[localcloud]   {name} ({shown - start:.0f}s): {latest_log_line(name)}", flush=True)
        time.sleep(2)
    return last


PROGRESS_EVERY = 30   # seconds between progress lines while droplets provision
BOOT_LOGS = ("var/log/platform/provision.log", "var/log/cloud-init-output.log")


def latest_log_line(name: str) -> str:
    """The last line a droplet's first boot logged (read from its disk on the host)."""
    for rel in BOOT_LOGS:
        path = droplet.Paths(name).root / rel
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - 4096))
                lines = f.read().decode(errors="replace").replace("\r", "\n").strip().splitlines()
        except OSError:
            continue
        if lines:
            return f"{rel.rsplit('/', 1)[1]}: {lines[-1][-160:]}"
    return "(no log yet)"


def droplet_report(name: str) -> DropletReport:
    from components import conventions
    run = lambda argv: droplet.exec(name, argv, check=False, timeout=60).stdout  # noqa: E731
    failed = run(["cat", conventions.PROVISION_FAILED_MARKER]) if _exists(name, conventions.PROVISION_FAILED_MARKER) else ""
    return DropletReport(name, run(["cloud-init", "status", "--long"]).strip(),
                         _exists(name, conventions.PROVISIONED_MARKER), failed.strip(),
                         run(["tail", "-n", "25", conventions.PROVISION_LOG]))


def _exists(name: str, path: str) -> bool:
    return droplet.exec(name, ["test", "-e", path], check=False, timeout=30).returncode == 0


def print_report(reports: list[DropletReport]) -> None:
    for r in reports:
        marker = "provisioned" if r.provisioned else f"NOT provisioned ({r.provision_failed or 'no marker'})"
        print(f"[localcloud] == {r.name}: {marker}")
        for line in r.cloud_init.splitlines():
            print(f"[localcloud]    {line}")
        if not r.provisioned:
            for line in r.provision_log_tail.splitlines():
                print(f"[localcloud]    log| {line}")


@dataclass
class UpResult:
    plan: Plan
    cloud_init: dict[str, str]
    reports: list[DropletReport]
    pushes: list[PushResult]
    seconds: float


@contextmanager
def exclusive(stack: str):
    """One up or down of a stack at a time (tests and people share this machine)."""
    path = state_file(stack).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[localcloud] stack {stack} is busy (another up or down); waiting", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def up(p: Plan | None = None, timeout: float = 2400) -> UpResult:
    """Boot the stack: network, ACME server, droplets, volume, firewalls, then the pushes."""
    p = p or plan()
    with exclusive(p.stack):
        return _up(p, timeout)


def _up(p: Plan, timeout: float) -> UpResult:
    start = time.monotonic()
    print_overrides(p)
    acme.ensure_tls_ca()     # before the image is built: droplets trust the ACME server
    previous = deployed(p.stack) if load_record(p.stack) else None
    # Droplets the program no longer has go last, as `pulumi up` deletes them: after the
    # pushes that stop depending on them (the LB's upstream list), so no request is sent
    # to a droplet already gone. Until then their firewalls stay as they were.
    leaving = [d for d in (previous.droplets if previous else [])
               if d.name not in {k.name for k in p.droplets} and d.name in state.load()["droplets"]]
    cloud.up(specs(p), vpc_cidr=p.vpc_cidr, wait=False)
    if p.record:
        save_record(p.stack, p.record)
    acme.ensure_running(p.lb.reserved_ips[0])   # DNS: the domain resolves to the LB
    if p.buckets:
        spaces.ensure_running()
        for b in p.buckets:
            spaces.ensure_bucket(b.name, b.versioning)
    with shell.Step("volumes"):
        for v in p.volumes:
            volume.create(v.name, v.size_mb, v.filesystem, v.label)
            volume.attach(v.droplet, v.name)
    with shell.Step("cloud firewalls"):
        firewall.apply(p.firewalls, with_leaving(p.topology(), previous, leaving))
    with shell.Step("cloud-init on every droplet"):
        statuses = wait_for_cloud_init(p, timeout)
    reports = [droplet_report(d.name) for d in p.droplets]
    print_report(reports)
    with shell.Step("remote commands over SSH"):
        pushes = run_commands(p)
    if leaving:
        with shell.Step("droplets the program no longer has"):
            for d in leaving:
                cloud.destroy(d.name)
            firewall.apply(p.firewalls, p.topology())
    if all(r.provisioned for r in reports) and all(r.ok for r in pushes):
        with shell.Step("the LB's certificate from the ACME server"):
            wait_for_certificate(p)
    took = time.monotonic() - start
    print(f"[localcloud] up: {took:.0f}s", flush=True)
    return UpResult(p, statuses, reports, pushes, took)


def with_leaving(topo: firewall.Topology, previous: Plan | None, leaving: list[PlannedDroplet]) -> firewall.Topology:
    """The plan's topology plus the droplets about to be removed (their old addresses and tags)."""
    if not leaving:
        return topo
    old = previous.topology()
    addresses = {**topo.addresses, **{d.name: old.addresses[d.name] for d in leaving}}
    tags = {tag: list(names) for tag, names in topo.tags.items()}
    for d in leaving:
        for tag in d.tags:
            tags.setdefault(tag, []).append(d.name)
    return firewall.Topology(addresses, tags)


def wait_for_certificate(p: Plan, timeout: float = 300) -> dict:
    """certbot runs from a timer on the LB; wait until HTTPS verifies against pebble's root."""
    start = time.monotonic()
    while True:
        seen = acme.certificate_check(p.domain, p.lb.reserved_ips[0])
        if seen["verified"] or time.monotonic() - start > timeout:
            print(f"[localcloud] certificate: {seen} ({time.monotonic() - start:.0f}s)", flush=True)
            return seen
        time.sleep(5)


def lose(p: Plan, key_or_name: str, keep_volumes: bool = False) -> None:
    """Destroy one droplet (and its volumes, unless kept) outside the program, as when a
    droplet is lost: the stack's state still has them until the next `up` refreshes it."""
    d = p.droplet(key_or_name)
    with exclusive(p.stack):
        if d.name in state.load()["droplets"]:
            cloud.destroy(d.name)
        for v in p.volumes:
            if v.droplet == d.name and not keep_volumes:
                volume.delete(v.name)
    what = "is gone, its volumes kept" if keep_volumes else "and its volumes are gone"
    print(f"[localcloud] {d.name} {what}; `up` builds it anew", flush=True)


def down(p: Plan) -> None:
    """Remove this stack's droplets, volumes and firewall rules; others stay."""
    with exclusive(p.stack):
        _down(p)


def _down(p: Plan) -> None:
    for d in p.droplets:
        if d.name in state.load()["droplets"]:
            cloud.destroy(d.name)
    for v in p.volumes:
        volume.delete(v.name)
    firewall.clear()
    acme.stop()
    spaces.stop()
    state_file(p.stack).unlink(missing_ok=True)   # as `pulumi destroy` empties the stack


# --- checks -----------------------------------------------------------------

def curl_argv(url: str, domain: str, address: str, port: int, *extra: str) -> list[str]:
    return ["curl", "--silent", "--show-error", "--max-time", "15", "--resolve",
            f"{domain}:{port}:{address}", *extra, url]


PROBE = ("import socket,sys\n"
         "s=socket.socket(); s.settimeout(float(sys.argv[3]))\n"
         "try: s.connect((sys.argv[1], int(sys.argv[2]))); print('open')\n"
         "except ConnectionRefusedError: print('refused')\n"
         "except OSError: print('filtered')\n")


def probe_argv(address: str, port: int, timeout: float = 3) -> list[str]:
    return ["python3", "-c", PROBE, address, str(port), str(timeout)]


def from_internet(argv: list[str]) -> subprocess.CompletedProcess:
    return shell.run(cloud.internet_client(argv), check=False, timeout=120)


def port_state_from_internet(address: str, port: int) -> str:
    return from_internet(probe_argv(address, port)).stdout.strip()


def port_state_from(name: str, address: str, port: int) -> str:
    return droplet.exec(name, probe_argv(address, port), check=False, timeout=60).stdout.strip()


def served_by(html_or_headers: str) -> str:
    for line in html_or_headers.splitlines():
        if line.lower().startswith("x-served-by:"):
            return line.split(":", 1)[1].strip()
    return ""


def check(p: Plan) -> dict:
    """The basic path, from the internet client; returns what was seen, prints it."""
    from components import conventions
    ip = p.lb.reserved_ips[0]
    seen: dict = {}
    https = from_internet(curl_argv(f"https://{p.domain}/", p.domain, ip, 443, "-k", "-D", "-"))
    seen["https_status"] = https.stdout.split("\n", 1)[0].strip()
    seen["https_body_has_served_by"] = "Served by" in https.stdout
    seen["https_served_by"] = [
        served_by(from_internet(curl_argv(f"https://{p.domain}/", p.domain, ip, 443, "-k", "-D", "-",
                                          "-o", "/dev/null")).stdout)
        for _ in range(2 * len(p.with_tag(conventions.APP_SERVER)))
    ]
    http = from_internet(curl_argv(f"http://{p.domain}/", p.domain, ip, 80, "-o", "/dev/null",
                                   "-w", "%{http_code} %{redirect_url}"))
    seen["http"] = http.stdout.strip()
    seen["certificate"] = acme.certificate_check(p.domain, ip)
    lb_ports = (conventions.SSH_PORT, conventions.HTTP_PORT, conventions.HTTPS_PORT,
                conventions.APP_TLS_PORT, *(e.tls_port for e in conventions.ENGINES.values()))
    (datastore,) = p.with_tag(conventions.DATASTORE)
    store_ports = (conventions.SSH_PORT, *(e.tls_port for e in conventions.ENGINES.values()),
                   *(e.local_port for e in conventions.ENGINES.values() if e.local_port))
    # Probes of filtered ports wait out their timeout: run them side by side.
    with ThreadPoolExecutor(max_workers=8) as pool:
        lb_states = pool.map(lambda port: port_state_from_internet(ip, port), lb_ports)
        store_states = pool.map(lambda port: port_state_from(p.lb.name, datastore.vpc_ip, port), store_ports)
        seen["lb_ports_from_internet"] = dict(zip(lb_ports, lb_states))
        seen["datastore_ports_from_lb"] = dict(zip(store_ports, store_states))
    for key, value in seen.items():
        print(f"[localcloud] check {key}: {value}", flush=True)
    return seen


def status(p: Plan) -> dict:
    out = {}
    for d in p.droplets:
        running = droplet.is_running(d.name)
        out[d.name] = {"running": running, "public_ip": d.public_ip, "reserved_ips": list(d.reserved_ips),
                       "vpc_ip": d.vpc_ip, "tags": list(d.tags),
                       "cloud_init": droplet.cloud_init_status(d.name) if running else "-"}
    return out


def shell_argv(name: str) -> list[str]:
    pid = droplet.container_init_pid(name)
    if not pid:
        raise RuntimeError(f"droplet {name} is not running")
    return droplet.exec_command(pid, ["/bin/bash", "-l"])


def healthy(result: UpResult) -> bool:
    problems = [f"{n}: cloud-init {s}" for n, s in result.cloud_init.items() if s != "done"]
    problems += [f"{r.name}: not provisioned ({r.provision_failed or 'no marker'})"
                 for r in result.reports if not r.provisioned]
    problems += [f"{r.name}: exit {r.returncode}" for r in result.pushes if not r.ok]
    for problem in problems:
        print(f"[localcloud] PROBLEM {problem}", flush=True)
    return not problems


def check_problems(seen: dict, p: Plan) -> list[str]:
    """What the basic path lacks, from what `check` saw; [] when it all works."""
    from components import conventions
    problems = []
    if not seen["https_status"].startswith("HTTP/") or " 200" not in seen["https_status"]:
        problems.append(f"HTTPS to {p.domain}: {seen['https_status']!r}")
    apps = sorted(d.name for d in p.with_tag(conventions.APP_SERVER))
    if sorted(set(seen["https_served_by"])) != apps:
        problems.append(f"served by {seen['https_served_by']}, expected every one of {apps}")
    code, _, location = seen["http"].partition(" ")
    if code not in ("301", "308") or not location.startswith(f"https://{p.domain}"):
        problems.append(f"HTTP does not redirect to HTTPS: {seen['http']!r}")
    if not seen["certificate"].get("verified"):
        problems.append(f"certificate not verified against the ACME server's root: {seen['certificate']}")
    public = (conventions.HTTP_PORT, conventions.HTTPS_PORT)
    for port, st in seen["lb_ports_from_internet"].items():
        if (st == "open") != (port in public):
            problems.append(f"LB port {port} from the internet client: {st}")
    for port, st in seen["datastore_ports_from_lb"].items():
        if (st == "open") != (port == conventions.SSH_PORT):
            problems.append(f"datastore port {port} from the LB: {st}")
    return problems


def check_passed(seen: dict, p: Plan) -> bool:
    problems = check_problems(seen, p)
    for problem in problems:
        print(f"[localcloud] FAILED {problem}", flush=True)
    print(f"[localcloud] check: {'passed' if not problems else f'{len(problems)} problem(s)'}", flush=True)
    return not problems
