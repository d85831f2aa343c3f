"""`up` of the staging stack from nothing to healthy, in the engine's order and in the serial
order (image cached); prints figures, asserts nothing.

    venv/bin/python benchmarks/up_orders.py [--runs 3]

Runs alternate (engine, serial, engine, ...) so a drift of the machine's speed falls on both.
Each run: `down`, then `up` in that order, then /healthz through the LB until 200. Beside the
total: when the last droplet finished provisioning (apt and npm inside the droplets), and
how long the commands took in all. Leaves the stack up after the last run.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import conventions  # noqa: E402
from local_stack import healthy_after_up  # noqa: E402
from localcloud import droplet, stack, tenancy  # noqa: E402

STACK = "staging"
STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) platform-provision: ")


def provisioning_seconds(name: str) -> float:
    """First to last line of the droplet's first provisioning run (its log's timestamps)."""
    log = (droplet.Paths(name).root / conventions.PROVISION_LOG.lstrip("/")).read_text()
    stamps = [datetime.fromisoformat(m[1].replace("Z", "+00:00")) for line in log.splitlines()
              if (m := STAMP.match(line))]
    finished = next(i for i, line in enumerate(log.splitlines()) if "provisioning finished" in line)
    first_run = [s for s, line in zip(stamps, log.splitlines()[:finished + 1])]
    return (first_run[-1] - first_run[0]).total_seconds() if first_run else 0.0


def one_run(order: str) -> dict:
    stack.down_if_recorded(STACK)
    seconds, result = healthy_after_up(lambda: stack.plan(STACK), order)
    return {"order": order, "up_to_healthy_s": round(seconds),
            "slowest_provisioning_s": round(max(provisioning_seconds(d.name) for d in result.plan.droplets)),
            "commands_s_summed": round(sum(r.seconds for r in result.commands))}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3, help="runs of each order")
    args = ap.parse_args()
    with tenancy.alone("benchmarks/up_orders.py"):   # it changes the stack: not beside a test run
        return measure(args)


def measure(args) -> int:
    runs = []
    for _ in range(args.runs):
        for order in stack.ORDERS:
            runs.append(one_run(order))
            print(json.dumps(runs[-1]), flush=True)
    medians = {order: statistics.median(r["up_to_healthy_s"] for r in runs if r["order"] == order)
               for order in stack.ORDERS}
    print(json.dumps({"median_up_to_healthy_s": medians,
                      "engine_over_serial": round(medians["engine"] / medians["serial"], 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
