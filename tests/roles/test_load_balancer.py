"""The load balancer's files, checked by the programs that read them, and its nginx
really re-encrypting to app servers it verifies (run in a private mount namespace)."""

from __future__ import annotations

import http.client
import json
import ssl
import time
from pathlib import Path

import pytest

import cloudinit
import mockcloud
from cloudinit import common, load_balancer
from model import conventions as c

from lb_sandbox import (
    APP_IPS, Backend, LoadBalancerUnderTest, app_server_cert, initial_upstreams, lb_cert, lb_files, lb_tree,
    rendered_domain,
)
from render_helpers_lb_app import (
    ENGINE_CASES, in_namespace, issue, make_ca, nginx_check, put, require, run, settings,
)

LB_PROGRAMS = [p.path for p in load_balancer.PROGRAMS]
SITE = common.NGINX_SITE


@pytest.mark.parametrize("engines", ENGINE_CASES.values(), ids=ENGINE_CASES.keys())
@pytest.mark.parametrize("pool", [[], ["10.110.16.5", "10.110.16.6"]], ids=["before-first-push", "two-app-servers"])
def test_nginx_accepts_the_rendered_lb_config(tmp_path, engines, pool):
    ca = make_ca(tmp_path / "ca", "ca")
    upstreams = load_balancer.upstreams(pool) if pool else initial_upstreams()
    result = nginx_check(lb_tree(tmp_path, lb_files(engines), upstreams, ca.cert))
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


def test_nginx_starts_on_first_boot_before_the_tls_push(tmp_path):
    """No CA yet: provisioning's own placeholder step must let nginx -t pass."""
    rendered = lb_files()
    root = lb_tree(tmp_path, rendered, initial_upstreams(), ca=None)
    library, role = tmp_path / "common.sh", tmp_path / "role.sh"
    library.write_text(rendered[common.LIBRARY])
    role.write_text(rendered[common.ROLE_STEPS])
    script = f"set -e; . {library}; . {role}; test ! -e {c.CA_CERT_PATH}; ensure_placeholder_ca; ensure_placeholder_ca; nginx -t"
    result = run(in_namespace(root, ["bash", "-c", script]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("changed: placeholder") == 1, result.stdout  # the second call changes nothing
    assert "syntax is ok" in result.stderr


def test_nginx_files_the_check_refuses_are_put_back_and_nginx_is_not_reloaded(tmp_path):
    """Provisioning's nginx steps (common/nginx_steps.sh, in each nginx role's script): a
    changed file nginx -t refuses, and a new one beside it, are put back as they were
    before the run, which fails naming the check; nginx is not reloaded, so its files are
    those it runs with and the previous bundle's restore has no reload to make under
    traffic. A change it accepts is reloaded, and nothing is held after."""
    rendered = lb_files()
    root = lb_tree(tmp_path, rendered, initial_upstreams(), make_ca(tmp_path / "ca", "ca").cert)
    library, role = tmp_path / "common.sh", tmp_path / "role.sh"
    library.write_text(rendered[common.LIBRARY])
    role.write_text(rendered[common.ROLE_STEPS])
    added = "/etc/nginx/conf.d/added.conf"
    script = f"""
. {library}; . {role}
on_failure() {{ echo "== failed: $2"; exit 1; }}   # platform-provision's: the run fails
systemctl() {{ echo "== systemctl $*"; }}
{c.NGINX_RELOAD_COMMAND}() {{ echo "== nginx reloaded"; }}   # bash takes a path as a name
listing() {{ find /etc/nginx -printf '%p %m %u:%g %l\\n' | sort; find /etc/nginx -type f -exec sha256sum {{}} + | sort; }}
mkdir -p {c.PLATFORM_STATE}
listing > {tmp_path}/before
(
    hold_nginx_files
    echo 'not_a_directive on;' >> {SITE}; CHANGED_FILES+=({SITE})
    echo 'map $host $added {{ default 1; }}' > {added}; CHANGED_FILES+=({added})
    apply_nginx_files
    echo "== went on"
) || true
listing > {tmp_path}/after
cmp -s {tmp_path}/before {tmp_path}/after && echo "== as before"
(
    hold_nginx_files
    echo 'map $host $accepted {{ default 1; }}' > {added}; CHANGED_FILES+=({added})
    apply_nginx_files
)
test -e $NGINX_HELD || echo "== nothing held"
"""
    result = run(in_namespace(root, ["bash", "-euc", script]))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    refused, accepted = result.stdout.split("== as before\n")
    assert "== failed: nginx -t -q" in refused and "== went on" not in refused, out
    assert f"put back as it was: {SITE}" in refused and f"put back as it was: {added}" in refused, out
    assert "== nginx reloaded" not in refused, "a refused change reloaded nginx"
    assert "== nginx reloaded" in accepted and "== nothing held" in accepted, out


def test_initial_upstreams_send_everyone_to_maintenance():
    text = initial_upstreams()
    assert "upstream app_servers" in text and " down;" in text
    assert text == load_balancer.upstreams([]), "one template for both"


def test_a_broken_upstream_push_fails_the_check_that_guards_the_reload(tmp_path):
    """platform-push runs the push's check before any reload; nginx -t must catch this."""
    push = cloudinit.pushes(c.LOAD_BALANCER, settings())["upstreams"]
    # A drained server marked down again first (platform-drain keep), then nginx -t, and the
    # deploy login's jump targets, which sshd -t checks (tests/roles/test_common.py).
    assert push.check == [[c.DRAIN_COMMAND, "keep"], ["nginx", "-t", "-q"], ["sshd", "-t"]]
    # The drained list follows what nginx runs with, so a refused push leaves it as it was.
    assert push.then == [[c.NGINX_RELOAD_COMMAND], [c.DRAIN_COMMAND, "record"],
                         ["systemctl", "try-reload-or-restart", "ssh"]]
    assert list(push.files) == ["upstreams.conf", "deploy-permitopen.conf"]
    assert push.files["upstreams.conf"].path == c.LB_UPSTREAMS_FILE
    ca = make_ca(tmp_path / "ca", "ca")
    broken = load_balancer.upstreams(["10.110.16.5"]).replace("max_fails=2", "max_fails=")
    result = nginx_check(lb_tree(tmp_path, lb_files(), broken, ca.cert))
    assert result.returncode != 0


def test_upstreams_list_every_app_server_with_passive_health_checks():
    text = load_balancer.upstreams(["10.110.16.6", "10.110.16.5"])
    assert f"server 10.110.16.5:{c.APP_TLS_PORT} max_fails=2 fail_timeout=10s;" in text
    assert text.index("10.110.16.5") < text.index("10.110.16.6"), "sorted: the same pool renders the same file"
    assert f"keepalive {c.LB_UPSTREAM_KEEPALIVE_CONNECTIONS};" in text and " down;" not in text, "none marked down"


def test_site_verifies_app_servers_by_the_name_their_certificates_share():
    site = lb_files()[SITE]
    assert f"proxy_ssl_name {c.app_pool_tls_name('staging')};" in site
    assert f"proxy_ssl_trusted_certificate {c.CA_CERT_PATH};" in site
    assert "proxy_ssl_verify on;" in site and "proxy_ssl_session_reuse on;" in site


@pytest.mark.parametrize("path", LB_PROGRAMS)
def test_shellcheck_passes_on_lb_scripts(path):
    shellcheck = require("shellcheck")
    result = run([shellcheck, "--shell=bash", "-"], input=lb_files()[path])
    assert result.returncode == 0, result.stdout


def test_shellcheck_passes_on_the_rendered_provisioning_as_one_script(tmp_path):
    """The driver, the library and the LB steps together, as they run on the droplet."""
    shellcheck = require("shellcheck")
    files = lb_files()
    for path in (c.PROVISION_COMMAND, common.LIBRARY, load_balancer.PROGRAMS[0].path):
        (tmp_path / Path(path).name).write_text(files[path])
    combined = "\n".join(files[p] for p in (common.LIBRARY, load_balancer.PROGRAMS[0].path))
    result = run([shellcheck, "--shell=bash", "-"], input="#!/bin/bash\n" + combined + "\nrole_steps\n")
    assert result.returncode == 0, result.stdout


# --- the LB in front of two local app servers -------------------------------------------------


def test_lb_reencrypts_alternates_and_survives_a_backend_stopping(tmp_path, ports_free, internal_ca, started):
    (tmp_path / "certs").mkdir()
    backends = [Backend(tmp_path, f"app-{n}", ip, app_server_cert(internal_ca, tmp_path, n, ip))
                for n, ip in enumerate(APP_IPS, start=1)]
    started.extend(backends)
    lb = LoadBalancerUnderTest(tmp_path, internal_ca.cert, APP_IPS)
    started.append(lb)

    answers = [lb.get("/") for _ in range(10)]
    assert all(status == 200 for status, _, _ in answers), answers
    served_by = [headers["X-Backend"] for _, headers, _ in answers]
    # Each nginx worker takes turns on its own, so across workers each backend still
    # gets at least floor(k/2) + floor((10-k)/2) >= 4 of 10.
    assert min(served_by.count("app-1"), served_by.count("app-2")) >= 4, f"round robin: {served_by}"
    body = answers[0][2]
    assert body.split()[1] == "https" and body.split()[2] == "127.0.0.1", "forwarded proto and client"
    status, headers, _ = lb.get("/")
    assert "max-age=63072000" in headers["Strict-Transport-Security"]

    backends[0].stop()
    after = [lb.get("/") for _ in range(10)]
    assert [s for s, _, _ in after] == [200] * 10, "a stopped app server loses no GET"
    assert {h["X-Backend"] for _, h, _ in after} == {"app-2"}

    backends[1].stop()
    status, _, body = lb.get("/")
    assert status == 503 and "right back" in body, "no app server: the maintenance page"


def test_lb_shows_its_certificate_to_app_servers_that_ask_for_one(tmp_path, ports_free, internal_ca, started):
    """App servers take the LB's connections only with its client certificate from the
    stack's CA: the LB shows the one the tls push placed, and is served."""
    (tmp_path / "certs").mkdir()
    started.append(Backend(tmp_path, "app-1", APP_IPS[0], app_server_cert(internal_ca, tmp_path, 1, APP_IPS[0]),
                           client_ca=internal_ca.cert))
    lb = LoadBalancerUnderTest(tmp_path, internal_ca.cert, APP_IPS[:1], identity=lb_cert(internal_ca, tmp_path))
    started.append(lb)
    status, headers, _ = lb.get("/")
    assert status == 200 and headers.get("X-Backend") == "app-1", (status, headers)


def test_public_health_says_up_or_down_only(tmp_path, ports_free, internal_ca, started):
    """The internet's /healthz: 200 "ok" or 503 "down", none of the app servers' answer
    (their names, engines, errors); kept a few seconds, then asked again."""
    (tmp_path / "certs").mkdir()
    backend = Backend(tmp_path, "app-1", APP_IPS[0], app_server_cert(internal_ca, tmp_path, 1, APP_IPS[0]),
                      client_ca=internal_ca.cert)
    started.append(backend)
    lb = LoadBalancerUnderTest(tmp_path, internal_ca.cert, APP_IPS[:1], identity=lb_cert(internal_ca, tmp_path))
    started.append(lb)
    # The stand-in's full answer names it (body and X-Backend), as an app server's does.
    status, headers, body = lb.get("/")
    assert status == 200 and "app-1" in body
    for _ in range(3):
        status, headers, body = lb.get(c.HEALTH_PATH)
        assert (status, body) == (200, "ok\n"), (status, headers, body)
        assert "app-1" not in json.dumps(headers) and "X-Backend" not in headers, headers
    status, _, _ = lb.get(c.LB_HEALTH_PROBE_PATH)
    assert status == 404, "the LB's probe path is internal"
    backend.stop()
    time.sleep(c.LB_PUBLIC_HEALTH_CACHE_SECONDS + 1)
    status, headers, body = lb.get(c.HEALTH_PATH)
    assert (status, body) == (503, "down\n"), (status, headers, body)


def test_lb_answers_only_for_its_domain_and_says_little(tmp_path, ports_free, internal_ca, started):
    (tmp_path / "certs").mkdir()
    started.append(Backend(tmp_path, "app-1", APP_IPS[0], app_server_cert(internal_ca, tmp_path, 1, APP_IPS[0])))
    lb = LoadBalancerUnderTest(tmp_path, internal_ca.cert, APP_IPS[:1])
    started.append(lb)
    status, headers, body = lb.get("/", headers={"X-Forwarded-For": "203.0.113.66"})
    assert status == 200 and headers["Server"] == "nginx", headers          # no version
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert body.split()[2:] == ["127.0.0.1"], body                          # what the client sent is dropped
    with pytest.raises(ssl.SSLError):                                       # another name: no handshake
        lb.get("/", name="not-ours.example.net")
    connection = http.client.HTTPConnection("127.0.0.1", c.HTTP_PORT, timeout=5)
    connection.request("GET", "/", headers={"Host": "not-ours.example.net"})
    with pytest.raises(http.client.RemoteDisconnected):                     # closed, no redirect
        connection.getresponse()


def test_lb_answers_429_to_a_client_over_its_rate(tmp_path, ports_free, internal_ca, started):
    (tmp_path / "certs").mkdir()
    started.append(Backend(tmp_path, "app-1", APP_IPS[0], app_server_cert(internal_ca, tmp_path, 1, APP_IPS[0])))
    slow = cloudinit.rendered_files(c.LOAD_BALANCER, mockcloud.stack_settings("staging", lbRequestsPerSecond=1))
    lb = LoadBalancerUnderTest(tmp_path, internal_ca.cert, APP_IPS[:1], files=slow)
    started.append(lb)
    statuses = []
    while 429 not in statuses and len(statuses) < 30:   # far faster than 1 a second
        statuses.append(lb.get("/")[0])
    assert statuses[:3] == [200, 200, 200] and 429 in statuses, statuses   # 1 + a burst of 2


def test_lb_refuses_an_app_server_with_a_certificate_from_another_ca(tmp_path, ports_free, internal_ca, started):
    (tmp_path / "certs").mkdir()
    rogue_ca = make_ca(tmp_path / "rogue", "rogue-ca")
    started.append(Backend(tmp_path, "rogue", APP_IPS[0], app_server_cert(rogue_ca, tmp_path, 1, APP_IPS[0])))
    lb = LoadBalancerUnderTest(tmp_path, internal_ca.cert, APP_IPS[:1])
    started.append(lb)
    status, headers, body = lb.get("/")
    assert status == 503 and "X-Backend" not in headers and "right back" in body


def test_lb_refuses_an_app_server_that_speaks_only_tls_1_2(tmp_path, ports_free, internal_ca, started):
    """Every internal hop is TLS 1.3 only; the same server with 1.3 too is served (above)."""
    (tmp_path / "certs").mkdir()
    started.append(Backend(tmp_path, "app-1", APP_IPS[0], app_server_cert(internal_ca, tmp_path, 1, APP_IPS[0]),
                           protocols="TLSv1.2"))
    lb = LoadBalancerUnderTest(tmp_path, internal_ca.cert, APP_IPS[:1])
    started.append(lb)
    assert lb.get("/")[0] == 503


def test_lb_refuses_a_certificate_without_the_pool_name(tmp_path, ports_free, internal_ca, started):
    """Signed by the right CA but not issued for the app pool (e.g. the datastore's)."""
    (tmp_path / "certs").mkdir()
    other = issue(internal_ca, tmp_path / "certs", "datastore", dns=["staging-datastore"], ips=[APP_IPS[0]])
    started.append(Backend(tmp_path, "datastore", APP_IPS[0], other))
    lb = LoadBalancerUnderTest(tmp_path, internal_ca.cert, APP_IPS[:1])
    started.append(lb)
    assert lb.get("/")[0] == 503


def test_port_80_redirects_and_serves_acme_challenges(tmp_path, ports_free, internal_ca, started):
    lb = LoadBalancerUnderTest(tmp_path, internal_ca.cert, APP_IPS[:1])
    started.append(lb)
    put(lb.root, f"{c.ACME_WEBROOT}/.well-known/acme-challenge/token123", "token123.thumbprint")
    connection = http.client.HTTPConnection("127.0.0.1", c.HTTP_PORT, timeout=5)
    connection.request("GET", "/.well-known/acme-challenge/token123", headers={"Host": rendered_domain()})
    response = connection.getresponse()
    assert (response.status, response.read()) == (200, b"token123.thumbprint")
    connection.request("GET", "/some/page?x=1", headers={"Host": rendered_domain()})
    response = connection.getresponse()
    response.read()
    assert response.status == 301
    assert response.getheader("Location") == f"https://{rendered_domain()}/some/page?x=1"
