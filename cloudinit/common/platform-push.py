#!/usr/bin/python3
"""Receives a push from the Pulumi program: `platform-push KIND` with JSON on stdin.

The JSON maps file names to contents. {{ c.PLATFORM_ETC }}/pushes.json says, for each
kind, where each file goes, what checks the new files and what to run after. Files
that are already as pushed are left alone and nothing is reloaded; when the check
fails the previous files are put back. Contents are never printed: they may be secrets.
A push waits for first-boot provisioning, then holds the droplet lock (platform-lock)
for its files, check and then-steps: pushes and provisioning runs never interleave.
"""

import json
import os
import runpy
import subprocess
import sys
import time

PUSH_TABLE = "{{ c.PLATFORM_ETC }}/pushes.json"
PROVISIONED = "{{ c.PROVISIONED_MARKER }}"
PROVISION_FAILED = "{{ c.PROVISION_FAILED_MARKER }}"
WAIT_FOR_PROVISIONING_SECONDS = 1800
# The droplet lock has one home, the platform-lock command; this loads its code.
hold_droplet_lock = runpy.run_path("{{ c.LOCK_COMMAND }}")["holding"]
# Writing a file only when it differs has one home too, the platform-write command.
_write = runpy.run_path("{{ c.WRITE_COMMAND }}")
read, replace, write_if_differs = _write["read"], _write["replace"], _write["write_if_differs"]


def wait_for_provisioning():
    """A push right after boot waits until first-boot provisioning is over: it may arrive
    before cloud-init has started provisioning, and so before it holds the lock."""
    deadline = time.monotonic() + WAIT_FOR_PROVISIONING_SECONDS
    while not os.path.exists(PROVISIONED):
        if os.path.exists(PROVISION_FAILED):
            sys.exit("platform-push: provisioning failed on this droplet; see {{ c.PROVISION_LOG }}")
        if time.monotonic() > deadline:
            sys.exit("platform-push: provisioning did not finish in time")
        time.sleep(2)


def run(argv):
    print("platform-push: running", " ".join(argv), flush=True)
    return subprocess.run(argv, stdin=subprocess.DEVNULL).returncode == 0


def main(kind):
    with open(PUSH_TABLE) as f:
        spec = json.load(f).get(kind)
    if spec is None:
        sys.exit(f"platform-push: unknown push kind {kind!r}")
    files = json.load(sys.stdin)
    unknown = sorted(set(files) - set(spec["files"]))
    missing = sorted(set(spec["files"]) - set(files))
    if unknown or missing:
        sys.exit(f"platform-push {kind}: unexpected files {unknown}, missing files {missing}")
    wait_for_provisioning()
    with hold_droplet_lock(f"push {kind}"):
        # Another holder's provisioning may have failed while this push waited.
        if os.path.exists(PROVISION_FAILED):
            sys.exit("platform-push: provisioning failed on this droplet; see {{ c.PROVISION_LOG }}")
        apply(kind, spec, files)


def apply(kind, spec, files):
    previous = {}
    for name, target in spec["files"].items():
        old = read(target["path"])
        if write_if_differs(target["path"], files[name].encode(), target["mode"], target["owner"]):
            previous[target["path"]] = old
    if not previous:
        print(f"platform-push {kind}: no change")
        return
    print(f"platform-push {kind}: {len(previous)} file(s) changed")
    if not all(run(argv) for argv in spec["check"]):
        for path, old in previous.items():
            if old is None:
                os.unlink(path)
            else:
                target = next(t for t in spec["files"].values() if t["path"] == path)
                replace(path, old, target["mode"], target["owner"])
        sys.exit(f"platform-push {kind}: check failed; previous files restored, nothing reloaded")
    for argv in spec["then"]:
        if not run(argv):
            sys.exit(f"platform-push {kind}: {' '.join(argv)} failed")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: platform-push KIND < files.json")
    main(sys.argv[1])
