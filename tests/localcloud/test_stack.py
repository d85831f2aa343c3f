"""The staging stack on the local cloud, booted from the program's own plan.

Unit tests first (the plan's translation: firewalls, volumes, command order);
then, marked `localcloud` (root), the session's shared stack (`local_stack` in tests/conftest.py).
"""

from types import SimpleNamespace

import pytest

from localcloud import acme, checks, config, firewall, plan, records, stack

# --- the plan's translation (no root needed) --------------------------------


def test_a_do_firewall_becomes_the_same_local_rules():
    fw = plan.firewall_of({
        "name": "staging-app", "tags": ["staging-app"],
        "inboundRules": [{"protocol": "tcp", "portRange": "8443", "sourceTags": ["staging-lb"]},
                         {"protocol": "tcp", "portRange": "22", "sourceAddresses": ["203.0.113.10/32"],
                          "sourceDropletIds": [7.0]}],
        "outboundRules": [{"protocol": "icmp", "destinationAddresses": ["0.0.0.0/0", "::/0"]}],
    }, {"7": "staging-lb"})
    assert fw == firewall.Firewall(
        "staging-app",
        inbound=(firewall.Rule("tcp", "8443", tags=("staging-lb",)),
                 firewall.Rule("tcp", "22", addresses=("203.0.113.10/32",), droplets=("staging-lb",))),
        outbound=(firewall.Rule("icmp", "all", addresses=("0.0.0.0/0", "::/0")),),
        tags=("staging-app",))


def test_the_state_after_an_up_keeps_the_record_of_a_command_it_did_not_get_to():
    """As the engine's: a failed command is not recorded (the next `up` runs it again); one
    the engine did not get to, after the failure, keeps its record from before, and the next
    `up` runs it only if its inputs differ from that (the undrain after a failed bundle
    push: tests/localcloud/test_lc_upgrade.py)."""
    def record(*commands):
        return {"resources": [{"type": plan.REMOTE_COMMAND, "name": name, "id": id_, "inputs": {"triggers": [trigger]},
                               "state": {}} for name, id_, trigger in commands],
                "raw_state": [[plan.REMOTE_COMMAND, name, {"triggers": [trigger]}] for name, _, trigger in commands]}
    before = record(("push", "1", "old"), ("undrain", "2", "old"))
    ran = record(("drain", "3", "new"), ("push", "4", "new"), ("undrain", "5", "new"))
    after = records.after_up(ran, before, failed={"push"}, not_run={"undrain"})
    assert {r["name"]: (r["id"], r["inputs"]) for r in after["resources"]} == {
        "drain": ("3", {"triggers": ["new"]}), "undrain": ("2", {"triggers": ["old"]})}
    assert {name: state for _, name, state in after["raw_state"]} == {
        "drain": {"triggers": ["new"]}, "undrain": {"triggers": ["old"]}}
    assert records.after_up(ran, None, failed={"push"}, not_run={"undrain"})["resources"] == ran["resources"][:1]


def _command(name, kind, deps=()):
    login = {"user": "ops", "host": "10.0.0.2", "privateKey": "KEY"}
    state = {"create": f"sudo /usr/local/sbin/platform-push {kind}", "stdin": "{}", "connection": login}
    resource = SimpleNamespace(type="command:remote:Command", name=name, state=state)
    request = SimpleNamespace(dependencies=[f"urn:pulumi:s::p::t::{d}" for d in deps])
    return resource, request


def test_remote_commands_follow_dependencies_then_the_push_order():
    pairs = [_command("lb-upstreams-push", "upstreams"), _command("app-1-env-push", "env"),
             _command("app-1-tls-push", "tls", deps=["app-1-env-push"]),   # a made-up dependency wins
             _command("datastore-secrets-push", "secrets"), _command("lb-tls-push", "tls")]
    options = {(r.type, r.name): req for r, req in pairs}
    order = [c.name for c in plan.ordered_commands([r for r, _ in pairs], options)]
    assert order == ["lb-tls-push", "datastore-secrets-push", "app-1-env-push", "app-1-tls-push",
                     "lb-upstreams-push"]
    assert plan.ordered_commands([r for r, _ in pairs], options)[3].needs == {"app-1-env-push"}


def test_commands_in_a_cycle_are_refused():
    pairs = [_command("a", "tls", deps=["b"]), _command("b", "tls", deps=["a"])]
    with pytest.raises(ValueError, match="cycle"):
        plan.ordered_commands([r for r, _ in pairs], {(r.type, r.name): q for r, q in pairs})


# The plan holds the local cloud's operator key, made by ssh-keygen in /var/lib/localcloud (root).
@pytest.mark.sandbox
def test_overrides_keep_the_stacks_admin_range_and_add_only_the_host():
    overrides = plan.local_overrides({"adminCidrs": ["203.0.113.10/32"], "sshPublicKeys": ["ssh-ed25519 AAAA ops"],
                                       "engines": ["postgresql", "mongodb", "redis"]})
    assert overrides["adminCidrs"] == ["203.0.113.10/32", f"{config.HOST_PUBLIC_IP}/32"]
    assert overrides["sshPublicKeys"] == ["ssh-ed25519 AAAA ops", plan.operator_public_key()]
    assert config.OPERATOR_KEY.with_suffix(".pub").read_text().strip() == plan.operator_public_key()
    assert overrides["engines"] == ["postgresql", "redis"]
    assert overrides["acmeDirectory"] == acme.DIRECTORY_URL
    assert set(overrides) == set(plan.LOCAL_OVERRIDES_WHY)


# The plan holds the local cloud's operator key, made by ssh-keygen in /var/lib/localcloud (root).
@pytest.mark.sandbox
def test_the_staging_plan_has_the_programs_addresses_and_resources():
    p = plan.plan_from(*_staging_deployment())
    assert {d.key for d in p.droplets} == {"lb", "datastore", "app-1", "app-2"}
    assert len(p.lb.reserved_ips) == 1 and p.lb.reserved_ips[0] not in {d.public_ip for d in p.droplets}
    assert [v.name for v in p.volumes] == ["staging-data"] and p.volumes[0].droplet == "staging-datastore"
    assert {f.name for f in p.firewalls} == {"staging-lb", "staging-app", "staging-datastore"}
    kinds = [c.kind for c in p.commands]
    assert kinds.index("upstreams") > max(i for i, k in enumerate(kinds) if k == "tls")
    topo = p.topology()
    assert firewall.attached(p.firewalls[0], topo)  # every firewall reaches a droplet by tag


def test_a_droplet_takes_the_addresses_its_plan_gave_it():
    from localcloud import network
    net = network.DropletNet("lb", 5, "10.110.16.0/24", "198.51.100.3", "10.110.16.1", ("198.51.100.2",))
    assert (net.public_ip, net.vpc_ip, net.public_port) == ("198.51.100.3", "10.110.16.1", "pub5")
    assert net.addresses == ["198.51.100.3", "198.51.100.2", "10.110.16.1"]
    by_slot = network.DropletNet("lb", 5, "10.110.16.0/24")
    assert (by_slot.public_ip, by_slot.vpc_ip) == (str(config.PUBLIC_NET[15]), "10.110.16.7")


def _staging_deployment():
    import mockcloud
    overrides = plan.local_overrides(mockcloud.stack_file_config("staging"))
    settings = mockcloud.stack_settings("staging", **overrides)
    d = mockcloud.deploy(settings)
    return d.resources, d.mocks.options, "staging", settings, overrides


# --- the real stack (root; boots four droplets) ------------------------------

@pytest.fixture(scope="module")
def up(local_stack):
    """The `up` of the session's shared stack (tests/conftest.py: booted once, reused)."""
    return local_stack.result


@pytest.fixture(scope="module")
def seen(local_stack):
    return checks.check(local_stack.plan)


@pytest.mark.localcloud
def test_cloud_init_is_done_without_errors_on_every_droplet(up):
    assert up.cloud_init == {d.name: "done" for d in up.plan.droplets}
    for report in up.reports:
        assert "status: done" in report.cloud_init and "errors" not in report.cloud_init.lower(), report.cloud_init


@pytest.mark.localcloud
def test_fail2ban_started_without_an_error_on_every_droplet(local_stack):
    """Its package starts it as it is installed: provisioning puts our jail in place first
    (Debian's own alone reads /var/log/auth.log, which an image without rsyslog lacks)."""
    def failures(name: str) -> list[str]:
        # Its own errors reach the journal at info level (stderr): the words tell.
        log = local_stack.run(name, ["journalctl", "-q", "-b", "-u", "fail2ban", "-o", "cat"], check=True).stdout
        return [line for line in log.splitlines() if " ERROR " in line or "Failed with result" in line]
    found = {d.name: failures(d.name) for d in local_stack.plan.droplets}
    assert found == {name: [] for name in found}


@pytest.mark.localcloud
def test_every_droplet_is_provisioned(up):
    assert {r.name: (r.provisioned, r.provision_failed) for r in up.reports} == \
        {d.name: (True, "") for d in up.plan.droplets}


@pytest.mark.localcloud
def test_every_push_is_applied_those_behind_the_lb_through_it(up):
    assert [c.name for c in up.plan.commands] == [r.name for r in up.commands]
    assert {r.name: r.output[-500:] for r in up.commands if not r.ok} == {}
    pushes = [c for c in up.plan.commands if isinstance(c, plan.RemoteCommand)]
    lb = up.plan.lb.public_ip
    assert any(c.proxy for c in pushes) and all(c.proxy.host == lb for c in pushes if c.proxy)
    assert {c.target.host for c in pushes if not c.proxy} == {lb}


@pytest.mark.localcloud
def test_https_through_the_lb_is_answered_by_an_app_server(seen):
    assert " 200" in seen["https_status"] and seen["https_body_has_served_by"]


@pytest.mark.localcloud
def test_every_app_server_answers_in_turn(up, seen):
    assert sorted(set(seen["https_served_by"])) == sorted(d.name for d in up.plan.with_tag("-app"))


@pytest.mark.localcloud
def test_http_redirects_to_https(up, seen):
    code, _, location = seen["http"].partition(" ")
    assert code in ("301", "308") and location.startswith(f"https://{up.plan.domain}")


@pytest.mark.localcloud
def test_the_certificate_comes_from_the_local_acme_server(seen):
    # curl verified the chain against pebble's current root (GET /roots/0).
    assert seen["certificate"]["verified"], seen["certificate"]
    assert "Pebble Intermediate" in seen["certificate"]["issuer"]


@pytest.mark.localcloud
def test_from_the_internet_only_80_and_443_are_open_on_the_lb(seen):
    # SSH is open to the admin range only; the internet client is not in it.
    ports = seen["lb_ports_from_internet"]
    assert {port for port, st in ports.items() if st == "open"} == {80, 443}
    assert ports[22] == "filtered"


@pytest.mark.localcloud
def test_from_the_lb_no_datastore_port_but_ssh_is_open(seen):
    opened = {port for port, st in seen["datastore_ports_from_lb"].items() if st == "open"}
    assert opened == {22}


@pytest.mark.localcloud
def test_the_whole_check_passes(up, seen):
    assert checks.check_problems(seen, up.plan) == []


def test_a_leaving_droplet_keeps_its_firewall_place_until_it_is_removed():
    def planned(name, tags, vpc_ip):
        return plan.PlannedDroplet(name, name, name, "", tags, "198.51.100.9", vpc_ip)
    lb, app1, app3 = (planned("lb", ("s-lb",), "10.0.0.1"), planned("app-1", ("s-app",), "10.0.0.2"),
                      planned("app-3", ("s-app",), "10.0.0.4"))
    before = plan.Plan("s", "d", {}, "10.0.0.0/24", [lb, app1, app3], [], [], [])
    after = plan.Plan("s", "d", {}, "10.0.0.0/24", [lb, app1], [], [], [])
    topo = stack.with_leaving(after.topology(), before, [app3])
    assert topo.tags["s-app"] == ["app-1", "app-3"] and topo.addresses["app-3"] == before.topology().addresses["app-3"]
    assert stack.with_leaving(after.topology(), before, []) == after.topology()


# The plan holds the local cloud's operator key, made by ssh-keygen in /var/lib/localcloud (root).
@pytest.mark.sandbox
def test_a_run_cannot_change_a_setting_the_local_overrides_hold():
    with pytest.raises(ValueError, match="LOCAL_OVERRIDES"):
        stack.plan("staging", {"image": "ubuntu-24-04-x64"})


@pytest.mark.sandbox
def test_a_run_may_change_a_setting_that_an_override_adds_to():
    p = stack.plan("staging", {"engines": ["postgresql", "mongodb"], "adminCidrs": ["198.51.100.0/24"]})
    assert p.overrides["engines"] == ["postgresql"]                 # MongoDB still left out here
    assert p.overrides["adminCidrs"][0] == "198.51.100.0/24"        # the host's address still added
