"""The program's graph under the SDK's mock engine, built once per stack for the session.

`mockcloud.deploy` runs `__main__.build` with the real Pulumi.<stack>.yaml settings;
the mock providers hand out real addresses, keys, certificates and passwords, so the
tests check what a real `pulumi up` would register.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import mockcloud  # noqa: E402

STACKS = ("staging", "production")


@pytest.fixture(scope="session")
def staging_deployment() -> mockcloud.Deployment:
    return mockcloud.deploy(mockcloud.stack_settings("staging"))


@pytest.fixture(scope="session")
def production_deployment() -> mockcloud.Deployment:
    return mockcloud.deploy(mockcloud.stack_settings("production"))


@pytest.fixture(scope="session", params=STACKS)
def deployment(request, staging_deployment, production_deployment) -> mockcloud.Deployment:
    """Each stack's deployment in turn."""
    return {"staging": staging_deployment, "production": production_deployment}[request.param]
