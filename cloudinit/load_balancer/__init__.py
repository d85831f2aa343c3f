"""The load balancer: nginx terminating public TLS, re-encrypting to the app servers."""

from __future__ import annotations

import ipaddress

from model import conventions
from model.settings import Settings

from ..files import ConfigFile, Program, Push, Target, render
from ..common import (NGINX_CHECK, NGINX_LOGROTATE_FILE, NGINX_MAIN_FILE, NGINX_RELOAD, NGINX_RELOAD_PROGRAM,
                      NGINX_SITE, ROLE_STEPS)

# Nothing to wait for after a new bundle: no pool member to keep serving.
HEALTH_URL = None

PROGRAMS = [
    Program("load_balancer/provision.sh", ROLE_STEPS, mode="0644"),
    Program("load_balancer/platform-certificate.sh", conventions.CERTIFICATE_COMMAND),
    Program("load_balancer/platform-certificate-deployed.sh", conventions.CERTIFICATE_DEPLOY_HOOK),
    Program("load_balancer/platform-maintenance.sh", conventions.MAINTENANCE_COMMAND),
    Program("load_balancer/platform-drain.sh", conventions.DRAIN_COMMAND),
    NGINX_RELOAD_PROGRAM,
]

# Gets the first certificate (.service), retried by its .timer until it has one.
CERTIFICATE_UNIT = "platform-certificate"
# The whole sshd configuration, with the pushed list of where the deploy login may go.
SSHD_CHECK = ["sshd", "-t"]
SSHD_RELOAD = conventions.SSHD_RELOAD_COMMAND.split()


def files(settings: Settings) -> list[ConfigFile]:
    return [
        NGINX_MAIN_FILE,
        NGINX_LOGROTATE_FILE,
        ConfigFile("load_balancer/site.conf", NGINX_SITE),
        ConfigFile("load_balancer/maintenance.html", f"{conventions.MAINTENANCE_ROOT}/maintenance.html"),
        ConfigFile("load_balancer/platform-certificate.service", f"/etc/systemd/system/{CERTIFICATE_UNIT}.service"),
        ConfigFile("load_balancer/platform-certificate.timer", f"/etc/systemd/system/{CERTIFICATE_UNIT}.timer"),
    ]


def pushes(settings: Settings) -> dict[str, Push]:
    # The pool's addresses, for nginx and for the deploy login's jumps; platform-push puts
    # the old files back if nginx -t or sshd -t fails. A server drained for a restart stays
    # drained: `platform-drain keep` marks it down again in the new file before nginx -t,
    # and `platform-drain record` keeps the list of drained servers once nginx runs with it.
    return {
        "upstreams": Push(
            files={
                "upstreams.conf": Target(conventions.LB_UPSTREAMS_FILE),
                "deploy-permitopen.conf": Target(conventions.LB_DEPLOY_PERMIT_OPEN_FILE),
            },
            check=[[conventions.DRAIN_COMMAND, "keep"], NGINX_CHECK, SSHD_CHECK],
            then=[NGINX_RELOAD, [conventions.DRAIN_COMMAND, "record"], SSHD_RELOAD],
        )
    }


def after_tls(settings: Settings) -> list[list[str]]:
    return [NGINX_CHECK, NGINX_RELOAD]


def backup_paths(settings: Settings) -> list[str]:
    """certbot's account, certificates and renewal settings (a rebuilt LB takes its
    certificate back instead of asking Let's Encrypt again), and the configuration."""
    return ["/etc/letsencrypt", "/etc/nginx", conventions.PLATFORM_ETC, "/etc/systemd/system"]


def after_backup_settings(settings: Settings) -> list[list[str]]:
    # The first certificate waits for the backups (platform-certificate): ask now, not at
    # the timer's next try.
    return [["systemctl", "start", "--no-block", f"{CERTIFICATE_UNIT}.service"]]


def upstreams(app_server_addresses: list[str]) -> str:
    """The LB's list of app servers, pushed whenever the pool changes."""
    return render("load_balancer/upstreams.conf", servers=sorted(app_server_addresses))


def deploy_permit_open(app_server_addresses: list[str]) -> str:
    """Where the LB's deploy login may forward to: each app server's SSH, and nothing else
    (sshd's PermitOpen, read inside its `Match User deploy` block)."""
    if not app_server_addresses:
        raise ValueError("the deploy login's PermitOpen needs at least one app server")
    servers = sorted(str(ipaddress.IPv4Address(address)) for address in app_server_addresses)
    return render("load_balancer/deploy-permitopen.conf", servers=servers)


def provisioning_inputs(settings: Settings) -> dict[str, str]:
    """Shell variables of /etc/platform/platform.env that this role's scripts read."""
    return {
        "DOMAIN": settings.domain,
        # The certificate's other names, space-separated (platform-certificate).
        "DOMAIN_ALIASES": " ".join(settings.domain_aliases),
        "ACME_EMAIL": settings.acme_email,
        "ACME_DIRECTORY": settings.acme_directory,
    }
