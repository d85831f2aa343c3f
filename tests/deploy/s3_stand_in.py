"""moto's S3 on loopback over TLS with a private CA: Spaces as a local stand-in would be."""

from __future__ import annotations

import datetime as dt
import ipaddress
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class StandIn:
    endpoint: str
    ca_file: str     # the private CA that signed the server's certificate


def _certificate(subject: str, issuer_key, public_key, issuer: str, ca: bool, ip: str | None = None):
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                                        critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def private_ca(directory: Path, ip: str) -> tuple[str, str, str]:
    """(CA file, server certificate file, server key file) for a server at `ip`."""
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("test stand-in CA", ca_key, ca_key.public_key(), "test stand-in CA", ca=True)
    server = _certificate(ip, ca_key, server_key.public_key(), "test stand-in CA", ca=False, ip=ip)
    files = directory / "ca.crt", directory / "server.crt", directory / "server.key"
    files[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files[2].write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return tuple(str(f) for f in files)


@contextmanager
def s3_over_tls(directory: Path) -> Iterator[StandIn]:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    ip = "127.0.0.1"
    ca_file, cert_file, key_file = private_ca(directory, ip)
    server = make_server(ip, 0, DomainDispatcherApplication(create_backend_app), threaded=True,
                         request_handler=MotoRequestHandler, ssl_context=(cert_file, key_file))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield StandIn(f"https://{ip}:{server.server_port}", ca_file)
    finally:
        server.shutdown()
        thread.join()
