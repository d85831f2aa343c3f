"""The small JSON record of what the local cloud has running, for `status` and re-`up`."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager

from . import config

EMPTY: dict = {"droplets": {}}


def load() -> dict:
    try:
        return json.loads(config.STATE_FILE.read_text())
    except (OSError, ValueError):
        return json.loads(json.dumps(EMPTY))


def save(state: dict) -> None:
    config.STATE_ROOT.mkdir(parents=True, exist_ok=True)
    tmp = config.STATE_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, config.STATE_FILE)   # never a half-written state after a kill


@contextmanager
def editing():
    state = load()
    yield state
    save(state)


def droplet(name: str) -> dict:
    try:
        return load()["droplets"][name]
    except KeyError:
        raise KeyError(f"no droplet named {name!r} in {config.STATE_FILE}") from None


def clear() -> None:
    config.STATE_FILE.unlink(missing_ok=True)
