"""How long the fast tier takes where it must run: as a user who is not root, with no
network but loopback, and with none of the host's Debian packages (each executable of the
packages `.ci/apt-packages.txt` and the local cloud's HOST_PACKAGES install, and Node.js,
is covered by /dev/null in a private mount namespace). Prints figures, asserts nothing;
a test that needed what is hidden fails, and the run says so.

    venv/bin/python benchmarks/fast_tier.py [--runs 3] [--workers auto]

Needs root to set that up (unshare, mount, setpriv); the tests run as `nobody`. Wall time
is the tier's command from start to end; CPU is what its processes used (user + system).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from localcloud.config import HOST_PACKAGES  # noqa: E402

EXTRA_PACKAGES = ("nodejs", "npm")
PROGRAM_DIRS = ("/bin/", "/sbin/", "/usr/bin/", "/usr/sbin/", "/usr/local/bin/")
# On every Debian machine (Essential: yes), and what sets the run up (mount, setpriv).
ESSENTIAL = {"util-linux"}
# What the fast tier may use: the venv's Python, bash and coreutils.
KEPT = {"bash", "sh", "dash", "env", "coreutils"}


def ci_packages() -> list[str]:
    lines = (ROOT / ".ci" / "apt-packages.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def hidden_programs() -> list[str]:
    """Every installed executable of those packages (util-linux's and the like included)."""
    found = set()
    for package in sorted({*ci_packages(), *HOST_PACKAGES, *EXTRA_PACKAGES} - ESSENTIAL):
        listed = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True)
        for path in listed.stdout.splitlines():
            p = Path(path)
            if path.startswith(PROGRAM_DIRS) and p.is_file() and not p.is_symlink() and p.name not in KEPT:
                found.add(path)
    return sorted(found)


def interpreter_reachable() -> str:
    """Mounts that let `nobody` run the venv's Python when it lives in root's home (pyenv
    under /root, mode 0700): a bare /root holding only that Python's installation."""
    home = Path(os.path.realpath(ROOT / "venv/bin/python")).parents[1]
    if not str(home).startswith("/root/"):
        return "true"
    keep, inside = shlex.quote(str(home)), shlex.quote(f"/mnt{home}")
    return (f"mkdir -p {inside}; mount --bind {keep} {inside}; mount -t tmpfs -o mode=0755 tmpfs /root;"
            f" mkdir -p {keep}; mount --bind {inside} {keep}")


def tier_command(workers: str, home: str, hidden: list[str]) -> list[str]:
    pytest = [str(ROOT / "venv/bin/python"), "-B", "-m", "pytest", "-q", "-m", "fast", "-p", "no:cacheprovider",
              "-n", workers, "--basetemp", f"{home}/pytest"]
    # Loopback up (a new network namespace starts with it down), then the programs hidden,
    # then the user dropped.
    hide = "; ".join(f"mount --bind /dev/null {shlex.quote(p)}" for p in hidden)
    unprivileged = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--reset-env",
                    "env", f"HOME={home}", "PATH=/usr/bin:/bin", f"TMPDIR={home}", *pytest]
    script = (f"set -e; ip link set lo up; {interpreter_reachable()}; {hide}; "
              f"cd {shlex.quote(str(ROOT))}; exec {shlex.join(unprivileged)}")
    return ["unshare", "--mount", "--net", "--propagation", "private", "sh", "-c", script]


def one_run(workers: str, hidden: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as home:
        Path(home).chmod(0o777)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        result = subprocess.run(tier_command(workers, home, hidden), capture_output=True, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"exit": result.returncode, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "summary": summary,
            **({"output": result.stdout[-3000:] + result.stderr[-2000:]} if result.returncode else {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", default="auto", help="pytest-xdist's -n (auto: one per core)")
    args = ap.parse_args()
    hidden = hidden_programs()   # dpkg -L of each package: once, not once per run
    print(f"hiding {len(hidden)} programs of the host packages; tests as nobody, loopback only",
          flush=True)
    runs = []
    for n in range(args.runs):
        runs.append(one_run(args.workers, hidden))
        print(json.dumps({"run": n + 1, **runs[-1]}), flush=True)
    print(json.dumps({"median_wall_s": statistics.median(r["wall_s"] for r in runs),
                      "median_cpu_s": statistics.median(r["cpu_s"] for r in runs),
                      "all_passed": all(r["exit"] == 0 for r in runs), "workers": args.workers}))


if __name__ == "__main__":
    main()
