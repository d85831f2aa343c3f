"""The datastore: each enabled engine on the block volume, reached over TLS only.

Engines are installed without starting; provisioning starts each one once the volume
is mounted and the droplet's certificate is there (and, for Redis, its users).
Passwords never appear in these files: they arrive by the `secrets` push and
provisioning applies them to each engine.
"""

from __future__ import annotations

from model import conventions
from model.settings import Settings

from ..files import ConfigFile, Program, Push, Target
from ..common import ROLE_STEPS

# Nothing to wait for after a new bundle: no pool member to keep serving.
HEALTH_URL = None

PROGRAMS = [
    Program("datastore/provision.sh", ROLE_STEPS, mode="0644"),
]

SECRETS_FILE = conventions.DATASTORE_SECRETS_FILE
# Logins that only the datastore itself uses, besides the app's one per engine: MongoDB's
# user administrator, Redis's backup user (replication's SYNC, nothing else).
ADMIN_LOGINS = {"mongodb": "mongodb_admin", "redis": "redis_backup"}

# Versionless homes for PostgreSQL's files: the cluster's own postgresql.conf (written
# by pg_createcluster for whichever version the distribution has) includes ours.
POSTGRESQL_DIR = f"{conventions.PLATFORM_ETC}/postgresql"
POSTGRESQL_CONF = f"{POSTGRESQL_DIR}/platform.conf"
POSTGRESQL_HBA = f"{POSTGRESQL_DIR}/pg_hba.conf"
POSTGRESQL_CREATECLUSTER = "/etc/postgresql-common/createcluster.d/50-platform.conf"
REDIS_CONF = "/etc/redis/redis.conf"
# Redis's users (ACL), written by provisioning from the secrets push (redis.conf names it).
REDIS_ACL_FILE = "/etc/redis/platform-users.acl"
# Where the password (requirepass) was before Redis had users: provisioning removes it.
REDIS_OLD_PASSWORD_CONF = "/etc/redis/platform-password.conf"
REDIS_STUNNEL_CONF = "/etc/stunnel/platform-redis.conf"
RABBITMQ_CONF = "/etc/rabbitmq/rabbitmq.conf"
RABBITMQ_ENV = "/etc/rabbitmq/rabbitmq-env.conf"
MONGODB_CONF = "/etc/mongod.conf"
MONGODB_USERS_SCRIPT = f"{conventions.PLATFORM_ETC}/mongodb/users.js"

# Each engine's systemd unit, and the units that keep data on the volume: a drop-in
# makes them wait for the mount (RequiresMountsFor).
UNITS = {
    "postgresql": "postgresql@.service",  # one instance per cluster: postgresql@<major>-main
    "mongodb": "mongod.service",
    "redis": "redis-server.service",
    "rabbitmq": "rabbitmq-server.service",
}
STUNNEL_REDIS_UNIT = "stunnel@platform-redis.service"  # reads REDIS_STUNNEL_CONF
STUNNEL_REDIS_DROP_IN = f"/etc/systemd/system/{STUNNEL_REDIS_UNIT}.d/50-platform.conf"



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
    return [f for engine in settings.engines for f in engine_files(engine)]


def password_names() -> list[str]:
    """Every password the secrets push carries: the app's login per engine, then admins.
    Every engine's, on or off: an engine switched off keeps its data, and its logins with
    their passwords, for when it is switched on again (its bundle needs them before the
    next secrets push could bring them)."""
    return [*conventions.ENGINES, *(ADMIN_LOGINS[e] for e in conventions.ENGINES if e in ADMIN_LOGINS)]


def pushes(settings: Settings) -> dict[str, Push]:
    return {
        "secrets": Push(
            files={"secrets.env": Target(SECRETS_FILE, mode="0600")},
            then=[[conventions.PROVISION_COMMAND]],
        )
    }


def backup_paths(settings: Settings) -> list[str]:
    """The configuration kept with the engines' dumps (a rebuilt droplet gets its own from
    the program; restores put these beside /etc, never over it)."""
    per_engine = {
        "postgresql": ["/etc/postgresql", "/etc/postgresql-common/createcluster.d"],
        "redis": ["/etc/redis", "/etc/stunnel"],
        "rabbitmq": ["/etc/rabbitmq"],
        "mongodb": [MONGODB_CONF],
    }
    return [conventions.PLATFORM_ETC, "/etc/systemd/system"] + [
        path for engine in settings.engines for path in per_engine[engine]
    ]


def after_backup_settings(settings: Settings) -> list[list[str]]:
    return []


def after_tls(settings: Settings) -> list[list[str]]:
    # Provisioning starts the engines once the certificate is there, and restarts them
    # when it changes.
    return [[conventions.PROVISION_COMMAND]]


def secrets_env(passwords: dict[str, str]) -> str:
    """The engines' passwords, as the provisioning script reads them."""
    return "".join(f"{name.upper()}_PASSWORD={value}\n" for name, value in sorted(passwords.items()))


def provisioning_inputs(settings: Settings) -> dict[str, str]:
    """Shell variables of /etc/platform/platform.env that this role's scripts read."""
    # The volume's size: a new one is a new bundle, whose provisioning grows the filesystem.
    return {"VPC_IP_RANGE": settings.vpc_ip_range, "VOLUME_SIZE_GB": str(settings.volume_size_gb)}
