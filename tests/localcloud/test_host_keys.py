"""Host keys: recorded by each droplet's boot gate at first contact, pinned afterwards.

The local cloud carries a gate's stdout to the commands that read it and into the stack's
state (fast); pulumi-command's client, mirrored, refuses a changed key before anything is
sent, and the gate records and checks keys against real sshd processes (sandbox).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time

import pytest

import mockcloud
from components import remote
from localcloud import engine, plan, pulumi_ssh, records
from localcloud.plan import LocalCommand, RemoteCommand
from model import conventions
from sshd_on_loopback import connections

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOk4dJwAfKbNNXwKwLxbZ2FQXZNG0dQ+qa0vCqX3nHYg"
GATE_STDOUT = mockcloud.unknown_stdout("app-1-boot-gate")


# --- the plan's placeholders, filled as the engine fills them (fast) --------------------------


def test_the_engine_hands_a_gates_stdout_to_the_commands_that_pin_it():
    gate = LocalCommand("app-1-boot-gate", "true", ("/bin/sh", "-c"), {}, unknown_stdout=GATE_STDOUT)
    hop = pulumi_ssh.Hop("10.110.0.3", "ops", "", host_key=GATE_STDOUT)
    push = RemoteCommand("app-1-tls-push", "tls", hop, dataclasses.replace(hop, host_key=GATE_STDOUT), "x", "",
                         frozenset({gate.name}))
    after = LocalCommand("behind", "true", ("/bin/sh", "-c"), {"PLATFORM_SSH_JUMP_HOST_KEY": GATE_STDOUT},
                         frozenset({gate.name}))
    seen = {}

    def execute(c):
        seen[c.name] = c
        return (0, "", KEY) if c is gate else (0, "")

    results = engine.run([gate, push, after], execute=execute)
    assert all(r.ok for r in results)
    assert seen["app-1-tls-push"].target.host_key == KEY and seen["app-1-tls-push"].proxy.host_key == KEY
    assert seen["behind"].environment["PLATFORM_SSH_JUMP_HOST_KEY"] == KEY
    assert engine.outputs_of([gate, push, after], results) == {GATE_STDOUT: KEY}


def test_the_plan_pins_every_remote_commands_hops_to_a_gates_stdout(staging_deployment):
    d = staging_deployment
    p = plan.plan_from(d.resources, d.mocks.options, "staging", d.settings, {})
    gates = {c.unknown_stdout: c.name for c in p.commands if isinstance(c, LocalCommand)}
    lb_gate = mockcloud.unknown_stdout("lb-boot-gate")
    for c in p.commands:
        if isinstance(c, RemoteCommand):
            assert c.target.host_key in gates, c.name
            assert c.proxy is None or c.proxy.host_key == lb_gate, c.name
            # ...and the gate it pins comes first.
            assert gates[c.target.host_key] in c.needs, c.name


def test_the_next_up_reads_the_recorded_keys_and_runs_no_push_again(staging_deployment):
    """`up` records what the gates printed; the next run of the program starts from that
    state, as `pulumi up` does, so its pushes pin the real keys and are unchanged."""
    d = staging_deployment
    keys = {mockcloud.unknown_stdout(r.name): f"{KEY[:-4]}{n:04d}"
            for n, r in enumerate(d.resources) if r.name.endswith("-boot-gate")}
    record = records.with_outputs(records.deployment_record(d.mocks, d.settings, {}, d.outputs), keys)
    assert set(record["outputs"]["host_keys"].values()) == set(keys.values())
    again = mockcloud.deploy(d.settings, previous=records.previous_deployment(record))
    p = plan.plan_from(again.resources, again.mocks.options, "staging", again.settings, {})
    assert not [c.name for c in p.commands if c.changed]
    assert {c.target.host_key for c in p.commands if isinstance(c, RemoteCommand)} <= set(keys.values())


# --- against real sshd (sandbox) ------------------------------------------------------------------


def new_host_key(tmp_path, name: str):
    path = tmp_path / f"{name}-host"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path, " ".join(path.with_suffix(".pub").read_text().split()[:2])


def logins(log) -> int:
    time.sleep(0.2)   # sshd logs asynchronously
    return log.read_text().count("Accepted publickey")


@pytest.mark.sandbox  # runs sshd (root)
def test_a_push_to_the_pinned_key_runs(sshd, tmp_path):
    start, hop = sshd
    host_key, public = new_host_key(tmp_path, "app-1")
    port, _ = start("app-1", lets_in=True, host_key=host_key)
    code, output = pulumi_ssh.run(dataclasses.replace(hop(port), host_key=public), None, "cat", "payload")
    assert (code, output) == (0, "payload")


@pytest.mark.sandbox  # runs sshd (root)
def test_a_changed_host_key_fails_the_push_naming_the_droplet_and_nothing_is_delivered(sshd, tmp_path):
    start, hop = sshd
    _, recorded = new_host_key(tmp_path, "recorded")
    jump_key, jump_public = new_host_key(tmp_path, "lb")
    jump, _ = start("lb", lets_in=True, host_key=jump_key)
    now_key, _ = new_host_key(tmp_path, "replaced-behind-our-back")
    target, target_log = start("app-1", lets_in=True, host_key=now_key)
    delivered = tmp_path / "delivered"
    push = RemoteCommand("app-1-tls-push", "tls", dataclasses.replace(hop(target, limit=2), host_key=recorded),
                         dataclasses.replace(hop(jump), host_key=jump_public), f"cat > {delivered}", "secret payload")
    (result,) = engine.run([push])
    assert result.status == "failed" and result.name == "app-1-tls-push"   # pulumi names the push: app-1's
    assert result.output.startswith("proxy: Dial: after 2 failed attempts")
    assert logins(target_log) == 0 and not delivered.exists()
    # Directly (the LB's own pushes), the mismatch is the error pulumi-command reports.
    direct = dataclasses.replace(push, target=dataclasses.replace(push.target, host_key=recorded), proxy=None)
    code, output = engine.execute(direct)
    assert code == 255 and "ssh: host key mismatch" in output and not delivered.exists()


@pytest.mark.sandbox  # runs sshd (root)
def test_a_changed_jump_host_key_fails_before_the_droplet_behind_it_is_reached(sshd, tmp_path):
    start, hop = sshd
    _, recorded = new_host_key(tmp_path, "lb-recorded")
    jump_key, _ = new_host_key(tmp_path, "lb-now")
    jump, jump_log = start("lb", lets_in=True, host_key=jump_key)
    target, target_log = start("app-1", lets_in=True)
    before = connections(target_log)
    code, output = pulumi_ssh.run(hop(target), dataclasses.replace(hop(jump, limit=1), host_key=recorded), "true")
    assert code == 255 and "proxy: Dial proxy: after 1 failed attempts" in output and "host key mismatch" in output
    assert logins(jump_log) == 0 and connections(target_log) == before


def test_a_host_key_that_does_not_parse_fails_before_any_dial():
    hop = pulumi_ssh.Hop("192.0.2.1", "ops", "", host_key=GATE_STDOUT)
    with pytest.raises(ValueError, match="failed to parse host key"):
        pulumi_ssh.dial(hop, None, log=print)


# --- the boot gate against real sshd (sandbox) ----------------------------------------------------


def gate(tmp_path, monkeypatch, login: str, jump: str = "", jump_key: str = "", key: str = ""):
    """The gate's script, its marker a file here, run as pulumi-command runs it."""
    (tmp_path / "first-boot-done").touch()
    monkeypatch.setattr(conventions, "FIRST_BOOT_MARKER", str(tmp_path / "first-boot-done"))
    env = {**os.environ, "PLATFORM_SSH_KEY": key, "PLATFORM_SSH_LOGIN": login, "PLATFORM_SSH_JUMP": jump,
           "PLATFORM_SSH_JUMP_HOST_KEY": jump_key}
    return subprocess.run(["/bin/bash", "-c", remote.boot_gate_script()], env=env, capture_output=True, text=True,
                          timeout=60)


def ssh_login(port: int) -> str:
    """The login as the gate takes it, here with the sshd's port (on a droplet: ops@address)."""
    import getpass
    return f"ssh://{getpass.getuser()}@127.0.0.1:{port}"


@pytest.fixture
def lb_and_app(sshd, tmp_path):
    """A jump host and a droplet behind it, each with its own host key."""
    start, hop = sshd
    keys = {name: new_host_key(tmp_path, name) for name in ("lb", "app-1")}
    ports = {name: start(name, lets_in=True, host_key=keys[name][0])[0] for name in keys}
    return {name: (ports[name], keys[name][1]) for name in keys}, hop(ports["lb"]).private_key


@pytest.mark.sandbox  # runs sshd (root)
def test_the_gate_prints_the_host_key_of_its_first_contact_through_the_pinned_jump_host(
        lb_and_app, tmp_path, monkeypatch):
    (lb, lb_key), (app, app_key) = lb_and_app[0]["lb"], lb_and_app[0]["app-1"]
    key = lb_and_app[1]
    ran = gate(tmp_path, monkeypatch, ssh_login(lb), key=key)
    assert ran.returncode == 0 and ran.stdout == lb_key + "\n", ran.stderr
    ran = gate(tmp_path, monkeypatch, ssh_login(app), jump=ssh_login(lb), jump_key=lb_key, key=key)
    assert ran.returncode == 0 and ran.stdout == app_key + "\n", ran.stderr
    assert "is ready" in ran.stderr


@pytest.mark.sandbox  # runs sshd (root)
def test_the_gate_refuses_a_jump_host_whose_key_changed_at_once(lb_and_app, tmp_path, monkeypatch):
    (lb, _), (app, app_key) = lb_and_app[0]["lb"], lb_and_app[0]["app-1"]
    began = time.monotonic()
    ran = gate(tmp_path, monkeypatch, ssh_login(app), jump=ssh_login(lb), jump_key=app_key, key=lb_and_app[1])
    assert ran.returncode == 1 and ran.stdout == ""
    assert f"{ssh_login(lb)} (the jump host) does not have the host key recorded" in ran.stderr
    assert time.monotonic() - began < 30   # not the 30 minutes of a droplet that boots


# --- the deploy tool's OpenSSH against real sshd (sandbox) ----------------------------------------


@pytest.mark.sandbox  # runs sshd (root)
def test_the_deploy_refuses_a_changed_host_key_naming_the_droplet(sshd, tmp_path):
    from deploy import commands
    from deploy.__main__ import pinned
    from deploy.records import Server, Stack
    start, hop = sshd
    host_key, public = new_host_key(tmp_path, "lb")
    port, log = start("lb", lets_in=True, host_key=host_key)
    identity = tmp_path / "id"   # the fixture's login key
    _, other = new_host_key(tmp_path, "recorded")

    def ssh_true(keys: dict) -> subprocess.CompletedProcess:
        stack = pinned(Stack("staging", "127.0.0.1", (Server("app-1", "10.0.0.2"),), str(identity), host_keys=keys),
                       str(tmp_path))
        # The deploy's own options for the LB (its jump check's), logging in to run `true`.
        remote = commands.through_jump_host(stack, stack.servers[0])
        assert remote.argv[-3] == "-W"
        argv = [*remote.argv[:-3], "-p", str(port), "-l", os.environ.get("USER", "root"), "127.0.0.1", "true"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    assert ssh_true({"lb": public}).returncode == 0
    before = logins(log)
    refused = ssh_true({"lb": other, "app-1": public})
    assert refused.returncode == 255, refused.stderr
    assert "Host key for staging-lb has changed" in refused.stderr, refused.stderr
    assert logins(log) == before   # refused before the login: nothing was sent
