"""An app server: the web and API Node.js apps under pm2, behind a local TLS nginx."""

from __future__ import annotations

from components import conventions
from components.settings import Settings

from .. import ConfigFile, Program, Push, Target, render
from ..common import ROLE_STEPS

PROGRAMS = [Program("app_server/provision.sh", ROLE_STEPS, mode="0644")]

NGINX_CHECK = ["nginx", "-t", "-q"]
NGINX_RELOAD = ["systemctl", "reload", "nginx"]


def files(settings: Settings) -> list[ConfigFile]:
    return [
        ConfigFile("app_server/site.conf", "/etc/nginx/conf.d/platform.conf"),
    ]


def pushes(settings: Settings) -> dict[str, Push]:
    return {
        "env": Push(
            files={".env": Target(conventions.APP_ENV_FILE, mode="0640", owner=f"root:{conventions.APP_USER}")},
        )
    }


def after_tls(settings: Settings) -> list[list[str]]:
    return [NGINX_CHECK, NGINX_RELOAD]


def app_env(datastore_address: str, credentials: dict[str, str], settings: Settings) -> str:
    """The apps' environment: where each enabled engine is and how to log in to it."""
    return render("app_server/app.env", datastore=datastore_address, credentials=credentials, settings=settings)
