"""Helpers for the load balancer and app server tests: render a role's files, make
throwaway certificates, and run nginx on the rendered files at their real paths inside a
private mount namespace (tmpfs over the directories the configs name), so the host's own
/etc/nginx, /etc/platform and /etc/letsencrypt are never touched.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mockcloud  # noqa: E402 (conftest puts the repository on sys.path)
from cloudinit import common
from localcloud import shell
from model import conventions

def settings(engines: list[str] | None = None):
    """The staging stack's settings, optionally with another set of engines."""
    overrides = {} if engines is None else {"engines": engines}
    return mockcloud.stack_settings("staging", **overrides)


ENGINE_CASES = {"all-engines": None, "no-engines": []}


def require(program: str) -> str:
    """The program's path; a missing checker fails the test (a broken CI, not a pass)."""
    path = shutil.which(program) or next(
        (p for p in (f"/usr/sbin/{program}", f"/sbin/{program}") if os.access(p, os.X_OK)), None
    )
    assert path, f"{program} is not installed: the CI must install it (see the README's test section)"
    return path


def require_root() -> None:
    assert os.geteuid() == 0, "this check runs nginx in a mount namespace and needs root"


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)


# --- certificates -------------------------------------------------------------------


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


def make_ca(directory: Path, name: str) -> CertPair:
    directory.mkdir(parents=True, exist_ok=True)
    pair = CertPair(directory / f"{name}.crt", directory / f"{name}.key")
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
        "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", str(pair.key), "-out", str(pair.cert),
    )
    return pair


def issue(ca: CertPair, directory: Path, name: str, *, dns: list[str], ips: list[str] = ()) -> CertPair:
    """A server certificate as the program's InternalCA issues it (these SANs)."""
    pair = CertPair(directory / f"{name}.crt", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    sans = ",".join([f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips])
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-subj", f"/CN={dns[0]}", "-keyout", str(pair.key), "-out", str(csr),
    )
    extensions = directory / f"{name}.ext"
    extensions.write_text(
        f"subjectAltName={sans}\nextendedKeyUsage=serverAuth,clientAuth\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
    )
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-CAcreateserial", "-days", "2", "-extfile", str(extensions), "-out", str(pair.cert),
    )
    return pair


def self_signed(directory: Path, name: str, cn: str) -> CertPair:
    directory.mkdir(parents=True, exist_ok=True)
    pair = CertPair(directory / f"{name}.crt", directory / f"{name}.key")
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
        "-subj", f"/CN={cn}", "-addext", f"subjectAltName=DNS:{cn}",
        "-keyout", str(pair.key), "-out", str(pair.cert),
    )
    return pair


def _openssl(*args: str) -> None:
    result = run([require("openssl"), *args])
    assert result.returncode == 0, result.stderr


# --- nginx in a mount namespace -------------------------------------------------------

# Seen through an overlay (host below, scratch on top): the rendered files appear at their
# real paths, and nothing reaches the host's own files.
OVERLAID = ("/etc", "/var", "/srv", "/usr/local")
# Emptied, as provisioning does with the default site; conf.d holds only ours.
EMPTIED = ("/etc/nginx/sites-enabled", "/etc/nginx/conf.d")


def nginx_tree(root: Path, files: dict[str, str | bytes | Path]) -> Path:
    """A scratch upper layer holding, by real path, the files the test puts in place."""
    for directory in OVERLAID:
        (root / "upper" / directory.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (root / "work" / directory.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for directory in EMPTIED:
        upper = root / "upper" / directory.lstrip("/")
        upper.mkdir(parents=True, exist_ok=True)
        os.setxattr(upper, "trusted.overlay.opaque", b"y")
    for path, content in files.items():
        put(root, path, content)
    return root


def put(root: Path, path: str, content: str | bytes | Path) -> None:
    """Write a file into the scratch layer (seen at `path` inside the namespace)."""
    target = root / "upper" / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, Path):
        content = content.read_bytes()
    if isinstance(content, str):
        content = content.encode()
    target.write_bytes(content)


def in_namespace(root: Path, command: list[str]) -> list[str]:
    """argv that runs `command` in a private mount namespace over the scratch layer."""
    require_root()
    mounts = [
        f"mount -t overlay overlay -o lowerdir={d},upperdir={root / 'upper' / d.lstrip('/')},"
        f"workdir={root / 'work' / d.lstrip('/')} {d}"
        for d in OVERLAID
    ]
    mounts.append("mount -t tmpfs tmpfs /run")
    script = "set -e; " + "; ".join(mounts) + f"; exec {shlex.join(command)}"
    return [require("unshare"), "--mount", "--propagation", "private", "sh", "-c", script]


SYSTEMD_OPEN_FILES = 1024   # a service's soft limit of open files (systemd's default)


def droplet_nginx(root: Path) -> list[str]:
    """argv of nginx over the tree, in the foreground, with the open files systemd starts it
    with on a droplet (the droplets' nginx.conf raises them for its workers)."""
    return in_namespace(root, [require("prlimit"), f"--nofile={SYSTEMD_OPEN_FILES}:",
                               require("nginx"), "-g", "daemon off;"])


APP_SITE = common.NGINX_SITE


def app_site_tree(tmp_path: Path, files: dict[str, str] | None = None) -> tuple[Path, CertPair]:
    """The app server's rendered site (the staging stack's) in a tree for nginx, with a
    server certificate for its names and 127.0.0.1 from a throwaway CA, and `files` beside
    it; the tree's root and the CA (whose directory is tmp_path/ca, to issue more)."""
    import cloudinit
    stack = settings().stack
    ca = make_ca(tmp_path / "ca", "ca")
    server = issue(ca, tmp_path / "ca", "server", dns=[f"{stack}-app-1", conventions.app_pool_tls_name(stack)],
                   ips=["127.0.0.1"])
    rendered = cloudinit.rendered_files(conventions.APP_SERVER, settings())
    root = nginx_tree(tmp_path / "ns", {
        common.NGINX_MAIN: rendered[common.NGINX_MAIN], APP_SITE: rendered[APP_SITE],
        conventions.SERVER_CERT_PATH: server.cert, conventions.SERVER_KEY_PATH: server.key,
        conventions.CA_CERT_PATH: ca.cert, **(files or {}),
    })
    return root, ca


@contextmanager
def app_server_nginx(root: Path, api_files: Path, ports: tuple[int, ...]):
    """nginx on the tree in its namespace, with the API app's stand-in (a file server of
    `api_files` on the API's port); both stopped after, whatever happened."""
    api = subprocess.Popen(["python3", "-m", "http.server", str(conventions.API_APP_PORT), "--bind", "127.0.0.1"],
                           cwd=api_files, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    nginx = subprocess.Popen(droplet_nginx(root),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for port in ports:
            wait_for_port("127.0.0.1", port, nginx)
        wait_for_port("127.0.0.1", conventions.API_APP_PORT, api)
        yield
    finally:
        nginx.terminate()
        api.terminate()
        nginx.wait(timeout=10)
        api.wait(timeout=10)


def wait_for_port(host: str, port: int, process: subprocess.Popen, seconds: float = 10) -> None:
    """Until something accepts connections on host:port; `process` (the one that should
    listen there) exiting first fails at once, with what it wrote to its stderr pipe."""
    def listening() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"exited early: {process.stderr.read().decode() if process.stderr else ''}")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return True
        except OSError:
            return False
    shell.wait_until(listening, seconds, f"nothing listens on {host}:{port}", every=0.05)


def nginx_check(root: Path) -> subprocess.CompletedProcess:
    """`nginx -t` on the tree's /etc/nginx/nginx.conf, at the real paths."""
    return run(in_namespace(root, [require("nginx"), "-t", "-c", "/etc/nginx/nginx.conf"]))


def conventions_paths() -> dict[str, str]:
    return {name: value for name, value in vars(conventions).items() if isinstance(value, str)}
