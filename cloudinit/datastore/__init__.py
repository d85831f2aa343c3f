"""The datastore: each enabled engine on the block volume, reached over TLS only."""

from __future__ import annotations

from components import conventions
from components.settings import Settings

from .. import ConfigFile, Program, Push, Target
from ..common import ROLE_STEPS

PROGRAMS = [Program("datastore/provision.sh", ROLE_STEPS, mode="0644")]

SECRETS_FILE = f"{conventions.PLATFORM_ETC}/secrets.env"


def files(settings: Settings) -> list[ConfigFile]:
    return []


def pushes(settings: Settings) -> dict[str, Push]:
    return {
        "secrets": Push(
            files={"secrets.env": Target(SECRETS_FILE, mode="0600")},
            then=[[conventions.PROVISION_COMMAND]],
        )
    }


def after_tls(settings: Settings) -> list[list[str]]:
    return [[conventions.PROVISION_COMMAND]]


def secrets_env(passwords: dict[str, str]) -> str:
    """The engines' passwords, as the provisioning script reads them."""
    return "".join(f"{name.upper()}_PASSWORD={value}\n" for name, value in sorted(passwords.items()))
