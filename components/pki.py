"""The stack's own certificate authority, for TLS on every hop between droplets."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_tls as tls

CA_VALIDITY_HOURS = 10 * 365 * 24
SERVER_VALIDITY_HOURS = 365 * 24
# A `pulumi up` within this window before expiry issues and pushes a new certificate.
SERVER_EARLY_RENEWAL_HOURS = 30 * 24


@dataclass(frozen=True)
class ServerCertificate:
    """A droplet's certificate, its key (a secret) and the CA that signed it."""

    cert_pem: pulumi.Output[str]
    key_pem: pulumi.Output[str]
    ca_cert_pem: pulumi.Output[str]


class InternalCA(pulumi.ComponentResource):
    """A CA per stack; each droplet gets a certificate naming its private address."""

    cert_pem: pulumi.Output[str]

    def __init__(self, name: str, *, stack: str, opts: pulumi.ResourceOptions | None = None):
        super().__init__("node-platform:index:InternalCA", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self._key = tls.PrivateKey(f"{name}-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
        self._cert = tls.SelfSignedCert(
            f"{name}-cert",
            private_key_pem=self._key.private_key_pem,
            is_ca_certificate=True,
            validity_period_hours=CA_VALIDITY_HOURS,
            allowed_uses=["cert_signing", "crl_signing", "digital_signature"],
            subject=tls.SelfSignedCertSubjectArgs(
                common_name=f"{stack} internal CA", organization="node-platform"
            ),
            opts=child,
        )
        self.cert_pem = self._cert.cert_pem
        self.register_outputs({"cert_pem": self.cert_pem})

    def issue(
        self,
        name: str,
        *,
        dns_names: list[str],
        ip_addresses: list[pulumi.Input[str]],
        parent: pulumi.Resource,
    ) -> ServerCertificate:
        """A server-and-client certificate for one droplet, parented to that droplet's component."""
        child = pulumi.ResourceOptions(parent=parent)
        key = tls.PrivateKey(f"{name}-tls-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
        request = tls.CertRequest(
            f"{name}-tls-csr",
            private_key_pem=key.private_key_pem,
            subject=tls.CertRequestSubjectArgs(common_name=dns_names[0]),
            dns_names=dns_names,
            ip_addresses=ip_addresses,
            opts=child,
        )
        cert = tls.LocallySignedCert(
            f"{name}-tls-cert",
            cert_request_pem=request.cert_request_pem,
            ca_private_key_pem=self._key.private_key_pem,
            ca_cert_pem=self._cert.cert_pem,
            validity_period_hours=SERVER_VALIDITY_HOURS,
            early_renewal_hours=SERVER_EARLY_RENEWAL_HOURS,
            allowed_uses=["digital_signature", "key_encipherment", "server_auth", "client_auth"],
            opts=child,
        )
        return ServerCertificate(
            cert_pem=cert.cert_pem,
            key_pem=pulumi.Output.secret(key.private_key_pem),
            ca_cert_pem=self._cert.cert_pem,
        )
