#!/usr/bin/python3
"""Receives the platform: `platform-bundle DIGEST` with the bundle (gzip, base64) on stdin.

The one program first boot writes, so the one program whose change would replace
droplets: it only checks a bundle against its digest and this droplet's identity, stores
it under its digest next to the bundles already here, and hands over to the installer
inside it (its platform-push), which puts it in place under the droplet lock.
"""

import base64
import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile

BUNDLES = "{{ c.BUNDLES_DIR }}"
IDENTITY = "{{ c.IDENTITY_FILE }}"
INSTALLER = "{{ c.PUSH_COMMAND }}"


def main(digest):
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        sys.exit(f"platform-bundle: {digest!r} is not a bundle digest (64 hex digits)")
    raw = gzip.decompress(base64.b64decode(sys.stdin.buffer.read()))
    if hashlib.sha256(raw).hexdigest() != digest:
        sys.exit(f"platform-bundle: what arrived is not bundle {digest[:12]} (damaged in transit?)")
    bundle = json.loads(raw)
    with open(IDENTITY) as f:
        identity = json.load(f)
    theirs = {key: bundle.get(key) for key in identity}
    if theirs != identity:
        sys.exit(f"platform-bundle: bundle {digest[:12]} is for {theirs}, this droplet is {identity}")
    store(digest, bundle)
    installer = os.path.join(BUNDLES, digest, "files", INSTALLER.lstrip("/"))
    os.execv(sys.executable, [sys.executable, installer, "install-bundle", digest])


def store(digest, bundle):
    """Writes the bundle's files under BUNDLES/DIGEST/files and its manifest (paths and
    modes, no contents); a bundle stored before is not written again."""
    os.makedirs(BUNDLES, mode=0o700, exist_ok=True)
    # The same bundle may arrive twice at once: one stores it, the other finds it stored.
    with open(os.path.join(BUNDLES, ".store.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        home = os.path.join(BUNDLES, digest)
        if not os.path.exists(home):
            write_bundle(home, bundle)


def write_bundle(home, bundle):
    incoming = tempfile.mkdtemp(dir=BUNDLES, prefix=".incoming-")
    try:
        for path, entry in bundle["files"].items():
            if not path.startswith("/") or os.path.normpath(path) != path:
                sys.exit(f"platform-bundle: refusing the file path {path!r}")
            target = os.path.join(incoming, "files", path.lstrip("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w") as f:
                f.write(entry["content"])
            os.chmod(target, int(entry["mode"], 8))
        manifest = {**bundle, "files": {path: entry["mode"] for path, entry in bundle["files"].items()}}
        with open(os.path.join(incoming, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
        os.rename(incoming, home)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: platform-bundle DIGEST < bundle")
    main(sys.argv[1])
