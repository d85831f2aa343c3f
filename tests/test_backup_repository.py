"""Each role's restic repository is created once: by its first droplet's `backup` push,
which every other droplet's push of the role waits for, and which alone may run `restic
init`. Two `restic init` at once on S3 (the engine runs independent pushes in parallel)
can leave the config of one and the key of the other: a repository restic cannot open.

The graph is read the way the Pulumi engine orders it: from the dependencies the SDK
sends with each registration, which the mock engine keeps (`deployment.mocks.options`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections import defaultdict

import pytest

import cloudinit
import mockcloud
from model import conventions
from stack_graph import COMMAND, backup_env, backup_pushes, pushes


def waits_for(deployment, push) -> set[str]:
    """The names of the resources the engine finishes before it runs `push`."""
    request = deployment.mocks.options[(COMMAND, push.name)]
    return {urn.rsplit("::", 1)[-1] for urn in request.dependencies}


def repositories(deployment) -> dict[str, dict[str, bool]]:
    """Each repository: the pushes that reach it, and whether each may create it."""
    found = defaultdict(dict)
    for name, push in backup_pushes(deployment).items():
        env = backup_env(push)
        found[env["RESTIC_REPOSITORY"]][name] = env["BACKUP_CREATES_REPOSITORY"] == "yes"
    return dict(found)


def assert_created_once(deployment) -> dict[str, str]:
    """Every repository has one creating push and every other push to it waits for that
    one; returns the creator of each repository (by its path in the bucket)."""
    creators = {}
    for repository, members in repositories(deployment).items():
        (creator,) = [name for name, creates in members.items() if creates]
        for name in members.keys() - {creator}:
            assert creator in waits_for(deployment, backup_pushes(deployment)[name]), (name, repository)
        # The creator waits for no other push to its repository (there is no cycle to hang on).
        assert not waits_for(deployment, backup_pushes(deployment)[creator]) & members.keys()
        creators[repository.rsplit("/restic/", 1)[1]] = creator
    return creators


@pytest.fixture(scope="module")
def three_app_servers():
    return mockcloud.deploy(mockcloud.stack_settings("staging", appServerCount=3))


def test_with_three_app_servers_one_creates_the_repository_and_the_others_wait_for_it(three_app_servers):
    app = repositories(three_app_servers)
    (pool,) = [members for repository, members in app.items() if repository.endswith("/restic/app")]
    assert sorted(pool) == ["app-1-backup-push", "app-2-backup-push", "app-3-backup-push"]
    assert [name for name, creates in pool.items() if creates] == ["app-1-backup-push"]
    for other in ("app-2-backup-push", "app-3-backup-push"):
        assert "app-1-backup-push" in waits_for(three_app_servers, backup_pushes(three_app_servers)[other])


def test_every_role_creates_its_repository_once(three_app_servers, staging_deployment, production_deployment):
    one = mockcloud.deploy(mockcloud.stack_settings("staging", appServerCount=1))
    for deployment in (three_app_servers, staging_deployment, production_deployment, one):
        # The LB and the datastore are one droplet each: their own push creates their repository.
        assert assert_created_once(deployment) == {
            conventions.LOAD_BALANCER: "lb-backup-push",
            conventions.APP_SERVER: "app-1-backup-push",
            conventions.DATASTORE: "datastore-backup-push",
        }


def test_a_new_app_server_waits_for_the_first_and_re_runs_no_other_push(staging_deployment):
    three = mockcloud.deploy(mockcloud.stack_settings("staging", appServerCount=3), previous=staging_deployment)
    app_3 = backup_pushes(three)["app-3-backup-push"]
    assert backup_env(app_3)["BACKUP_CREATES_REPOSITORY"] == "no"
    assert "app-1-backup-push" in waits_for(three, app_3)
    changed = {r.name for r in three.resources if not r.unchanged and r.type == COMMAND}
    assert changed == {"lb-upstreams-push"} | {name for name in pushes(three) if name.startswith("app-3-")}


# --- On the droplet: `platform-backup init` creates only when told to ------------------


def init_repository() -> str:
    """The rendered `init_repository` of platform-backup (the same on every role)."""
    script = cloudinit.rendered_files(conventions.APP_SERVER, mockcloud.stack_settings("staging"))[
        conventions.BACKUP_COMMAND
    ]
    found = re.search(r"^init_repository\(\) \{\n.*?^\}\n", script, re.M | re.S)
    assert found, "platform-backup has no init_repository function"
    return found.group()


def run_init(tmp_path, creates: str | None) -> subprocess.CompletedProcess:
    restic = shutil.which("restic")
    if not restic:
        pytest.fail("restic is missing: apt-get install restic")  # never a silent skip
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "RESTIC_REPOSITORY": str(tmp_path / "repository"),
           "RESTIC_PASSWORD": "test-password", "RESTIC_CACHE_DIR": str(tmp_path / "cache")}
    if creates is not None:
        env["BACKUP_CREATES_REPOSITORY"] = creates
    # platform-backup's own log and die, to stderr.
    script = ("set -Eeuo pipefail\nlog() { echo \"log: $*\" >&2; }\ndie() { echo \"error: $*\" >&2; exit 1; }\n"
              + init_repository() + "init_repository\n")
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.sandbox  # runs restic
def test_init_creates_a_missing_repository_only_on_the_droplet_told_to(tmp_path):
    for creates in (None, "no"):
        refused = run_init(tmp_path, creates)
        assert refused.returncode == 1, refused.stderr
        assert "does not create it" in refused.stderr
        assert not (tmp_path / "repository").exists()
    created = run_init(tmp_path, "yes")
    assert created.returncode == 0, created.stderr
    assert "created the restic repository" in created.stderr
    assert (tmp_path / "repository" / "config").is_file()
    # Once it exists, every droplet's check passes, and none creates it again.
    for creates in ("no", "yes"):
        checked = run_init(tmp_path, creates)
        assert checked.returncode == 0 and "created" not in checked.stderr, checked.stderr
