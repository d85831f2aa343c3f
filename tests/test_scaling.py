"""Growing and shrinking the app-server pool touches only the member concerned and the LB's upstreams.

Each scaled run starts from the previous deployment's state (`mockcloud.deploy(previous=)`),
as `pulumi up` does on an existing stack: a resource whose inputs did not change keeps its
id and outputs. So "changed" below means "a real update would touch it".
"""

from __future__ import annotations

import json

import pytest

import mockcloud
from model import conventions
from stack_graph import COMMAND, droplets, of_type

APP_3 = {
    ("digitalocean:index/droplet:Droplet", "app-3"),
    ("tls:index/privateKey:PrivateKey", "app-3-tls-key"),
    ("tls:index/certRequest:CertRequest", "app-3-tls-csr"),
    ("tls:index/locallySignedCert:LocallySignedCert", "app-3-tls-cert"),
    # Waits until app-3 takes logins; its pushes wait for it.
    ("command:local:Command", "app-3-boot-gate"),
}


def keys(deployment) -> set[tuple[str, str]]:
    return {(r.type, r.name) for r in deployment.resources}


def changed(deployment) -> set[tuple[str, str]]:
    return {(r.type, r.name) for r in deployment.resources if not r.unchanged}


@pytest.fixture(scope="module")
def two_three_two(staging_deployment):
    two = staging_deployment
    assert two.settings.app_server_count == 2
    three = mockcloud.deploy(mockcloud.stack_settings("staging", appServerCount=3), previous=two)
    back = mockcloud.deploy(mockcloud.stack_settings("staging", appServerCount=2), previous=three)
    return two, three, back


def app_3_pushes(deployment) -> set[tuple[str, str]]:
    return {(COMMAND, r.name) for r in of_type(deployment, COMMAND) if r.name.startswith("app-3-")}


def test_two_to_three_adds_exactly_app_3_and_its_resources(two_three_two):
    two, three, _ = two_three_two
    added = keys(three) - keys(two)
    assert APP_3 <= added
    assert added == APP_3 | app_3_pushes(three)
    assert app_3_pushes(three)  # its certificate, its environment...
    assert keys(two) <= keys(three)  # nothing removed


def test_two_to_three_changes_nothing_that_exists_but_the_lb_upstreams(two_three_two):
    two, three, _ = two_three_two
    existing_changed = changed(three) & keys(two)
    assert existing_changed == {(COMMAND, "lb-upstreams-push")}


def test_existing_droplets_keep_their_name_and_first_boot_data(two_three_two):
    two, three, _ = two_three_two
    before = {d.name: (d.id, d.state["name"], d.state["userData"]) for d in droplets(two)}
    after = {d.name: (d.id, d.state["name"], d.state["userData"]) for d in droplets(three)}
    assert set(after) - set(before) == {"app-3"}
    for name, was in before.items():
        assert after[name] == was, name
    assert after["app-3"][2] == after["app-1"][2]  # the new member boots like the others


def test_only_the_lb_upstreams_push_changes_its_stdin_and_triggers(two_three_two):
    two, three, _ = two_three_two
    old = {r.name: r for r in of_type(two, COMMAND)}
    new = {r.name: r for r in of_type(three, COMMAND)}
    differing = {
        name
        for name in old
        if any(mockcloud.plain(old[name].inputs.get(what)) != mockcloud.plain(new[name].inputs.get(what))
               for what in ("stdin", "triggers", "create"))
    }
    assert differing == {"lb-upstreams-push"}
    upstreams = json.loads(mockcloud.plain(new["lb-upstreams-push"].inputs["stdin"]))
    text = "\n".join(upstreams.values())
    for d in droplets(three, "app"):
        assert d.state["ipv4AddressPrivate"] in text, d.name
    assert deploy_may_open(three) == {f"{d.state['ipv4AddressPrivate']}:{conventions.SSH_PORT}"
                                      for d in droplets(three, "app")}


def deploy_may_open(deployment) -> set[str]:
    """Where the LB's deploy login may forward to, as the upstreams push says it."""
    files = json.loads(mockcloud.plain(deployment.named("lb-upstreams-push", ":Command").inputs["stdin"]))
    (line,) = [line for line in files["deploy-permitopen.conf"].splitlines() if line.startswith("PermitOpen")]
    return set(line.split()[1:])


def test_three_to_two_removes_only_app_3_and_its_resources(two_three_two):
    _, three, back = two_three_two
    removed = keys(three) - keys(back)
    assert removed == APP_3 | app_3_pushes(three)
    assert keys(back) <= keys(three)
    assert changed(back) == {(COMMAND, "lb-upstreams-push")}
    upstreams = json.loads(mockcloud.plain(back.named("lb-upstreams-push", ":Command").inputs["stdin"]))
    app_3_ip = three.named("app-3", ":Droplet").state["ipv4AddressPrivate"]
    assert app_3_ip not in "\n".join(upstreams.values())
    # The deploy login follows the pool: the address of a member gone is no jump target.
    assert deploy_may_open(back) == {f"{d.state['ipv4AddressPrivate']}:{conventions.SSH_PORT}"
                                     for d in droplets(back, "app")}


def test_a_settings_change_is_seen_as_a_change(staging_deployment):
    """The comparisons above can fail: a new Node.js major changes every app server's bundle."""
    two = staging_deployment
    other = mockcloud.deploy(mockcloud.stack_settings("staging", nodeMajor=20), previous=two)
    assert {name for (type_, name) in changed(other) if type_ == COMMAND} >= {"app-1-bundle-push", "app-2-bundle-push"}
