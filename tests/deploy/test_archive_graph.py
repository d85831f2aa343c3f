"""The release archive in the Pulumi graph: a bucket and a deploy key of its own, the key
that signs each release's manifest, and the secret stack output the deploy command reads
(only with backups on)."""

from __future__ import annotations

import json

import pytest

import cloudinit
import mockcloud
from cloudinit import app_server
from model import conventions


@pytest.fixture(scope="module")
def production():
    return mockcloud.deploy(mockcloud.stack_settings("production"))


def test_the_deploy_key_reaches_only_the_release_bucket_and_is_not_the_datastores(production):
    bucket = production.named("release-archive-bucket", ":SpacesBucket")
    assert bucket.state["name"] == "production-app-example-com-releases"
    assert bucket.state["versioning"] == {"enabled": True} and bucket.protect  # production's data
    key = production.named("release-archive-key", ":SpacesKey")
    assert key.state["grants"] == [{"bucket": bucket.state["name"], "permission": "readwrite"}]
    assert key.state["name"] == "production-deploys"
    assert "secretKey" in key.additional_secret_outputs
    backup_key = production.named("datastore-backup-key", ":SpacesKey")
    assert key.state["accessKey"] != backup_key.state["accessKey"]
    assert key.state["accessKey"].startswith("DO00") and len(key.state["accessKey"]) == 20


def test_the_output_names_bucket_endpoint_and_keys_and_is_secret(production):
    settings = production.settings
    bucket = production.named("release-archive-bucket", ":SpacesBucket")
    key = production.named("release-archive-key", ":SpacesKey")
    signing = production.named("release-archive-signing-key", ":PrivateKey")
    archive = production.outputs["release_archive"]
    assert production.secret_outputs["release_archive"] is True
    assert {k: v for k, v in archive.items() if k != "configuration"} == {
        "bucket": bucket.state["name"],
        "region": settings.spaces_region,
        "endpoint": conventions.spaces_endpoint(settings.spaces_region),
        "access_key_id": key.state["accessKey"],
        "secret_access_key": key.state["secretKey"],
        "signing_key_pem": signing.state["privateKeyPem"],
        "signing_public_key_pem": signing.state["publicKeyPem"],
    }
    assert production.secret_outputs["private_ips"] is False, "only what holds a secret is hidden"


def test_the_signing_key_is_ed25519_its_public_half_an_output_and_no_droplet_gets_it(production):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    signing = production.named("release-archive-signing-key", ":PrivateKey")
    assert signing.state["algorithm"] == "ED25519"
    private = serialization.load_pem_private_key(signing.state["privateKeyPem"].encode(), None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    assert production.outputs["release_signing_public_key"] == signing.state["publicKeyPem"]
    assert production.secret_outputs["release_signing_public_key"] is False
    # Neither the signing key nor the deploy key is in anything sent to a droplet.
    key = production.named("release-archive-key", ":SpacesKey")
    for resource in production.of_type(":Command"):
        sent = json.dumps(mockcloud.plain(resource.inputs))
        for secret in (signing.state["privateKeyPem"], key.state["secretKey"], key.state["accessKey"]):
            assert json.dumps(secret)[1:-1] not in sent, resource.name
    for droplet in production.of_type(":Droplet"):
        assert key.state["accessKey"] not in droplet.state["userData"]


def test_the_configuration_is_what_the_servers_run_with_less_the_passwords(production):
    configuration = production.outputs["release_archive"]["configuration"]
    datastore = production.outputs["private_ips"]["datastore"]
    assert configuration == cloudinit.run_configuration(datastore, production.settings)
    provisioned = cloudinit.rendered_files(conventions.APP_SERVER, production.settings)
    assert configuration["ecosystem.config.js"] == provisioned[conventions.ECOSYSTEM_FILE]
    env = configuration["app.env.template"]
    assert f"POSTGRESQL_HOST={datastore}\n" in env
    assert f"POSTGRESQL_PASSWORD={app_server.SECRET_PLACEHOLDER}\n" in env
    passwords = [r.state["result"] for r in production.of_type(":RandomPassword")]
    assert passwords and not any(p in text for p in passwords for text in configuration.values())
    assert f"'{conventions.CURRENT_RELEASE_LINK}'" in configuration["ecosystem.config.js"]


def test_no_backups_means_no_deploy_key_and_no_output():
    deployment = mockcloud.deploy(mockcloud.stack_settings("staging", backups=False))
    assert not deployment.of_type(":SpacesKey")
    assert "release_archive" not in deployment.outputs
    assert "release_signing_public_key" not in deployment.outputs
