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


# Where the files every droplet gets are read from.
SSHD_DROP_IN = "/etc/ssh/sshd_config.d/10-platform.conf"
FAIL2BAN_JAIL = "/etc/fail2ban/jail.d/platform.conf"
# After the distribution's 20auto-upgrades and 50unattended-upgrades, so these win.
AUTO_UPGRADES = "/etc/apt/apt.conf.d/21platform-auto-upgrades"
UNATTENDED_UPGRADES = "/etc/apt/apt.conf.d/52platform-unattended-upgrades"
LOGROTATE = "/etc/logrotate.d/platform"


def files(settings: Settings) -> list[ConfigFile]:
    return [
        ConfigFile("common/sshd_platform.conf", SSHD_DROP_IN),
        ConfigFile("common/fail2ban-jail.conf", FAIL2BAN_JAIL),
        ConfigFile("common/auto-upgrades.conf", AUTO_UPGRADES),
        ConfigFile("common/unattended-upgrades.conf", UNATTENDED_UPGRADES),
        ConfigFile("common/logrotate.conf", LOGROTATE),
        ConfigFile("common/firewall.rules", conventions.FIREWALL_RULES_FILE),
    ]


def pushes(role: str, settings: Settings) -> dict[str, Push]:
    """The droplet's certificate from the internal CA; the role says what reloads after it."""
    return {
        "tls": Push(
            files={
                "ca.crt": Target(conventions.CA_CERT_PATH),
                "server.crt": Target(conventions.SERVER_CERT_PATH),
                "server.key": Target(conventions.SERVER_KEY_PATH, mode="0640", owner=f"root:{conventions.TLS_KEY_GROUP}"),
            },
            check=[["openssl", "x509", "-noout", "-in", conventions.SERVER_CERT_PATH]],
            then=[["update-ca-certificates"], *role_module(role).after_tls(settings)],
        ),
        # sshd reads these at each login: nothing to reload.
        "operators": Push(
            files={login: Target(f"{conventions.LOGIN_KEYS_DIR}/{login}") for login in ssh_logins(role)},
        ),
    }


def ssh_logins(role: str) -> list[str]:
    """Who may log in over SSH on this role."""
    return [conventions.OPERATOR_USER] + [u.name for u in conventions.ROLE_USERS[role] if u.ssh_login]


def operator_keys(role: str, settings: Settings) -> dict[str, str]:
    """The `operators` push: every login of the role takes the operators' keys."""
    keys = "".join(key + "\n" for key in settings.ssh_public_keys)
    return {login: keys for login in ssh_logins(role)}
