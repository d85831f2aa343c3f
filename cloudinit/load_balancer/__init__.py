"""The load balancer: nginx terminating public TLS, re-encrypting to the app servers."""

from __future__ import annotations

from components import conventions
from components.settings import Settings

from .. import ConfigFile, Program, Push, Target, render
from ..common import ROLE_STEPS

PROGRAMS = [Program("load_balancer/provision.sh", ROLE_STEPS, mode="0644")]

NGINX_CHECK = ["nginx", "-t", "-q"]
NGINX_RELOAD = ["systemctl", "reload", "nginx"]


def files(settings: Settings) -> list[ConfigFile]:
    return [
        ConfigFile("load_balancer/site.conf", "/etc/nginx/conf.d/platform.conf"),
    ]


def pushes(settings: Settings) -> dict[str, Push]:
    return {
        "upstreams": Push(
            files={"upstreams.conf": Target(conventions.LB_UPSTREAMS_FILE)},
            check=[NGINX_CHECK],
            then=[NGINX_RELOAD],
        )
    }


def after_tls(settings: Settings) -> list[list[str]]:
    return [NGINX_CHECK, NGINX_RELOAD]


def upstreams(app_server_addresses: list[str]) -> str:
    """The LB's list of app servers, pushed whenever the pool changes."""
    return render("load_balancer/upstreams.conf", servers=sorted(app_server_addresses))
