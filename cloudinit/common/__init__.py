"""What every droplet gets, whatever its role."""

from __future__ import annotations

import shlex

from model import conventions
from model.settings import Settings

from ..files import ConfigFile, Program, Push, Target, render

LIBRARY = "/usr/local/lib/platform/common.sh"
ROLE_STEPS = "/usr/local/lib/platform/role.sh"

PROGRAMS = [
    Program("common/platform-provision.sh", conventions.PROVISION_COMMAND),
    Program("common/common.sh", LIBRARY, mode="0644"),
    Program("common/hardening.sh", conventions.HARDENING_LIBRARY, mode="0644"),
    Program("common/platform-push.py", conventions.PUSH_COMMAND),
    Program("common/platform-lock.py", conventions.LOCK_COMMAND),
    Program("common/platform-write.py", conventions.WRITE_COMMAND),
    Program("common/backup.sh", conventions.BACKUP_LIBRARY, mode="0644"),
    Program("common/platform-backup.sh", conventions.BACKUP_COMMAND),
    Program("common/platform-restore.sh", conventions.RESTORE_COMMAND),
]


# Where the files every droplet gets are read from.
# Each role's nginx site (the LB's and the app server's), one file in nginx's conf.d,
# read by the nginx.conf both roles share (common/nginx.conf).
NGINX_SITE = "/etc/nginx/conf.d/platform.conf"
NGINX_MAIN = "/etc/nginx/nginx.conf"
NGINX_MAIN_FILE = ConfigFile("common/nginx.conf", NGINX_MAIN)
# The roles that run nginx (the LB and the app servers) check and reload it with these.
NGINX_RELOAD_PROGRAM = Program("common/platform-nginx-reload.sh", conventions.NGINX_RELOAD_COMMAND)
NGINX_CHECK = ["nginx", "-t", "-q"]
NGINX_RELOAD = [conventions.NGINX_RELOAD_COMMAND]
# The distribution's, with a size limit: on the droplets that run nginx (after its package).
NGINX_LOGROTATE = "/etc/logrotate.d/nginx"
NGINX_LOGROTATE_FILE = ConfigFile("common/nginx.logrotate", NGINX_LOGROTATE)
SSHD_DROP_IN = "/etc/ssh/sshd_config.d/10-platform.conf"
FAIL2BAN_JAIL = "/etc/fail2ban/jail.d/platform.conf"
# After the distribution's 20auto-upgrades and 50unattended-upgrades, so these win.
AUTO_UPGRADES = "/etc/apt/apt.conf.d/21platform-auto-upgrades"
UNATTENDED_UPGRADES = "/etc/apt/apt.conf.d/52platform-unattended-upgrades"
LOGROTATE = "/etc/logrotate.d/platform"
LOGROTATE_TIMER_DROP_IN = "/etc/systemd/system/logrotate.timer.d/platform.conf"
# needrestart reads every conf.d/*.conf after its own needrestart.conf.
NEEDRESTART_CONF = "/etc/needrestart/conf.d/platform.conf"
# Host hardening: applied by provisioning's "host hardening" step.
NO_CORE_DUMPS = "/etc/security/limits.d/10-platform-no-core-dumps.conf"
COREDUMP = "/etc/systemd/coredump.conf.d/10-platform.conf"
LOGIN_UMASK = "/etc/profile.d/platform-umask.sh"
MODPROBE_BLACKLIST = "/etc/modprobe.d/platform-unused-protocols.conf"
ACCT_DROP_IN = "/etc/systemd/system/acct.service.d/platform.conf"
INTEGRITY_SERVICE = f"/etc/systemd/system/{conventions.INTEGRITY_UNIT}.service"
INTEGRITY_TIMER = f"/etc/systemd/system/{conventions.INTEGRITY_UNIT}.timer"

BACKUP_SERVICE = f"/etc/systemd/system/{conventions.BACKUP_UNIT}.service"
BACKUP_ALERT_SERVICE = f"/etc/systemd/system/{conventions.BACKUP_ALERT_UNIT}.service"
BACKUP_CHECK_SERVICE = f"/etc/systemd/system/{conventions.BACKUP_CHECK_UNIT}.service"
BACKUP_CHECK_TIMER = f"/etc/systemd/system/{conventions.BACKUP_CHECK_UNIT}.timer"
# Pushed, not first-boot: changing the hour must not replace a droplet.
BACKUP_TIMER = f"/etc/systemd/system/{conventions.BACKUP_UNIT}.timer"


def files(settings: Settings) -> list[ConfigFile]:
    return [
        ConfigFile("common/sshd_platform.conf", SSHD_DROP_IN),
        ConfigFile("common/issue.net", conventions.LOGIN_BANNER_FILE),
        ConfigFile("common/fail2ban-jail.conf", FAIL2BAN_JAIL),
        ConfigFile("common/auto-upgrades.conf", AUTO_UPGRADES),
        ConfigFile("common/unattended-upgrades.conf", UNATTENDED_UPGRADES),
        ConfigFile("common/needrestart.conf", NEEDRESTART_CONF),
        ConfigFile("common/logrotate.conf", LOGROTATE),
        ConfigFile("common/logrotate-hourly.conf", LOGROTATE_TIMER_DROP_IN),
        ConfigFile("common/firewall.rules", conventions.FIREWALL_RULES_FILE),
        ConfigFile("common/hardening-sysctl.conf", conventions.HARDENING_SYSCTL_FILE),
        ConfigFile("common/no-core-dumps.conf", NO_CORE_DUMPS),
        ConfigFile("common/coredump.conf", COREDUMP),
        ConfigFile("common/umask.sh", LOGIN_UMASK),
        ConfigFile("common/modprobe-blacklist.conf", MODPROBE_BLACKLIST),
        ConfigFile("common/acct.conf", ACCT_DROP_IN),
        ConfigFile("common/platform-debsums.service", INTEGRITY_SERVICE),
        ConfigFile("common/platform-debsums.timer", INTEGRITY_TIMER),
    ] + ([
        ConfigFile("common/platform-backup.service", BACKUP_SERVICE),
        ConfigFile("common/platform-backup-alert.service", BACKUP_ALERT_SERVICE),
        ConfigFile("common/platform-backup-check.service", BACKUP_CHECK_SERVICE),
        ConfigFile("common/platform-backup-check.timer", BACKUP_CHECK_TIMER),
    ] if settings.backups else [])


def pushes(role: str, settings: Settings, after_tls: list[list[str]],
           after_backup_settings: list[list[str]]) -> dict[str, Push]:
    """The droplet's certificate from the internal CA, the operators' keys and, with backups
    on, the backup settings; the role says what reloads after each (`after_*`)."""
    kinds = {
        "tls": Push(
            files={
                "ca.crt": Target(conventions.CA_CERT_PATH),
                "server.crt": Target(conventions.SERVER_CERT_PATH),
                "server.key": Target(conventions.SERVER_KEY_PATH, mode="0640", owner=f"root:{conventions.TLS_KEY_GROUP}"),
            },
            check=[["openssl", "x509", "-noout", "-in", conventions.SERVER_CERT_PATH]],
            then=[["update-ca-certificates"], *after_tls],
        ),
        # sshd reads these at each login: nothing to reload.
        "operators": Push(
            files={login: Target(f"{conventions.LOGIN_KEYS_DIR}/{login}") for login in ssh_logins(role)},
        ),
    }
    if settings.backups:
        timer = f"{conventions.BACKUP_UNIT}.timer"
        kinds["backup"] = Push(
            files={
                "backup.env": Target(conventions.BACKUP_SECRETS_FILE, mode="0600"),
                "alert.env": Target(conventions.ALERT_SETTINGS_FILE, mode="0600"),
                "backup.conf": Target(conventions.BACKUP_RETENTION_FILE),
                timer: Target(BACKUP_TIMER),
            },
            # Reaching the repository (and, on the droplet that creates it, creating it the
            # first time) is the check: a wrong key or bucket puts the previous files back
            # and fails `pulumi up`.
            check=[[conventions.BACKUP_COMMAND, "init"]],
            then=[["systemctl", "daemon-reload"], ["systemctl", "enable", timer],
                  ["systemctl", "restart", timer], *after_backup_settings],
        )
    return kinds


# Logs a snapshot carries besides the configuration (missing ones are left out: the images
# differ). The journal holds sshd's and the firewall's (kernel) lines where rsyslog does not
# write auth.log and ufw.log. Never restored with the configuration: restic restores them.
COMMON_LOG_PATHS = ["/var/log/journal", "/var/log/auth.log", "/var/log/ufw.log", "/var/log/fail2ban.log",
                    "/var/log/account", conventions.PLATFORM_LOG_DIR]
ENGINE_LOG_PATHS = {
    "postgresql": ["/var/log/postgresql"],
    "mongodb": ["/var/log/mongodb"],
    "redis": ["/var/log/redis"],  # stunnel logs to the journal
    "rabbitmq": ["/var/log/rabbitmq"],
}


def log_paths(role: str, settings: Settings) -> list[str]:
    """The logs the role's backups carry: every droplet's, nginx's, the engines'."""
    own = {
        conventions.LOAD_BALANCER: ["/var/log/nginx", "/var/log/letsencrypt"],
        conventions.APP_SERVER: ["/var/log/nginx"],
        conventions.DATASTORE: [path for engine in settings.engines for path in ENGINE_LOG_PATHS[engine]],
    }[role]
    return COMMON_LOG_PATHS + own


def ssh_logins(role: str) -> list[str]:
    """Who may log in over SSH on this role."""
    return [conventions.OPERATOR_USER] + [u.name for u in conventions.ROLE_USERS[role] if u.ssh_login]


def deploy_login_keys(settings: Settings) -> tuple[str, ...]:
    """The keys the deploy login takes: deployKeys, or the operators' while it is empty."""
    return settings.deploy_keys or settings.ssh_public_keys


def operator_keys(role: str, settings: Settings, automation_key: str) -> dict[str, str]:
    """The `operators` push: each login of the role and the keys it takes: the operators'
    for theirs, and the program's own first (sshd reads no other file, so a file without
    it would lock the program out); deployKeys for the deploy login."""
    own = automation_key.strip()
    keys = {conventions.OPERATOR_USER: [own] + [k.strip() for k in settings.ssh_public_keys if k.strip() != own],
            conventions.DEPLOY_USER: list(deploy_login_keys(settings))}
    return {login: "".join(key + "\n" for key in keys[login]) for login in ssh_logins(role)}


# --- Backups: the `backup` push's files ------------------------------------------------


def backup_repository(endpoint: str, bucket: str, role: str) -> str:
    """restic's name for a role's repository in the stack's bucket (path-style: the bucket
    follows the endpoint)."""
    return f"s3:{endpoint}/{bucket}/{conventions.backup_repository_path(role)}"


def backup_env(
    repository: str, password: str, access_key: str, secret_key: str, host: str, *, creates_repository: bool
) -> str:
    """restic's environment, the snapshots' host name, and whether this droplet creates the
    repository when it is missing (one droplet per role does), as platform-backup sources them."""
    values = {
        "RESTIC_REPOSITORY": repository,
        "RESTIC_PASSWORD": password,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "BACKUP_HOST": host,
        "BACKUP_CREATES_REPOSITORY": "yes" if creates_repository else "no",
    }
    # An empty value (a provider that gave no key) fails the push's check, not this render.
    return "".join(f"{name}={shlex.quote(value or '')}\n" for name, value in values.items())


def alert_env(webhook_url: str) -> str:
    """Where platform-backup sends its alerts; empty: to the log only."""
    return f"ALERT_WEBHOOK_URL={shlex.quote(webhook_url)}\n"


def backup_schedule_files(settings: Settings) -> dict[str, str]:
    """The `backup` push's files besides restic's secrets: retention and the timer."""
    context = {"settings": settings}
    return {
        "backup.conf": render("common/backup.conf", **context),
        f"{conventions.BACKUP_UNIT}.timer": render("common/platform-backup.timer", **context),
    }
