"""Checks of a booted stack from outside, as its users reach it: the basic path from the
internet client (HTTPS, the redirect, the certificate, which ports answer)."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

from . import acme, cloud, droplet, shell
from .plan import Plan

def curl_argv(url: str, domain: str, address: str, port: int, *extra: str) -> list[str]:
    return ["curl", "--silent", "--show-error", "--max-time", "15", "--resolve",
            f"{domain}:{port}:{address}", *extra, url]


PROBE = ("import socket,sys\n"
         "s=socket.socket(); s.settimeout(float(sys.argv[3]))\n"
         "try: s.connect((sys.argv[1], int(sys.argv[2]))); print('open')\n"
         "except ConnectionRefusedError: print('refused')\n"
         "except OSError: print('filtered')\n")


def probe_argv(address: str, port: int, timeout: float = 3) -> list[str]:
    return ["python3", "-c", PROBE, address, str(port), str(timeout)]


def from_internet(argv: list[str]) -> subprocess.CompletedProcess:
    return shell.run(cloud.internet_client(argv), check=False, timeout=120)


def port_state_from_internet(address: str, port: int) -> str:
    return from_internet(probe_argv(address, port)).stdout.strip()


def port_state_from(name: str, address: str, port: int) -> str:
    return droplet.exec(name, probe_argv(address, port), check=False, timeout=60).stdout.strip()


def served_by(html_or_headers: str) -> str:
    for line in html_or_headers.splitlines():
        if line.lower().startswith("x-served-by:"):
            return line.split(":", 1)[1].strip()
    return ""


def check(p: Plan) -> dict:
    """The basic path, from the internet client; returns what was seen, prints it."""
    from model import conventions
    ip = p.lb.reserved_ips[0]
    seen: dict = {}
    https = from_internet(curl_argv(f"https://{p.domain}/", p.domain, ip, 443, "-k", "-D", "-"))
    seen["https_status"] = https.stdout.split("\n", 1)[0].strip()
    seen["https_body_has_served_by"] = "Served by" in https.stdout
    seen["https_served_by"] = [
        served_by(from_internet(curl_argv(f"https://{p.domain}/", p.domain, ip, 443, "-k", "-D", "-",
                                          "-o", "/dev/null")).stdout)
        for _ in range(2 * len(p.with_tag(conventions.APP_SERVER)))
    ]
    http = from_internet(curl_argv(f"http://{p.domain}/", p.domain, ip, 80, "-o", "/dev/null",
                                   "-w", "%{http_code} %{redirect_url}"))
    seen["http"] = http.stdout.strip()
    seen["certificate"] = acme.certificate_check(p.domain, ip)
    lb_ports = (conventions.SSH_PORT, conventions.HTTP_PORT, conventions.HTTPS_PORT,
                conventions.APP_TLS_PORT, *(e.tls_port for e in conventions.ENGINES.values()))
    (datastore,) = p.with_tag(conventions.DATASTORE)
    store_ports = (conventions.SSH_PORT, *(e.tls_port for e in conventions.ENGINES.values()),
                   *(e.local_port for e in conventions.ENGINES.values() if e.local_port))
    # Probes of filtered ports wait out their timeout: run them side by side.
    with ThreadPoolExecutor(max_workers=8) as pool:
        lb_states = pool.map(lambda port: port_state_from_internet(ip, port), lb_ports)
        store_states = pool.map(lambda port: port_state_from(p.lb.name, datastore.vpc_ip, port), store_ports)
        seen["lb_ports_from_internet"] = dict(zip(lb_ports, lb_states))
        seen["datastore_ports_from_lb"] = dict(zip(store_ports, store_states))
    for key, value in seen.items():
        print(f"[localcloud] check {key}: {value}", flush=True)
    return seen


def check_problems(seen: dict, p: Plan) -> list[str]:
    """What the basic path lacks, from what `check` saw; [] when it all works."""
    from model import conventions
    problems = []
    if not seen["https_status"].startswith("HTTP/") or " 200" not in seen["https_status"]:
        problems.append(f"HTTPS to {p.domain}: {seen['https_status']!r}")
    apps = sorted(d.name for d in p.with_tag(conventions.APP_SERVER))
    if sorted(set(seen["https_served_by"])) != apps:
        problems.append(f"served by {seen['https_served_by']}, expected every one of {apps}")
    code, _, location = seen["http"].partition(" ")
    if code not in ("301", "308") or not location.startswith(f"https://{p.domain}"):
        problems.append(f"HTTP does not redirect to HTTPS: {seen['http']!r}")
    if not seen["certificate"].get("verified"):
        problems.append(f"certificate not verified against the ACME server's root: {seen['certificate']}")
    public = (conventions.HTTP_PORT, conventions.HTTPS_PORT)
    for port, st in seen["lb_ports_from_internet"].items():
        if (st == "open") != (port in public):
            problems.append(f"LB port {port} from the internet client: {st}")
    for port, st in seen["datastore_ports_from_lb"].items():
        if (st == "open") != (port == conventions.SSH_PORT):
            problems.append(f"datastore port {port} from the LB: {st}")
    return problems


def check_passed(seen: dict, p: Plan) -> bool:
    problems = check_problems(seen, p)
    for problem in problems:
        print(f"[localcloud] FAILED {problem}", flush=True)
    print(f"[localcloud] check: {'passed' if not problems else f'{len(problems)} problem(s)'}", flush=True)
    return not problems
