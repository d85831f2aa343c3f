"""The small JSON record of what the local cloud has running, for `status` and re-`up`."""

from __future__ import annotations

import fcntl
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


class InUse(Exception):
    pass


@contextmanager
def held_by_this_run(what: str):
    """The local cloud for one user at a time (a test run, or a CLI verb that boots or
    removes droplets): a second fails at once, naming the first, instead of taking the
    first one's droplets for what a killed run left behind and tearing them down. The lock
    goes with the process, killed or not. (`stack.exclusive`, apart from it, makes one
    stack's `up`s and `down`s wait for each other, whoever runs them.)"""
    config.STATE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(config.IN_USE_LOCK, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise InUse(f"the local cloud is in use by {lock.read().strip() or 'another process'}") from None
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} ({what})")
        lock.flush()
        yield
