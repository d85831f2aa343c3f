"""The droplets' package caches: every .deb and npm package a droplet installs is fetched
from its source once and kept under the local cloud's state, so the next `up` (and the
next droplet of the same `up`) downloads nothing it already has.

    droplet apt ──http──▶ apt-cacher-ng 198.51.100.1:3142 ──▶ the host's apt mirrors
    droplet npm ──http──▶ verdaccio     198.51.100.1:4873 ──▶ the host's npm registry

Why these two: apt-cacher-ng is Debian's own caching proxy for package archives (it
knows which files of a repository change and which never do); verdaccio is the npm
registry cache most teams run. Both are packaged and maintained, and a squid in front of
npm's TLS would have to intercept it. They keep today's allow-list: apt-cacher-ng serves
only the repositories the host's apt sources name (ForceManaged), verdaccio only the
host's npm registry (its one uplink). Anything else still goes through the egress proxy
(localcloud/proxy.py), which denies hosts the host does not use.

Measured on a droplet here, 250 small .debs: 46 s through the egress proxy, 1.1 s through
apt-cacher-ng cold and 0.3 s warm; `npm install pm2`: 108 s through the proxy, 8 s
through verdaccio cold and 6 s warm. Real droplets reach their mirrors directly.
"""

from __future__ import annotations

import json
import shutil
from urllib.parse import urlsplit

from . import config, daemon, sources

CACHE_DIR = config.STATE_ROOT / "package-cache"   # kept by teardown: the point of a cache
APT_PORT = 3142
NPM_PORT = 4873
APT_PROXY_URL = f"http://{config.HOST_PUBLIC_IP}:{APT_PORT}"
NPM_REGISTRY_URL = f"http://{config.HOST_PUBLIC_IP}:{NPM_PORT}/"

APT_DIR = CACHE_DIR / "apt"
NPM_DIR = CACHE_DIR / "npm"
APT = daemon.Daemon(APT_DIR / "pid", APT_DIR / "daemon.log", f"-c\x00{APT_DIR / 'conf'}".encode())
# verdaccio writes its title over its command line: its marker is in its environment.
NPM_ENV = {"LOCALCLOUD_PACKAGE_CACHE": "npm"}
NPM = daemon.Daemon(NPM_DIR / "pid", NPM_DIR / "daemon.log", "".join(f"{k}={v}\x00" for k, v in NPM_ENV.items()).encode())
DAEMONS = (APT, NPM)


def http_apt_sources() -> list[str]:
    """The host's plain-http apt repositories (what apt-cacher-ng may fetch from)."""
    uris = [s.uri.rstrip("/") for s in sources.apt_sources() if urlsplit(s.uri).scheme == "http"]
    return sorted(set(uris))


def apt_cacher_conf(repositories: list[str]) -> str:
    """acng.conf: only the given repositories are served (ForceManaged), each fetched from
    itself; the cache and logs under CACHE_DIR."""
    lines = [
        f"CacheDir: {APT_DIR / 'cache'}",
        f"LogDir: {APT_DIR / 'log'}",
        f"PidFile: {APT_DIR / 'acng.pid'}",
        f"SocketPath: {APT_DIR / 'socket'}",
        f"BindAddress: {config.HOST_PUBLIC_IP}",
        f"Port: {APT_PORT}",
        "ForeGround: 1",
        # A repository not remapped below is refused: the same hosts as the egress proxy.
        "ForceManaged: 1",
        # Keep every package version (expiry would throw away what the next up needs).
        "ExThreshold: 0",
    ]
    lines += [f"Remap-source{i}: {uri} ; {uri}" for i, uri in enumerate(repositories)]
    return "\n".join(lines) + "\n"


def verdaccio_config(registry: str) -> str:
    """verdaccio's config (YAML, written as JSON, which YAML reads): one uplink, the host's
    registry; every package proxied and kept; metadata trusted for a day, so a warm `up`
    asks the registry nothing."""
    return json.dumps({
        "storage": str(NPM_DIR / "storage"),
        "uplinks": {"registry": {"url": registry, "maxage": "1d", "cache": True, "timeout": "60s"}},
        "packages": {"**": {"access": "$all", "publish": "$authenticated", "proxy": "registry"}},
        "listen": f"{config.HOST_PUBLIC_IP}:{NPM_PORT}",
        "log": {"type": "stdout", "format": "pretty", "level": "warn"},
    }, indent=1) + "\n"


def apt_command() -> list[str]:
    return [shutil.which("apt-cacher-ng", path="/usr/sbin:/usr/bin") or "apt-cacher-ng", "-c", str(APT_DIR / "conf")]


def npm_command() -> list[str]:
    return [shutil.which("verdaccio") or "verdaccio", "--config", str(NPM_DIR / "config.yaml")]


def ensure_running() -> None:
    """Start both caches unless they run; they listen on the host link of the network."""
    registry = sources.npm_registry()
    if not registry:
        raise RuntimeError("the host's npm has no registry configured (npm config get registry)")
    (APT_DIR / "conf").mkdir(parents=True, exist_ok=True)
    (APT_DIR / "conf" / "acng.conf").write_text(apt_cacher_conf(http_apt_sources()))
    NPM_DIR.mkdir(parents=True, exist_ok=True)
    (NPM_DIR / "config.yaml").write_text(verdaccio_config(registry))
    # verdaccio is a Node.js program: it trusts the CAs the host's npm is told to trust.
    cafile = sources.npm_registry_cafile()
    npm_env = {**NPM_ENV, **({"NODE_EXTRA_CA_CERTS": cafile} if cafile else {})}
    starts = [(APT, apt_command(), {}, APT_PORT), (NPM, npm_command(), npm_env, NPM_PORT)]
    for service, argv, env, port in starts:
        if not service.running_pid():
            proc = service.start(argv, env, cwd=service.pid_file.parent)
            service.wait_listening(proc, str(config.HOST_PUBLIC_IP), port, f"package cache on port {port}", every=0.2)


def stop() -> None:
    for service in DAEMONS:
        service.stop()
