"""What every droplet gets, whatever its role."""

from __future__ import annotations

from components import conventions
from components.settings import Settings

from .. import ConfigFile, Program, Push, Target, role_module

LIBRARY = "/usr/local/lib/platform/common.sh"
ROLE_STEPS = "/usr/local/lib/platform/role.sh"

PROGRAMS = [
    Program("common/platform-provision.sh", conventions.PROVISION_COMMAND),
    Program("common/common.sh", LIBRARY, mode="0644"),
    Program("common/platform-push.py", conventions.PUSH_COMMAND),
]


def files(settings: Settings) -> list[ConfigFile]:
    return [
        ConfigFile("common/sshd_platform.conf", "/etc/ssh/sshd_config.d/50-platform.conf"),
    ]


def pushes(role: str, settings: Settings) -> dict[str, Push]:
    """The droplet's certificate from the internal CA; the role says what reloads after it."""
    return {
        "tls": Push(
            files={
                "ca.crt": Target(conventions.CA_CERT_PATH),
                "server.crt": Target(conventions.SERVER_CERT_PATH),
                "server.key": Target(conventions.SERVER_KEY_PATH, mode="0640", owner="root:platform-tls"),
            },
            check=[["openssl", "x509", "-noout", "-in", conventions.SERVER_CERT_PATH]],
            then=[["update-ca-certificates"], *role_module(role).after_tls(settings)],
        )
    }
