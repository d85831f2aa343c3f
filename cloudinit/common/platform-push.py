#!/usr/bin/python3
"""Receives a push from the Pulumi program: `platform-push KIND` with JSON on stdin.

The JSON maps file names to contents. {{ c.PLATFORM_ETC }}/pushes.json says, for each
kind, where each file goes, what checks the new files, what to run after, and which health
check must still answer after that. Files that are already as pushed are left alone and
nothing is reloaded; when the check fails the previous files are put back. Contents are
never printed: they may be secrets.
A push waits for the platform's provisioning, then holds the droplet lock (platform-lock)
for its files, check and then-steps: pushes and provisioning runs never interleave.

`platform-push install-bundle DIGEST` puts a bundle that platform-bundle stored in place
(see install_bundle).
"""

import json
import os
import runpy
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request

PUSH_TABLE = "{{ c.PLATFORM_ETC }}/pushes.json"
PROVISIONED = "{{ c.PROVISIONED_MARKER }}"
PROVISION_FAILED = "{{ c.PROVISION_FAILED_MARKER }}"
WAIT_FOR_PROVISIONING_SECONDS = 1800
# A push whose follow-up steps have not succeeded yet leaves its kind here.
PENDING = "{{ c.PLATFORM_STATE }}/pending-pushes"
BUNDLES = "{{ c.BUNDLES_DIR }}"
CURRENT = "{{ c.CURRENT_BUNDLE }}"
PROVISION = "{{ c.PROVISION_COMMAND }}"
# A server that served before a new bundle (or a push that names its health check) must
# serve again within this time.
HEALTH_WAIT_SECONDS = 90
# The droplet lock and "write a file only if it differs" have one home each, the
# platform-lock and platform-write commands, installed next to this one (by the bundle
# this runs from, the first time): this loads their code.
HERE = os.path.dirname(os.path.abspath(__file__))
hold_droplet_lock = runpy.run_path(os.path.join(HERE, os.path.basename("{{ c.LOCK_COMMAND }}")))["holding"]
_write = runpy.run_path(os.path.join(HERE, os.path.basename("{{ c.WRITE_COMMAND }}")))
read, replace, write_if_differs, is_as_asked = (
    _write["read"], _write["replace"], _write["write_if_differs"], _write["is_as_asked"])


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
    """New files in place, checked, then the follow-up steps. A push whose follow-up failed
    stays pending: the next push of its kind runs them again, even with no file changed.

    A kind that names a health check (the apps' environment) must leave a server that
    served serving: when its follow-up fails or the check no longer answers, the previous
    files go back and the follow-up runs again, so the server serves as it did."""
    pending = os.path.join(PENDING, kind)
    differing = {name: target for name, target in spec["files"].items()
                 if not is_as_asked(target["path"], files[name].encode(), target["mode"], target["owner"])}
    if not differing and not os.path.exists(pending):
        print(f"platform-push {kind}: no change")
        return
    health = spec.get("health")
    served = bool(health) and serving(health)
    previous = {}
    for name, target in differing.items():
        previous[target["path"]] = read(target["path"])
        replace(target["path"], files[name].encode(), target["mode"], target["owner"])
    if previous:
        print(f"platform-push {kind}: {len(previous)} file(s) changed")
    else:
        print(f"platform-push {kind}: no file changed, but its follow-up steps failed last time: running them again")
    if not all(run(argv) for argv in spec["check"]):
        restore(spec, previous)
        sys.exit(f"platform-push {kind}: check failed; previous files restored, nothing reloaded")
    os.makedirs(PENDING, exist_ok=True)
    open(pending, "w").close()
    failure = follow_up(spec)
    if failure is None and served and not serving(health, wait=HEALTH_WAIT_SECONDS):
        failure = f"{health} did not answer within {HEALTH_WAIT_SECONDS}s"
    if failure is None:
        os.unlink(pending)
        return
    if not health:
        sys.exit(f"platform-push {kind}: {failure}; the push stays pending"
                 f" (the next push of {kind} runs its follow-up steps again)")
    print(f"platform-push {kind}: {failure}; putting the previous files back", flush=True)
    restore(spec, previous)
    again = follow_up(spec)
    if again is None:
        os.unlink(pending)
        sys.exit(f"platform-push {kind}: {failure}; previous files restored and reloaded")
    sys.exit(f"platform-push {kind}: {failure}; previous files restored, but {again}; the push stays pending")


def follow_up(spec):
    """Runs the kind's follow-up steps in turn; None when all succeeded, else the one that failed."""
    for argv in spec["then"]:
        if not run(argv):
            return f"{' '.join(argv)} failed"
    return None


def restore(spec, previous):
    """The files as they were before this push (`previous`: path -> old content, None where
    there was no file)."""
    for path, old in previous.items():
        if old is None:
            os.unlink(path)
        else:
            target = next(t for t in spec["files"].values() if t["path"] == path)
            replace(path, old, target["mode"], target["owner"])


# --- the platform bundle --------------------------------------------------------------


def install_bundle(digest):
    """Puts bundle DIGEST in place and provisions; on failure goes back to the previous one.

    Holding the droplet lock: places the bundle's files (only those that differ), removes
    the files the previous bundle had and this one has not, points `current` at it, runs
    platform-provision, and, where the droplet served its health check before, waits for
    it to serve again. If any of it fails, the previous bundle goes back in place the same
    way and this exits non-zero, naming the step that failed."""
    with hold_droplet_lock(f"bundle {digest[:12]}"):
        previous = current_bundle()
        if previous == digest and os.path.exists(PROVISIONED) and not os.path.exists(PROVISION_FAILED):
            print(f"platform-bundle: {digest[:12]} is in place already: no change")
            return
        health = manifest(digest).get("health")
        served = bool(health) and serving(health)
        print(f"platform-bundle: installing {digest[:12]} (previous: {(previous or 'none')[:12]})", flush=True)
        place(digest, previous)
        failure = provision()
        if failure is None and served and not serving(health, wait=HEALTH_WAIT_SECONDS):
            failure = f"{health} did not answer within {HEALTH_WAIT_SECONDS}s after provisioning"
        if failure is None:
            prune(keep={digest, previous})
            print(f"platform-bundle: {digest[:12]} in place", flush=True)
            return
        if previous is None or previous == digest:
            sys.exit(f"platform-bundle: {digest[:12]} failed: {failure}; see {{ c.PROVISION_LOG }}")
        print(f"platform-bundle: {digest[:12]} failed: {failure}; going back to {previous[:12]}", flush=True)
        place(previous, digest)
        restored = "restored" if provision() is None else "restored, but its provisioning failed too"
        sys.exit(f"platform-bundle: {digest[:12]} failed: {failure}; previous bundle {previous[:12]} {restored};"
                 f" see {{ c.PROVISION_LOG }}")


def current_bundle():
    try:
        return os.path.basename(os.readlink(CURRENT))
    except FileNotFoundError:
        return None


def manifest(digest):
    with open(os.path.join(BUNDLES, digest, "manifest.json")) as f:
        return json.load(f)


def place(digest, replaced):
    """The bundle's files where they belong; the replaced bundle's leftovers removed (its
    files and the config files it installed that this bundle does not); `current` moved."""
    new = manifest(digest)
    for path, mode in new["files"].items():
        with open(os.path.join(BUNDLES, digest, "files", path.lstrip("/")), "rb") as f:
            content = f.read()
        write_if_differs(path, content, mode, "root:root")
    if replaced is not None and replaced != digest:
        old = manifest(replaced)
        for path in sorted((set(old["files"]) - set(new["files"])) | (set(old["installed"]) - set(new["installed"]))):
            if os.path.lexists(path):
                print(f"platform-bundle: removing {path} (not in {digest[:12]})")
                os.unlink(path)
    link = os.path.join(BUNDLES, f".current-{os.getpid()}")
    os.symlink(digest, link)
    os.replace(link, CURRENT)


def provision():
    """Runs platform-provision (inside this hold); None when it succeeded, else what failed."""
    if run([PROVISION]):
        return None
    try:
        with open(PROVISION_FAILED) as f:
            return "provisioning failed: " + f.read().strip()
    except FileNotFoundError:
        return "provisioning failed"


def serving(url, wait=0):
    """True when the droplet's own health check answers 200 (within `wait` seconds). Its
    certificate is the droplet's own, for its names, not 127.0.0.1: not verified here."""
    deadline = time.monotonic() + wait
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    said = False
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5, context=context) as answer:
                if answer.status == 200:
                    return True
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        if not said:
            # pulumi-command shows each line of output as the command's status as it comes: say what it waits for.
            print(f"platform-push: {url} does not answer yet; waiting up to {wait}s", flush=True)
            said = True
        time.sleep(2)


def prune(keep):
    """Keeps the bundle in place and the one before it; removes older ones."""
    for name in os.listdir(BUNDLES):
        if name not in keep and name != os.path.basename(CURRENT) and not name.startswith("."):
            shutil.rmtree(os.path.join(BUNDLES, name), ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "install-bundle":
        install_bundle(sys.argv[2])
    elif len(sys.argv) == 2:
        main(sys.argv[1])
    else:
        sys.exit("usage: platform-push KIND < files.json | platform-push install-bundle DIGEST")
