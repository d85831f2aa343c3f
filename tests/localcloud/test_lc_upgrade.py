"""Upgrading the booted stack in place: a change to the platform's files reaches every
droplet by its bundle push, under a steady load, replacing nothing; a change that fails
on app-1 stops the roll there and app-1 goes back to its previous bundle; a change to the
apps' unit, which waits for the unit's next start, applied by `deploy restart` under GETs
and POSTs; a renewed certificate reaches app-1 with app-1 out of the LB's pool.

The change is made the way a developer makes one: a line added to templates the droplets
receive (the program renders them from cloudinit/, patched here for the plan). At the
end the stack is put back on the platform as committed.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from pathlib import Path

import jinja2
import pytest

import mockcloud
import on_the_local_stack
from cloudinit import files
from localcloud import config, records, stack, traffic
from model import conventions

# A line in config files of every role; the two nginx files make the LB and the app
# servers reload under the load; the apps' unit changes without a restart of the apps.
EVERYWHERE = ("common/logrotate.conf", "app_server/site.conf", "load_balancer/site.conf",
              "app_server/platform-apps.service")
LOGROTATE = "/etc/logrotate.d/platform"


def plan_with_lines(local_stack, monkeypatch, lines: dict[str, str]):
    """The stack's plan with `lines[template]` added at the end of each template."""
    original = files._templates

    def load(name):
        source = original.loader.get_source(original, name)[0]
        return source + lines[name] + "\n" if name in lines else source

    monkeypatch.setattr(files, "_templates", original.overlay(loader=jinja2.FunctionLoader(load)))
    try:
        return stack.plan(local_stack.plan.stack)
    finally:
        monkeypatch.undo()


def current_bundle(local_stack, key: str) -> str:
    return local_stack.run(key, ["readlink", conventions.CURRENT_BUNDLE]).stdout.strip().rsplit("/", 1)[-1]


def apps_pid(local_stack, name: str) -> str:
    return local_stack.run(name, ["systemctl", "show", "-P", "MainPID", conventions.APPS_UNIT]).stdout.strip()


def nginx_workers(local_stack, name: str) -> list[str]:
    """The PIDs of nginx's workers: a reload starts new ones."""
    return sorted(local_stack.run(name, ["pgrep", "-f", "nginx: worker process"]).stdout.split())


def drained(local_stack) -> list[str]:
    """The app servers the LB sends no request to (their addresses)."""
    return local_stack.run("lb", [conventions.DRAIN_COMMAND, "status"]).stdout.split()


def deploy_cli(verb: str, *args: str) -> subprocess.CompletedProcess:
    return on_the_local_stack.deploy_cli(verb, *args, key=str(config.OPERATOR_KEY), timeout=600)


@pytest.fixture(scope="module")
def back_to_committed(local_stack):
    """After the module, the stack on the platform as committed (every bundle again)."""
    yield
    local_stack.up(stack.plan(local_stack.plan.stack))


def test_a_platform_change_reaches_every_droplet_in_place_under_load(local_stack, back_to_committed, monkeypatch):
    mark = f"# upgraded in place {uuid.uuid4()}"
    before = local_stack.plan
    boots = local_stack.boot_ids()
    apps_pids = {app: apps_pid(local_stack, app) for app in local_stack.app_servers()}
    p = plan_with_lines(local_stack, monkeypatch, dict.fromkeys(EVERYWHERE, mark))
    assert {d.name: (d.id, d.user_data) for d in p.droplets} == {d.name: (d.id, d.user_data) for d in before.droplets}
    result, load = local_stack.up_under_load(p)
    print(f"\n[figures] platform upgrade under 20 req/s: {load}; up took {result.seconds:.0f}s")
    assert stack.healthy(result)
    ran = {r.name: r for r in result.commands if r.status == "ok"}
    apps = [d.key for d in p.with_tag(conventions.APP_SERVER)]
    firsts = {f"{key}-first-bundle" for key in apps}
    drains = {f"{key}-{step}" for key in apps for step in ("drain", "undrain")}
    assert set(ran) == {f"{d.key}-bundle-push" for d in p.droplets} | firsts | drains
    for name in firsts:   # the roll installed the bundle, not the new-member shortcut
        assert "a platform is in place" in ran[name].output, ran[name].output
    for key in apps:      # each out of the LB's pool for its push, and back
        assert ": drained in" in ran[f"{key}-drain"].output, ran[f"{key}-drain"].output
        assert ": in the pool" in ran[f"{key}-undrain"].output, ran[f"{key}-undrain"].output
    assert drained(local_stack) == []
    assert local_stack.boot_ids() == boots          # nothing rebooted, nothing replaced
    for d in p.droplets:
        assert mark in local_stack.run(d.name, ["cat", LOGROTATE]).stdout, d.name
    assert mark in local_stack.run("lb", ["nginx", "-T"]).stdout
    for app in local_stack.app_servers():
        assert mark in local_stack.run(app, ["nginx", "-T"]).stdout, app
        # The apps' unit on disk changed; the running apps keep theirs, and the push says so.
        assert mark in local_stack.run(app, ["systemctl", "cat", conventions.APPS_UNIT]).stdout, app
        assert apps_pid(local_stack, app) == apps_pids[app], f"{app}: the apps were restarted"
        said = ran[f"{next(d.key for d in p.droplets if d.name == app)}-bundle-push"].output
        assert f"{conventions.APPS_UNIT}.service changed: the running apps keep the unit" in said, said
    # ... and the deploy tool's status says so too, as no fault.
    shown = deploy_cli("status")
    rows = [line for line in shown.stdout.splitlines() if line.startswith("app-")]
    assert shown.returncode == 0 and len(rows) == len(local_stack.app_servers()), shown.stdout + shown.stderr
    assert all("(its file changed" in row and "restart applies it" in row for row in rows), shown.stdout
    # Not a POST either: the LB sends an app server nothing while its nginx reloads, which
    # closes the kept-alive connections the LB may be sending a POST on.
    assert load["requests"] > 0 and load["failed"] == 0 and not load["errors"], load


# app-1's apps cannot start while this drop-in is there: node refuses the flag.
BROKEN_APPS = f"/etc/systemd/system/{conventions.APPS_UNIT}.service.d/broken.conf"


def test_deploy_restart_applies_a_change_to_the_apps_unit_one_server_at_a_time_losing_no_post(
        local_stack, back_to_committed, monkeypatch):
    """The POSTs matter: the LB retries a GET that a restarting server fails on another
    server, but never a POST; only the drain before each restart keeps them whole. First
    app-1's apps cannot start: the restart stops there, app-1 out of the pool, app-2 not
    touched; fixed, the next restart brings app-1 back and restarts app-2."""
    mark = f"# restarted in place {uuid.uuid4()}"
    local_stack.up(plan_with_lines(local_stack, monkeypatch, {"app_server/platform-apps.service": mark}))
    apps = local_stack.app_servers()
    pids = {app: apps_pid(local_stack, app) for app in apps}
    assert "restart applies it" in deploy_cli("status").stdout
    break_app_1 = (f"mkdir -p {Path(BROKEN_APPS).parent} && printf '[Service]\\nEnvironment=NODE_OPTIONS=--no-such-flag\\n'"
                   f" > {BROKEN_APPS} && systemctl daemon-reload")
    local_stack.run("app-1", ["bash", "-c", break_app_1])
    load = local_stack.stream(traffic.WRITES_AND_READS, seconds=None)
    time.sleep(2)
    try:
        stopped = deploy_cli("restart", "--health-timeout", "15")
        left_out = deploy_cli("status")
        app_2_untouched = apps_pid(local_stack, apps[1]) == pids[apps[1]]
    finally:
        local_stack.run("app-1", ["bash", "-c", f"rm -rf {Path(BROKEN_APPS).parent} && systemctl daemon-reload"])
    try:
        restarted = deploy_cli("restart")
    finally:
        time.sleep(2)
        seen = traffic.result(load)
    print(stopped.stdout, restarted.stdout, f"\n[figures] deploy restart under 20 req/s, half of them POSTs: {seen}")
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert "app-1: its apps did not come back healthy; it stays out of the LB's pool" in stopped.stdout, stopped.stdout
    assert "--no-such-flag is not allowed in NODE_OPTIONS" in stopped.stdout, "the apps' journal is shown"
    assert "LB: out of its pool: app-1 " in left_out.stdout and app_2_untouched, left_out.stdout
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert "[app-1] restarting the apps (out of the LB's pool since an earlier restart or a failed bundle push)" in restarted.stdout
    assert re.search(r"^\[app-2\] drain: [\d.]+: drained in \d+s$", restarted.stdout, re.M), restarted.stdout
    for app in apps:
        assert apps_pid(local_stack, app) != pids[app], f"{app}: its apps were not restarted"
    status = deploy_cli("status")
    assert status.returncode == 0 and "restart applies it" not in status.stdout, status.stdout
    assert "LB: every app server in its pool" in status.stdout, status.stdout
    assert seen["by_status"].get("201", 0) > 20 and seen["failed"] == 0, seen
    assert set(seen["hosts"]) >= set(apps), seen
    # Run again: nothing left to restart.
    again = deploy_cli("restart")
    assert again.returncode == 0 and "nothing to restart" in again.stdout, again.stdout
    # A process without a worker (stopped here; pm2 giving up on one looks the same): status
    # says so, restart brings it back.
    local_stack.run(apps[1], ["runuser", "-u", conventions.APP_USER, "--", "env", f"PM2_HOME={conventions.PM2_HOME}",
                              f"{conventions.PM2_BIN_DIR}/pm2", "stop", "api"])
    idle = deploy_cli("status")
    assert idle.returncode == 1 and "api NONE" in idle.stdout, idle.stdout
    revived = deploy_cli("restart")
    assert revived.returncode == 0 and "[app-2] restarting the apps (no worker of api" in revived.stdout, revived.stdout
    assert deploy_cli("status").returncode == 0


def test_a_change_that_fails_on_app_1_stops_the_roll_and_app_1_serves_its_previous_bundle(
        local_stack, back_to_committed, monkeypatch):
    """app-1 stays out of the LB's pool (the engine runs nothing after a failed push); the
    next `up`, of the change reverted, puts it back."""
    apps = sorted(d.key for d in local_stack.plan.with_tag(conventions.APP_SERVER))
    assert apps[0] == "app-1"
    was = {key: current_bundle(local_stack, key) for key in apps}
    workers = nginx_workers(local_stack, "app-1")
    # nginx refuses it: provisioning's `nginx -t` fails on the first member it reaches.
    p = plan_with_lines(local_stack, monkeypatch, {"app_server/site.conf": "not_a_directive on;"})
    result, load = local_stack.up_under_load(p)
    print(f"\n[figures] failed upgrade under 20 req/s: {load}")
    status = {r.name: r for r in result.commands}
    assert status["app-1-bundle-push"].status == "failed"
    output = status["app-1-bundle-push"].output
    assert "provisioning failed" in output and "nginx -t" in output, output
    assert f"previous bundle {was['app-1'][:12]} restored" in output, output
    assert all(status[f"{key}-bundle-push"].status == "not run" for key in apps[1:])
    assert ": drained in" in status["app-1-drain"].output and status["app-1-undrain"].status == "not run"
    address = local_stack.plan.droplet("app-1").vpc_ip
    assert drained(local_stack) == [address]
    assert {key: current_bundle(local_stack, key) for key in apps} == was
    assert "not_a_directive" not in local_stack.run("app-1", ["nginx", "-T"]).stdout
    # The refused files were put back at once: the restore had no nginx reload to make
    # (under the load, a reload can cut a POST the LB is sending on a closing connection).
    assert nginx_workers(local_stack, "app-1") == workers, output
    assert load["failed"] == 0, load
    left_out = traffic.result(local_stack.stream("/api/hello", rate=10, seconds=4))
    assert local_stack.name("app-1") not in left_out["hosts"] and left_out["failed"] == 0, left_out
    reverted = local_stack.up(stack.plan(local_stack.plan.stack))
    back = next(r for r in reverted.commands if r.name == "app-1-undrain")
    assert back.status == "ok" and f"{address}: in the pool" in back.output, back.output
    assert drained(local_stack) == []
    after = traffic.result(local_stack.stream("/api/hello", rate=10, seconds=6))
    assert local_stack.name("app-1") in after["hosts"] and after["failed"] == 0, after


def served_certificate(local_stack, key: str) -> str:
    """The SHA-256 fingerprint of the certificate an app server's nginx presents."""
    script = (f"openssl s_client -connect 127.0.0.1:{conventions.APP_LOCAL_TLS_PORT} </dev/null 2>/dev/null"
              " | openssl x509 -noout -fingerprint -sha256")
    return local_stack.run(key, ["sh", "-c", script], check=True).stdout.strip()


def test_a_renewed_certificate_reaches_app_1_out_of_the_lbs_pool_and_the_lb_takes_it(local_stack, back_to_committed):
    """pulumi-tls issues a certificate anew in the last 30 days of the old one. Here the
    stack's state loses app-1's certificate, so the next `up` issues a new one, as that `up`
    does: only app-1's drain, tls push and undrain run, under load, and no request fails."""
    name = local_stack.plan.stack
    before = served_certificate(local_stack, "app-1")
    records.save(name, records.without(records.load(name), {"app-1-tls-cert"}))
    result, load = local_stack.up_under_load(stack.plan(name))
    print(f"\n[figures] app-1's certificate renewed under 20 req/s: {load}")
    assert stack.healthy(result)
    assert {r.name for r in result.commands if r.status == "ok"} == {"app-1-drain", "app-1-tls-push", "app-1-undrain"}
    status = {r.name: r for r in result.commands}
    address = local_stack.plan.droplet("app-1").vpc_ip
    assert ": drained in" in status["app-1-drain"].output and f"{address}: in the pool" in status["app-1-undrain"].output
    assert served_certificate(local_stack, "app-1") != before
    assert load["failed"] == 0, load
    after = traffic.result(local_stack.stream("/api/hello", rate=10, seconds=6))
    assert local_stack.name("app-1") in after["hosts"] and after["failed"] == 0, after



def test_admin_cidrs_engines_and_domain_change_in_place(local_stack, back_to_committed):
    """Each changed on the booted stack, then `up`: applied by the bundle push, nothing
    replaced; the new domain is served with a certificate from the local ACME server."""
    name = local_stack.plan.stack
    committed = mockcloud.stack_file_config(name)
    boots = local_stack.boot_ids()
    ids = {d.name: d.id for d in local_stack.plan.droplets}

    local_stack.up(stack.plan(name, {"adminCidrs": [*committed["adminCidrs"], "198.51.100.0/24"]}))
    assert "198.51.100.0/24" in local_stack.run("lb", ["ufw", "show", "added"]).stdout

    engines = [e for e in committed["engines"] if e != "rabbitmq"]
    local_stack.up(stack.plan(name, {"engines": engines}))
    assert "198.51.100.0/24" not in local_stack.run("lb", ["ufw", "show", "added"]).stdout   # back as committed
    store = local_stack.datastore.name
    assert local_stack.run(store, ["systemctl", "is-active", "rabbitmq-server"]).stdout.strip() != "active"
    rabbit_port = str(conventions.ENGINES["rabbitmq"].tls_port)
    assert rabbit_port not in local_stack.run(store, ["ufw", "show", "added"]).stdout
    assert local_stack.wait_healthy(timeout=120)["engines"]["rabbitmq"]["status"] == "disabled"

    domain = f"next.{committed['domain']}"
    local_stack.up(stack.plan(name, {"domain": domain}))
    assert local_stack.domain == domain
    assert local_stack.wait_healthy(timeout=180)              # curl verifies the ACME server's certificate
    assert local_stack.run(store, ["systemctl", "is-active", "rabbitmq-server"]).stdout.strip() == "active"

    assert {d.name: d.id for d in local_stack.plan.droplets} == ids
    assert local_stack.boot_ids() == boots
