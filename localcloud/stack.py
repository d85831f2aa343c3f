"""A whole stack of the program on the local cloud: up, down, lose, status.

    p = plan.plan("staging")        # the Pulumi program under the mock engine
    stack.up(p)                     # droplets, volume, firewalls, then the commands as the engine runs them
    checks.check(p)                 # the basic path, from the internet client

`up` creates the droplets (booting, not booted), volumes, buckets and firewalls, then
runs the plan's commands at once with `engine.run`, as `pulumi up` does; `order="serial"`
waits for every droplet to finish booting and runs them one by one instead.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

from . import acme, cloud, droplet, engine, firewall, records, shell, spaces, state, volume
from .droplet import BootQuirks
from .plan import LOCAL_OVERRIDES_WHY, Plan, PlannedDroplet, deployed, plan  # noqa: F401 (the stack's verbs)

ORDERS = ("engine", "serial")

def print_overrides(p: Plan) -> None:
    print(f"[localcloud] stack {p.stack}: LOCAL_OVERRIDES (the only settings changed for this machine):")
    for key, value in p.overrides.items():
        print(f"[localcloud]   {key} = {json.dumps(value)}   # {LOCAL_OVERRIDES_WHY[key]}")


def specs(p: Plan, quirks: dict[str, BootQuirks] | None = None) -> list[cloud.DropletSpec]:
    """The plan's droplets; `quirks` (by key or name) slow one droplet's boot for a test."""
    quirks = {p.droplet(key).name: q for key, q in (quirks or {}).items()}
    return [cloud.DropletSpec(d.name, d.user_data, d.tags, d.public_ip, d.vpc_ip, d.reserved_ips,
                              quirks.get(d.name, BootQuirks()))
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


@contextmanager
def progress(p: Plan):
    """While the commands run (they wait for provisioning): each droplet's latest boot log
    line every PROGRESS_EVERY seconds, until its provisioning is done."""
    from model import conventions
    stop, start = threading.Event(), time.monotonic()

    def report():
        while not stop.wait(PROGRESS_EVERY):
            for d in p.droplets:
                if not (droplet.Paths(d.name).root / conventions.PROVISIONED_MARKER.lstrip("/")).exists():
                    print(f"[localcloud]   {d.name} ({time.monotonic() - start:.0f}s): {latest_log_line(d.name)}",
                          flush=True)

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    try:
        yield
    finally:
        stop.set()
        reporter.join()


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
    from model import conventions
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
    commands: list[engine.CommandResult]
    seconds: float


@contextmanager
def exclusive(stack: str):
    """One up or down of a stack at a time (tests and people share this machine)."""
    path = records.state_file(stack).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[localcloud] stack {stack} is busy (another up or down); waiting", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def up(p: Plan | None = None, order: str = "engine", quirks: dict[str, BootQuirks] | None = None,
       timeout: float = 2400) -> UpResult:
    """Boot or update the stack: network, ACME server, droplets, volume, firewalls, and
    the plan's commands in `order` (ORDERS)."""
    if order not in ORDERS:
        raise ValueError(f"order {order!r}: one of {', '.join(ORDERS)}")
    p = p or plan()
    with exclusive(p.stack):
        return _up(p, order, quirks, timeout)


def _up(p: Plan, order: str, quirks: dict[str, BootQuirks] | None, timeout: float) -> UpResult:
    start = time.monotonic()
    print_overrides(p)
    acme.ensure_tls_ca()     # before the image is built: droplets trust the ACME server
    before = records.load(p.stack)
    previous = deployed(p.stack) if before else None
    # Droplets the program no longer has go last, as `pulumi up` deletes them: after the
    # pushes that stop depending on them (the LB's upstream list), so no request is sent
    # to a droplet already gone. Until then their firewalls stay as they were.
    leaving = [d for d in (previous.droplets if previous else [])
               if d.name not in {k.name for k in p.droplets} and d.name in state.load()["droplets"]]
    cloud.up(specs(p, quirks), vpc_cidr=p.vpc_cidr, wait=False)
    to_run = {c.name for c in p.commands if c.changed}
    if p.record:
        # Until they have run, the commands to run are not in the stack's state.
        records.save(p.stack, records.without(p.record, to_run))
    acme.ensure_running(p.lb.reserved_ips[0])   # DNS: the domain resolves to the LB
    if p.buckets:
        spaces.ensure_running()
        for b in p.buckets:
            spaces.ensure_bucket(b.name, b.versioning)
        # Before any push hands a key to a droplet: each reaches its granted buckets only.
        spaces.register_keys(p.stack, p.keys)
    with shell.Step("volumes"):
        for v in p.volumes:
            volume.create(v.name, v.size_mb, v.filesystem, v.label)
            volume.attach(v.droplet, v.name)
    with shell.Step("cloud firewalls"):
        firewall.apply(p.firewalls, with_leaving(p.topology(), previous, leaving))
    if order == "serial":
        with shell.Step("cloud-init on every droplet"):
            statuses = wait_for_cloud_init(p, timeout)
        with shell.Step(f"{len(to_run)} command(s), one at a time"):
            commands = engine.run_serially(p.commands)
    else:
        with shell.Step(f"{len(to_run)} command(s) as the engine runs them (parallelism {engine.DEFAULT_PARALLELISM})"):
            with progress(p):
                commands = engine.run(p.commands)
        with shell.Step("cloud-init on every droplet"):
            statuses = wait_for_cloud_init(p, timeout)
    if p.record:
        # What the commands printed (the gates' host keys) takes the place of the plan's placeholders.
        ran = records.with_outputs(p.record, engine.outputs_of(p.commands, commands))
        records.save(p.stack, records.after_up(ran, before, failed={r.name for r in commands if r.status == "failed"},
                                               not_run={r.name for r in commands if r.status == "not run"}))
    reports = [droplet_report(d.name) for d in p.droplets]
    print_report(reports)
    if leaving:
        with shell.Step("droplets the program no longer has"):
            for d in leaving:
                cloud.destroy(d.name)
            firewall.apply(p.firewalls, p.topology())
    if all(r.provisioned for r in reports) and all(r.ok for r in commands):
        with shell.Step("the LB's certificate from the ACME server"):
            wait_for_certificate(p)
    took = time.monotonic() - start
    print(f"[localcloud] up ({order}): {took:.0f}s", flush=True)
    return UpResult(p, statuses, reports, commands, took)


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


def down_if_recorded(stack: str) -> None:
    """`down` of what the last `up` of `stack` deployed, if the local cloud has a record of it."""
    if records.load(stack):
        down(deployed(stack))


def _down(p: Plan) -> None:
    present = [d.name for d in p.droplets if d.name in state.load()["droplets"]]
    # All shut down at once: one by one, each clean shutdown (up to 30 s) waited for the last.
    for name in present:
        droplet.power_off(name)
    for name in present:
        cloud.destroy(name)
    for v in p.volumes:
        volume.delete(v.name)
    firewall.clear()
    acme.stop()
    spaces.stop()
    spaces.forget_keys(p.stack)
    records.state_file(p.stack).unlink(missing_ok=True)   # as `pulumi destroy` empties the stack


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
    problems += [f"{r.name}: {r.status} (exit {r.returncode})" for r in result.commands if not r.ok]
    for problem in problems:
        print(f"[localcloud] PROBLEM {problem}", flush=True)
    return not problems
