#!/usr/bin/python3
"""The droplet lock: one change to this droplet at a time.

Every platform-push (its files, check and then-steps) and every platform-provision run,
first boot included, holds it while it changes the droplet; the rest wait for it.

    platform-lock run HOLDER COMMAND [ARG...]   run COMMAND holding the lock
    platform-lock held                          exit 0 when this process runs inside a hold

platform-push loads this file and holds the lock with `holding(holder)`. A holder puts
its pid in ${{ c.DROPLET_LOCK_ENV }} for its children: provisioning started by a push's
then-step runs inside the push's hold instead of waiting for it (which would never end).
The lock file names the holder, so a wait that gives up says who held it. Each take and
release is a line of {{ c.DROPLET_LOCK_LOG }}:
`<UTC time with milliseconds> took|released droplet lock: <holder> (pid N)`.
"""

import contextlib
import datetime
import fcntl
import json
import os
import signal
import subprocess
import sys
import time

LOCK_FILE = "{{ c.DROPLET_LOCK_FILE }}"
LOG = "{{ c.DROPLET_LOCK_LOG }}"
ENV = "{{ c.DROPLET_LOCK_ENV }}"
WAIT_SECONDS = {{ c.DROPLET_LOCK_WAIT_SECONDS }}
POLL_SECONDS = 0.1


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def log(line, stamp=None):
    os.makedirs(os.path.dirname(LOG), exist_ok=True)
    # One write in append mode: lines of concurrent writers never mix.
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{stamp or now()} {line}\n".encode())
    finally:
        os.close(fd)


def open_lock():
    os.makedirs(os.path.dirname(LOCK_FILE), exist_ok=True)
    return os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)


def record(fd):
    """Who holds the lock, as its holder wrote it ({} when nobody says)."""
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}


def described(rec):
    if not rec:
        return "an unknown holder"
    return f"{rec.get('holder')} (pid {rec.get('pid')}) since {rec.get('since')}"


def ancestors():
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/status") as f:
                pid = int(next(line.split()[1] for line in f if line.startswith("PPid:")))
        except (OSError, StopIteration, ValueError):
            break
    return pids


def inside_hold():
    """True when an ancestor holds the lock and told its children so.

    The variable alone is not trusted: its pid must be the recorded holder, an ancestor
    of this process, and the lock must be taken."""
    value = os.environ.get(ENV, "")
    if not value.isdigit() or int(value) not in ancestors():
        return False
    fd = open_lock()
    try:
        if record(fd).get("pid") != int(value):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def take(fd, label, wait_seconds):
    deadline = time.monotonic() + wait_seconds
    waiting = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        holder = described(record(fd))
        if time.monotonic() >= deadline:
            log(f"gave up on droplet lock: {label} after {wait_seconds}s; held by {holder}")
            sys.exit(f"platform-lock: {label} waited {wait_seconds}s for the droplet lock;"
                     f" it is still held by {holder} (see {LOG})")
        if not waiting:
            waiting = True
            log(f"waiting for droplet lock: {label}; held by {holder}")
            print(f"platform-lock: {label} waits for the droplet lock, held by {holder}",
                  file=sys.stderr, flush=True)
        time.sleep(POLL_SECONDS)


@contextlib.contextmanager
def holding(holder, wait_seconds=WAIT_SECONDS):
    """Holds the droplet lock for the block (at once when an ancestor already holds it)."""
    if inside_hold():
        yield
        return
    label = f"{holder} (pid {os.getpid()})"
    fd = open_lock()
    inherited = os.environ.get(ENV)
    try:
        take(fd, label, wait_seconds)
        since = now()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "holder": holder, "since": since}).encode() + b"\n", 0)
        os.environ[ENV] = str(os.getpid())
        log(f"took droplet lock: {label}", since)
        try:
            yield
        finally:
            log(f"released droplet lock: {label}")
            os.ftruncate(fd, 0)
            if inherited is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = inherited
    finally:
        os.close(fd)  # closing the only descriptor releases the lock


def run(holder, argv):
    """Runs a command holding the lock; its exit status is the command's."""
    if inside_hold():
        os.execvp(argv[0], argv)
    with holding(holder):
        child = subprocess.Popen(argv)
        # A stop asked of this process is meant for the command: the lock outlives it.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda number, _frame: child.send_signal(number))
        return child.wait()


def main(args):
    if args[:1] == ["held"] and len(args) == 1:
        return 0 if inside_hold() else 1
    if args[:1] == ["run"] and len(args) >= 3:
        status = run(args[1], args[2:])
        return status if status >= 0 else 128 - status
    sys.exit("usage: platform-lock run HOLDER COMMAND [ARG...] | platform-lock held")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
