"""DigitalOcean Monitoring's alert policies in the graph: on every droplet of the stack by
tag, e-mailed to alertEmails, load thresholds from each role's size; the uptime check of the
stack's url with its down, slow and certificate alerts, e-mailed the same; none without e-mails.
"""

from __future__ import annotations

import pytest

import mockcloud
from components import alerts
from model import conventions, prices
from stack_graph import droplets, of_type

MONITOR_ALERT = "digitalocean:index/monitorAlert:MonitorAlert"
UPTIME_CHECK = "digitalocean:index/uptimeCheck:UptimeCheck"
UPTIME_ALERT = "digitalocean:index/uptimeAlert:UptimeAlert"
PERIODS = ("2m", "3m", "5m", "10m", "15m", "30m", "1h")  # what DigitalOcean's API accepts
EMAILS = ["ops@example.com", "oncall@example.org"]


@pytest.fixture(scope="module")
def alerted() -> mockcloud.Deployment:
    return mockcloud.deploy(mockcloud.stack_settings("production", alertEmails=EMAILS))


def covers(policy: mockcloud.Resource, droplet: mockcloud.Resource) -> bool:
    """DigitalOcean applies a policy to a droplet carrying any of its tags."""
    return bool(set(policy.state["tags"]) & set(droplet.state["tags"]))


def test_every_droplet_is_watched_for_disk_memory_cpu_and_load(alerted):
    policies = of_type(alerted, MONITOR_ALERT)
    metrics = {t.metric for t in alerts.STACK_THRESHOLDS} | {alerts.LOAD_METRIC}
    assert {p.state["type"] for p in policies} == metrics
    every = droplets(alerted)
    assert len(every) == 2 + alerted.settings.app_server_count
    for d in every:
        assert d.state["monitoring"] is True, d.name  # the agent that reports these metrics
        watching = [p for p in policies if covers(p, d)]
        assert sorted(p.state["type"] for p in watching) == sorted(metrics), d.name
    tags = {t.state["name"] for t in of_type(alerted, "digitalocean:index/tag:Tag")}
    assert all(set(p.state["tags"]) <= tags for p in policies)  # tags the stack owns, no ids


def test_policies_mail_the_alert_emails_only_and_sit_under_the_alerts_component(alerted):
    (component,) = [r for r in alerted.resources if r.type == "node-platform:index:Alerts"]
    # The stack's root resource (its URN names the first stack this test process built).
    assert component.name == "alerts" and "::pulumi:pulumi:Stack::node-platform-" in component.parent
    for policy in of_type(alerted, MONITOR_ALERT):
        assert policy.state["alerts"]["emails"] == EMAILS
        assert not policy.state["alerts"].get("slacks")
        assert policy.state["compare"] == "GreaterThan" and policy.state["enabled"] is True
        assert policy.state["window"] in ("5m", "10m", "30m", "1h")
        assert policy.state["description"].startswith("production")
        assert policy.parent.endswith("node-platform:index:Alerts::alerts"), policy.parent


def test_stack_thresholds_are_the_table(alerted):
    for t in alerts.STACK_THRESHOLDS:
        policy = alerted.named(f"alerts-{t.name}", ":MonitorAlert")
        assert policy.state["tags"] == [conventions.stack_tag(alerted.settings.stack)]
        assert (policy.state["type"], policy.state["value"], policy.state["window"]) == (t.metric, t.above, t.window)


def test_load_threshold_follows_each_droplets_own_size(alerted):
    loads = [p for p in of_type(alerted, MONITOR_ALERT) if p.state["type"] == alerts.LOAD_METRIC]
    assert len(loads) == len(conventions.ROLES)
    for d in droplets(alerted):
        (policy,) = [p for p in loads if covers(p, d)]
        assert policy.state["value"] == alerts.LOAD_PER_VCPU * alerts.vcpus(d.state["size"]), d.name
    # The production file's sizes differ per role, so a single stack-wide load would be wrong.
    assert len({p.state["value"] for p in loads}) > 1


def test_no_alert_emails_means_no_policies(production_deployment):
    assert production_deployment.settings.alert_emails == ()
    assert not of_type(production_deployment, MONITOR_ALERT)
    # DigitalOcean's uptime alerts must notify someone; a check nobody hears of is not made.
    assert not of_type(production_deployment, UPTIME_CHECK) and not of_type(production_deployment, UPTIME_ALERT)
    assert not [r for r in production_deployment.resources if r.type == "node-platform:index:Alerts"]


def test_turning_alerts_on_touches_nothing_else():
    before = mockcloud.deploy(mockcloud.stack_settings("staging"))
    after = mockcloud.deploy(mockcloud.stack_settings("staging", alertEmails=EMAILS), previous=before)
    changed = {r.type for r in after.resources if not r.unchanged and not r.type.startswith("pulumi:")}
    assert changed == {MONITOR_ALERT, UPTIME_CHECK, UPTIME_ALERT, "node-platform:index:Alerts"}


@pytest.mark.parametrize("size", sorted(prices.DROPLET_MONTHLY))
def test_every_accepted_size_has_a_vcpu_count(size):
    assert 1 <= alerts.vcpus(size) <= 8


def test_vcpu_counts_read_from_the_slug():
    assert [alerts.vcpus(s) for s in ("s-1vcpu-512mb-10gb", "s-2vcpu-4gb", "g-4vcpu-16gb", "c-2")] == [1, 2, 4, 2]
    with pytest.raises(ValueError, match="no vCPU count"):
        alerts.vcpus("gpu-h100x1-80gb")


# --- The uptime check: the site from outside ---------------------------------------------


def test_the_uptime_check_requests_the_stacks_url_over_https(alerted):
    (check,) = of_type(alerted, UPTIME_CHECK)
    assert check.state["target"] == alerted.outputs["url"] == "https://app.example.com"
    assert check.state["type"] == "https" and check.state["enabled"] is True
    assert check.state["name"].startswith("production: ")
    assert check.parent.endswith("node-platform:index:Alerts::alerts"), check.parent


def test_the_site_down_slow_and_its_certificate_near_expiry_are_mailed_to_the_alert_emails(alerted):
    (check,) = of_type(alerted, UPTIME_CHECK)
    found = {a.state["type"]: a for a in of_type(alerted, UPTIME_ALERT)}
    assert set(found) == {"down_global", "latency", "ssl_expiry"}
    for alert in found.values():
        assert alert.state["checkId"] == check.id, alert.name
        assert alert.state["notifications"] == [{"emails": EMAILS}], alert.name
        assert alert.state["period"] in PERIODS and alert.state["name"].startswith("production: "), alert.name
        assert alert.parent.endswith("node-platform:index:Alerts::alerts"), alert.parent
    assert "threshold" not in found["down_global"].state
    # The provider sends an unset comparison as "": every alert names one of the API's two.
    assert {a.state.get("comparison") for a in found.values()} <= {"greater_than", "less_than"}
    latency, expiry = found["latency"].state, found["ssl_expiry"].state
    assert (latency["comparison"], latency["threshold"]) == ("greater_than", alerted.settings.alert_latency_ms) == (
        "greater_than", 2000)
    assert (expiry["comparison"], expiry["threshold"]) == ("less_than", alerts.CERT_EXPIRY_DAYS)
    # certbot renews 30 days before expiry: the alert says renewal has failed for days, not that it is due.
    assert 7 <= alerts.CERT_EXPIRY_DAYS < 30


def test_alert_latency_ms_changes_only_the_slow_alert(alerted):
    slower = mockcloud.deploy(mockcloud.stack_settings("production", alertEmails=EMAILS, alertLatencyMs=5000),
                              previous=alerted)
    changed = [r.name for r in slower.resources if not r.unchanged and not r.type.startswith("pulumi:")]
    assert changed == ["alerts-uptime-slow"]
    assert slower.named("alerts-uptime-slow").state["threshold"] == 5000


@pytest.mark.parametrize("value", [0, 99, 30001, "fast"])
def test_alert_latency_ms_out_of_range(value):
    from model.settings import SettingsError
    with pytest.raises(SettingsError) as raised:
        mockcloud.stack_settings("staging", alertLatencyMs=value)
    (problem,) = raised.value.problems
    assert problem.startswith("alertLatencyMs: ") and problem.endswith("is not allowed: a whole number from 100 to 30000")
