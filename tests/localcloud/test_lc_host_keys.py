"""A droplet whose SSH host key changes behind the program's back, on the booted stack:
the next push to it and the next deploy fail, naming it, and nothing reaches it.

app-2 gets a new ed25519 host key (as a droplet taken over and rebuilt would); a push
from the plan, run by the local cloud's copy of pulumi-command's client, and `python -m
deploy releases` must both refuse it before logging in. Its own key goes back after.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localcloud import engine, plan as lc_plan, stack
from model import conventions

pytestmark = pytest.mark.localcloud

ROOT = Path(__file__).resolve().parents[2]
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key"
TARGET = "app-2"


@pytest.fixture
def app_2_with_a_new_host_key(local_stack, tmp_path):
    saved = {suffix: local_stack.run(TARGET, ["cat", HOST_KEY + suffix], check=True).stdout for suffix in ("", ".pub")}
    local_stack.run(TARGET, ["sh", "-c", f"rm -f {HOST_KEY} {HOST_KEY}.pub && "
                             f"ssh-keygen -q -t ed25519 -N '' -f {HOST_KEY} && systemctl restart ssh"], check=True)
    try:
        yield
    finally:
        for suffix, text in saved.items():
            local_stack.run(TARGET, ["sh", "-c", f"cat > {HOST_KEY}{suffix}"], input=text, check=True)
        local_stack.run(TARGET, ["systemctl", "restart", "ssh"], check=True)


def recorded_push(local_stack) -> lc_plan.RemoteCommand:
    """app-2's operators push as the stack's state holds it (the keys its gates recorded),
    alone: what it depends on has run."""
    push = next(c for c in stack.deployed(local_stack.plan.stack).commands if c.name == f"{TARGET}-operators-push")
    return dataclasses.replace(push, needs=frozenset())


def two_tries(push: lc_plan.RemoteCommand) -> lc_plan.RemoteCommand:
    """pulumi-command tries a failed handshake again up to dial_error_limit (60 here): two
    tries show the same without four minutes of waiting."""
    return dataclasses.replace(push, target=dataclasses.replace(push.target, dial_error_limit=2))


def lock_log(local_stack) -> str:
    return local_stack.run(TARGET, ["cat", conventions.DROPLET_LOCK_LOG]).stdout


def test_a_changed_host_key_fails_the_next_push_and_the_next_deploy(local_stack, app_2_with_a_new_host_key):
    from localcloud import config
    push = recorded_push(local_stack)
    assert push.target.host_key.startswith("ssh-ed25519 ") and push.proxy.host_key.startswith("ssh-ed25519 ")
    quick = two_tries(push)
    before = lock_log(local_stack)
    (result,) = engine.run([quick], parallelism=1)
    assert not result.ok and result.name == f"{TARGET}-operators-push", result.output[-2000:]
    time.sleep(1)
    assert lock_log(local_stack) == before           # no push reached platform-push

    deploy = subprocess.run([sys.executable, "-m", "deploy", "releases", local_stack.plan.stack, "--local",
                             "-i", str(config.OPERATOR_KEY)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    said = deploy.stdout + deploy.stderr
    assert deploy.returncode != 0, said
    assert f"Host key for {local_stack.name(TARGET)} has changed" in said, said


def test_the_same_push_goes_through_with_the_recorded_key(local_stack):
    """The check above can fail: with app-2's own key back, the same push logs in."""
    (result,) = engine.run([two_tries(recorded_push(local_stack))], parallelism=1)
    assert result.ok, result.output[-2000:]
