"""The local stack's state, as Pulumi keeps a stack's: what the last `up` created.

A run of the program under the mock engine starts from it (unchanged resources keep
their ids, keys, passwords and addresses); `refreshed` drops what was deleted behind the
program's back, as `pulumi refresh` does. Holds secrets, so root-only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

from . import config, state, volume


def state_file(stack: str) -> Path:
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


def without(record: dict, names: set[str]) -> dict:
    """The record less these resources, so that the next run runs them again. (The engine
    keeps a command that failed as one that failed to initialize, and its next `up` runs
    it again: the same effect.)"""
    return {**record,
            "resources": [r for r in record["resources"] if r["name"] not in names],
            "raw_state": [[t, n, st] for t, n, st in record["raw_state"] if n not in names]}


def after_up(ran: dict, before: dict | None, failed: set[str], not_run: set[str]) -> dict:
    """The state an `up` leaves, to the same effect as the engine's: what it ran, but a
    command that failed left out (the next `up` runs it again), and one it did not get to
    (after a failure) with its record from before, if it had one: the next `up` runs that
    one only if its inputs differ from the record's."""
    kept = without(ran, failed | not_run)
    if not before:
        return kept
    return {**kept,
            "resources": kept["resources"] + [r for r in before["resources"] if r["name"] in not_run],
            "raw_state": kept["raw_state"] + [[t, n, st] for t, n, st in before["raw_state"] if n in not_run]}


def fill(value, known: dict[str, str]):
    """`value` (a string, or dicts and lists of them) with each placeholder of a command
    that has run replaced by its output (engine.outputs_of)."""
    if isinstance(value, str):
        for placeholder, output in known.items():
            value = value.replace(placeholder, output)
        return value
    if isinstance(value, dict):
        return {k: fill(v, known) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, known) for v in value]
    return value


def with_outputs(record: dict, known: dict[str, str]) -> dict:
    """The record with the commands' outputs in place of their placeholders, as the engine
    stores a command's stdout, and the inputs and stack outputs made from it, once it has
    run. The next run of the program reads them from here."""
    if not known:
        return record
    return {**record, **{part: fill(record.get(part), known) for part in ("resources", "raw_state", "outputs")}}


def save(stack: str, record: dict) -> None:
    path = state_file(stack)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    os.replace(path.with_suffix(".tmp"), path)


def load(stack: str) -> dict | None:
    try:
        return json.loads(state_file(stack).read_text())
    except (OSError, ValueError):
        return None


def resources(record: dict) -> list:
    import mockcloud
    return [mockcloud.Resource(r["type"], r["name"], r["id"], r["inputs"], r["state"])
            for r in record["resources"]]


def previous_deployment(record: dict | None):
    """The last `up`'s state in the shape mockcloud.deploy(previous=) reads, or None."""
    if not record:
        return None
    from cryptography.hazmat.primitives import serialization
    found = resources(record)
    keys = {r.state["privateKeyPem"]: serialization.load_pem_private_key(r.state["privateKeyPem"].encode(), None)
            for r in found if r.type.endswith("PrivateKey")}
    mocks = SimpleNamespace(resources=found, _keys=keys,
                            _raw_state={(t, n): st for t, n, st in record["raw_state"]},
                            retired_addresses=set(record.get("retired_addresses", ())),
                            last_id=int(record.get("last_id", 0)))
    return SimpleNamespace(mocks=mocks)


def kind(resource_type: str) -> str:
    return resource_type.rsplit(":", 1)[-1]


def refreshed(record: dict | None) -> dict | None:
    """The record less the droplets and volumes gone from this machine, as `pulumi refresh`
    finds what was deleted outside the program: the next run creates them anew."""
    if not record:
        return record
    on_machine = state.load()["droplets"]
    gone = set()
    for r in record["resources"]:
        what, name = kind(r["type"]), r["state"].get("name", "")
        if (what == "Droplet" and name not in on_machine) or (what == "Volume" and not volume.image_file(name).exists()):
            gone.add((r["type"], r["name"]))
            print(f"[localcloud] refresh: {what.lower()} {name} is gone; the program creates it anew", flush=True)
    retired = {r["state"].get(field) for r in record["resources"] if (r["type"], r["name"]) in gone
               for field in ("ipv4Address", "ipv4AddressPrivate")} - {None}
    return {**record,
            "resources": [r for r in record["resources"] if (r["type"], r["name"]) not in gone],
            "raw_state": [[t, n, st] for t, n, st in record["raw_state"] if (t, n) not in gone],
            "retired_addresses": sorted(set(record.get("retired_addresses", ())) | retired),
            "last_id": max([int(record.get("last_id", 0)), *(int(r["id"]) for r in record["resources"] if r["id"].isdigit())])}
