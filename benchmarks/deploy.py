"""Deploy time per server on the local stack (for the README); prints, asserts nothing.

    venv/bin/python benchmarks/deploy.py [--rounds 3]     # the staging stack must be up

Each round is one `python -m deploy deploy staging --local` of the example app, as an
operator runs it. From its output: the build, the archive upload, each server's rsync and
its start-check-switch-reload-healthy time, and the whole deploy divided by the number of
servers.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from localcloud import tenancy  # noqa: E402

STACK = "staging"


def one_deploy() -> dict:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "deploy", "deploy", STACK, "--local"], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200)
    took = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"deploy failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    out = proc.stdout
    uploads = [float(s) for s in re.findall(r"^\[[\w-]+\] uploaded \S+ \(([\d.]+)s\)$", out, re.M)]
    healthy = [float(s) for s in re.findall(r"^\[[\w-]+\] healthy on \S+ \(([\d.]+)s\)$", out, re.M)]
    archive = re.search(r"^archived \S+ with its signed manifest \(([\d.]+)s\)$", out, re.M)
    return {"total_s": round(took, 1), "servers": len(healthy), "upload_s": uploads, "healthy_s": healthy,
            "archive_s": float(archive.group(1)) if archive else None}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tenancy.alone("benchmarks/deploy.py"):   # it deploys to the stack: not beside a test run
        return measure(args)


def measure(args) -> int:
    rounds = []
    for n in range(args.rounds):
        rounds.append(one_deploy())
        print(json.dumps({"round": n + 1, **rounds[-1]}), flush=True)
    med = statistics.median
    print(json.dumps({
        "rounds": len(rounds),
        "servers": rounds[0]["servers"],
        "deploy_total_s": med(r["total_s"] for r in rounds),
        "per_server_total_s": round(med(r["total_s"] / r["servers"] for r in rounds), 1),
        "per_server_upload_s": med(u for r in rounds for u in r["upload_s"]),
        "per_server_switch_to_healthy_s": med(h for r in rounds for h in r["healthy_s"]),
        "archive_upload_s": med(r["archive_s"] for r in rounds if r["archive_s"] is not None),
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
