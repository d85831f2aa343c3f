"""The LB's kept-alive TLS connections to an app server, on the app server's rendered
nginx: they carry as many requests as the LB sends on them (LB_UPSTREAM_KEEPALIVE_REQUESTS),
not nginx's default 1000, after which each would cost a new handshake."""

from __future__ import annotations

import http.client
import ssl

from model import conventions as c

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
