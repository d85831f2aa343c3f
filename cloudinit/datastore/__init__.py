"""The datastore: each enabled engine on the block volume, reached over TLS only.

Engines are installed without starting; provisioning starts each one once the volume
is mounted and the droplet's certificate is there (and, for Redis, its password).
Passwords never appear in these files: they arrive by the `secrets` push and
provisioning applies them to each engine.
"""

from __future__ import annotations

import shlex

from components import conventions
from components.settings import Settings

from .. import ConfigFile, Program, Push, Target, render
from ..common import ROLE_STEPS

PROGRAMS = [
    Program("datastore/provision.sh", ROLE_STEPS, mode="0644"),
    Program("datastore/backup.sh", conventions.BACKUP_LIBRARY, mode="0644"),
    Program("datastore/platform-backup.sh", conventions.BACKUP_COMMAND),
    Program("datastore/platform-restore.sh", conventions.RESTORE_COMMAND),
]

SECRETS_FILE = conventions.DATASTORE_SECRETS_FILE
# Logins that only the datastore itself uses, besides the app's one per engine.
ADMIN_LOGINS = {"mongodb": "mongodb_admin"}

# Versionless homes for PostgreSQL's files: the cluster's own postgresql.conf (written
# by pg_createcluster for whichever version the distribution has) includes ours.
POSTGRESQL_DIR = f"{conventions.PLATFORM_ETC}/postgresql"
POSTGRESQL_CONF = f"{POSTGRESQL_DIR}/platform.conf"
POSTGRESQL_HBA = f"{POSTGRESQL_DIR}/pg_hba.conf"
POSTGRESQL_CREATECLUSTER = "/etc/postgresql-common/createcluster.d/50-platform.conf"
REDIS_CONF = "/etc/redis/redis.conf"
# requirepass, written by provisioning from the secrets push (redis.conf includes it).
REDIS_PASSWORD_CONF = "/etc/redis/platform-password.conf"
REDIS_STUNNEL_CONF = "/etc/stunnel/platform-redis.conf"
RABBITMQ_CONF = "/etc/rabbitmq/rabbitmq.conf"
RABBITMQ_ENV = "/etc/rabbitmq/rabbitmq-env.conf"
MONGODB_CONF = "/etc/mongod.conf"
MONGODB_USERS_SCRIPT = f"{conventions.PLATFORM_ETC}/mongodb/users.js"

# Each engine's systemd unit, and the units that keep data on the volume: a drop-in
# makes them wait for the mount (RequiresMountsFor).
UNITS = {
    "postgresql": "postgresql@.service",  # one instance per cluster, e.g. postgresql@16-main
    "mongodb": "mongod.service",
    "redis": "redis-server.service",
    "rabbitmq": "rabbitmq-server.service",
}
STUNNEL_REDIS_UNIT = "stunnel@platform-redis.service"  # reads REDIS_STUNNEL_CONF
STUNNEL_REDIS_DROP_IN = f"/etc/systemd/system/{STUNNEL_REDIS_UNIT}.d/50-platform.conf"


BACKUP_SERVICE = f"/etc/systemd/system/{conventions.BACKUP_UNIT}.service"
BACKUP_ALERT_SERVICE = f"/etc/systemd/system/{conventions.BACKUP_ALERT_UNIT}.service"
BACKUP_CHECK_SERVICE = f"/etc/systemd/system/{conventions.BACKUP_CHECK_UNIT}.service"
BACKUP_CHECK_TIMER = f"/etc/systemd/system/{conventions.BACKUP_CHECK_UNIT}.timer"
# Pushed, not first-boot: changing the hour must not replace the datastore droplet.
BACKUP_TIMER = f"/etc/systemd/system/{conventions.BACKUP_UNIT}.timer"


def drop_in(engine: str) -> str:
    return f"/etc/systemd/system/{UNITS[engine]}.d/50-platform-data.conf"


# Files whose rendered text carries the private-address placeholder.
ADDRESSED = (POSTGRESQL_CONF, REDIS_STUNNEL_CONF, MONGODB_CONF)


def engine_files(engine: str) -> list[ConfigFile]:
    mount_drop_in = ConfigFile("datastore/data-mount.conf", drop_in(engine))
    return {
        "postgresql": [
            # Read before the package is installed: no default cluster on the root disk.
            ConfigFile("datastore/createcluster.conf", POSTGRESQL_CREATECLUSTER),
            ConfigFile("datastore/postgresql.conf", POSTGRESQL_CONF),
            ConfigFile("datastore/pg_hba.conf", POSTGRESQL_HBA),
            mount_drop_in,
        ],
        "redis": [
            ConfigFile("datastore/redis.conf", REDIS_CONF),
            ConfigFile("datastore/stunnel-redis.conf", REDIS_STUNNEL_CONF),
            ConfigFile("datastore/redis-data-mount.conf", drop_in(engine)),
            ConfigFile("datastore/stunnel-network.conf", STUNNEL_REDIS_DROP_IN),
        ],
        "rabbitmq": [
            ConfigFile("datastore/rabbitmq.conf", RABBITMQ_CONF),
            ConfigFile("datastore/rabbitmq-env.conf", RABBITMQ_ENV),
            mount_drop_in,
        ],
        "mongodb": [
            ConfigFile("datastore/mongod.conf", MONGODB_CONF),
            ConfigFile("datastore/mongodb-users.js", MONGODB_USERS_SCRIPT, mode="0600"),
            mount_drop_in,
        ],
    }[engine]


def files(settings: Settings) -> list[ConfigFile]:
    backups = [
        ConfigFile("datastore/platform-backup.service", BACKUP_SERVICE),
        ConfigFile("datastore/platform-backup-alert.service", BACKUP_ALERT_SERVICE),
        ConfigFile("datastore/platform-backup-check.service", BACKUP_CHECK_SERVICE),
        ConfigFile("datastore/platform-backup-check.timer", BACKUP_CHECK_TIMER),
    ] if settings.backups else []
    return [f for engine in settings.engines for f in engine_files(engine)] + backups


def password_names(settings: Settings) -> list[str]:
    """Every password the secrets push carries: the app's login per engine, then admins."""
    names = list(settings.engines)
    names += [ADMIN_LOGINS[e] for e in settings.engines if e in ADMIN_LOGINS]
    return names


def pushes(settings: Settings) -> dict[str, Push]:
    kinds = {
        "secrets": Push(
            files={"secrets.env": Target(SECRETS_FILE, mode="0600")},
            then=[[conventions.PROVISION_COMMAND]],
        )
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
            # Reaching the repository (and creating it the first time) is the check: a
            # wrong key or bucket puts the previous files back and fails `pulumi up`.
            check=[[conventions.BACKUP_COMMAND, "init"]],
            then=[["systemctl", "daemon-reload"], ["systemctl", "enable", timer],
                  ["systemctl", "restart", timer]],
        )
    return kinds


def backup_schedule_files(settings: Settings) -> dict[str, str]:
    """The `backup` push's files besides restic's secrets: retention and the timer."""
    context = {"settings": settings}
    return {
        "backup.conf": render("datastore/backup.conf", **context),
        f"{conventions.BACKUP_UNIT}.timer": render("datastore/platform-backup.timer", **context),
    }


def backup_repository(endpoint: str, bucket: str) -> str:
    """restic's name for the repository in the stack's bucket (path-style: the bucket
    follows the endpoint)."""
    return f"s3:{endpoint}/{bucket}/{conventions.BACKUP_REPOSITORY_PREFIX}"


def backup_env(repository: str, password: str, access_key: str, secret_key: str) -> str:
    """restic's environment, as platform-backup sources it."""
    values = {
        "RESTIC_REPOSITORY": repository,
        "RESTIC_PASSWORD": password,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
    }
    # An empty value (a provider that gave no key) fails the push's check, not this render.
    return "".join(f"{name}={shlex.quote(value or '')}\n" for name, value in values.items())


def alert_env(webhook_url: str) -> str:
    """Where platform-backup sends its alerts; empty: to the log only."""
    return f"ALERT_WEBHOOK_URL={shlex.quote(webhook_url)}\n"


def after_tls(settings: Settings) -> list[list[str]]:
    # Provisioning starts the engines once the certificate is there, and restarts them
    # when it changes.
    return [[conventions.PROVISION_COMMAND]]


def secrets_env(passwords: dict[str, str]) -> str:
    """The engines' passwords, as the provisioning script reads them."""
    return "".join(f"{name.upper()}_PASSWORD={value}\n" for name, value in sorted(passwords.items()))


def provisioning_inputs(settings: Settings) -> dict[str, str]:
    """Shell variables of /etc/platform/platform.env that this role's scripts read."""
    return {"VPC_IP_RANGE": settings.vpc_ip_range}
