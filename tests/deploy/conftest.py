"""Deploy tests: most need bash alone (tier `fast`); those marked `sandbox` run rsync, curl,
openssl, git, npm or shellcheck; the *_localcloud modules deploy to and operate the
session's local stack (`localcloud`, root), with the fixtures below."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# The local stack's deploy tests (on_the_local_stack.py): the session's stack and the key.

@pytest.fixture(scope="module")
def plan(local_stack):
    """The session's local stack (tests/conftest.py), as its last `up` deployed it."""
    from localcloud import stack as local
    from on_the_local_stack import STACK
    assert local_stack.plan.stack == STACK
    return local.deployed(STACK)


@pytest.fixture(scope="module")
def operator_key(plan):
    """The local cloud's operator key: the plan's operators push gave every droplet its public half."""
    from localcloud import config
    assert config.OPERATOR_KEY.exists(), "the local stack's `up` makes the operator key"
    return str(config.OPERATOR_KEY)


# The release archive's tests (archive_stand_in.py): moto's S3 on loopback over TLS.

@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    from s3_stand_in import s3_over_tls
    with s3_over_tls(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def s3(stand_in):
    from archive_stand_in import s3_client
    return s3_client(stand_in)


@pytest.fixture
def store(staging_deployment, stand_in, s3, monkeypatch):
    """The staging stack's release archive, moved to the stand-in."""
    from archive_stand_in import store_on
    monkeypatch.setenv("AWS_CA_BUNDLE", stand_in.ca_file)
    return store_on(stand_in, s3, staging_deployment.outputs)


@pytest.fixture
def build(tmp_path):
    from archive_stand_in import NEW, built_release
    return built_release(tmp_path / NEW)
