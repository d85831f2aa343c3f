"""The LB's rendered nginx for real in the role tests (test_load_balancer.py and the
test_lb_*.py beside it): its files at their droplet paths in a private mount namespace,
stand-in app servers (nginx with the stack's kind of certificate) on 127.0.0.2 and .3, and
the certificates components/ issues. Their fixtures (ports_free, internal_ca, started) are
in conftest.py."""

from __future__ import annotations

import http.client
import signal
import socket
import ssl
import subprocess
from pathlib import Path

import cloudinit
from cloudinit import load_balancer
from model import conventions as c

from render_helpers_lb_app import droplet_nginx, issue, nginx_tree, require, self_signed, settings, wait_for_port

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


def initial_upstreams() -> str:
    """The upstream file provisioning writes before the first push (from provision.sh)."""
    script = lb_files()[load_balancer.PROGRAMS[0].path]
    return script.split("<<'UPSTREAMS'\n", 1)[1].split("\nUPSTREAMS\n", 1)[0] + "\n"


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


class LoadBalancerUnderTest:
    def __init__(self, tmp_path: Path, ca: Path, servers: list[str], files: dict[str, str] | None = None,
                 identity=None):
        self.root = lb_tree(tmp_path, files or lb_files(), load_balancer.upstreams(servers), ca, identity)
        self.public_cert = next((tmp_path / "public").glob("public.crt"))
        self.process = subprocess.Popen(
            droplet_nginx(self.root), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        wait_for_port("127.0.0.1", c.HTTPS_PORT, self.process)

    def connection(self, name: str, source: str | None = None, timeout: float = 10) -> http.client.HTTPSConnection:
        """A connection to 127.0.0.1 with `name` as its SNI (from the address `source`, a
        client of its own to the LB's per-client rate limit); it connects on first use."""
        context = ssl.create_default_context(cafile=str(self.public_cert))
        context.check_hostname = False  # the certificate names the domain only

        class ToName(http.client.HTTPSConnection):
            def connect(self):
                raw = socket.create_connection(("127.0.0.1", c.HTTPS_PORT), timeout=timeout,
                                               source_address=(source, 0) if source else None)
                self.sock = context.wrap_socket(raw, server_hostname=name)

        return ToName("127.0.0.1", c.HTTPS_PORT, timeout=timeout)

    def get(self, path: str = "/", method: str = "GET", name: str | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
        """A request to 127.0.0.1 for the domain (or `name`): SNI and Host as a browser sends them."""
        name = name or rendered_domain()
        connection = self.connection(name)
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


def app_server_cert(ca, tmp_path: Path, number: int, ip: str):
    """SANs as components/app_server_pool.py issues them."""
    stack = settings().stack
    return issue(ca, tmp_path / "certs", f"app-{number}-{ca.cert.stem}",
                 dns=[f"{stack}-app-{number}", c.app_pool_tls_name(stack)], ips=[ip])


def lb_cert(ca, tmp_path: Path):
    """The LB's certificate as components/load_balancer.py issues it (its name first)."""
    stack = settings().stack
    return issue(ca, tmp_path / "certs", "lb", dns=[f"{stack}-{c.LOAD_BALANCER}", rendered_domain()], ips=["127.0.0.1"])
