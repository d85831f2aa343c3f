"""The egress proxy, run for real on loopback with a tiny origin server behind it."""

import http.client
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from localcloud import proxy


class Origin(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"origin saw {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture
def servers():
    origin = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    port = origin.server_address[1]
    allow = proxy.Allowlist(frozenset({"127.0.0.1"}), frozenset({port}))
    handler = type("H", (proxy.ProxyHandler,), {"allowlist": allow, "log_message": lambda *a: None})
    prox = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    for s in (origin, prox):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield prox.server_address[1], port
    for s in (origin, prox):
        s.shutdown()
        s.server_close()


def via_proxy(proxy_port, method, target):
    conn = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=5)
    conn.request(method, target)
    resp = conn.getresponse()
    return resp.status, resp.read()


def test_allowlist_matches_host_and_port():
    allow = proxy.Allowlist(frozenset({"mirror.test"}))
    assert allow.allows("mirror.test", 80) and allow.allows("MIRROR.test.", 443)
    assert not allow.allows("mirror.test", 22)
    assert not allow.allows("evil.test", 80)
    assert not allow.allows(None, 80)


def test_plain_http_to_allowed_host_is_forwarded(servers):
    proxy_port, origin_port = servers
    status, body = via_proxy(proxy_port, "GET", f"http://127.0.0.1:{origin_port}/dists/Release?x=1")
    assert status == 200 and body == b"origin saw /dists/Release?x=1"


def test_other_hosts_and_ports_get_403(servers):
    proxy_port, origin_port = servers
    assert via_proxy(proxy_port, "GET", f"http://not-allowed.invalid:{origin_port}/")[0] == 403
    assert via_proxy(proxy_port, "GET", "http://127.0.0.1:1/")[0] == 403
    assert via_proxy(proxy_port, "CONNECT", "not-allowed.invalid:443")[0] == 403


def test_connect_tunnels_bytes_to_allowed_host(servers):
    proxy_port, origin_port = servers
    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=5)
    s.sendall(f"CONNECT 127.0.0.1:{origin_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert s.recv(1024).startswith(b"HTTP/1.1 200")
    s.sendall(b"GET /through-tunnel HTTP/1.0\r\n\r\n")
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    assert data.endswith(b"origin saw /through-tunnel")


def test_proxy_command_lists_allowed_hosts():
    cmd = proxy.proxy_command(["b.test", "a.test"])
    assert cmd[1:3] == ["-m", "localcloud.proxy"]
    assert cmd[-4:] == ["--allow", "a.test", "--allow", "b.test"]
