"""The LB's kept-alive TLS connections to the app servers: they carry as many requests as
the LB sends on them (LB_UPSTREAM_KEEPALIVE_REQUESTS; on the app server's rendered nginx),
not nginx's default 1000, after which each would cost a new handshake; and the LB's pool
keeps them while many requests are in flight (LB_UPSTREAM_KEEPALIVE_CONNECTIONS; on the
LB's rendered nginx), instead of closing them and paying a handshake per request."""

from __future__ import annotations

import concurrent.futures
import http.client
import http.server
import ssl
import threading
import time

from model import conventions as c

from lb_sandbox import APP_IPS, LoadBalancerUnderTest, app_server_cert, rendered_domain
from render_helpers_lb_app import app_server_nginx, app_site_tree, issue, settings


def test_a_kept_alive_connection_from_the_lb_carries_more_than_nginxs_default_1000_requests(tmp_path):
    """The LB's upstream connections each carry LB_UPSTREAM_KEEPALIVE_REQUESTS requests
    before a new TLS handshake; the app server's nginx must not close them sooner (its
    default is 1000): every answer on one connection, past 1000, keeps it open."""
    root, ca = app_site_tree(tmp_path)
    lb = issue(ca, tmp_path / "ca", "lb", dns=[c.droplet_name(settings().stack, c.LOAD_BALANCER)])
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "healthz").write_text("ok\n")
    context = ssl.create_default_context(cafile=str(ca.cert))
    context.check_hostname = False
    context.load_cert_chain(str(lb.cert), str(lb.key))
    with app_server_nginx(root, tmp_path / "api", (c.APP_TLS_PORT, c.APP_LOCAL_TLS_PORT)):
        connection = http.client.HTTPSConnection("127.0.0.1", c.APP_TLS_PORT, context=context, timeout=10)
        closed_after = None
        for n in range(1, 1501):
            connection.request("GET", c.HEALTH_PATH)
            response = connection.getresponse()
            response.read()
            assert response.status == 200, (n, response.status)
            if response.getheader("Connection", "").lower() == "close":
                closed_after = n
                break
        connection.close()
    assert c.LB_UPSTREAM_KEEPALIVE_REQUESTS > 1500
    assert closed_after is None, f"the app server's nginx closed the connection after {closed_after} requests"


class Listening(http.server.ThreadingHTTPServer):
    # The LB opens up to a burst's worth of connections at once: room for them all in the
    # listen queue (the default, 5, overflows and the kernel answers with SYN cookies).
    request_queue_size = 128


class SlowAppServer:
    """A stand-in app server that answers each request after ANSWER_SECONDS and counts the
    TLS connections it accepts: many requests in flight at the LB at once, and every
    upstream connection the LB opens seen."""

    ANSWER_SECONDS = 0.2

    def __init__(self, ip: str, pair):
        counted = self.accepted = []
        seconds = self.ANSWER_SECONDS

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                counted.append(self.client_address)
                super().setup()

            def do_GET(self):
                time.sleep(seconds)
                self.send_response(200)
                self.send_header("Content-Length", "3")
                self.end_headers()
                self.wfile.write(b"ok\n")

            def log_message(self, *args):
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(pair.cert), str(pair.key))
        self.server = Listening((ip, c.APP_TLS_PORT), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_the_lbs_upstream_pool_keeps_its_connections_with_many_requests_in_flight(tmp_path, ports_free, internal_ca,
                                                                                    started):
    """Traffic in bursts: `clients` clients, each from its own address (the LB's rate limit
    is per client) on its own kept-alive connection, send a request each at once, `rounds`
    times, so the LB has `clients` requests in flight, then as many upstream connections
    idle until the next burst. A pool that holds them all opens them once; a smaller one
    (32 before) closes its surplus after each burst and opens it again for the next, a TLS
    handshake at both ends for each."""
    clients, rounds = 96, 8
    assert clients < c.LB_UPSTREAM_KEEPALIVE_CONNECTIONS
    (tmp_path / "certs").mkdir()
    backends = [SlowAppServer(ip, app_server_cert(internal_ca, tmp_path, n, ip)) for n, ip in enumerate(APP_IPS, start=1)]
    started.extend(backends)
    lb = LoadBalancerUnderTest(tmp_path, internal_ca.cert, APP_IPS)
    started.append(lb)
    name = rendered_domain()
    burst = threading.Barrier(clients, timeout=60)

    def client(number: int) -> list[int]:
        connection = lb.connection(name, source=f"127.0.1.{number + 1}", timeout=30)
        statuses = []
        for _ in range(rounds):
            burst.wait()
            connection.request("GET", "/", headers={"Host": name})
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
        connection.close()
        return statuses

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        statuses = [s for each in pool.map(client, range(clients)) for s in each]
    assert statuses == [200] * clients * rounds
    opened = sum(len(backend.accepted) for backend in backends)
    # One per request of a burst, opened in the first. The margin: an LB worker whose share
    # of a later burst is larger than of the first opens the difference.
    assert opened <= clients * 1.5, f"{opened} upstream connections for {clients * rounds} requests, {clients} at a time"
