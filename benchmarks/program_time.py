"""How long one evaluation of the program takes under the mock engine (`mockcloud.deploy`),
by appServerCount; prints figures, asserts nothing.

    venv/bin/python benchmarks/program_time.py [--counts 2 10 50] [--runs 3] [--stack staging]

Each run is a separate process, as `pulumi up` runs the program once per process: it
imports the program, evaluates it once with one app server (the SDK and the providers'
modules load lazily, on first use), then times one evaluation with the count asked for.
CPU is the process's CPU time (every thread: the mock engine answers from a thread pool);
on a shared machine the wall time also holds the waits for a core. Per app server: what
each server over the smallest count adds, (median at N - median at the smallest) / the
difference in servers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Run in the child: one warm-up evaluation, then the timed one.
CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
import mockcloud
mockcloud.deploy(mockcloud.stack_settings({stack!r}, appServerCount=1))
settings = mockcloud.stack_settings({stack!r}, appServerCount={count})
cpu, wall = time.process_time(), time.perf_counter()
mockcloud.deploy(settings)
print(json.dumps({{"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall}}))
"""


def one_run(stack: str, count: int) -> dict[str, float]:
    code = CHILD.format(root=str(ROOT), stack=stack, count=count)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", type=int, nargs="+", default=[2, 10, 50], help="appServerCount values")
    ap.add_argument("--runs", type=int, default=3, help="processes per count (the median is printed)")
    ap.add_argument("--stack", default="staging")
    args = ap.parse_args()
    medians: dict[int, dict[str, float]] = {}
    # Counts alternate run by run, so a drift of the machine's load falls on all of them.
    runs: dict[int, list[dict[str, float]]] = {count: [] for count in args.counts}
    for _ in range(args.runs):
        for count in args.counts:
            runs[count].append(one_run(args.stack, count))
    print(f"{'servers':>7} {'cpu s':>7} {'wall s':>7} {'cpu s/server':>13} {'wall s/server':>14}")
    smallest = min(args.counts)
    for count in args.counts:
        medians[count] = {k: statistics.median(r[k] for r in runs[count]) for k in ("cpu", "wall")}
    for count in args.counts:
        m = medians[count]
        extra = count - smallest
        per = {k: (m[k] - medians[smallest][k]) / extra for k in m} if extra else None
        per_text = f"{per['cpu']:>13.3f} {per['wall']:>14.3f}" if per else f"{'':>13} {'':>14}"
        print(f"{count:>7} {m['cpu']:>7.2f} {m['wall']:>7.2f} {per_text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
