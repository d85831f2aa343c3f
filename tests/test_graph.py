"""The resource graph of both stacks, from the real Pulumi.<stack>.yaml files."""

from __future__ import annotations

import ipaddress
import json
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

import mockcloud
from model import conventions, prices
from stack_graph import (
    COMMAND,
    ENGINE_PORTS,
    Opening,
    droplet,
    droplets,
    firewalls_of,
    fingerprints,
    of_type,
    pushes,
    reachable,
    readable_text,
    secret_values,
    strings_outside_secrets,
    tag,
)

LB, APP, DATASTORE = conventions.LOAD_BALANCER, conventions.APP_SERVER, conventions.DATASTORE
ANYWHERE = {"0.0.0.0/0", "::/0"}


# --- Counts, network, tags -------------------------------------------------------------


@pytest.mark.parametrize("stack, app_servers", [("staging", 2), ("production", 3)])
def test_counts_per_role_follow_the_stack_file(stack, app_servers, staging_deployment, production_deployment):
    deployment = {"staging": staging_deployment, "production": production_deployment}[stack]
    assert deployment.settings.app_server_count == app_servers
    assert len(droplets(deployment, LB)) == 1
    assert len(droplets(deployment, APP)) == app_servers
    assert len(droplets(deployment, DATASTORE)) == 1
    assert len(droplets(deployment)) == app_servers + 2
    assert sorted(d.name for d in droplets(deployment, APP)) == [f"app-{n}" for n in range(1, app_servers + 1)]
    assert len(of_type(deployment, "digitalocean:index/vpc:Vpc")) == 1
    assert len(of_type(deployment, "digitalocean:index/volume:Volume")) == 1
    assert len(of_type(deployment, "digitalocean:index/reservedIp:ReservedIp")) == 1


def test_a_new_region_or_vpc_range_names_a_new_vpc_that_digitalocean_takes():
    """VPC names are unique in an account, and the provider makes a new VPC before it
    deletes the old: were a new region or range not refused (test_upgrade_in_place.py),
    the same name would fail the change before any droplet is replaced."""
    names = {conventions.vpc_name("production", region, ip_range)
             for region, ip_range in (("nyc3", "10.110.0.0/20"), ("fra1", "10.110.0.0/20"), ("nyc3", "10.120.0.0/20"))}
    assert len(names) == 3
    assert all(re.fullmatch(r"[A-Za-z0-9.-]+", name) for name in names), names


def test_every_droplet_is_deleted_only_after_a_clean_shutdown_given_the_time_it_takes(staging_deployment):
    """The provider shuts a droplet down before deleting it when asked (graceful_shutdown),
    and fails the delete when it is not off within the delete timeout: 60 s unless told,
    less than systemd's 90 s for one unit to stop."""
    for d in droplets(staging_deployment):
        assert d.state["gracefulShutdown"] is True, d.name
        timeouts = staging_deployment.mocks.options[(d.type, d.name)].customTimeouts
        assert timeouts.delete == "10m", d.name


def test_every_droplet_is_in_the_vpc_with_its_stack_and_one_role_tag(deployment):
    (vpc,) = of_type(deployment, "digitalocean:index/vpc:Vpc")
    settings = deployment.settings
    assert vpc.state["ipRange"] == settings.vpc_ip_range
    assert vpc.state["region"] == settings.region
    assert vpc.state["name"] == conventions.vpc_name(settings.stack, settings.region, settings.vpc_ip_range)
    vpc_range = ipaddress.ip_network(settings.vpc_ip_range)
    stack_tag = conventions.stack_tag(settings.stack)
    role_tags = {conventions.role_tag(settings.stack, role) for role in conventions.ROLES}
    for d in droplets(deployment):
        assert d.state["vpcUuid"] == vpc.id, d.name
        assert d.state["region"] == settings.region
        assert d.state["image"] == settings.image
        assert stack_tag in d.state["tags"], d.name
        assert len(role_tags & set(d.state["tags"])) == 1, d.state["tags"]
        assert ipaddress.ip_address(d.state["ipv4AddressPrivate"]) in vpc_range
        assert d.state["name"] == f"{settings.stack}-{d.name}"
    tags = {t.state["name"] for t in of_type(deployment, "digitalocean:index/tag:Tag")}
    assert tags == role_tags | {stack_tag}


def test_sizes_come_from_the_settings(deployment):
    s = deployment.settings
    assert droplet(deployment, "lb").state["size"] == s.lb_size
    assert droplet(deployment, "datastore").state["size"] == s.datastore_size
    assert {d.state["size"] for d in droplets(deployment, APP)} == {s.app_size}


# --- Firewalls -------------------------------------------------------------------------


def expected_openings(deployment, role: str, engines=None) -> set[Opening]:
    s = deployment.settings
    engines = s.engines if engines is None else engines
    if role == LB:
        return {
            *(Opening("80", "tcp", c) for c in ANYWHERE),
            *(Opening("443", "tcp", c) for c in ANYWHERE),
            *(Opening("22", "tcp", c) for c in s.admin_cidrs),
        }
    if role == APP:
        return {Opening(str(conventions.APP_TLS_PORT), "tcp", tag(deployment, LB)), Opening("22", "tcp", tag(deployment, LB))}
    return {
        *(Opening(ENGINE_PORTS[e], "tcp", tag(deployment, APP)) for e in engines),
        Opening("22", "tcp", tag(deployment, LB)),
    }


@pytest.mark.parametrize("role", conventions.ROLES)
def test_firewall_matrix_nothing_else_inbound(deployment, role):
    for d in droplets(deployment, role):
        applying = firewalls_of(deployment, d)
        assert [f.name for f in applying] == [f"{role}-firewall"], d.name
        assert reachable(deployment, d) == expected_openings(deployment, role), d.name


def test_lb_takes_ssh_from_the_admin_cidrs_only(deployment):
    ssh_sources = {o.source for o in reachable(deployment, droplet(deployment, "lb")) if o.port == "22"}
    assert ssh_sources == set(deployment.settings.admin_cidrs)
    assert not ssh_sources & ANYWHERE


def test_no_datastore_port_is_reachable_but_from_the_app_tag(deployment):
    (store,) = droplets(deployment, DATASTORE)
    for opening in reachable(deployment, store):
        if opening.port == str(conventions.SSH_PORT):
            assert opening.source == tag(deployment, LB)
        else:
            assert opening.port in ENGINE_PORTS.values(), opening
            assert opening.source == tag(deployment, APP), opening
    # The app tag is carried by app servers only.
    app_tag = tag(deployment, APP).removeprefix("tag:")
    assert {d.name for d in droplets(deployment) if app_tag in d.state["tags"]} == {
        d.name for d in droplets(deployment, APP)
    }


def test_switching_an_engine_off_removes_its_port():
    engines = ["postgresql", "redis"]
    deployment = mockcloud.deploy(mockcloud.stack_settings("staging", engines=engines))
    (store,) = droplets(deployment, DATASTORE)
    assert reachable(deployment, store) == expected_openings(deployment, DATASTORE, engines)
    ports = {o.port for o in reachable(deployment, store)}
    assert ENGINE_PORTS["mongodb"] not in ports and ENGINE_PORTS["rabbitmq"] not in ports
    # Its passwords stay (its data and logins stay on the volume), but the apps get none.
    passwords = [r.name for r in of_type(deployment, "random:index/randomPassword:RandomPassword")]
    assert {"datastore-mongodb-password", "datastore-rabbitmq-password"} <= set(passwords), passwords
    env = mockcloud.plain(deployment.named("app-1-env-push", ":Command").inputs["stdin"])
    assert "MONGODB" not in env and "RABBITMQ" not in env and "POSTGRES" in env


# --- Datastore volume, protection --------------------------------------------------------


def test_volume_is_attached_with_a_volume_attachment(deployment):
    store = droplet(deployment, "datastore")
    (volume,) = of_type(deployment, "digitalocean:index/volume:Volume")
    (attachment,) = of_type(deployment, "digitalocean:index/volumeAttachment:VolumeAttachment")
    assert int(attachment.state["dropletId"]) == int(store.id)
    assert attachment.state["volumeId"] == volume.id
    assert "volumeIds" not in store.inputs  # two owners of one attachment would fight
    assert volume.state["region"] == store.state["region"]
    assert volume.state["size"] == deployment.settings.volume_size_gb


def test_production_protects_the_datastore_droplet_and_volume(production_deployment):
    protected = {(r.type.rsplit(":", 1)[-1], r.name) for r in production_deployment.resources if r.protect}
    assert ("Droplet", "datastore") in protected
    assert ("Volume", "datastore-volume") in protected
    # Only what holds data: nothing else is in the way of a replacement.
    assert protected <= {("Droplet", "datastore"), ("Volume", "datastore-volume"), ("SpacesBucket", "datastore-backups"),
                         ("SpacesBucket", "lb-backups"), ("SpacesBucket", "app-backups"),
                         ("SpacesBucket", "release-archive-bucket")}


def test_staging_protects_nothing(staging_deployment):
    assert [r.name for r in staging_deployment.resources if r.protect] == []


# --- Internal CA and certificates ----------------------------------------------------------


def test_every_droplet_has_a_certificate_signed_by_the_ca_naming_its_private_address(deployment):
    (ca_resource,) = of_type(deployment, "tls:index/selfSignedCert:SelfSignedCert")
    ca = x509.load_pem_x509_certificate(ca_resource.state["certPem"].encode())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert deployment.outputs["ca_cert_pem"] == ca_resource.state["certPem"]
    stack = deployment.settings.stack
    for d in droplets(deployment):
        issued = deployment.named(f"{d.name}-tls-cert", ":LocallySignedCert")
        cert = x509.load_pem_x509_certificate(issued.state["certPem"].encode())
        cert.verify_directly_issued_by(ca)  # raises unless the CA's key signed it
        ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [d.state["ipv4AddressPrivate"]]
        names = san.get_values_for_type(x509.DNSName)
        assert f"{stack}-{d.name}" in names
        if d.name == "lb":
            assert deployment.settings.domain in names
        # The droplet receives exactly this certificate, its key and the CA, over SSH to itself.
        push = pushes(deployment)[f"{d.name}-tls-push"]
        files = json.loads(mockcloud.plain(push.inputs["stdin"]))
        assert files["server.crt"] == issued.state["certPem"]
        assert files["ca.crt"] == ca_resource.state["certPem"]
        key = deployment.named(f"{d.name}-tls-key", ":PrivateKey")
        assert files["server.key"] == key.state["privateKeyPem"]
        host = push.state["connection"]["host"]
        assert host == (d.state["ipv4Address"] if d.name == "lb" else d.state["ipv4AddressPrivate"])


def test_the_apps_get_the_datastores_address_and_a_name_its_certificate_carries(deployment):
    """A TLS client that sends the server's name (SNI) must send a name, not the address
    (RFC 6066): the apps' .env gives one the datastore's certificate is valid for."""
    store = droplet(deployment, DATASTORE)
    cert = x509.load_pem_x509_certificate(
        deployment.named(f"{store.name}-tls-cert", ":LocallySignedCert").state["certPem"].encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    for app in droplets(deployment, APP):
        push = deployment.named(f"{app.name}-env-push", ":Command")
        env = dict(line.split("=", 1) for line in json.loads(mockcloud.plain(push.inputs["stdin"]))[".env"].splitlines()
                   if line and not line.startswith("#"))
        assert env["PLATFORM_DATASTORE_TLS_NAME"] in san.get_values_for_type(x509.DNSName)
        assert env["POSTGRESQL_HOST"] == store.state["ipv4AddressPrivate"]


def test_a_certificate_from_another_ca_is_told_apart(staging_deployment, production_deployment):
    """The signature check above can fail: staging's CA did not sign production's certificates."""
    staging_ca = x509.load_pem_x509_certificate(staging_deployment.outputs["ca_cert_pem"].encode())
    cert = x509.load_pem_x509_certificate(
        production_deployment.named("lb-tls-cert", ":LocallySignedCert").state["certPem"].encode()
    )
    with pytest.raises(Exception):
        cert.verify_directly_issued_by(staging_ca)


# --- Secrets -------------------------------------------------------------------------------


SECRET_PUSH_KINDS = ("tls", "env", "secrets")  # a private key, passwords in a URL, the passwords


def test_pushes_carrying_keys_or_passwords_are_secret(deployment):
    by_kind = {}
    for name, push in pushes(deployment).items():
        connection = push.inputs["connection"]
        assert mockcloud.is_secret(connection) or mockcloud.is_secret(connection["privateKey"]), name
        by_kind.setdefault(push.state["create"].split()[-1], []).append(push)
    droplet_count = len(droplets(deployment))
    assert len(by_kind["tls"]) == droplet_count
    assert len(by_kind["env"]) == deployment.settings.app_server_count
    assert len(by_kind["secrets"]) == 1
    for kind in SECRET_PUSH_KINDS:
        for push in by_kind[kind]:
            assert mockcloud.is_secret(push.inputs["stdin"]), push.name


def test_passwords_are_secret_outputs(deployment):
    passwords = of_type(deployment, "random:index/randomPassword:RandomPassword")
    for engine in deployment.settings.engines:
        assert any(p.name.startswith(f"datastore-{engine}") for p in passwords), engine
    for p in passwords:
        assert "result" in p.additional_secret_outputs
        assert len(p.state["result"]) >= 32


def test_no_secret_travels_in_the_clear_anywhere_in_the_graph(deployment):
    """Every generated password and private key is wrapped as a secret wherever it is an input."""
    secrets = secret_values(deployment)
    assert secrets
    for r in deployment.resources:
        exposed = "\n".join(strings_outside_secrets(r.inputs))
        for where, value in secrets.items():
            for piece in fingerprints(value):
                assert piece not in exposed, f"{where} in the clear in the inputs of {r.type} {r.name}"
    # Only secret outputs may hold them (`pulumi stack output` shows those as [secret]).
    outputs = json.dumps({k: v for k, v in deployment.outputs.items() if not deployment.secret_outputs[k]})
    for where, value in secrets.items():
        assert not any(piece in outputs for piece in fingerprints(value)), where


def test_no_password_or_private_key_in_any_user_data(deployment):
    secrets = secret_values(deployment)
    for d in droplets(deployment):
        user_data = readable_text(d.state["userData"])
        for where, value in secrets.items():
            for piece in fingerprints(value):
                assert piece not in user_data, f"{where} is in the user_data of {d.name}"
        assert "PRIVATE KEY-----" not in user_data, d.name


def test_no_password_or_private_key_in_any_bundle(deployment):
    """A bundle is in the state in the clear, compressed: the check above cannot see inside."""
    import base64
    import gzip

    secrets = secret_values(deployment)
    bundles = [r for r in of_type(deployment, COMMAND) if r.name.endswith("-bundle-push")]
    assert bundles
    for push in bundles:
        text = gzip.decompress(base64.b64decode(mockcloud.plain(push.inputs["stdin"]))).decode()
        for where, value in secrets.items():
            for piece in fingerprints(value):
                assert piece not in text, f"{where} is in the bundle of {push.name}"
        assert "PRIVATE KEY-----" not in text, push.name


# --- Outputs -------------------------------------------------------------------------------


def test_outputs(deployment):
    out, s = deployment.outputs, deployment.settings
    (reserved,) = of_type(deployment, "digitalocean:index/reservedIp:ReservedIp")
    (assignment,) = of_type(deployment, "digitalocean:index/reservedIpAssignment:ReservedIpAssignment")
    lb = droplet(deployment, "lb")
    assert int(assignment.state["dropletId"]) == int(lb.id)
    assert out["url"] == f"https://{s.domain}"
    assert out["public_ip"] == reserved.state["ipAddress"]
    apps = sorted(droplets(deployment, APP), key=lambda d: int(d.name.split("-")[1]))
    assert out["private_ips"] == {
        "lb": lb.state["ipv4AddressPrivate"],
        "app": [d.state["ipv4AddressPrivate"] for d in apps],
        "datastore": droplet(deployment, "datastore").state["ipv4AddressPrivate"],
    }
    user, jump = conventions.OPERATOR_USER, reserved.state["ipAddress"]
    assert out["ssh"] == {
        "lb": f"ssh {user}@{jump}",
        "app": [f"ssh -J {user}@{jump} {user}@{d.state['ipv4AddressPrivate']}" for d in apps],
        "datastore": f"ssh -J {user}@{jump} {user}@{out['private_ips']['datastore']}",
    }
    assert out["ca_cert_pem"].startswith("-----BEGIN CERTIFICATE-----")


def test_dns_record_points_the_domain_at_the_reserved_ip(production_deployment, staging_deployment):
    (record,) = of_type(production_deployment, "digitalocean:index/dnsRecord:DnsRecord")
    s = production_deployment.settings
    assert record.state["domain"] == s.dns_zone
    assert f"{record.state['name']}.{s.dns_zone}" == s.domain
    assert record.state["type"] == "A"
    assert record.state["value"] == production_deployment.outputs["public_ip"]
    assert of_type(staging_deployment, "digitalocean:index/dnsRecord:DnsRecord") == []  # no dnsZone


def test_monthly_cost_estimate_adds_up_from_the_price_table(deployment):
    s = deployment.settings
    cost = deployment.outputs["monthly_cost_estimate"]
    droplets_total = (
        prices.DROPLET_MONTHLY[s.lb_size]
        + prices.DROPLET_MONTHLY[s.datastore_size]
        + s.app_server_count * prices.DROPLET_MONTHLY[s.app_size]
    )
    expected = (
        droplets_total
        + (prices.DROPLET_BACKUP_SHARE * droplets_total if s.droplet_backups else 0)
        + s.volume_size_gb * prices.VOLUME_MONTHLY_PER_GIB
        + (prices.SPACES_MONTHLY if s.backups else 0)
        + prices.RESERVED_IP_MONTHLY
    )
    assert cost["total"] == pytest.approx(expected, abs=0.005)
    assert cost["total"] == pytest.approx(sum(cost["lines"].values()), abs=0.005)
    assert cost["prices_as_of"] == prices.PRICES_AS_OF and cost["currency"] == prices.CURRENCY


def test_monthly_cost_of_production_by_hand(production_deployment):
    """Worked by hand from prices.py: 6 + 48 + 3 x 24 droplets, 20% backups, 100 GiB, Spaces."""
    droplets_total = 6.00 + 48.00 + 3 * 24.00
    assert production_deployment.outputs["monthly_cost_estimate"]["total"] == pytest.approx(
        droplets_total * 1.2 + 100 * 0.10 + 5.00
    )


def test_the_commands_are_pushes_to_platform_push_or_the_bundle_receiver(deployment):
    for r in of_type(deployment, COMMAND):
        if r.name.endswith(("-first-bundle", "-drain", "-undrain")):
            continue   # a bundle push behind a test, the LB's drains around one (tests/test_boot_gate.py)
        sudo, command, argument = r.state["create"].split()
        if r.name.endswith("-bundle-push"):
            assert (sudo, command) == ("sudo", conventions.BUNDLE_COMMAND), r.name
            assert r.state["triggers"] == [argument], r.name   # the digest
        else:
            assert (sudo, command) == ("sudo", conventions.PUSH_COMMAND), r.name
            assert r.name.endswith(f"-{argument}-push"), r.name
        assert r.state["connection"]["user"] == conventions.OPERATOR_USER
        if not r.name.startswith("lb-"):
            assert r.state["connection"]["proxy"]["host"] == droplet(deployment, "lb").state["ipv4Address"]
