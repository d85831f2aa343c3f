"""The droplets' nginx.conf (common/nginx.conf, the LB's and the app servers'): a worker
holds NGINX_WORKER_CONNECTIONS, not the distribution's 768. On the LB's rendered nginx,
with more requests arriving at once than the distribution's workers would hold, a new
client is still answered. (Idle connections would not show it: a full worker closes
those to make room. A request it is reading or answering holds its connection.)"""

from __future__ import annotations

import http.client
import os
import resource
import socket
from contextlib import ExitStack, closing

import cloudinit
from cloudinit import common
from model import conventions as c

from lb_sandbox import APP_IPS, LoadBalancerUnderTest, rendered_domain
from render_helpers_lb_app import SYSTEMD_OPEN_FILES, settings

DISTRIBUTION_WORKER_CONNECTIONS = 768


def test_the_lb_and_the_app_servers_run_one_nginx_conf():
    lb, app = (cloudinit.rendered_files(role, settings())[common.NGINX_MAIN] for role in (c.LOAD_BALANCER, c.APP_SERVER))
    assert lb == app
    assert f"worker_connections {c.NGINX_WORKER_CONNECTIONS};" in lb


def test_a_new_client_is_answered_while_more_requests_arrive_than_the_distributions_workers_hold(
        tmp_path, ports_free, internal_ca, started):
    # Per worker, more than the distribution's connections and than the open files systemd
    # gives a service (the sandbox starts nginx with those, as a droplet does), and well
    # inside ours (the kernel need not spread them evenly over the workers).
    per_worker = SYSTEMD_OPEN_FILES + 100
    assert DISTRIBUTION_WORKER_CONNECTIONS < per_worker < c.NGINX_WORKER_CONNECTIONS / 4
    held = per_worker * len(os.sched_getaffinity(0))    # nginx's `worker_processes auto`: one per CPU
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lb = LoadBalancerUnderTest(tmp_path, internal_ca.cert, APP_IPS)
    started.append(lb)
    # Each a request begun and not finished, as from a slow client: nginx reads its headers
    # until client_header_timeout (60 s).
    begun = f"GET / HTTP/1.1\r\nHost: {rendered_domain()}\r\n".encode()
    with ExitStack() as slow_clients:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, held + 256), hard))
        slow_clients.callback(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        try:
            for _ in range(held):
                slow_clients.enter_context(socket.create_connection(("127.0.0.1", c.HTTP_PORT), timeout=5)).sendall(begun)
            # On port 80 the LB answers by itself (a redirect): no app server is involved.
            probe = slow_clients.enter_context(closing(http.client.HTTPConnection("127.0.0.1", c.HTTP_PORT, timeout=5)))
            probe.request("GET", "/", headers={"Host": rendered_domain()})
            status = probe.getresponse().status
        except OSError as error:   # refused, reset or timed out
            raise AssertionError(f"with {held} requests begun the LB's workers are full: {error!r}") from None
    assert status == 301
