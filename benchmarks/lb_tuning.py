"""The LB's re-encryption tuned change by change, on the booted staging stack (prints,
asserts nothing):

    venv/bin/python benchmarks/lb_tuning.py [--rounds 10] [--seconds 10]

Each candidate is one change to how the LB proxies to the app servers, priced alone
against a control that proxies as the stack does (local_stack.py's re-encrypting block: its
`proxy_ssl_*` lines read from the LB's own platform.conf, its upstream's keepalive lines
from the LB's upstreams.conf). The same block with a plaintext upstream (local_stack.py's
`plain`) gives the ratio the README's target is about. As in
local_stack.py: wrk from the internet client to the LB's address, server blocks chosen by
name (SNI), benchmark-only files removed afterwards, rounds interleaved so drift on the
shared machine hits every variant alike, each round starting one variant later.

What is read is the CPU time of the LB's nginx.service alone (its cgroup inside the
droplet's), per 10,000 answered requests: the droplet's timers, fail2ban and journald do
not count, and the figure does not depend on what else the machine runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from local_stack import (BENCH_HOSTS, BENCH_NAMES, NGINX_APPLY, STACK, WRK_CONNECTIONS, Reachable, Variants,  # noqa: E402
                         interleaved, replacing, sh, stack_lines, write)
from cloudinit import common  # noqa: E402
from localcloud import stack, tenancy  # noqa: E402
from model import conventions  # noqa: E402

LB_TUNING_CONF = "/etc/nginx/conf.d/zz-benchmark-tuning.conf"
NGINX_DEFAULT_KEEPALIVE_REQUESTS = 1000
SMALL_KEEPALIVE_POOL = 8
LARGE_KEEPALIVE_POOL = 256

# The control proxies as the stack does: local_stack.py's re-encrypting block (the stack's
# upstream keepalive lines and proxy_ssl_* lines, read from the LB). Each candidate is the
# control with one change, by name: (what it changes, upstream directives that replace the
# stack's, location directives that replace the stack's).
CANDIDATES = {
    "nginx-default-keepalive-requests": (
        f"upstream keepalive_requests {NGINX_DEFAULT_KEEPALIVE_REQUESTS}, nginx's default (the stack's is "
        f"{conventions.LB_UPSTREAM_KEEPALIVE_REQUESTS}): a kept-alive upstream connection closes after that many "
        "requests, and the next one costs a TLS handshake",
        {"keepalive_requests": str(NGINX_DEFAULT_KEEPALIVE_REQUESTS)}, []),
    "aes128": (
        "TLS_AES_128_GCM_SHA256 offered first (OpenSSL's default order picks AES-256-GCM; both have "
        "hardware support)",
        {}, ["proxy_ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256;"]),
    "no-session-reuse": (
        "TLS session reuse off (what the stack's `proxy_ssl_session_reuse on` buys at this keepalive)",
        {}, ["proxy_ssl_session_reuse off;"]),
    "keepalive-pool-8": (
        f"upstream keepalive {SMALL_KEEPALIVE_POOL}, a smaller pool than the stack's: each worker keeps fewer idle "
        "connections than wrk keeps in flight, so some close after their answer and the next "
        "costs a (resumed) handshake",
        {"keepalive": str(SMALL_KEEPALIVE_POOL)}, []),
    "keepalive-pool-256": (
        f"upstream keepalive {LARGE_KEEPALIVE_POOL}, a larger pool than the stack's: the same as the stack's while "
        "each worker has fewer requests in flight than the stack's pool holds (run with --connections above it)",
        {"keepalive": str(LARGE_KEEPALIVE_POOL)}, []),
    "proxy-buffers-16k": (
        "proxy_buffer_size and proxy_buffers of 16k, a whole TLS record each (nginx's are one page, 4k): "
        "an answer read from the upstream in fewer SSL_read calls",
        {}, ["proxy_buffer_size 16k;", "proxy_buffers 8 16k;"]),
    "access-log-buffered": (
        "the access log written from a 64k buffer at most a second late (the stack's is written line by line: "
        "a write(2) per request)",
        {}, ["access_log /var/log/nginx/access.log combined buffer=64k flush=1s;"]),
}

SERVER = """upstream bench_{ident} {{
{servers}
    {upstream}
}}
server {{
    listen 443 ssl http2;
    server_name {name};
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{
        limit_req zone=per_client burst={burst} nodelay;
        proxy_pass https://bench_{ident};
{proxy_ssl}
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
    }}
}}
"""


def bench_name(candidate: str) -> str:
    return f"{candidate}.bench"


class Candidates:
    """The candidates' server blocks on the LB, removed afterwards."""

    def __init__(self, p):
        self.p = p
        self.apps = p.with_tag(conventions.APP_SERVER)

    def __enter__(self):
        p = self.p
        servers = "\n".join(f"    server {a.vpc_ip}:{conventions.APP_TLS_PORT};" for a in self.apps)
        keepalive = stack_lines(p, conventions.LB_UPSTREAMS_FILE, "keepalive")
        proxy_ssl = stack_lines(p, common.NGINX_SITE, "proxy_ssl_")
        blocks = []
        for candidate, (_, upstream, location) in CANDIDATES.items():
            upstream_lines = replacing(keepalive, [f"{name} {value};" for name, value in upstream.items()])
            blocks.append(SERVER.format(
                ident=candidate.replace("-", "_"), name=bench_name(candidate), servers=servers,
                upstream="\n    ".join(upstream_lines),
                proxy_ssl="\n".join(f"        {line}" for line in replacing(proxy_ssl, location)),
                cert=conventions.LB_PUBLIC_CERT_PATH,
                key=conventions.LB_PUBLIC_KEY_PATH, burst=200000))
        write(p, "lb", LB_TUNING_CONF, "# benchmark only (benchmarks/lb_tuning.py); removed after the run\n"
              + "".join(blocks))
        sh(p, "lb", NGINX_APPLY)
        return self

    def __exit__(self, *exc):
        sh(self.p, "lb", f"rm -f {LB_TUNING_CONF} && {NGINX_APPLY}", check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10,
                    help=f"each round starts one variant later: a multiple of the {len(CANDIDATES) + 2} variants "
                         "gives each the first place alike")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=WRK_CONNECTIONS, help="wrk's, kept in flight")
    args = ap.parse_args()
    hosts = {"control": BENCH_HOSTS["reencrypting"], **{c: bench_name(c) for c in CANDIDATES},
             "plain": BENCH_HOSTS["plain"]}
    compared = ["control", *CANDIDATES]
    names = [*BENCH_NAMES, *map(bench_name, CANDIDATES)]
    # It changes the stack: not beside a test run.
    with (tenancy.alone("benchmarks/lb_tuning.py"),
          Reachable(stack.deployed(STACK), names) as p, Variants(p), Candidates(p)):
        rounds = interleaved(p, hosts, args.rounds, args.seconds, args.connections)
    nginx = {k: statistics.median(r["lb_nginx_cpu_s_per_10k"] for r in v) for k, v in rounds.items()}
    out = {
        "lb_nginx_cpu_s_per_10k": {k: {"median": round(m, 4), "rounds": [r["lb_nginx_cpu_s_per_10k"] for r in rounds[k]]}
                                   for k, m in nginx.items()},
        "each_over_control": {k: round(nginx[k] / nginx["control"], 3) for k in compared},
        "each_over_plain": {k: round(nginx[k] / nginx["plain"], 3) for k in compared},
        "wrk_connections": args.connections,
        "ok_rps_median": {k: statistics.median(r["ok_rps"] for r in v) for k, v in rounds.items()},
        "what": {"control": f"the stack's own proxying ({hosts['control']})", **{k: v[0] for k, v in CANDIDATES.items()}},
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
