"""The booted staging stack at work and under change (the session's `local_stack`).

Engines over TLS and data that survives restarts; plaintext refused; the app servers'
view of the datastore; an app server stopped and the datastore rebooted under traffic;
2 -> 3 -> 2 app servers; provisioning run again changes nothing. Tests that change the
stack leave it as they found it (two app servers, healthy)."""

from __future__ import annotations

import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from model import conventions
from localcloud import checks, cloud, droplet, shell, stack, traffic

LB_ERROR_LOG = "/var/log/nginx/error.log"

pytestmark = pytest.mark.localcloud

ENABLED = ("postgresql", "redis", "rabbitmq")   # the staging stack's engines less LOCAL_OVERRIDES'


def test_the_local_stack_enables_the_engines_these_tests_expect(local_stack):
    assert tuple(local_stack.result.plan.overrides["engines"]) == ENABLED


def post_note(s, text: str) -> dict:
    proc = s.https("/api/notes", "-X", "POST", "-H", "content-type: application/json",
                   "--data", json.dumps({"text": text}), "-w", "\n%{http_code}")
    body, _, code = proc.stdout.rpartition("\n")
    assert code == "201", proc.stdout + proc.stderr
    return json.loads(body)


def read_notes(s) -> dict:
    proc = s.https("/api/notes", "-w", "\n%{http_code}")
    body, _, code = proc.stdout.rpartition("\n")
    assert code == "200", proc.stdout + proc.stderr
    return json.loads(body)["engines"]


def assert_note_in_every_engine(engines: dict, text: str) -> None:
    assert {n: r["status"] for n, r in engines.items()} == {**{e: "ok" for e in ENABLED}, "mongodb": "disabled"}
    for name in ("postgresql", "redis"):   # newest first
        assert text in [n["text"] for n in engines[name]["result"]], (name, engines[name])
    # RabbitMQ's read peeks at the queue's 10 oldest messages.
    rabbit = [n["text"] for n in engines["rabbitmq"]["result"]]
    assert text in rabbit or len(rabbit) == 10, rabbit


def test_healthz_through_the_lb_is_up_and_every_app_server_reports_every_enabled_engine_ok(local_stack):
    local_stack.wait_healthy(timeout=60)
    for server in local_stack.app_servers():
        report = local_stack.full_health(server)
        assert report["engines"] == {**{e: {"status": "ok"} for e in ENABLED}, "mongodb": {"status": "disabled"}}


def test_the_app_connects_to_each_engine_with_tls_verified_against_the_stacks_ca(local_stack):
    env = local_stack.run("app-1", ["cat", conventions.APP_ENV_FILE], check=True).stdout
    ca = re.search(r"^PLATFORM_CA_FILE=(.+)$", env, re.M).group(1).strip().strip('"')
    for engine in ENABLED:
        port = re.search(rf"^{engine.upper()}_PORT=(\d+)$", env, re.M).group(1)
        assert int(port) == conventions.ENGINES[engine].tls_port
    # The datastore's certificate verifies against that CA under the address the app uses.
    host = re.search(r"^POSTGRESQL_HOST=(.+)$", env, re.M).group(1).strip()
    for engine in ("redis", "rabbitmq"):
        port = conventions.ENGINES[engine].tls_port
        out = local_stack.run("app-1", ["sh", "-c", f"openssl s_client -connect {host}:{port} -CAfile {ca} "
                                        f"-verify_return_error -verify_ip {host} </dev/null 2>&1"]).stdout
        assert "Verify return code: 0 (ok)" in out, out[-600:]


def test_a_note_goes_to_every_engine_and_survives_a_restart_of_the_apps(local_stack):
    text = f"note-{uuid.uuid4()}"
    written = post_note(local_stack, text)
    assert {n: r["status"] for n, r in written["engines"].items()} == \
        {**{e: "ok" for e in ENABLED}, "mongodb": "disabled"}
    assert_note_in_every_engine(read_notes(local_stack), text)
    for app in local_stack.app_servers():
        local_stack.run(app, ["systemctl", "restart", conventions.APPS_UNIT], check=True)
    local_stack.wait_healthy(timeout=120)
    for _ in local_stack.app_servers():   # each server in turn reads it back
        assert_note_in_every_engine(read_notes(local_stack), text)


# --- plaintext is refused ---------------------------------------------------

PG_PLAINTEXT_STARTUP = r'''
import socket, struct, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
params = b"user\0app\0database\0app\0\0"
s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
print(s.recv(4096).decode("latin-1"))
'''

PLAIN_REDIS_PING = r'''
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"PING\r\n")
try:
    print(repr(s.recv(4096)))
except socket.timeout:
    print("timeout")
except ConnectionResetError:
    print("reset")   # stunnel drops a client that does not start TLS
'''


def test_postgresql_refuses_a_connection_without_tls(local_stack):
    host = local_stack.datastore.vpc_ip
    out = local_stack.run("app-1", ["python3", "-c", PG_PLAINTEXT_STARTUP, host, "5432"], check=True).stdout
    assert out.startswith("E") and "no encryption" in out, out     # pg_hba: hostssl only


def test_stunnels_redis_port_gives_no_redis_reply_to_plain_tcp(local_stack):
    host = local_stack.datastore.vpc_ip
    out = local_stack.run("app-1", ["python3", "-c", PLAIN_REDIS_PING, host,
                                    str(conventions.ENGINES["redis"].tls_port)], check=True).stdout.strip()
    assert out in ("reset", "timeout", "b''"), out    # closed, reset or silent: never a RESP reply


def test_from_an_app_server_only_the_enabled_engines_tls_ports_are_open_on_the_datastore(local_stack):
    host = local_stack.datastore.vpc_ip
    ports = {conventions.SSH_PORT, 5672, *(e.tls_port for e in conventions.ENGINES.values()),
             *(e.local_port for e in conventions.ENGINES.values() if e.local_port)}
    with ThreadPoolExecutor(max_workers=8) as pool:
        states = dict(zip(ports, pool.map(lambda port: checks.port_state_from(
            local_stack.name("app-1"), host, port), ports)))
    assert {p for p, st in states.items() if st == "open"} == \
        {conventions.ENGINES[e].tls_port for e in ENABLED}, states


# --- provisioning again ------------------------------------------------------

def test_provisioning_again_changes_nothing_on_any_droplet(local_stack):
    def again(d):
        proc = local_stack.run(d.name, [conventions.PROVISION_COMMAND], timeout=900)
        counts = re.findall(r"provisioning finished: (\d+) change", proc.stdout)
        return d.name, (proc.returncode, counts[-1] if counts else proc.stdout[-600:])
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(pool.map(again, local_stack.plan.droplets))
    assert results == {d.name: (0, "0") for d in local_stack.plan.droplets}


# --- failures under traffic ---------------------------------------------------

def test_stopping_an_app_server_under_steady_traffic_loses_no_request(local_stack):
    app = local_stack.app_servers()[-1]
    lb = local_stack.plan.lb.name
    logged = int(local_stack.run(lb, ["stat", "-c", "%s", LB_ERROR_LOG], check=True).stdout)
    stream = local_stack.stream("/api/hello", seconds=None)
    try:
        time.sleep(3)
        droplet.stop(app)
        # Past the upstreams' fail_timeout (10 s): the LB tries the stopped server again once.
        time.sleep(15)
    finally:
        counts = traffic.result(stream)
    print(f"\n[figures] app server stopped under 20 req/s, 3 s before the stop to 15 s after it: {counts}")
    assert counts["requests"] >= 100 and counts["failed"] == 0, counts
    # None failed because the LB sent on what the stopped server could not take: it met it.
    address = next(d.vpc_ip for d in local_stack.plan.droplets if d.name == app)
    met = local_stack.run(lb, ["tail", "-c", f"+{logged + 1}", LB_ERROR_LOG], check=True).stdout
    assert re.search(rf'while connecting to upstream, .* upstream: "https://{re.escape(address)}:', met), met[-2000:]
    cloud.start(app)
    droplet.wait_booted(app, timeout=180)
    local_stack.wait_healthy(timeout=120)

    def served_again() -> dict | None:   # nginx tries it again after fail_timeout
        counts = traffic.result(local_stack.stream("/api/hello", rate=10, seconds=3))
        return counts if app in counts["hosts"] else None
    after = shell.wait_until(served_again, 120, f"{app} not back among the LB's upstreams", every=0)
    assert after["failed"] == 0, after


def test_rebooting_the_datastore_keeps_committed_data_and_the_apps_recover_alone(local_stack):
    text = f"before-reboot-{uuid.uuid4()}"
    post_note(local_stack, text)
    store = local_stack.datastore.name
    droplet.reboot(store, timeout=180)
    t0 = time.monotonic()
    local_stack.wait_healthy(timeout=180)        # no push, no restart of the apps
    print(f"\n[figures] healthy again {time.monotonic() - t0:.0f}s after the datastore booted")
    for _ in local_stack.app_servers():
        assert_note_in_every_engine(read_notes(local_stack), text)


# --- a new pool while a server is drained ----------------------------------------

def test_a_new_pool_keeps_a_drained_server_drained_and_forgets_one_that_left(local_stack):
    """`platform-push upstreams`, as `pulumi up` runs it when the pool changes, while
    `deploy restart` has an app server out of the LB's pool: it stays out."""
    from cloudinit import load_balancer as lb_files
    servers = sorted(local_stack.plan.with_tag(conventions.APP_SERVER), key=lambda d: d.name)
    pool = [d.vpc_ip for d in servers]
    drained, serving = pool[-1], servers[0].name
    spare = pool[0].rsplit(".", 1)[0] + ".250"   # no droplet there: the LB's passive checks skip it

    def push(addresses: list[str], refused: bool = False) -> str:
        upstreams = lb_files.upstreams(addresses)
        if refused:   # a file nginx -t refuses: platform-push puts the old one back
            upstreams = upstreams.replace("max_fails=2", "max_fails=")
        files = {"upstreams.conf": upstreams, "deploy-permitopen.conf": lb_files.deploy_permit_open(addresses)}
        proc = local_stack.run("lb", [conventions.PUSH_COMMAND, "upstreams"], input=json.dumps(files))
        assert (proc.returncode != 0) == refused, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    def drain(*args: str) -> str:
        proc = local_stack.run("lb", [conventions.DRAIN_COMMAND, *args], timeout=90)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    drain("on", drained)
    try:
        said = push([*pool, spare])
        assert f"platform-drain: {drained} is still drained" in said, said
        assert drain("status").split() == [drained]
        seen = traffic.result(local_stack.stream("/api/hello", rate=10, seconds=3))
        assert set(seen["hosts"]) == {serving} and seen["failed"] == 0, seen
        # Alone in a new pool it cannot stay out: the LB would send requests nowhere.
        said = push([drained])
        assert f"platform-drain: {drained} is back in the pool: the only app server" in said, said
        assert drain("status") == ""
        push(pool)
        drain("on", drained)
        # A pool without it that nginx refuses changes nothing: the old pool, still drained.
        said = push([pool[0], spare], refused=True)
        assert "check failed; previous files restored" in said, said
        assert drain("status").split() == [drained]
        assert f"platform-drain: {drained} is still drained" in push([*pool, spare])
        # The drained server leaves the pool, then comes back: in it, and no longer drained.
        said = push([pool[0], spare])
        assert f"platform-drain: {drained} left the pool: no longer drained" in said, said
        push(pool)
        assert drain("status") == ""
        assert local_stack.run("lb", ["cat", conventions.DRAINED_FILE]).stdout == ""
    finally:
        push(pool)
        drain("off", drained)
    seen = traffic.result(local_stack.stream("/api/hello", rate=10, seconds=4))
    assert set(seen["hosts"]) == set(local_stack.app_servers()) and seen["failed"] == 0, seen


# --- scaling 2 -> 3 -> 2 --------------------------------------------------------

def test_scaling_to_three_adds_one_droplet_and_back_to_two_fails_no_request(local_stack):
    two = local_stack.plan
    before = local_stack.boot_ids()
    three = stack.plan(two.stack, {"appServerCount": 3})
    new = {d.name for d in three.droplets} - {d.name for d in two.droplets}
    assert len(new) == 1 and {d.name: d.user_data for d in two.droplets} == \
        {d.name: d.user_data for d in three.droplets if d.name not in new}
    (app3,) = new
    try:
        result = local_stack.up(three)
        ran = {r.name for r in result.commands if r.status == "ok"}
        # As the engine would: only the new member's gate and pushes, and the LB's upstream list.
        assert ran == {c.name for c in three.commands if c.name.startswith("app-3-")} | {"lb-upstreams-push"}
        after = local_stack.boot_ids()
        assert {n: after[n] for n in before} == before       # nothing else rebooted or replaced
        seen = traffic.result(local_stack.stream("/api/hello", rate=10, seconds=6))
        assert app3 in seen["hosts"] and seen["failed"] == 0, seen
        upstreams = local_stack.run("lb", ["cat", conventions.LB_UPSTREAMS_FILE]).stdout
        assert three.droplet(app3).vpc_ip in upstreams, upstreams
    finally:
        # From before the `up` to a little after it, however long it takes.
        stream = local_stack.stream(traffic.WRITES_AND_READS, rate=20, seconds=None)
        t0 = time.monotonic()
        try:
            local_stack.up(stack.plan(two.stack))
            took = time.monotonic() - t0
            time.sleep(2)
        finally:
            counts = traffic.result(stream)
    print(f"\n[figures] 3 -> 2 in {took:.0f}s under 20 req/s: {counts}")
    assert app3 not in droplet_names()
    assert counts["failed"] == 0 and counts["seconds"] > took, counts
    assert local_stack.boot_ids() == before
    local_stack.wait_healthy(timeout=60)


def droplet_names() -> set[str]:
    from localcloud import state
    return set(state.load()["droplets"])
