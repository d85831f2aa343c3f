"""Archive each release to the stack's release bucket, before any server receives it.

    releases/<stack>/<id>.tar.gz   release/    the directory every server receives (/srv/app/releases/<id>)
                                   config/     how it runs: pm2's ecosystem file, the app's
                                               environment with its passwords left out
                                   manifest.json
    releases/<stack>/<id>.json     the manifest again, with the tarball's size and sha256
    releases/<stack>/<id>.json.sig the manifest's Ed25519 signature, by the stack's release
                                   signing key (in its state, never on a droplet)

The manifest goes up last: when it is there, the tarball is whole. A restore
(deploy/restore.py) installs nothing whose manifest's signature or tarball's sha256 does
not check. Where, and with which keys, come from the stack's `release_archive` output
(components/release_archive.py). Each deploy then deletes the stack's archived releases
older than the newest ARCHIVED_RELEASES_KEPT (ids sort by age), the manifest first.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from model import conventions

from . import ARCHIVED_RELEASES_KEPT

from .executor import Executor
from .release import Build

OUTPUT = "release_archive"   # the stack output that says where releases go
TARBALL, MANIFEST, SIGNATURE = ".tar.gz", ".json", ".json.sig"


class NotArchived(Exception):
    """Why this stack's releases cannot be archived: printed, and the deploy goes on."""


class ArchiveError(RuntimeError):
    """The archive could not be written: the deploy stops before any server is touched."""


@dataclass(frozen=True)
class Store:
    """Where one stack's releases are archived, and the configuration archived with them."""

    stack: str
    bucket: str
    region: str
    endpoint: str
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    configuration: dict[str, str] = field(default_factory=dict, repr=False)
    # The stack's release signing key (PEM, Ed25519): its private half signs each manifest
    # archived, its public half checks one restored.
    signing_key_pem: str = field(default="", repr=False)
    signing_public_key_pem: str = ""
    # The CA file of a stand-in's private certificate (the local cloud's); None: botocore's
    # own bundle, or AWS_CA_BUNDLE when set.
    ca_bundle: str | None = None

    @property
    def secrets(self) -> list[str]:
        return [self.access_key_id, self.secret_access_key, *([self.signing_key_pem] if self.signing_key_pem else [])]

    def key(self, release_id: str, suffix: str) -> str:
        return conventions.release_archive_key(self.stack, release_id, suffix)

    def url(self, release_id: str, suffix: str) -> str:
        return f"s3://{self.bucket}/{self.key(release_id, suffix)}"


def store_from_outputs(stack: str, outputs: dict, missing_why: str) -> Store:
    """The stack's `release_archive` output; NotArchived(missing_why) when it has none."""
    archive = outputs.get(OUTPUT)
    if archive is None:
        raise NotArchived(missing_why)
    try:
        return Store(stack, archive["bucket"], archive["region"], archive["endpoint"], archive["access_key_id"],
                     archive["secret_access_key"], dict(archive.get("configuration") or {}),
                     archive["signing_key_pem"], archive["signing_public_key_pem"])
    except (KeyError, TypeError) as missing:
        raise ArchiveError(f"stack {stack}: its output {OUTPUT} lacks {missing}; run `pulumi up` with this "
                           "version of the program") from None


# --- what is archived -------------------------------------------------------------------

def package_facts(build: Build) -> dict[str, str]:
    try:
        package = json.loads((Path(build.directory) / "package.json").read_text())
    except (OSError, ValueError) as problem:
        raise ArchiveError(f"{build.directory}/package.json: cannot read the app's name and version ({problem})")
    return {"name": str(package.get("name", "")), "version": str(package.get("version", ""))}


def manifest(store: Store, build: Build) -> dict:
    """What the release is. Holds no secret: the configuration's passwords never reach it."""
    return {
        "release_id": build.release_id,
        "stack": store.stack,
        "git_commit": build.commit,
        "dirty": build.dirty,
        "built_at": build.built_at,
        "node_version": build.node_version,
        "app": package_facts(build),
        "release": "release/",
        "configuration": [f"config/{name}" for name in sorted(store.configuration)],
        "tarball": store.key(build.release_id, TARBALL),
    }


def normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Modes as the servers hold them (commands.RELEASE_MODES), no operator's names or ids."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if info.isdir() or info.mode & 0o111:
        info.mode = 0o755
    elif not info.issym():
        info.mode = 0o644
    return info


def add_text(archive: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
    archive.addfile(info, io.BytesIO(data))


def pack(store: Store, build: Build, facts: dict, path: Path) -> None:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as archive:
        archive.add(build.directory, arcname="release", filter=normalized)
        for name, text in sorted(store.configuration.items()):
            add_text(archive, f"config/{name}", text)
        add_text(archive, "manifest.json", json.dumps(facts, indent=2) + "\n")


@dataclass(frozen=True)
class Upload:
    path: Path
    key: str
    content_type: str


def uploads(store: Store, release_id: str, tarball: Path, manifest_file: Path, signature_file: Path) -> list[Upload]:
    """In this order: the manifest last, so its presence says the tarball and signature are whole."""
    return [Upload(tarball, store.key(release_id, TARBALL), "application/gzip"),
            Upload(signature_file, store.key(release_id, SIGNATURE), "application/octet-stream"),
            Upload(manifest_file, store.key(release_id, MANIFEST), "application/json")]


def sign(store: Store, manifest_bytes: bytes) -> bytes:
    """The manifest's Ed25519 signature (64 bytes) by the stack's release signing key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        key = serialization.load_pem_private_key(store.signing_key_pem.encode(), None)
    except (ValueError, TypeError) as unreadable:
        raise ArchiveError(f"stack {store.stack}: the release signing key in output {OUTPUT} is not a PEM "
                           f"private key ({unreadable}). No server was touched.") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ArchiveError(f"stack {store.stack}: the release signing key in output {OUTPUT} is not Ed25519. "
                           "No server was touched.")
    return key.sign(manifest_bytes)


# --- sending -------------------------------------------------------------------------------

def client(store: Store):
    """An S3 client for Spaces. Without the store's own CA, `verify` is left unset: botocore
    then reads AWS_CA_BUNDLE (which replaces the default bundle, not adds to it)."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=store.endpoint,
        region_name=store.region,
        **({"verify": store.ca_bundle} if store.ca_bundle else {}),
        aws_access_key_id=store.access_key_id,
        aws_secret_access_key=store.secret_access_key,
        config=Config(
            # Path style: the bucket in the path works for Spaces and for a stand-in without wildcard names.
            s3={"addressing_style": "path"},
            # Checksums only where S3 requires them: S3-compatible stores do not all take the newer ones.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=15,
        ),
    )


def send(store: Store, plan: list[Upload]) -> None:
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError, SSLError

    try:
        s3 = client(store)
    except (BotoCoreError, ValueError) as failed:
        raise ArchiveError(f"no S3 client for {store.endpoint}: {failed}. No server was touched.") from None
    for upload in plan:
        try:
            s3.upload_file(str(upload.path), store.bucket, upload.key, ExtraArgs={"ContentType": upload.content_type})
        except (Boto3Error, BotoCoreError, ClientError) as failed:
            hint = (f" If a private CA signed the endpoint's certificate, set AWS_CA_BUNDLE to a file holding it "
                    f"(now: {os.environ.get('AWS_CA_BUNDLE') or 'unset'})." if isinstance(failed, SSLError) else "")
            raise ArchiveError(f"could not archive to s3://{store.bucket}/{upload.key} at {store.endpoint}: "
                               f"{failed}.{hint} No server was touched.") from None


def archived(store: Store, release_id: str) -> bool:
    """Whether the release's manifest, uploaded last, is in the archive."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client(store).head_object(Bucket=store.bucket, Key=store.key(release_id, MANIFEST))
        return True
    except ClientError as failed:
        if failed.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            return False
        raise ArchiveError(f"could not look in s3://{store.bucket} at {store.endpoint}: {failed}") from None
    except BotoCoreError as failed:
        raise ArchiveError(f"could not look in s3://{store.bucket} at {store.endpoint}: {failed}") from None


def archived_ids(store: Store) -> list[str]:
    """The stack's archived releases, oldest first (a tarball without its manifest too)."""
    prefix = store.key("", "")
    ids = set()
    for page in client(store).get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=prefix):
        for listed in page.get("Contents", []):
            name = listed["Key"].removeprefix(prefix)
            ids.update(name.removesuffix(suffix) for suffix in (TARBALL, MANIFEST) if name.endswith(suffix))
    return sorted(ids)


def prune(store: Store, keep: int) -> list[str]:
    """Delete the stack's archived releases but the newest `keep`; returns the ids deleted.
    The manifest goes first, so a release half deleted reads as not archived. One request
    per object: DeleteObjects needs a checksum header not every S3-compatible store takes."""
    s3 = client(store)
    old = archived_ids(store)[:-keep]
    for release_id in old:
        for suffix in (MANIFEST, SIGNATURE, TARBALL):
            s3.delete_object(Bucket=store.bucket, Key=store.key(release_id, suffix))
    return old


def archive(store: Store, build: Build, work_dir: str, executor: Executor) -> None:
    """Pack the release with its configuration and manifest, upload both, then delete the
    archived releases beyond the newest ARCHIVED_RELEASES_KEPT."""
    start = time.monotonic()
    facts = manifest(store, build)
    tarball = Path(work_dir) / f"{build.release_id}{TARBALL}"
    pack(store, build, facts, tarball)
    size = tarball.stat().st_size
    with tarball.open("rb") as f:
        facts = {**facts, "tarball_bytes": size, "tarball_sha256": hashlib.file_digest(f, "sha256").hexdigest()}
    manifest_bytes = (json.dumps(facts, indent=2) + "\n").encode()
    manifest_file = Path(work_dir) / f"{build.release_id}{MANIFEST}"
    manifest_file.write_bytes(manifest_bytes)
    signature_file = Path(work_dir) / f"{build.release_id}{SIGNATURE}"
    signature_file.write_bytes(sign(store, manifest_bytes))
    executor.say(f"archiving {build.release_id} ({size / 2**20:.1f} MiB) to "
                 f"{store.url(build.release_id, TARBALL)} at {store.endpoint} ...")
    send(store, uploads(store, build.release_id, tarball, manifest_file, signature_file))
    executor.say(f"archived {build.release_id} with its signed manifest ({time.monotonic() - start:.1f}s)")
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        removed = prune(store, ARCHIVED_RELEASES_KEPT)
    except (Boto3Error, BotoCoreError, ClientError) as failed:
        # The new release is archived; old ones left over cost space, not safety.
        executor.say(f"warning: could not delete archived releases older than the newest "
                     f"{ARCHIVED_RELEASES_KEPT} ({failed}); the deploy goes on")
        return
    if removed:
        executor.say(f"deleted {len(removed)} archived release(s) older than the newest {ARCHIVED_RELEASES_KEPT} "
                     f"({removed[0]} .. {removed[-1]}); the bucket's versioning keeps them "
                     f"{conventions.BUCKET_NONCURRENT_DAYS} more days")
