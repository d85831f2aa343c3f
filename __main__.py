"""A self-hosted Node.js platform on DigitalOcean.

    internet ──443──▶ LoadBalancer ──TLS──▶ AppServerPool (N) ──TLS──▶ Datastore (+ volume)
                         ▲ SSH jump host for everything behind it

Run with `pulumi up -s staging`; tests build the same graph with `build(settings)`.
"""

from __future__ import annotations

from pathlib import Path

import pulumi

from model import conventions, prices
from components.alerts import Alerts, webhook_output
from components.app_server_pool import AppServerPool
from components.datastore import Datastore
from components.foundation import Foundation
from components.load_balancer import LoadBalancer
from components.network import Network
from components.pki import InternalCA
from components.release_archive import release_archive
from components.remote import AutomationKey
from model.settings import Settings, SettingsError, plain_entries, stack_config


def build(settings: Settings) -> dict[str, object]:
    """Register the whole platform; returns the stack outputs."""
    key = AutomationKey("automation")
    base = Foundation(
        settings=settings,
        key=key,
        network=Network("network", settings=settings, key=key),
        ca=InternalCA("internal-ca", stack=settings.stack),
    )

    lb = LoadBalancer("lb", base=base)
    datastore = Datastore("datastore", base=base, jump=lb.route)
    pool = AppServerPool("app", base=base, jump=lb.route, datastore=datastore)
    lb.send_traffic_to(pool.private_ips, serving=pool.serving)
    if settings.backups:
        lb.back_up()
        pool.back_up()
    url = f"https://{settings.domain}"
    if settings.alert_emails:
        Alerts("alerts", settings=settings, network=base.network, url=url)

    outputs = {
        "url": url,
        "public_ip": lb.public_ip,
        "ssh": ssh_commands(lb.public_ip, pool.private_ips, datastore.private_ip),
        "private_ips": {
            "lb": lb.private_ip,
            "app": pool.private_ips,
            "datastore": datastore.private_ip,
        },
        "ca_cert_pem": base.ca.cert_pem,
        "host_keys": host_keys({conventions.LOAD_BALANCER: lb.route, **pool.routes, conventions.DATASTORE: datastore.route}),
        "monthly_cost_estimate": prices.monthly_estimate(
            droplet_sizes=[settings.lb_size, settings.datastore_size]
            + [settings.app_size] * settings.app_server_count,
            volume_gib=settings.volume_size_gb,
            spaces=settings.backups,
            droplet_backups=settings.droplet_backups,
        ),
        "alert_webhook_url": webhook_output(settings),
    }
    if settings.backups:
        archive = release_archive("release-archive", settings=settings, datastore_address=datastore.private_ip)
        outputs["release_archive"] = archive.output
        outputs["release_signing_public_key"] = archive.signing_public_key
    return outputs


def host_keys(routes: dict) -> pulumi.Output[dict]:
    """Each droplet's SSH host key as its boot gate recorded it (name -> key): the deploy
    tool's known_hosts. Public: pulumi-command may mark a gate's stdout secret (its
    environment holds the automation key), which would hide it from `pulumi stack output`."""
    return pulumi.Output.unsecret(pulumi.Output.all(**{name: route.host_key for name, route in routes.items()}))


def ssh_commands(jump_ip, app_ips, datastore_ip) -> pulumi.Output[dict]:
    """How an operator logs in to each droplet: the LB by its reserved IP, the rest through it."""
    user = conventions.OPERATOR_USER

    def commands(ips: list[str]) -> dict:
        jump, *app, datastore_ip = ips
        through = lambda ip: f"ssh -J {user}@{jump} {user}@{ip}"  # noqa: E731
        return {"lb": f"ssh {user}@{jump}", "app": [through(ip) for ip in app], "datastore": through(datastore_ip)}

    return pulumi.Output.all(jump_ip, *app_ips, datastore_ip).apply(commands)


def load_settings() -> Settings:
    """The stack's settings from its Pulumi config; stops the run with every problem found."""
    from pulumi.runtime.config import CONFIG, get_config_env, get_config_secret_keys_env, is_config_secret

    config = {**get_config_env(), **CONFIG.get()}
    # The CLI names the keys it decrypted (`--secret`); the automation API marks them in CONFIG.
    encrypted = {k: None for k in config if is_config_secret(k) or k in get_config_secret_keys_env()}
    raw = stack_config(conventions.PROJECT, config)
    stack = pulumi.get_stack()
    return Settings.from_config(stack, raw, secret_keys=stack_config(conventions.PROJECT, encrypted),
                                plain_entries=plain_entries(stack_file_config(stack)))


def stack_file_config(stack: str) -> dict:
    """The stack file's own config (Pulumi runs the program in the project's folder, beside
    it), encrypted values as `{secure: ...}`; empty when there is none."""
    import yaml

    path = Path(f"Pulumi.{stack}.yaml")
    document = yaml.safe_load(path.read_text()) if path.is_file() else None
    return stack_config(conventions.PROJECT, (document or {}).get("config") or {})


if __name__ == "__main__":
    try:
        stack_settings = load_settings()
    except SettingsError as problems:
        raise SystemExit(str(problems)) from None  # the list of problems, not a traceback
    for output_name, value in build(stack_settings).items():
        pulumi.export(output_name, value)
