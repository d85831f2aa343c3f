"""The LB with domainAliases: nginx accepts the site with them, and the LB (run in a
private mount namespace, on the host's ports 80 and 443) answers each alias's ACME
challenge, then redirects it to the domain or serves the app, as redirectAliases says."""

from __future__ import annotations

import http.client

import pytest

import cloudinit
import mockcloud
from model import conventions as c

from render_helpers_lb_app import make_ca, nginx_check, put
from lb_sandbox import APP_IPS, Backend, LoadBalancerUnderTest, app_server_cert, initial_upstreams, lb_tree

DOMAIN = mockcloud.stack_settings("staging").domain
ALIASES = [f"www.{DOMAIN}", "staging.example.org"]


def lb_files(redirect: bool) -> dict[str, str]:
    s = mockcloud.stack_settings("staging", domainAliases=ALIASES, redirectAliases=redirect)
    return cloudinit.rendered_files(c.LOAD_BALANCER, s)


@pytest.mark.parametrize("redirect", [True, False], ids=["redirected", "served"])
def test_nginx_accepts_the_site_with_aliases(tmp_path, redirect):
    ca = make_ca(tmp_path / "ca", "ca")
    result = nginx_check(lb_tree(tmp_path, lb_files(redirect), initial_upstreams(), ca.cert))
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr and "conflicting server name" not in result.stderr, result.stderr


def test_the_longest_names_dns_allows_pass_nginx_and_get_the_temporary_certificate(tmp_path):
    """A DNS name may hold 253 characters: nginx's table of server names (64-byte buckets
    by default, 46 characters) and the certificate nginx starts with (a subject's CN holds
    64) take it."""
    from cloudinit import common
    from render_helpers_lb_app import in_namespace, run
    longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 49, "example.com"])
    assert len(longest) == 253
    s = mockcloud.stack_settings("staging", domain=longest, domainAliases=[f"{'e' * 61}.{longest[64:]}"])
    rendered = cloudinit.rendered_files(c.LOAD_BALANCER, s)
    root = lb_tree(tmp_path, rendered, initial_upstreams(), make_ca(tmp_path / "ca", "ca").cert)
    library, role = tmp_path / "common.sh", tmp_path / "role.sh"
    library.write_text(rendered[common.LIBRARY])
    role.write_text(rendered[common.ROLE_STEPS])
    script = (f"set -e; . {library}; . {role}; DOMAIN={longest}; rm {c.LB_PUBLIC_CERT_PATH} {c.LB_PUBLIC_KEY_PATH}; "
              f"ensure_temporary_certificate; openssl x509 -noout -checkhost $DOMAIN -in {c.LB_PUBLIC_CERT_PATH}; "
              "nginx -t")
    result = run(in_namespace(root, ["bash", "-c", script]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"changed: temporary self-signed certificate for {longest}" in result.stdout, result.stdout
    assert f"Hostname {longest} does match certificate" in result.stdout, result.stdout
    assert "syntax is ok" in result.stderr, result.stderr


def plain_get(host: str, path: str) -> tuple[int, str | None, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", c.HTTP_PORT, timeout=5)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, response.getheader("Location"), response.read()
    finally:
        connection.close()


def lb_with_one_app_server(tmp_path, ca, started, redirect: bool) -> LoadBalancerUnderTest:
    (tmp_path / "certs").mkdir()
    started.append(Backend(tmp_path, "app-1", APP_IPS[0], app_server_cert(ca, tmp_path, 1, APP_IPS[0])))
    lb = LoadBalancerUnderTest(tmp_path, ca.cert, APP_IPS[:1], files=lb_files(redirect))
    started.append(lb)
    return lb


def test_aliases_answer_acme_challenges_and_redirect_to_the_domain(tmp_path, ports_free, internal_ca, started):
    lb = lb_with_one_app_server(tmp_path, internal_ca, started, redirect=True)
    put(lb.root, f"{c.ACME_WEBROOT}/.well-known/acme-challenge/token123", "token123.thumbprint")
    for alias in ALIASES:
        assert plain_get(alias, "/.well-known/acme-challenge/token123") == (200, None, b"token123.thumbprint")
        assert plain_get(alias, "/x?y=1")[:2] == (301, f"https://{alias}/x?y=1")
        status, headers, _ = lb.get("/x?y=1", name=alias)
        assert (status, headers["Location"]) == (301, f"https://{DOMAIN}/x?y=1"), headers
        assert "X-Backend" not in headers and "max-age=63072000" in headers["Strict-Transport-Security"]
    status, headers, _ = lb.get("/x?y=1")
    assert status == 200 and headers["X-Backend"] == "app-1", headers
    # Any other name is still dropped.
    with pytest.raises(http.client.RemoteDisconnected):
        plain_get("not-ours.example.net", "/")


def test_aliases_serve_the_app_when_not_redirected(tmp_path, ports_free, internal_ca, started):
    lb = lb_with_one_app_server(tmp_path, internal_ca, started, redirect=False)
    for name in [DOMAIN, *ALIASES]:
        status, headers, _ = lb.get("/x?y=1", name=name)
        assert status == 200 and headers["X-Backend"] == "app-1", (name, headers)
