"""Every push waits for its droplet's platform, which waits for its boot gate, and every
hop gets the same patience.

A first real `pulumi up` starts each push as soon as its droplet exists; the graph must
make the bundle push wait until the droplet takes logins and has finished its first boot
(the gate), every other push until the platform is in place (the bundle push), and give
the jump host's connection as many dial tries as the target's. The gate records the
droplet's host key (its stdout), and every later connection pins it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import pytest

import mockcloud
from components import remote, ssh
from model import conventions
from stack_graph import COMMAND, droplets, of_type

LOCAL_COMMAND = "command:local:Command"


def gates(deployment):
    return {r.name: r for r in of_type(deployment, LOCAL_COMMAND) if r.name.endswith("-boot-gate")}


def depends_on(deployment, resource) -> set[str]:
    request = deployment.mocks.options[(resource.type, resource.name)]
    return {urn.rsplit("::", 1)[-1] for urn in request.dependencies}


def test_every_droplet_has_one_gate_that_runs_again_when_it_is_replaced(deployment):
    by_id = {d.id: d.name for d in droplets(deployment)}
    found = gates(deployment)
    assert sorted(found) == sorted(f"{name}-boot-gate" for name in by_id.values())
    for name, gate in found.items():
        assert gate.state["triggers"] == [next(i for i, n in by_id.items() if f"{n}-boot-gate" == name)]


def test_every_bundle_push_depends_on_its_droplets_gate(deployment):
    found = gates(deployment)
    bundles = [push for push in of_type(deployment, COMMAND) if push.name.endswith("-bundle-push")]
    assert sorted(b.name.removesuffix("-bundle-push") for b in bundles) == sorted(
        g.removesuffix("-boot-gate") for g in found)
    for push in bundles:
        host = push.state["connection"]["host"]
        gate = next(g for g in found.values() if g.state["environment"]["PLATFORM_SSH_LOGIN"] == f"ops@{host}")
        assert gate.name in depends_on(deployment, push), push.name


def test_every_other_push_waits_for_its_droplets_platform(deployment):
    pushes = of_type(deployment, COMMAND)
    bundle_of = {push.state["connection"]["host"]: push.name for push in pushes if push.name.endswith("-bundle-push")}
    for push in pushes:
        if not push.name.endswith(("-bundle-push", "-first-bundle")):
            assert bundle_of[push.state["connection"]["host"]] in depends_on(deployment, push), push.name


def test_a_droplet_behind_the_lb_waits_for_the_lbs_platform_first(deployment):
    """Its pushes open connections through the LB only once the LB's provisioning (its
    host firewall included) is over."""
    for name, gate in gates(deployment).items():
        if name != "lb-boot-gate":
            assert "lb-bundle-push" in depends_on(deployment, gate), name


def test_a_new_bundle_or_certificate_rolls_through_the_pool_one_member_at_a_time_each_out_of_the_lbs_pool(
        deployment):
    """Per member, on the LB: drained, then its bundle and certificate pushes (each may
    reload its nginx), then back in the pool; the next member is drained once the one
    before is back. Each drain runs again with a new bundle or a new certificate."""
    members = sorted(push.name.removesuffix("-bundle-push") for push in of_type(deployment, COMMAND)
                     if push.name.startswith("app-") and push.name.endswith("-bundle-push"))
    assert len(members) == deployment.settings.app_server_count >= 2
    lb = deployment.named("lb-bundle-push", ":Command").state["connection"]
    droplet = {d.name: d for d in droplets(deployment)}
    for n, member in enumerate(members):
        push = deployment.named(f"{member}-bundle-push", ":Command")
        drain, undrain = (deployment.named(f"{member}-{step}", ":Command") for step in ("drain", "undrain"))
        address = droplet[member].state["ipv4AddressPrivate"]
        assert drain.state["create"] == f"sudo {conventions.DRAIN_COMMAND} for-push {address}"
        assert undrain.state["create"] == f"sudo {conventions.DRAIN_COMMAND} after-push {address}"
        for step in (drain, undrain):
            assert step.state["connection"] == lb and "lb-bundle-push" in depends_on(deployment, step)
        tls = deployment.named(f"{member}-tls-push", ":Command")
        cert = json.loads(tls.state["stdin"])["server.crt"]
        # The drain runs again with a new bundle or certificate, the undrain whenever the drain has run.
        assert drain.state["triggers"] == [*push.state["triggers"], hashlib.sha256(cert.encode()).hexdigest()]
        assert undrain.state["triggers"] == [drain.id]
        for pushed in (push, tls):
            assert drain.name in depends_on(deployment, pushed) and pushed.name in depends_on(deployment, undrain)
        if n:
            assert f"{members[n - 1]}-undrain" in depends_on(deployment, drain)


def test_a_new_pool_member_gets_its_first_bundle_at_once(deployment):
    """Its first bundle waits for its own gate only, not for the member before it (a new
    pool provisions side by side); its bundle push waits for it, so the roll finds the
    bundle in place. A droplet with a platform takes no bundle from it."""
    members = sorted(push.name.removesuffix("-first-bundle") for push in of_type(deployment, COMMAND)
                     if push.name.endswith("-first-bundle"))
    assert members == [f"app-{n}" for n in range(1, deployment.settings.app_server_count + 1)]
    for member in members:
        first = deployment.named(f"{member}-first-bundle", ":Command")
        push = deployment.named(f"{member}-bundle-push", ":Command")
        assert {d for d in depends_on(deployment, first) if d.startswith("app-")} == {member, f"{member}-boot-gate"}
        assert first.name in depends_on(deployment, push)
        assert (first.state["stdin"], first.state["triggers"]) == (push.state["stdin"], push.state["triggers"])
        assert first.state["connection"] == push.state["connection"]
        assert first.state["create"].startswith(f"if sudo test -e {conventions.CURRENT_BUNDLE}; then cat >/dev/null;")
        assert first.state["create"].endswith(f"else {push.state['create']}; fi")


def test_the_first_release_waits_for_the_apps_environment(deployment):
    """It starts the apps; started before their .env exists, they fail, and the env push's
    reload with them (seen on the local cloud with the engine's order)."""
    for push in of_type(deployment, COMMAND):
        if push.name.endswith("-example-app-push"):
            member = push.name.removesuffix("-example-app-push")
            assert f"{member}-env-push" in depends_on(deployment, push), push.name


def test_a_new_env_rolls_through_the_pool_once_the_datastore_takes_the_apps_logins(deployment):
    """Each member's env push waits for the datastore's passwords and for the member before
    it: a .env that breaks the apps stops at the first server (platform-push puts its old
    one back), and one pushed while the datastore still boots would fail its health check."""
    members = sorted(push.name.removesuffix("-env-push") for push in of_type(deployment, COMMAND)
                     if push.name.endswith("-env-push"))
    assert len(members) == deployment.settings.app_server_count >= 2
    for n, member in enumerate(members):
        env = deployment.named(f"{member}-env-push", ":Command")
        assert "datastore-secrets-push" in depends_on(deployment, env), member
        before = {f"{members[n - 1]}-env-push"} if n else set()
        assert {d for d in depends_on(deployment, env) if d.endswith("-env-push")} == before, member


def test_the_lb_sends_traffic_to_an_app_server_only_once_it_serves(deployment):
    """The upstream list waits for every member's certificate and first release: pushed as
    soon as a new member's droplet exists, it would send requests to a server still booting."""
    upstreams = deployment.named("lb-upstreams-push", ":Command")
    members = {push.name.removesuffix("-tls-push") for push in of_type(deployment, COMMAND)
               if push.name.startswith("app-") and push.name.endswith("-tls-push")}
    assert members
    for member in members:
        assert {f"{member}-tls-push", f"{member}-example-app-push"} <= depends_on(deployment, upstreams)


def test_the_jump_host_gets_the_same_patience_as_the_target(deployment):
    for push in of_type(deployment, COMMAND):
        conn = push.state["connection"]
        assert conn["dialErrorLimit"] == ssh.DIAL_ERROR_LIMIT and conn["perDialTimeout"] == ssh.PER_DIAL_TIMEOUT
        if conn.get("proxy"):
            assert conn["proxy"]["dialErrorLimit"] == ssh.DIAL_ERROR_LIMIT, push.name
            assert conn["proxy"]["perDialTimeout"] == ssh.PER_DIAL_TIMEOUT, push.name


def gate_of(found: dict, host: str):
    return next(g for g in found.values() if g.state["environment"]["PLATFORM_SSH_LOGIN"] == f"ops@{host}")


def test_every_push_pins_the_host_keys_the_gates_recorded(deployment):
    """The target's key from its own gate, the jump host's from the LB's: pulumi-command
    checks a key only when `host_key` is set, on each hop separately."""
    found = gates(deployment)
    lb_key = found["lb-boot-gate"].state["stdout"]
    for push in of_type(deployment, COMMAND):
        conn = push.state["connection"]
        assert conn["hostKey"] == gate_of(found, conn["host"]).state["stdout"], push.name
        if conn.get("proxy"):
            assert conn["proxy"]["hostKey"] == lb_key, push.name
        else:
            assert conn["hostKey"] == lb_key, push.name   # only the LB is reached directly


def test_a_gate_behind_the_lb_checks_the_key_the_lbs_gate_recorded(deployment):
    lb_key = gates(deployment)["lb-boot-gate"].state["stdout"]
    for name, gate in gates(deployment).items():
        expected = "" if name == "lb-boot-gate" else lb_key
        assert gate.state["environment"]["PLATFORM_SSH_JUMP_HOST_KEY"] == expected, name


def test_the_stack_output_holds_every_droplets_recorded_host_key(deployment):
    """The deploy tool's known_hosts: by the program's names, each its gate's stdout."""
    found = gates(deployment)
    expected = {name.removesuffix("-boot-gate"): gate.state["stdout"] for name, gate in found.items()}
    assert deployment.outputs["host_keys"] == expected
    assert not deployment.secret_outputs["host_keys"]


def test_the_gate_goes_through_the_lb_and_its_key_stays_a_secret(deployment):
    lb = deployment.named("lb", ":Droplet")
    for gate in gates(deployment).values():
        env = gate.state["environment"]
        jump = f"ops@{lb.state['ipv4Address']}" if gate.name != "lb-boot-gate" else ""
        assert env["PLATFORM_SSH_JUMP"] == jump
        assert "PRIVATE KEY" in env["PLATFORM_SSH_KEY"]
        assert "PRIVATE KEY" not in gate.state["create"]
        environment = gate.inputs["environment"]
        assert mockcloud.is_secret(environment) or mockcloud.is_secret(environment["PLATFORM_SSH_KEY"])


@pytest.mark.sandbox  # runs shellcheck
def test_the_gate_script_passes_shellcheck():
    checker = shutil.which("shellcheck")
    if not checker:
        pytest.fail("shellcheck is missing: apt-get install shellcheck (in .ci/apt-packages.txt)")
    result = subprocess.run([checker, "--shell=bash", "-"], input=remote.boot_gate_script(), text=True,
                            capture_output=True)
    assert result.returncode == 0, result.stdout
