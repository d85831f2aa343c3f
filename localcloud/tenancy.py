"""Who has the local cloud: one user at a time (a test run, a benchmark, a CLI verb that
boots or removes droplets), and a test run leaves the machine as it found it.

The lock is why a second run fails at once, naming the first, instead of taking the
first one's droplets for what a killed run left behind and tearing them down. It goes
with the process, killed or not. (`stack.exclusive`, apart from it, makes one stack's
`up`s and `down`s wait for each other, whoever runs them.)
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager

from . import config, droplet, records, stack, teardown


class InUse(Exception):
    pass


@contextmanager
def held(what: str):
    """The local cloud to `what` alone until the block ends; InUse, naming the holder, if
    another has it."""
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


@contextmanager
def alone(what: str):
    """`held`, for a CLI verb or a benchmark: another holder ends the program, named."""
    try:
        with held(what):
            yield
    except InUse as busy:
        raise SystemExit(f"{what}: {busy}") from None


@contextmanager
def a_test_run(what: str, stack_name: str):
    """A test run's hold: yields whether `stack_name`'s stack was up when it began (a
    developer's `localcloud up`), which the run then uses and leaves up. Otherwise
    whatever of the local cloud is on the machine is a killed earlier run's, removed
    first, and at the end everything is removed: droplets, volumes, the network and the
    host's services (the caches are kept)."""
    with held(what):
        was_up = stack_is_up(stack_name)
        if not was_up and any(teardown.leftovers().values()):
            remove_everything(stack_name)
        try:
            yield was_up
        finally:
            if not was_up:
                remove_everything(stack_name)


def stack_is_up(stack_name: str) -> bool:
    return records.load(stack_name) is not None and all(
        droplet.is_running(d.name) for d in stack.deployed(stack_name).droplets)


def remove_everything(stack_name: str) -> None:
    stack.down_if_recorded(stack_name)   # its record too
    teardown.teardown()
