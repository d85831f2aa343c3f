"""A release restored from the archive is the one the deploy archived: its manifest is
signed with the stack's release signing key (in the stack's state, on no droplet) and
names the tarball's sha256. A tarball or manifest replaced in the bucket is refused.

Against moto's S3 on loopback over TLS (s3_stand_in), with the staging stack's own keys.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from deploy import __main__ as cli
from deploy import archive, restore
from deploy.restore import IntegrityError

from archive_stand_in import KEYS, deploy
from fleet import NEW, FakeTarget, Fleet

TARBALL, MANIFEST, SIGNATURE = KEYS


@pytest.fixture
def archived(monkeypatch, store, build):
    """The staging stack's deploy of NEW, archived to the stand-in."""
    assert deploy(monkeypatch, Fleet(), FakeTarget(store), build) == 0
    return store


def body(s3, store, key: str) -> bytes:
    return s3.get_object(Bucket=store.bucket, Key=key)["Body"].read()


@pytest.fixture
def into(tmp_path) -> Path:
    """Where a fetch writes (the build fixture has tmp_path itself)."""
    (tmp_path / "fetched").mkdir()
    return tmp_path / "fetched"


def fetched(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_the_archived_release_is_fetched_once_its_signature_and_sha256_check(archived, s3, into, staging_deployment):
    path = restore.fetch(archived, NEW, str(into))
    assert path == into / f"{NEW}.tar.gz"
    assert path.read_bytes() == body(s3, archived, TARBALL)
    # Signed with the stack's key: its public half, a public output, verifies it.
    public = staging_deployment.outputs["release_signing_public_key"]
    assert archived.signing_public_key_pem == public
    from cryptography.hazmat.primitives import serialization
    serialization.load_pem_public_key(public.encode()).verify(body(s3, archived, SIGNATURE), body(s3, archived, MANIFEST))


def test_a_replaced_tarball_is_refused_and_nothing_is_left_to_install(archived, s3, into):
    forged = b"a tarball of someone else's"
    s3.put_object(Bucket=archived.bucket, Key=TARBALL, Body=forged)
    with pytest.raises(IntegrityError) as refused:
        restore.fetch(archived, NEW, str(into))
    manifest = json.loads(body(s3, archived, MANIFEST))
    assert str(refused.value) == (
        f"s3://{archived.bucket}/{TARBALL}: sha256 {hashlib.sha256(forged).hexdigest()} "
        f"and {len(forged)} bytes, but its signed manifest says sha256 {manifest['tarball_sha256']} and "
        f"{manifest['tarball_bytes']} bytes: the tarball was replaced or damaged in the bucket. Refusing to restore it")
    assert fetched(into) == []


def test_a_tarball_replaced_with_a_manifest_to_match_is_refused_by_the_signature(archived, s3, into):
    forged = b"a tarball of someone else's"
    manifest = json.loads(body(s3, archived, MANIFEST))
    manifest |= {"tarball_sha256": hashlib.sha256(forged).hexdigest(), "tarball_bytes": len(forged)}
    s3.put_object(Bucket=archived.bucket, Key=TARBALL, Body=forged)
    s3.put_object(Bucket=archived.bucket, Key=MANIFEST, Body=(json.dumps(manifest, indent=2) + "\n").encode())
    with pytest.raises(IntegrityError, match=(
            rf"releases/staging/{NEW}\.json: its signature \(s3://.*/{SIGNATURE}\) does not verify with stack "
            r"staging's release signing key \(output release_signing_public_key\): the manifest or the signature "
            r"was changed in the bucket, or made by another key. Refusing to restore it")):
        restore.fetch(archived, NEW, str(into))
    # Signed again with a key of the forger's own: still refused.
    forger = ed25519.Ed25519PrivateKey.generate()
    s3.put_object(Bucket=archived.bucket, Key=SIGNATURE, Body=forger.sign(body(s3, archived, MANIFEST)))
    with pytest.raises(IntegrityError, match="does not verify"):
        restore.fetch(archived, NEW, str(into))
    assert fetched(into) == []


def test_another_releases_signed_manifest_in_this_ones_place_is_refused(archived, s3, into):
    """An older, genuinely signed release copied over this one's keys."""
    older = "20260101T000000Z-1111111"
    for suffix, key in ((archive.TARBALL, TARBALL), (archive.MANIFEST, MANIFEST), (archive.SIGNATURE, SIGNATURE)):
        s3.copy_object(Bucket=archived.bucket, Key=archived.key(older, suffix),
                       CopySource={"Bucket": archived.bucket, "Key": key})
    with pytest.raises(IntegrityError) as refused:
        restore.fetch(archived, older, str(into))
    assert str(refused.value) == (
        f"s3://{archived.bucket}/releases/staging/{older}.json: signed, but its release_id is {NEW!r}, not "
        f"{older!r}: another release's manifest put in this one's place. Refusing to restore it")
    assert fetched(into) == []


def test_an_unsigned_manifest_is_refused_naming_the_commit_to_deploy_instead(archived, s3, into):
    s3.delete_object(Bucket=archived.bucket, Key=SIGNATURE)
    with pytest.raises(IntegrityError) as refused:
        restore.fetch(archived, NEW, str(into))
    assert str(refused.value) == (
        f"s3://{archived.bucket}/{SIGNATURE} is missing: the manifest is unsigned (archived before releases were "
        "signed, or the signature was deleted), so nothing says the tarball is the one the deploy archived. "
        "Refusing to restore it; deploy its commit (bbbbbbb) again instead")


def test_the_fetch_command_writes_the_checked_tarball_and_touches_no_server(monkeypatch, archived, s3, into):
    monkeypatch.setattr(cli, "target_of", lambda args, executor: FakeTarget(archived))
    fleet = Fleet()
    assert cli.main(["fetch", "staging", NEW, "--into", str(into)], executor=fleet) == 0
    assert (into / f"{NEW}.tar.gz").read_bytes() == body(s3, archived, TARBALL)
    assert f"{into}/{NEW}.tar.gz: signature and sha256 check" in fleet.printed()
    assert fleet.log == [], "no server, not even the LB, is reached"
    (into / f"{NEW}.tar.gz").unlink()
    s3.put_object(Bucket=archived.bucket, Key=TARBALL, Body=b"replaced")
    assert cli.main(["fetch", "staging", NEW, "--into", str(into)], executor=fleet) == cli.EXIT_STOPPED
    assert "the tarball was replaced or damaged in the bucket. Refusing to restore it" in fleet.printed()
    assert fetched(into) == []
    for secret in archived.secrets:
        assert secret not in fleet.printed()


@pytest.mark.sandbox
def test_the_readmes_check_by_hand_with_openssl_agrees(archived, s3, tmp_path):
    """The README's recipe without the deploy tool: openssl verifies the signature."""
    (tmp_path / "public.pem").write_text(archived.signing_public_key_pem)
    (tmp_path / "m.json").write_bytes(body(s3, archived, MANIFEST))
    (tmp_path / "m.json.sig").write_bytes(body(s3, archived, SIGNATURE))
    verify = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "public.pem"), "-rawin",
              "-in", str(tmp_path / "m.json"), "-sigfile", str(tmp_path / "m.json.sig")]
    assert subprocess.run(verify, capture_output=True, text=True).stdout.strip() == "Signature Verified Successfully"
    (tmp_path / "m.json").write_bytes(body(s3, archived, MANIFEST).replace(b'"dirty": false', b'"dirty": true'))
    failed = subprocess.run(verify, capture_output=True, text=True)
    assert failed.returncode != 0 and "Signature Verification Failure" in failed.stdout
