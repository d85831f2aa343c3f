"""Figures of the staging stack on the local cloud (for the README); prints, asserts nothing.

    venv/bin/python benchmarks/local_stack.py                 # CPU per request, throughput, latency (stack up;
                                                              # the latency is lb_latency.py's)
    venv/bin/python benchmarks/local_stack.py --disruptions   # + failed requests: app-server stop, 2->3->2
    venv/bin/python benchmarks/local_stack.py --boot          # + down, then `up` to healthy (image cached)
    venv/bin/python benchmarks/local_stack.py --image         # + a cold image build (into a scratch dir)
    venv/bin/python benchmarks/local_stack.py --cold          # + down, then `up` to healthy with no cached image

Cost: wrk in the internet client's namespace, over TLS to the LB's reserved IP, to the
same LB and app servers by three server blocks chosen by name (SNI: the names resolve
there through /etc/netns/<namespace>/hosts while it runs; a benchmark-only nginx file on
the LB, removed afterwards). Each droplet is a cgroup, so the CPU time the LB and the app
servers spent is read from it: CPU-seconds per 10,000 requests does not depend on what else
the machine does, requests per second does. The stack's per-client rate limit is raised
(lbRequestsPerSecond) for the run and put back after it: one client sends everything here.
  * the stack's own:   its server block (headers, rate limit, log format), re-encrypted to
                       the app servers' 8443 with upstream keepalive and TLS session reuse;
  * re-encrypting:     a minimal block proxying as the stack does (its keepalive and
                       proxy_ssl_* lines, read from the LB), the like-for-like pair of:
  * plain:             the same minimal block to the app servers' nginx on a plaintext port
                       (a benchmark-only server block and firewall opening, removed afterwards);
  * no-reuse:          re-encrypted, no upstream keepalive, no TLS session reuse.
Traffic goes only to addresses inside the local cloud's namespaces.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloudinit import common  # noqa: E402
from lb_latency import BENCH_RATE, PATH, STACK, Reachable, latency  # noqa: E402
from localcloud import acme, cloud, droplet, firewall, image, shell, stack, traffic, tenancy  # noqa: E402
from model import conventions  # noqa: E402

# A benchmark's nginx file applied: checked, then reloaded as the platform reloads (its
# measurements start once no worker from before takes connections).
NGINX_APPLY = f"nginx -t 2>/dev/null && {conventions.NGINX_RELOAD_COMMAND}"

BENCH_PLAIN_PORT = 8089          # benchmark only: app servers' plaintext server block
WRK_CONNECTIONS = 32             # wrk's connections kept in flight, for every variant
# The benchmark-only server blocks on the LB, by variant: the name each answers (SNI).
BENCH_HOSTS = {"reencrypting": "reencrypting.bench", "plain": "plain.bench", "no_reuse": "no-reuse.bench"}
BENCH_NAMES = tuple(BENCH_HOSTS.values())
LB_BENCH_CONF = "/etc/nginx/conf.d/zz-benchmark.conf"
APP_BENCH_CONF = "/etc/nginx/conf.d/zz-benchmark-plain.conf"

APP_PLAIN = """# benchmark only (benchmarks/local_stack.py); removed after the run
server {{
    listen {port};
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    location {api} {{ proxy_pass http://api_app; }}
    location / {{ proxy_pass http://web_app; }}
}}
"""

LB_VARIANTS = """# benchmark only (benchmarks/local_stack.py); removed after the run
upstream bench_plain {{
{plain}
{keepalive}
}}
upstream bench_tls {{
{tls}
{keepalive}
}}
upstream bench_tls_no_keepalive {{
{tls}
}}
server {{
    listen 443 ssl http2;
    server_name reencrypting.bench;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{
        limit_req zone=per_client burst={burst} nodelay;
        proxy_pass https://bench_tls;
        # The stack's own proxy_ssl_* lines, read from the LB.
{proxy_ssl}
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
    }}
}}
server {{
    listen 443 ssl http2;
    server_name plain.bench;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{
        limit_req zone=per_client burst={burst} nodelay;
        proxy_pass http://bench_plain;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
    }}
}}
server {{
    listen 443 ssl http2;
    server_name no-reuse.bench;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{
        limit_req zone=per_client burst={burst} nodelay;
        proxy_pass https://bench_tls_no_keepalive;
        # The stack's own proxy_ssl_* lines, read from the LB, with session reuse off.
{proxy_ssl_no_reuse}
        proxy_http_version 1.1;
        proxy_set_header Host $host;
    }}
}}
"""


def sh(p, key, script, check=True):
    out = droplet.exec(p.droplet(key).name, ["sh", "-ec", script], check=False, timeout=120)
    if check and out.returncode != 0:
        raise RuntimeError(f"{key}: {script}: {out.stdout}{out.stderr}")
    return out.stdout


def write(p, key, path, text):
    droplet.exec(p.droplet(key).name, ["sh", "-c", f"cat > {path}"], input=text, timeout=60)


def stack_lines(p, path: str, pattern: str) -> list[str]:
    """The LB's own directives matching `pattern` in one of its nginx files: a benchmark
    proxies as the stack does without a copy of its configuration."""
    return [line.strip() for line in sh(p, "lb", f"grep -E '^ *({pattern})' {path}").splitlines()]


def replacing(stack: list[str], directives: list[str]) -> list[str]:
    """The stack's directives, each of `directives` replacing the stack's of the same name
    (nginx refuses a directive twice in one block)."""
    names = {directive.split()[0] for directive in directives}
    return [line for line in stack if line.split()[0] not in names] + directives


class Variants:
    """The benchmark-only server blocks and firewall opening; `with` removes them all."""

    def __init__(self, p):
        self.p = p
        self.apps = [d for d in p.with_tag(conventions.APP_SERVER)]

    def __enter__(self):
        p = self.p
        for app in self.apps:
            write(p, app.key, APP_BENCH_CONF, APP_PLAIN.format(port=BENCH_PLAIN_PORT, api=conventions.API_PATH_PREFIX))
            sh(p, app.key, f"ufw insert 1 allow proto tcp from {p.lb.vpc_ip} to any port {BENCH_PLAIN_PORT}"
                           " >/dev/null && " + NGINX_APPLY)
        (lb_tag,) = [t for t in p.lb.tags if t.endswith(conventions.LOAD_BALANCER)]
        (app_tag,) = {t for a in self.apps for t in a.tags if t.endswith("-" + conventions.APP_SERVER)}
        bench_fw = firewall.Firewall("benchmark-plain", tags=(app_tag,),
                                     inbound=(firewall.Rule("tcp", str(BENCH_PLAIN_PORT), tags=(lb_tag,)),))
        firewall.apply([*p.firewalls, bench_fw], p.topology())
        # The stack's upstream keepalive lines and proxy_ssl_* lines, read from the LB.
        keepalive = stack_lines(p, conventions.LB_UPSTREAMS_FILE, "keepalive")
        proxy_ssl = stack_lines(p, common.NGINX_SITE, "proxy_ssl_")
        write(p, "lb", LB_BENCH_CONF, LB_VARIANTS.format(
            plain="\n".join(f"    server {a.vpc_ip}:{BENCH_PLAIN_PORT};" for a in self.apps),
            tls="\n".join(f"    server {a.vpc_ip}:{conventions.APP_TLS_PORT};" for a in self.apps),
            keepalive="\n".join(f"    {line}" for line in keepalive),
            cert=conventions.LB_PUBLIC_CERT_PATH, key=conventions.LB_PUBLIC_KEY_PATH,
            proxy_ssl="\n".join(f"        {line}" for line in proxy_ssl),
            proxy_ssl_no_reuse="\n".join(f"        {line}" for line in
                                          replacing(proxy_ssl, ["proxy_ssl_session_reuse off;"])),
            burst=BENCH_RATE * 2))
        sh(p, "lb", NGINX_APPLY)
        return self

    def __exit__(self, *exc):
        p = self.p
        sh(p, "lb", f"rm -f {LB_BENCH_CONF} && {NGINX_APPLY}", check=False)
        firewall.apply(p.firewalls, p.topology())
        for app in self.apps:
            sh(p, app.key, f"rm -f {APP_BENCH_CONF}; ufw delete allow proto tcp from {p.lb.vpc_ip} to any port "
                           f"{BENCH_PLAIN_PORT} >/dev/null; {NGINX_APPLY}",
               check=False)


def cpu_seconds(name: str, unit: str = "") -> float:
    """CPU time everything in the droplet has used so far (its cgroup v2 cpu.stat), or one
    of its systemd units (the unit's cgroup inside the droplet's)."""
    for top in droplet.cgroup_dirs(name):
        stat = (top / "payload" / "system.slice" / unit if unit else top) / "cpu.stat"
        if stat.is_file():
            return int(re.search(r"usage_usec (\d+)", stat.read_text()).group(1)) / 1e6
    raise RuntimeError(f"{name}: no cpu.stat in {droplet.cgroup_dirs(name)}")


def wrk(p, host: str, seconds: int = 15, connections: int = WRK_CONNECTIONS) -> dict:
    apps = [a.name for a in p.with_tag(conventions.APP_SERVER)]
    argv = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", f"https://{host}{PATH}"]
    nginx_before = cpu_seconds(p.lb.name, "nginx.service")
    before = {n: cpu_seconds(n) for n in [p.lb.name, *apps]}
    out = shell.run(cloud.internet_client(argv), check=False, timeout=seconds + 60).stdout
    spent = {n: cpu_seconds(n) - t for n, t in before.items()}
    lb_nginx = cpu_seconds(p.lb.name, "nginx.service") - nginx_before
    total = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out).groups()
    requests, secs = int(total[0]), float(total[1])
    if re.search(r"requests in [\d.]+ms", out):
        secs /= 1000
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non_2xx = int(errors.group(1)) if errors else 0
    socket_errors = re.search(r"Socket errors: (.*)", out)
    ok = requests - non_2xx
    per_10k = lambda cpu: round(cpu / ok * 10000, 3) if ok else None  # noqa: E731
    # Only answered requests count: a 429 or a 503 page is cheap and must not flatter it.
    return {"ok_rps": round(ok / secs, 1), "requests": requests, "non_2xx": non_2xx,
            "socket_errors": socket_errors.group(1) if socket_errors else "none",
            "lb_cpu_s_per_10k": per_10k(spent[p.lb.name]), "lb_nginx_cpu_s_per_10k": per_10k(lb_nginx),
            "apps_cpu_s_per_10k": per_10k(sum(spent[a] for a in apps))}


def interleaved(p, hosts: dict[str, str], rounds: int, seconds: int = 15,
                connections: int = WRK_CONNECTIONS) -> dict[str, list[dict]]:
    """wrk's figures for each variant (`hosts`: variant -> the name it answers), `rounds`
    times. Interleaved, each round starting one variant later, so drift on the shared
    machine and a variant's place in the round (the first measured ~4% dearer here,
    whichever it was) hit all alike."""
    figures: dict[str, list[dict]] = {variant: [] for variant in hosts}
    order = list(hosts)
    for i in range(rounds):
        for variant in order[i % len(order):] + order[:i % len(order)]:
            figures[variant].append(wrk(p, hosts[variant], seconds=seconds, connections=connections))
    return figures


def cost(p, rounds: int = 3) -> dict:
    """Each variant's CPU and throughput, median of `rounds`; the ratios are like for like
    (two minimal blocks that differ only in the upstream), and the stack's own block's
    headers, rate limit and log format priced apart."""
    with Variants(p):
        figures = interleaved(p, {"stack": p.domain, **BENCH_HOSTS}, rounds)
    med = {k: {f: statistics.median(r[f] for r in v)
               for f in ("ok_rps", "lb_cpu_s_per_10k", "lb_nginx_cpu_s_per_10k", "apps_cpu_s_per_10k")}
           for k, v in figures.items()}

    def ratio(figure: str, over: str, under: str, digits: int = 3) -> float:
        return round(med[over][figure] / med[under][figure], digits)

    return {"rounds": figures, "medians": med,
            "lb_nginx_cpu_reencrypting_over_plain": ratio("lb_nginx_cpu_s_per_10k", "reencrypting", "plain"),
            "lb_cpu_reencrypting_over_plain": ratio("lb_cpu_s_per_10k", "reencrypting", "plain"),
            "apps_cpu_reencrypting_over_plain": ratio("apps_cpu_s_per_10k", "reencrypting", "plain"),
            "rps_reencrypting_over_plain": ratio("ok_rps", "reencrypting", "plain"),
            "lb_nginx_cpu_stack_block_over_reencrypting": ratio("lb_nginx_cpu_s_per_10k", "stack", "reencrypting"),
            "rps_reuse_over_no_reuse": ratio("ok_rps", "reencrypting", "no_reuse", 2)}


def disruptions(p) -> dict:
    ca = str(acme.root_file())
    app = p.with_tag(conventions.APP_SERVER)[-1].name
    s = traffic.start(p.domain, p.lb.reserved_ips[0], ca, PATH, 20, 20)
    time.sleep(5)
    droplet.stop(app)
    stop = traffic.result(s)
    cloud.start(app)
    droplet.wait_booted(app, 180)
    three = stack.plan(STACK, {"appServerCount": 3})
    if {d.name: d.id for d in p.droplets} != {d.name: d.id for d in three.droplets if d.name in
                                               {k.name for k in p.droplets}}:
        raise SystemExit("the stack was replaced during the benchmark (another up/down on this machine): "
                         "figures from here on would not be a 2->3 scaling")
    s = traffic.start(p.domain, p.lb.reserved_ips[0], ca, PATH, 20, 120)
    t0 = time.monotonic()
    stack.up(three)
    grow_s = time.monotonic() - t0
    grow = traffic.result(s)
    s = traffic.start(p.domain, p.lb.reserved_ips[0], ca, PATH, 20, 60)
    t0 = time.monotonic()
    stack.up(stack.plan(STACK))
    shrink_s = time.monotonic() - t0
    shrink = traffic.result(s)
    brief = lambda c: {k: c[k] for k in ("requests", "failed", "by_status", "errors", "hosts")}  # noqa: E731
    return {"app_server_stop_20rps_20s": brief(stop), "scale_2_to_3": {**brief(grow), "up_s": round(grow_s)},
            "scale_3_to_2": {**brief(shrink), "up_s": round(shrink_s)}}


def healthy_after_up(p_maker, order: str = "engine") -> tuple[float, stack.UpResult]:
    """Seconds from planning to /healthz through the LB answering 200, and the `up`."""
    t0 = time.monotonic()
    p = p_maker()
    result = stack.up(p, order=order)
    assert stack.healthy(result), f"{order}: up did not finish cleanly"
    ca = acme.root_file()
    argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(ca), "--resolve",
            f"{p.domain}:443:{p.lb.reserved_ips[0]}", f"https://{p.domain}{conventions.HEALTH_PATH}"]
    while shell.run(cloud.internet_client(argv), check=False).stdout != "200":
        time.sleep(2)
    return time.monotonic() - t0, result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--boot", action="store_true", help="down, then up to healthy (image cached)")
    ap.add_argument("--image", action="store_true", help="a cold image build into a scratch directory")
    ap.add_argument("--cold", action="store_true", help="down, then up to healthy building the image too")
    ap.add_argument("--disruptions", action="store_true", help="failed requests: app-server stop, 2->3->2")
    args = ap.parse_args()
    with tenancy.alone("benchmarks/local_stack.py"):   # it changes the stack: not beside a test run
        return measure(args)


def measure(args) -> int:
    out: dict = {}
    if args.image:
        r = image.recipe()
        scratch = image.image_dir(r).with_name(image.image_dir(r).name + ".benchmark")
        t0 = time.monotonic()
        image._build(r, scratch)
        out["image_build_cold_s"] = round(time.monotonic() - t0)
        subprocess.run(["rm", "-rf", str(scratch)], check=False)
    if args.boot:
        stack.down_if_recorded(STACK)
        out["up_to_healthy_image_cached_s"] = round(healthy_after_up(lambda: stack.plan(STACK))[0])
    if args.cold:
        stack.down_if_recorded(STACK)
        # Set aside, not deleted: `up` builds its own, after which image.prune removes this
        # copy; a failed build puts it back.
        cached = image.image_dir(image.recipe())
        kept = cached.with_name(cached.name + ".set-aside")
        if cached.exists():
            cached.rename(kept)
        try:
            out["up_to_healthy_cold_s"] = round(healthy_after_up(lambda: stack.plan(STACK))[0])
        finally:
            if kept.exists() and not cached.exists():
                kept.rename(cached)
    show(out)
    with Reachable(stack.deployed(STACK), BENCH_NAMES) as p:
        show({"cost": cost(p)})
        show({"latency": [latency(p, rate) for rate in (50, 200, 1000)]})
    p = stack.deployed(STACK)
    if args.disruptions:
        show({"disruptions": disruptions(p)})
    return 0


def show(figures: dict) -> None:
    """Each part as soon as it is measured: a later part may fail on a shared machine."""
    if figures:
        print(json.dumps(figures, indent=1), flush=True)


if __name__ == "__main__":
    sys.exit(main())
