"""DigitalOcean Monitoring alert policies on the stack's droplets, and an uptime check of
the site from outside, e-mailed to alertEmails.

Policies select droplets by tag, so a new app server is watched the moment it exists
(every droplet is created with `monitoring=True`, which installs the metrics agent). The
uptime check requests the stack's `url` from DigitalOcean's regions, as users do: through
the LB, over https with its public certificate.

E-mail only: the provider's Slack target needs a channel name and DigitalOcean's own
Slack app authorised in the workspace, which a plain incoming webhook (alertWebhookUrl,
also Mattermost's) does not give. The webhook carries every droplet's backup alerts, and
the deploy tool's outcomes: `webhook_output` is the stack output it reads the URL from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pulumi
import pulumi_digitalocean as do

from model import conventions
from .network import Network
from model.settings import Settings


@dataclass(frozen=True)
class Threshold:
    """One alert policy: DigitalOcean's metric, above what value, for how long."""

    name: str
    metric: str
    above: float
    window: str  # 5m, 10m, 30m or 1h
    description: str


# Every droplet of the stack (its stack tag). The thresholds leave room to act before
# the droplet stops serving: a full disk stops PostgreSQL and journald, swapless droplets
# kill processes when memory runs out.
STACK_THRESHOLDS = (
    Threshold("disk", "v1/insights/droplet/disk_utilization_percent", 85, "5m", "disk over 85% full"),
    Threshold("memory", "v1/insights/droplet/memory_utilization_percent", 90, "10m", "memory over 90% used"),
    Threshold("cpu", "v1/insights/droplet/cpu", 90, "30m", "CPU over 90% for 30 minutes"),
)
# Load is absolute, so it is set per role from the role's size: this many runnable tasks
# per vCPU, averaged over 5 minutes, for LOAD_WINDOW.
LOAD_PER_VCPU = 2
LOAD_METRIC = "v1/insights/droplet/load_5"
LOAD_WINDOW = "10m"


@dataclass(frozen=True)
class UptimeAlert:
    """One alert on the uptime check: DigitalOcean's type, its comparison and threshold
    (None: the type has none), for how long."""

    name: str
    type: str
    # Set on every alert, even where the type has no threshold: the provider sends an
    # unset comparison as "", outside the API's two values, where DigitalOcean's own CLI
    # (doctl) refuses to create any alert without one, down_global included.
    comparison: str  # greater_than or less_than
    threshold: int | None
    period: str  # 2m, 3m, 5m, 10m, 15m, 30m or 1h
    description: str


# Down from every region, not one: a single region's route to the site is the internet's
# trouble, and would wake someone for nothing. certbot renews 30 days before expiry, twice a
# day: below 21 days, nine days of renewals have failed.
CERT_EXPIRY_DAYS = 21


def uptime_alerts(settings: Settings) -> tuple[UptimeAlert, ...]:
    return (
        UptimeAlert("down", "down_global", "greater_than", None, "2m", "the site answers from no region for 2 minutes"),
        UptimeAlert("slow", "latency", "greater_than", settings.alert_latency_ms, "5m",
                    f"the site takes over {settings.alert_latency_ms} ms to answer for 5 minutes"),
        UptimeAlert("certificate", "ssl_expiry", "less_than", CERT_EXPIRY_DAYS, "2m",
                    f"the site's certificate expires in under {CERT_EXPIRY_DAYS} days (renewal is failing)"),
    )


def vcpus(size: str) -> int:
    """vCPUs of a droplet size slug: s-2vcpu-4gb, g-4vcpu-16gb, c-2."""
    found = re.match(r"^[a-z]+-(\d+)vcpu-", size) or re.match(r"^c-(\d+)$", size)
    if not found:
        raise ValueError(f"no vCPU count in droplet size {size!r}")
    return int(found.group(1))


def role_sizes(settings: Settings) -> dict[str, str]:
    return {
        conventions.LOAD_BALANCER: settings.lb_size,
        conventions.APP_SERVER: settings.app_size,
        conventions.DATASTORE: settings.datastore_size,
    }


class Alerts(pulumi.ComponentResource):
    def __init__(
        self, name: str, *, settings: Settings, network: Network, url: str, opts: pulumi.ResourceOptions | None = None
    ):
        super().__init__("node-platform:index:Alerts", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        send = do.MonitorAlertAlertsArgs(emails=list(settings.alert_emails))
        self.policies: list[do.MonitorAlert] = []
        for t in STACK_THRESHOLDS:
            self.policies.append(do.MonitorAlert(
                f"{name}-{t.name}",
                type=t.metric, compare="GreaterThan", value=t.above, window=t.window,
                tags=[network.stack_tag.name], alerts=send, enabled=True,
                description=f"{settings.stack}: {t.description}",
                opts=child,
            ))
        for role, size in role_sizes(settings).items():
            limit = LOAD_PER_VCPU * vcpus(size)
            self.policies.append(do.MonitorAlert(
                f"{name}-{role}-load",
                type=LOAD_METRIC, compare="GreaterThan", value=limit, window=LOAD_WINDOW,
                tags=[network.role_tags[role].name], alerts=send, enabled=True,
                description=f"{settings.stack} {role}: 5-minute load over {limit} ({size})",
                opts=child,
            ))
        self.uptime_check = do.UptimeCheck(
            f"{name}-uptime", name=f"{settings.stack}: {url}", target=url, type="https", enabled=True, opts=child,
        )
        notify = [do.UptimeAlertNotificationArgs(emails=list(settings.alert_emails))]
        self.uptime_alerts = [
            do.UptimeAlert(
                f"{name}-uptime-{a.name}", check_id=self.uptime_check.id, name=f"{settings.stack}: {a.description}",
                type=a.type, comparison=a.comparison, threshold=a.threshold, period=a.period,
                notifications=notify, opts=child,
            )
            for a in uptime_alerts(settings)
        ]
        self.register_outputs({"uptime_check_id": self.uptime_check.id})


def webhook_output(settings: Settings) -> pulumi.Output[str]:
    """The stack output `alert_webhook_url` the deploy tool posts its outcomes to: secret
    (the URL is the webhook's only key), and empty without alertWebhookUrl, so a stack that
    has it empty is told from one whose last `up` predates the output."""
    webhook = settings.alert_webhook_url
    return webhook.output() if webhook else pulumi.Output.secret("")
