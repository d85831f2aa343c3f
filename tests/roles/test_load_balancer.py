"""The load balancer's files, checked by the programs that read them, and its nginx
really re-encrypting to app servers it verifies (run in a private mount namespace)."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

import cloudinit
import mockcloud
from cloudinit import common, load_balancer
from model import conventions as c

from render_helpers_lb_app import (
    ENGINE_CASES, in_namespace, issue, make_ca, nginx_check, nginx_tree, put, require, run,
    self_signed, settings,
)

LB_PROGRAMS = [p.path for p in load_balancer.PROGRAMS]
SITE = common.NGINX_SITE
APP_IPS = ["127.0.0.2", "127.0.0.3"]


def lb_files(engines=None) -> dict[str, str]:
    return cloudinit.rendered_files(c.LOAD_BALANCER, settings(engines))


def lb_tree(tmp_path: Path, rendered: dict[str, str], upstreams: str, ca: Path | None, identity=None) -> Path:
    """The LB's files at their real paths, as a booted LB has them (no CA before the tls
    push; its own certificate, shown to the app servers, a self-signed placeholder until then)."""
    public = self_signed(tmp_path / "public", "public", rendered_domain())
    identity = identity or self_signed(tmp_path / "placeholder", "placeholder", "placeholder until the tls push")
    files = {path: text for path, text in rendered.items() if path.startswith(("/etc/nginx/", c.MAINTENANCE_ROOT))}
    files.update({
        c.LB_UPSTREAMS_FILE: upstreams,
        c.LB_PUBLIC_CERT_PATH: public.cert,
        c.LB_PUBLIC_KEY_PATH: public.key,
        c.SERVER_CERT_PATH: identity.cert,
        c.SERVER_KEY_PATH: identity.key,
    })
    if ca is not None:
        files[c.CA_CERT_PATH] = ca
    return nginx_tree(tmp_path / "ns", files)


def rendered_domain() -> str:
    return settings().domain


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


def initial_upstreams() -> str:
    """The upstream file provisioning writes before the first push (from provision.sh)."""
    script = lb_files()[load_balancer.PROGRAMS[0].path]
    return script.split("<<'UPSTREAMS'\n", 1)[1].split("\nUPSTREAMS\n", 1)[0] + "\n"


def test_initial_upstreams_send_everyone_to_maintenance():
    text = initial_upstreams()
    assert "upstream app_servers" in text and " down;" in text
    assert text == load_balancer.upstreams([]), "one template for both"


def test_a_broken_upstream_push_fails_the_check_that_guards_the_reload(tmp_path):
    """platform-push runs the push's check before any reload; nginx -t must catch this."""
    push = cloudinit.pushes(c.LOAD_BALANCER, settings())["upstreams"]
    # With the deploy login's jump targets, which sshd -t checks (tests/roles/test_common.py).
    assert push.check == [["nginx", "-t", "-q"], ["sshd", "-t"]]
    assert push.then == [["systemctl", "reload", "nginx"], ["systemctl", "try-reload-or-restart", "ssh"]]
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
    assert "keepalive 32;" in text and "down" not in text


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


BACKEND_CONF = """
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp; proxy_temp_path {dir}/tmp; fastcgi_temp_path {dir}/tmp;
    uwsgi_temp_path {dir}/tmp; scgi_temp_path {dir}/tmp;
    server {{
        listen {ip}:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols {protocols};
        {client_check}
        location / {{ add_header X-Backend {name} always; return 200 "{name} $http_x_forwarded_proto $http_x_forwarded_for\\n"; }}
    }}
}}
"""


class Backend:
    """A stand-in app server: nginx with a certificate, answering with its own name."""

    def __init__(self, tmp_path: Path, name: str, ip: str, pair, protocols: str = "TLSv1.2 TLSv1.3",
                 client_ca: Path | None = None):
        self.dir = tmp_path / name
        (self.dir / "tmp").mkdir(parents=True)
        conf = self.dir / "nginx.conf"
        # As the app servers do: a client certificate from the stack's CA, or no handshake.
        client_check = f"ssl_verify_client on; ssl_client_certificate {client_ca};" if client_ca else ""
        conf.write_text(BACKEND_CONF.format(dir=self.dir, ip=ip, port=c.APP_TLS_PORT, cert=pair.cert, key=pair.key, name=name,
                                            protocols=protocols, client_check=client_check))
        self.process = subprocess.Popen(
            [require("nginx"), "-c", str(conf), "-p", str(self.dir), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        wait_for_port(ip, c.APP_TLS_PORT, self.process)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=10)


def wait_for_port(host: str, port: int, process: subprocess.Popen, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited early: {process.stderr.read().decode() if process.stderr else ''}")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {host}:{port}")


class LoadBalancerUnderTest:
    def __init__(self, tmp_path: Path, ca: Path, servers: list[str], files: dict[str, str] | None = None,
                 identity=None):
        self.root = lb_tree(tmp_path, files or lb_files(), load_balancer.upstreams(servers), ca, identity)
        self.public_cert = next((tmp_path / "public").glob("public.crt"))
        self.process = subprocess.Popen(
            in_namespace(self.root, [require("nginx"), "-g", "daemon off;"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        wait_for_port("127.0.0.1", c.HTTPS_PORT, self.process)

    def get(self, path: str = "/", method: str = "GET", name: str | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        """A request to 127.0.0.1 for the domain (or `name`): SNI and Host as a browser sends them."""
        name = name or rendered_domain()
        context = ssl.create_default_context(cafile=str(self.public_cert))
        context.check_hostname = False  # the certificate names the domain only

        class ToName(http.client.HTTPSConnection):
            def connect(self):
                raw = socket.create_connection(("127.0.0.1", c.HTTPS_PORT), timeout=10)
                self.sock = context.wrap_socket(raw, server_hostname=name)

        connection = ToName("127.0.0.1", c.HTTPS_PORT, timeout=10)
        try:
            connection.request(method, path, headers={"Host": name, **(headers or {})})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read().decode()
        finally:
            connection.close()

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful, as on a droplet's stop
            self.process.wait(timeout=10)


@pytest.fixture
def ports_free():
    for port in (c.HTTP_PORT, c.HTTPS_PORT):
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} is taken on this host"


@pytest.fixture
def internal_ca(tmp_path):
    return make_ca(tmp_path / "ca", "internal-ca")


def app_server_cert(ca, tmp_path: Path, number: int, ip: str):
    """SANs as components/app_server_pool.py issues them."""
    stack = settings().stack
    return issue(ca, tmp_path / "certs", f"app-{number}-{ca.cert.stem}",
                 dns=[f"{stack}-app-{number}", c.app_pool_tls_name(stack)], ips=[ip])


@pytest.fixture
def started(tmp_path):
    running = []
    yield running
    for thing in reversed(running):
        thing.stop()


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


def lb_cert(ca, tmp_path: Path):
    """The LB's certificate as components/load_balancer.py issues it (its name first)."""
    stack = settings().stack
    return issue(ca, tmp_path / "certs", "lb", dns=[f"{stack}-{c.LOAD_BALANCER}", rendered_domain()], ips=["127.0.0.1"])


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
    statuses = [lb.get("/")[0] for _ in range(8)]   # far faster than 1 a second
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
