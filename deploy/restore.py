"""Fetch an archived release for a restore, checked before anything is written where a
server could receive it: `python -m deploy fetch STACK RELEASE`, and `rollback --to` a
release the servers no longer hold (unpacked here, then uploaded as a deploy's is).

    releases/<stack>/<id>.json.sig  verifies over <id>.json with the stack's release
                                    signing key's public half (its state; no droplet's)
    releases/<stack>/<id>.json      names this release, this stack and this tarball
    releases/<stack>/<id>.tar.gz    has the manifest's size and sha256

Anyone who can write the bucket (a leaked deploy key, the account's own Spaces keys) can
replace the tarball and its manifest together; only the stack's signing key makes a
signature that verifies. A release archived before releases were signed has none and is
refused too: deploy it again from its commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from pathlib import Path

from .archive import MANIFEST, OUTPUT, SIGNATURE, TARBALL, ArchiveError, Store, client


class IntegrityError(ArchiveError):
    """The archived release is not the one the stack's deploy archived: nothing is installed."""


# What deploy/remote.sh accepts as a release id, checked here before it names a local file.
RELEASE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def checked_id(release_id: str) -> str:
    if not RELEASE_ID.fullmatch(release_id):
        raise ArchiveError(f"release id {release_id!r}: only letters, digits, '.', '_' and '-', not first '.' "
                           "(e.g. 20261129T213005Z-abc1234)")
    return release_id


def _get(s3, store: Store, release_id: str, suffix: str, missing: str) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return s3.get_object(Bucket=store.bucket, Key=store.key(release_id, suffix))["Body"].read()
    except ClientError as failed:
        if failed.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            raise IntegrityError(f"{store.url(release_id, suffix)} is missing: {missing}") from None
        raise ArchiveError(f"could not read {store.url(release_id, suffix)} at {store.endpoint}: {failed}") from None
    except BotoCoreError as failed:
        raise ArchiveError(f"could not read {store.url(release_id, suffix)} at {store.endpoint}: {failed}") from None


def verified_manifest(store: Store, release_id: str, manifest_bytes: bytes, signature: bytes) -> dict:
    """The manifest's facts, once its signature verifies with the stack's public key and it
    names this release of this stack; IntegrityError saying what does not hold."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    where = store.url(release_id, MANIFEST)
    try:
        public = serialization.load_pem_public_key(store.signing_public_key_pem.encode())
    except (ValueError, TypeError):
        raise ArchiveError(f"stack {store.stack}: output {OUTPUT} holds no readable release signing public key; "
                           "run `pulumi up` with this version of the program") from None
    if not isinstance(public, ed25519.Ed25519PublicKey):
        raise ArchiveError(f"stack {store.stack}: the release signing public key in output {OUTPUT} is not Ed25519")
    try:
        public.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise IntegrityError(
            f"{where}: its signature ({store.url(release_id, SIGNATURE)}) does not verify with stack "
            f"{store.stack}'s release signing key (output release_signing_public_key): the manifest or the "
            "signature was changed in the bucket, or made by another key. Refusing to restore it") from None
    facts = json.loads(manifest_bytes)
    expected = {"release_id": release_id, "stack": store.stack, "tarball": store.key(release_id, TARBALL)}
    for name, value in expected.items():
        if facts.get(name) != value:
            raise IntegrityError(f"{where}: signed, but its {name} is {facts.get(name)!r}, not {value!r}: another "
                                 "release's manifest put in this one's place. Refusing to restore it")
    return facts


def fetch(store: Store, release_id: str, directory: str) -> Path:
    """Download the release's tarball into `directory` as <id>.tar.gz, only once its signed
    manifest and its sha256 and size check; nothing is left there otherwise."""
    checked_id(release_id)
    s3 = client(store)
    manifest_bytes = _get(s3, store, release_id, MANIFEST, "the release is not archived (or only in part)")
    signature = _get(s3, store, release_id, SIGNATURE, (
        "the manifest is unsigned (archived before releases were signed, or the signature was deleted), so "
        "nothing says the tarball is the one the deploy archived. Refusing to restore it; deploy its commit "
        f"({_commit_of(manifest_bytes)}) again instead"))
    facts = verified_manifest(store, release_id, manifest_bytes, signature)
    target = Path(directory) / f"{release_id}{TARBALL}"
    partial = target.with_name(target.name + ".partial")
    digest, size = hashlib.sha256(), 0
    try:
        body = s3.get_object(Bucket=store.bucket, Key=store.key(release_id, TARBALL))["Body"]
        with partial.open("wb") as out:
            for chunk in body.iter_chunks(1 << 20):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        if (digest.hexdigest(), size) != (facts.get("tarball_sha256"), facts.get("tarball_bytes")):
            raise IntegrityError(
                f"{store.url(release_id, TARBALL)}: sha256 {digest.hexdigest()} and {size} bytes, but its signed "
                f"manifest says sha256 {facts.get('tarball_sha256')} and {facts.get('tarball_bytes')} bytes: the "
                "tarball was replaced or damaged in the bucket. Refusing to restore it")
        os.replace(partial, target)
    except Exception as failed:
        partial.unlink(missing_ok=True)
        if isinstance(failed, ArchiveError):
            raise
        from botocore.exceptions import BotoCoreError, ClientError
        if isinstance(failed, (BotoCoreError, ClientError)):
            raise ArchiveError(f"could not read {store.url(release_id, TARBALL)} at {store.endpoint}: {failed}") from None
        raise
    return target


def unpack(tarball: Path, directory: str, release_id: str) -> Path:
    """The tarball's `release/` (what every server received) as `directory`/<id>; tar's
    "data" filter refuses links out of it, device files and absolute names."""
    target = Path(directory) / checked_id(release_id)
    prefix = "release/"
    with tarfile.open(tarball, "r:gz") as archive:
        members = []
        for member in archive.getmembers():
            if member.name.startswith(prefix):
                member.name = member.name[len(prefix):]
                members.append(member)
        if not members:
            raise IntegrityError(f"{tarball.name}: holds no release/ directory")
        target.mkdir(parents=True)
        archive.extractall(target, members=members, filter="data")
    return target


def _commit_of(manifest_bytes: bytes) -> str:
    try:
        return str(json.loads(manifest_bytes).get("git_commit") or "unknown")
    except ValueError:
        return "unknown"
