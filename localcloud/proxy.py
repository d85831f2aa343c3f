"""A small forward proxy for the droplets: the only way out of the emulated network.

It lets through only the hosts the host itself downloads packages from (its apt
sources, npm registry and pip indexes, read at run time) and answers 403 to anything
else. Plain http is forwarded request by request (apt); https goes through CONNECT
tunnels (npm), so TLS stays end to end between the droplet and the registry.
"""

from __future__ import annotations

import argparse
import http.client
import select
import socket
import sys
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from . import config, daemon, sources

ALLOWED_PORTS = frozenset({80, 443})
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization",
              "te", "trailer", "transfer-encoding", "upgrade"}
PIDFILE = config.STATE_ROOT / "proxy.pid"


@dataclass(frozen=True)
class Allowlist:
    hosts: frozenset[str]
    ports: frozenset[int] = ALLOWED_PORTS

    def allows(self, host: str | None, port: int) -> bool:
        return bool(host) and host.lower().rstrip(".") in self.hosts and port in self.ports


def allowlist_from_host() -> Allowlist:
    return Allowlist(frozenset(h.lower() for h in sources.allowed_hosts()))


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    allowlist: Allowlist = Allowlist(frozenset())
    timeout = 120

    def log_message(self, fmt, *args):
        sys.stderr.write(f"{time.strftime('%H:%M:%S')} {self.client_address[0]} {fmt % args}\n")

    def deny(self, what: str) -> None:
        self.log_message("DENY %s", what)
        body = f"localcloud proxy: {what} is not an allowed host\n".encode()
        self.send_response(403)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_CONNECT(self):
        host, _, port = self.path.rpartition(":")
        if not self.allowlist.allows(host, int(port or 0)):
            return self.deny(self.path)
        try:
            upstream = socket.create_connection((host, int(port)), timeout=30)
        except OSError as e:
            self.send_error(502, f"cannot reach {self.path}: {e}")
            return
        self.log_message("ALLOW CONNECT %s", self.path)
        self.send_response(200, "Connection established")
        self.end_headers()
        self.close_connection = True
        pump(self.connection, upstream)

    def forward(self):
        url = urlsplit(self.path)
        port = url.port or 80
        if url.scheme != "http" or not self.allowlist.allows(url.hostname, port):
            return self.deny(f"{url.hostname}:{port}")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        path = url.path or "/"
        if url.query:
            path += "?" + url.query
        try:
            conn = http.client.HTTPConnection(url.hostname, port, timeout=60)
            conn.request(self.command, path, body=body, headers=headers)
            resp = conn.getresponse()
        except OSError as e:
            self.send_error(502, f"cannot reach {url.hostname}: {e}")
            return
        self.log_message("ALLOW %s %s %s", self.command, self.path, resp.status)
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in HOP_BY_HOP:
                self.send_header(k, v)
        if resp.getheader("Content-Length") is None:
            self.close_connection = True      # the body ends when we close
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            while chunk := resp.read(65536):
                self.wfile.write(chunk)
        conn.close()

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_OPTIONS = forward


def pump(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    socks = [a, b]
    try:
        while True:
            ready, _, _ = select.select(socks, [], [], 300)
            if not ready:
                return
            for s in ready:
                data = s.recv(65536)
                if not data:
                    return
                (b if s is a else a).sendall(data)
    except OSError:
        return
    finally:
        b.close()


def serve(listen: str, port: int, allowlist: Allowlist) -> None:
    handler = type("Handler", (ProxyHandler,), {"allowlist": allowlist})
    server = ThreadingHTTPServer((listen, port), handler)
    server.daemon_threads = True
    sys.stderr.write(f"localcloud proxy on {listen}:{port} allowing {sorted(allowlist.hosts)}\n")
    sys.stderr.flush()
    server.serve_forever()


# --- running it in the background -------------------------------------------

def proxy_command(hosts: list[str]) -> list[str]:
    return [sys.executable, "-m", "localcloud.proxy", "--listen", str(config.HOST_PUBLIC_IP),
            "--port", str(config.PROXY_PORT), *[a for h in sorted(hosts) for a in ("--allow", h)]]


DAEMON = daemon.Daemon(PIDFILE, config.PROXY_LOG, b"\x00-m\x00localcloud.proxy\x00")


def running_pid() -> int | None:
    return DAEMON.running_pid()


def ensure_running() -> int:
    """Start the proxy unless it runs; it needs the host link of the network."""
    pid = running_pid()
    if pid:
        return pid
    hosts = sorted(allowlist_from_host().hosts)
    env = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = DAEMON.start(proxy_command(hosts), env)
    DAEMON.wait_listening(proc, str(config.HOST_PUBLIC_IP), config.PROXY_PORT, "proxy", timeout=10)
    return proc.pid

def stop() -> None:
    DAEMON.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="localcloud egress proxy")
    p.add_argument("--listen", default=str(config.HOST_PUBLIC_IP))
    p.add_argument("--port", type=int, default=config.PROXY_PORT)
    p.add_argument("--allow", action="append", help="allowed host (default: read from the host)")
    args = p.parse_args(argv)
    allowlist = Allowlist(frozenset(h.lower() for h in args.allow)) if args.allow else allowlist_from_host()
    serve(args.listen, args.port, allowlist)


if __name__ == "__main__":
    main()
