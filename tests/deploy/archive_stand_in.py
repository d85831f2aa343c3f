"""The release archive's tests (test_archive.py, test_release_integrity.py): the bucket
store stand-in and a deploy through the CLI with the fleet kept as data (fleet.py). Their
fixtures (stand_in, s3, store, build) are in conftest.py."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import boto3

from deploy import __main__ as cli
from deploy.archive import Store, store_from_outputs
from deploy.release import Build

from fleet import NEW, FakeTarget, Fleet

# What a deploy of NEW to the staging stack archives: the tarball, its manifest, the signature.
KEYS = (f"releases/staging/{NEW}.tar.gz", f"releases/staging/{NEW}.json", f"releases/staging/{NEW}.json.sig")


def deploy(monkeypatch, fleet: Fleet, target: FakeTarget, build: Build) -> int:
    monkeypatch.setattr(cli, "target_of", lambda args, executor: target)
    monkeypatch.setattr(cli.release, "build", lambda app, work, executor: build)
    return cli.main(["deploy", "staging"], executor=fleet)


def s3_client(stand_in):
    """A test's own view of the bucket store."""
    return boto3.client("s3", endpoint_url=stand_in.endpoint, region_name="us-east-1", verify=stand_in.ca_file,
                        aws_access_key_id="test", aws_secret_access_key="test")


def store_on(stand_in, s3, outputs: dict) -> Store:
    """The stack's own `release_archive` output, its endpoint and bucket moved to the
    stand-in (a new bucket); AWS_CA_BUNDLE must name the stand-in's CA."""
    bucket = f"staging-backups-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    outputs = json.loads(json.dumps(outputs))
    outputs["release_archive"] |= {"endpoint": stand_in.endpoint, "bucket": bucket}
    return store_from_outputs("staging", outputs, missing_why="")


def built_release(root: Path) -> Build:
    """NEW built as release.build leaves it, at `root`: sources, node_modules, REVISION."""
    (root / "web").mkdir(parents=True)
    (root / "node_modules" / "pg").mkdir(parents=True)
    (root / "node_modules" / ".bin").mkdir()
    (root / "package.json").write_text(json.dumps({"name": "shop", "version": "2.3.4"}))
    (root / "web" / "server.js").write_text("require('pg');\n")
    (root / "web" / "server.js").chmod(0o600)
    (root / "node_modules" / "pg" / "index.js").write_text("module.exports = {};\n")
    (root / "node_modules" / "pg" / "cli.js").write_text("#!/usr/bin/env node\n")
    (root / "node_modules" / "pg" / "cli.js").chmod(0o700)
    (root / "node_modules" / ".bin" / "pg").symlink_to("../pg/cli.js")
    (root / "REVISION").write_text(NEW + "\n")
    return Build(NEW, str(root), "bbbbbbb", False, "2026-11-29T21:30:05Z", "v22.11.0")
