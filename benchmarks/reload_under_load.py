"""What the apps' graceful reload costs the requests in flight (for the README); prints,
asserts nothing.

    venv/bin/python benchmarks/reload_under_load.py [--reloads 25] [--rate 30] [--server app-1]
    # the staging stack must be up

Reloads one app server's apps (`systemctl reload platform-apps`, what a deploy's switch
runs) again and again under a steady stream of requests through the LB, half of them POSTs
(the LB sends a failed GET again to another server, never a POST, so a POST shows what a
reload cut). Prints the requests that failed, by method, and what the server saw: its
nginx's resets and early closes from the apps (a request sent on a connection the app was
closing) and pm2's SIGKILLs (a worker still running at its kill timeout, with the request
it held), and each reload's time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from localcloud import acme, droplet, stack, traffic, tenancy  # noqa: E402
from model import conventions  # noqa: E402

STACK = "staging"
NGINX_ERRORS = "/var/log/nginx/error.log"
# What the app server's nginx logs when an app closed a connection it sent a request on.
CUT = r"Connection reset by peer\|prematurely closed"
KILLED = "still alive after"   # pm2, before its SIGKILL


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reloads", type=int, default=25)
    parser.add_argument("--rate", type=float, default=30, help="requests per second asked (the stream may do fewer)")
    parser.add_argument("--server", default="app-1")
    args = parser.parse_args()
    with tenancy.alone("benchmarks/reload_under_load.py"):   # it changes the stack: not beside a test run
        return measure(args)


def measure(args) -> int:
    plan = stack.plan(STACK)
    name = plan.droplet(args.server).name
    root = acme.root_file()
    since = droplet.bash_output(name, "date '+%Y-%m-%d %H:%M:%S'")
    errors_before = int(droplet.bash_output(name, f"wc -l < {NGINX_ERRORS}") or 0)
    load = traffic.start(plan.domain, plan.lb.reserved_ips[0], str(root), traffic.WRITES_AND_READS, args.rate, None)
    times = []
    try:
        time.sleep(3)
        for n in range(args.reloads):
            start = time.monotonic()
            droplet.exec(name, ["systemctl", "reload", conventions.APPS_UNIT], check=True, timeout=300)
            times.append(round(time.monotonic() - start, 1))
            print(f"reload {n + 1}/{args.reloads}: {times[-1]}s", file=sys.stderr, flush=True)
            time.sleep(3)
    finally:
        seen = traffic.result(load)
    cut = droplet.bash_output(name, f"tail -n +{errors_before + 1} {NGINX_ERRORS} | grep -c '{CUT}' || true")
    killed = droplet.bash_output(name, f"journalctl -u {conventions.APPS_UNIT} --since '{since}' | grep -c '{KILLED}' || true")
    print(json.dumps({
        "server": args.server, "reloads": args.reloads,
        "reload_s": {"median": statistics.median(times), "max": max(times)},
        "requests": seen["requests"], "per_second": round(seen["requests"] / seen["seconds"], 1),
        "failed_by_method": seen["failed_by_method"], "failures": seen["failures"][:10],
        "nginx_cut_requests": int(cut or 0), "pm2_sigkills": int(killed or 0),
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
