"""Latency the LB adds at fixed request rates, on the booted staging stack (prints,
asserts nothing):

    venv/bin/python benchmarks/lb_latency.py [--rates 50 200 1000] [--runs 1]

Through the LB from the internet client, and straight to an app server from the LB's own
namespace with the LB's client certificate (the LB's own leg), in alternating slices. Also
what the other benchmarks share to reach the stack: `Reachable` (names resolve in the
internet client's namespace, the per-client rate limit raised for the run and put back).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from localcloud import cloud, config, droplet, network, shell, stack, tenancy  # noqa: E402
from model import conventions  # noqa: E402

STACK = "staging"
BENCH_RATE = 100000              # lbRequestsPerSecond while measuring (its maximum)
NETNS_HOSTS = Path("/etc/netns") / config.INTERNET_NETNS / "hosts"

# What every figure asks for: the example API's smallest answer.
PATH = "/api/hello"

# Fixed-rate latency: `rate` requests a second spread over keep-alive TLS connections (one
# per 100 requests/s, each paced on its own schedule), each request timed. Each connection
# answers one request before the clock starts: the handshake is not a request's latency.
LATENCY = r"""
import http.client, json, ssl, sys, threading, time
host, address, port, path, rate, n, cert, key = sys.argv[1:9]
rate, n = float(rate), int(n)
ctx = ssl._create_unverified_context()
if cert:
    ctx.load_cert_chain(cert, key)
conns = max(1, int(rate // 100))
times, lock, start = [], threading.Lock(), time.monotonic() + 1
def run(k):
    c = http.client.HTTPSConnection(address, int(port), context=ctx, timeout=10)
    c.request("GET", path, headers={"Host": host}); c.getresponse().read()
    mine = []
    for i in range(k, n, conns):
        time.sleep(max(0, start + i / rate - time.monotonic()))
        t = time.perf_counter()
        c.request("GET", path, headers={"Host": host})
        r = c.getresponse(); r.read()
        mine.append((time.perf_counter() - t) * 1000)
    with lock:
        times.extend(mine)
threads = [threading.Thread(target=run, args=(k,)) for k in range(conns)]
[t.start() for t in threads]; [t.join() for t in threads]
print(json.dumps({"ms": times, "seconds": time.monotonic() - start}))
"""


def percentiles(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {"p50": round(statistics.median(ms), 2), "p99": round(ms[int(len(ms) * 0.99) - 1], 2),
            "max": round(ms[-1], 2)}


def latency(p, rate: float, seconds: float = 12, rounds: int = 4) -> dict:
    """Through the LB (internet client -> 443, the domain's name) vs straight to an app
    server's 8443 (from the LB's own namespace with the LB's client certificate, the LB's
    leg to it): the difference is what the LB adds. In `rounds` alternating slices, each
    round starting with the other path, so the machine's tail falls on both alike."""
    app = p.with_tag(conventions.APP_SERVER)[0]
    n = int(rate * seconds / rounds)
    lb_root = droplet.Paths(p.lb.name).root
    through_lb = cloud.internet_client(["python3", "-c", LATENCY, p.domain, p.domain, "443", PATH,
                                        str(rate), str(n), "", ""])
    direct = ["ip", "netns", "exec", network.netns_name(p.lb.name), "python3", "-c", LATENCY, p.domain,
              app.vpc_ip, str(conventions.APP_TLS_PORT), PATH, str(rate), str(n),
              f"{lb_root}{conventions.SERVER_CERT_PATH}", f"{lb_root}{conventions.SERVER_KEY_PATH}"]
    paths = {"lb": through_lb, "direct": direct}
    ms: dict[str, list[float]] = {"lb": [], "direct": []}
    achieved = []
    for i in range(rounds):
        for name in (("lb", "direct") if i % 2 == 0 else ("direct", "lb")):
            out = json.loads(shell.run(paths[name], timeout=seconds + 120).stdout)
            ms[name] += out["ms"]
            if name == "lb":
                achieved.append(n / out["seconds"])
    lbp, dsp = percentiles(ms["lb"]), percentiles(ms["direct"])
    return {"rate_per_s": rate, "requests_each_way": n * rounds, "rounds": rounds,
            "achieved_per_s": round(min(achieved)), "through_lb_ms": lbp, "direct_to_app_ms": dsp,
            "added_ms": {k: round(lbp[k] - dsp[k], 2) for k in lbp}}


class Reachable:
    """For the run: the domain and a benchmark's `names` resolve in the internet client's
    namespace (so wrk sends them as SNI), and one client may send as much as it can."""

    def __init__(self, p, names: tuple[str, ...] | list[str] = ()):
        self.p, self.names = p, tuple(names)

    def __enter__(self):
        NETNS_HOSTS.parent.mkdir(parents=True, exist_ok=True)
        NETNS_HOSTS.write_text(f"127.0.0.1 localhost\n{self.p.lb.reserved_ips[0]} {self.p.domain} {' '.join(self.names)}\n")
        self.p = up_with(STACK, {"lbRequestsPerSecond": BENCH_RATE})
        return self.p

    def __exit__(self, *exc):
        NETNS_HOSTS.unlink(missing_ok=True)
        up_with(STACK, {})


def up_with(name: str, changes: dict):
    plan = stack.plan(name, changes)
    if not stack.healthy(stack.up(plan)):
        raise SystemExit(f"up with {changes or 'the stack settings'} did not finish cleanly")
    return plan


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", type=float, nargs="+", default=[50, 200, 1000], help="requests a second")
    ap.add_argument("--runs", type=int, default=1, help="runs of each rate, one after another")
    args = ap.parse_args()
    # It changes the stack: not beside a test run.
    with tenancy.alone("benchmarks/lb_latency.py"), Reachable(stack.deployed(STACK)) as p:
        for rate in args.rates:
            for _ in range(args.runs):
                print(json.dumps(latency(p, rate)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
