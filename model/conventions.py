"""One home for the facts that the Pulumi graph, the server files and the tests share.

A port, a path or a user name is written here once; the firewall rules, the rendered
configs and the tests all read it from here. Longer than the other modules on purpose: it
is a list of facts in sections, and one file is the one place to look for any of them.
"""

import re
from dataclasses import dataclass

PROJECT = "node-platform"

# --- Roles -------------------------------------------------------------------------
LOAD_BALANCER = "lb"
APP_SERVER = "app"
DATASTORE = "datastore"
ROLES = (LOAD_BALANCER, APP_SERVER, DATASTORE)

# --- Names made from the stack's name ------------------------------------------------
# DigitalOcean's rules for them: a droplet's name is its hostname (here one DNS label, at
# most 63: letters, digits, `-`); a volume's is lowercase letters, digits and `-`, starting
# with a letter, ending with a letter or digit, at most 64; a Spaces bucket's is 3-63
# lowercase letters, digits and `-`, starting and ending with a letter or digit; a tag's is
# letters, digits, `:`, `-` and `_`, at most 255. A stack name that starts with a
# lowercase letter, holds only lowercase letters, digits and `-`, does not end with `-`
# and is at most STACK_NAME_MAX long makes every name below valid.
# 40 leaves room: the names closest to their limit, the datastore droplet's hostname
# (`<stack>-datastore`, 63) and the CA's common name (`<stack> internal CA`, X.509 allows
# 64), are then 50 and 52 long.
STACK_NAME_MAX = 40
STACK_NAME_PATTERN = r"[a-z]([a-z0-9-]*[a-z0-9])?"
BUCKET_NAME_MAX = 63
BUCKET_NAME_PATTERN = r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]"


def droplet_name(stack: str, member: str) -> str:
    """A droplet's name and hostname (member: `lb`, `app-2`, `datastore`); its certificate
    carries it too."""
    return f"{stack}-{member}"


def vpc_name(stack: str, region: str, ip_range: str) -> str:
    """The VPC's name, unique in an account as DigitalOcean requires. It carries the region
    and range, which a stack keeps from its creation (components/datastore.py refuses new
    ones), so it does not change; it was made so when a new range or region still meant a
    new VPC beside the old one (the provider creates before it deletes), and a stack made
    since has it. Letters, digits, dashes and periods only. A new name alone is a rename in
    place."""
    return f"{stack}-{region}-{ip_range.replace('/', '-')}"


def volume_name(stack: str) -> str:
    """The datastore volume's name, which is also the tail of its device path."""
    return f"{stack}-data"


# What each of the stack's buckets holds, by the end of its name. Each role's backups have
# their own bucket and key, so root on one droplet can reach no other role's backups; the
# releases have theirs, which no droplet's key reaches. The datastore's keeps `backups`,
# the name the stack's one bucket had.
RELEASES = "releases"
BUCKET_SUFFIXES = {DATASTORE: "backups", LOAD_BALANCER: "lb-backups", APP_SERVER: "app-backups",
                   RELEASES: "releases"}


def bucket_name(stack: str, domain: str, purpose: str = DATASTORE) -> str:
    """A bucket's name (purpose: a role, whose backups it holds, or RELEASES): the domain
    makes it unique among every account's buckets. `<stack>-<domain>` is cut to the same
    length for every purpose, so the names differ by their ends however long the domain;
    never left ending in `-`, which Spaces refuses."""
    if purpose not in BUCKET_SUFFIXES:
        raise ValueError(f"bucket purpose {purpose!r}: one of {', '.join(BUCKET_SUFFIXES)}")
    stem_max = BUCKET_NAME_MAX - 1 - max(len(s) for s in BUCKET_SUFFIXES.values())
    stem = f"{stack}-{domain.replace('.', '-')}"[:stem_max].rstrip("-")
    name = f"{stem}-{BUCKET_SUFFIXES[purpose]}"
    # The stack-name and domain checks make every name valid; this says which rule broke
    # if either is ever loosened, before DigitalOcean refuses the bucket mid-`up`.
    if not re.fullmatch(BUCKET_NAME_PATTERN, name):
        raise ValueError(
            f"bucket name {name!r} (from stack {stack!r} and domain {domain!r}) is not one Spaces accepts: "
            f"3-{BUCKET_NAME_MAX} lowercase letters, digits and '-', starting and ending with a letter or digit")
    return name


# Tags are account-wide: a bare `staging` or `app` may already be on droplets that are not
# the stack's, which a firewall or an alert policy would then take in and `pulumi destroy`
# would untag. Every tag the program makes or matches carries the project and the stack.
def stack_tag(stack: str) -> str:
    """On every droplet of the stack (alert policies watch it)."""
    return f"{PROJECT}-{stack}"


def role_tag(stack: str, role: str) -> str:
    """On every droplet of one role (firewalls apply by it and admit it)."""
    return f"{stack_tag(stack)}-{role}"


# --- Images ------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """A droplet image the program supports, and every way it differs from the others.

    Provisioning finds what it can on the droplet itself (/etc/os-release, the PostgreSQL
    installed, the archive's nodejs), so both images boot the same first-boot data; every
    file that names a difference is rendered from this table, and tests hold them to it.
    """

    slug: str               # DigitalOcean's image slug: the `image` setting
    name: str
    os_id: str              # /etc/os-release ID: MongoDB's repository path is apt/<os_id>
    codename: str           # VERSION_CODENAME: its suite in that repository
    mongodb_component: str  # that repository's component
    security_origin: str    # unattended-upgrades' pattern for the security archive
    postgresql_major: int   # the archive's PostgreSQL; a cluster on the volume is per major
    nodejs_major: int       # the archive's nodejs: a nodeMajor equal to it needs no NodeSource
    restic: str             # the archive's restic (the backups)
    python: str             # python3, which runs platform-push and cloud-init
    sshd_socket: bool       # ssh.socket starts sshd, so sshd may not be running to reload
    auth_log: bool          # rsyslog writes /var/log/auth.log; else sshd logs to the journal only
    openssh: str            # the archive's OpenSSH: which key exchanges sshd can offer
    proven: str             # what has run on it


# Ordered as the files list them (unattended-upgrades' patterns).
IMAGES = {
    "debian-12-x64": Image(
        "debian-12-x64", "Debian 12", os_id="debian", codename="bookworm", mongodb_component="main",
        security_origin="origin=Debian,codename=${distro_codename}-security,label=Debian-Security",
        postgresql_major=15, nodejs_major=18, restic="0.14", python="3.11", sshd_socket=False, auth_log=False,
        openssh="9.2",
        proven="booted in the local cloud: every role, the stack served end to end (without MongoDB; nodeMajor 18)",
    ),
    "ubuntu-24-04-x64": Image(
        "ubuntu-24-04-x64", "Ubuntu 24.04", os_id="ubuntu", codename="noble", mongodb_component="multiverse",
        security_origin="origin=Ubuntu,archive=${distro_codename}-security",
        postgresql_major=16, nodejs_major=18, restic="0.16", python="3.12", sshd_socket=True, auth_log=True,
        openssh="9.6",
        proven="rendered and checked only (the same first-boot data); never booted here",
    ),
}
# The image the local cloud boots, so the default is the path that has run.
DEFAULT_IMAGE = "debian-12-x64"


def per_image(fact: str) -> str:
    """One fact of every image, as comments in the rendered files say it: `15 on Debian 12, ...`."""
    return ", ".join(f"{getattr(image, fact)} on {image.name}" for image in IMAGES.values())


def images_where(fact: str, value: object = True) -> str:
    """The names of the images whose `fact` is `value`, for the rendered files' comments."""
    return " and ".join(image.name for image in IMAGES.values() if getattr(image, fact) == value)


# --- Ports -------------------------------------------------------------------------
SSH_PORT = 22
HTTP_PORT = 80
HTTPS_PORT = 443
# The app servers' local nginx: TLS with the internal CA's certificate, LB only (it
# shows its own certificate from the CA; no other client gets past the handshake).
APP_TLS_PORT = 8443
# The same nginx on loopback, TLS without a client certificate: the checks that run on
# the app server itself (the bundle installer's, the deploy's) and operators logged in
# there. Nothing off the server reaches it; the apps' own ports are loopback too.
APP_LOCAL_TLS_PORT = 8444
# How many requests one kept-alive TLS connection from the LB to an app server carries
# (nginx's default is 1000 on both ends): one upstream handshake per 10,000 requests
# instead of 1000. The CPU it saves is within the noise of benchmarks/lb_tuning.py here.
LB_UPSTREAM_KEEPALIVE_REQUESTS = 10000
# How many idle TLS connections to the app servers each LB nginx worker keeps. A worker
# with more requests in flight than this closes the surplus as they finish, and the next
# requests each open a new one (a resumed handshake at both ends): benchmarks/lb_tuning.py
# measured a pool of 32 at 128 connections costing the LB 2.4 times the CPU per request of
# a pool of 256, at half the requests per second. Idle connections are cheap (nginx frees
# their TLS buffers); at most this many per LB worker wait on one app server, well inside
# its nginx's NGINX_WORKER_CONNECTIONS.
LB_UPSTREAM_KEEPALIVE_CONNECTIONS = 128
# Connections one nginx worker holds at once (nginx.conf, on the LB and the app servers;
# one worker per vCPU), not the distribution's 768: on the LB every browser's kept-alive
# connections, each request's upstream connection and the idle upstream pool share it,
# and a worker that runs out closes idle connections, then resets new clients
# (tests/roles/test_nginx_connections.py). A worker allocates about 440 bytes per
# connection as it starts: 3.2 MB more at 8192 than at 768 (Debian's nginx 1.22).
NGINX_WORKER_CONNECTIONS = 8192
# Open files per worker: two descriptors per proxied connection (client and upstream),
# and room for logs, cache and temporary files. systemd starts nginx with 1024.
NGINX_WORKER_OPEN_FILES = 2 * NGINX_WORKER_CONNECTIONS + 1024
# nginx's logs (on the LB and the app servers) are rotated daily, 14 kept, and also as
# soon as one passes this size: logrotate runs every hour on every droplet, so a busy day
# cannot fill the disk (the log and its newest rotation uncompressed, each at most this and
# an hour's growth; the other thirteen compressed). An access log line is ~120 bytes for
# the benchmarks' requests, about twice that with a browser's: 1 GiB is a day at roughly
# 50 to 100 requests/s.
NGINX_LOG_MAX_MIB = 1024
NGINX_ERROR_LOG = "/var/log/nginx/error.log"   # why nginx refused a reload is written here
# The Node.js apps listen on loopback behind that nginx.
WEB_APP_PORT = 3000
API_APP_PORT = 3001
HEALTH_PATH = "/healthz"
API_PATH_PREFIX = "/api/"


@dataclass(frozen=True)
class Engine:
    """A datastore engine as the network sees it: the TLS port app servers connect to."""

    name: str
    tls_port: int
    # Where the engine itself listens on the datastore when TLS is done in front of it.
    local_port: int | None = None


ENGINES = {
    "postgresql": Engine("postgresql", tls_port=5432),
    "mongodb": Engine("mongodb", tls_port=27017),
    # Redis listens on loopback only; stunnel terminates TLS in front of it.
    "redis": Engine("redis", tls_port=6380, local_port=6379),
    # AMQPS only: the plaintext AMQP port is never opened.
    "rabbitmq": Engine("rabbitmq", tls_port=5671),
}

# --- Users on every droplet ----------------------------------------------------------
# Operators and the Pulumi program log in as OPERATOR_USER (keys only, sudo).
OPERATOR_USER = "ops"
APP_USER = "app"          # runs the Node.js apps under pm2
DEPLOY_USER = "deploy"    # may write releases and reload pm2, nothing else
BACKUP_USER = "backup"    # reads what backups need, writes the backup spool


@dataclass(frozen=True)
class ServiceUser:
    """A service account a role creates at provisioning; it has no password."""

    name: str
    home: str
    # Logs in over SSH with keys (sshd's AllowUsers lists it); others get no shell.
    ssh_login: bool = False
    # Logs in only to pass through to the app servers' SSH (the LB's deploy login): no
    # shell, no command, no TTY; sshd's `Match User` block in its drop-in says so.
    jump_only: bool = False

    @property
    def shell(self) -> str:
        return "/bin/bash" if self.ssh_login and not self.jump_only else "/usr/sbin/nologin"


DEPLOY_HOME = f"/home/{DEPLOY_USER}"
APP_HOME = f"/home/{APP_USER}"
# The one place that says which accounts exist where: nothing else is created, so a
# role holds only the accounts it needs. (Debian and Ubuntu already ship a `backup`
# system user, meant for this; provisioning keeps it as it is.)
ROLE_USERS = {
    LOAD_BALANCER: (ServiceUser(DEPLOY_USER, DEPLOY_HOME, ssh_login=True, jump_only=True),),
    APP_SERVER: (
        ServiceUser(APP_USER, APP_HOME),
        ServiceUser(DEPLOY_USER, DEPLOY_HOME, ssh_login=True),
    ),
    DATASTORE: (ServiceUser(BACKUP_USER, "/var/backups"),),
}
# Group that may read the droplet's TLS key (services add their own user to it).
TLS_KEY_GROUP = "platform-tls"

# --- Paths on the droplets -----------------------------------------------------------
PLATFORM_ETC = "/etc/platform"
# Operators' public keys per login, pushed after boot: adding a key replaces no droplet.
LOGIN_KEYS_DIR = "/etc/ssh/authorized_keys.d"
# cloud-init's copy of the first-boot user data (root's alone): provisioning reads the
# automation key from it, never from the login's own ~/.ssh.
FIRST_BOOT_USER_DATA = "/var/lib/cloud/instance/user-data.txt"
# What sshd shows before a login (its Banner).
LOGIN_BANNER_FILE = "/etc/issue.net"
# The kernel's hardening settings, which provisioning applies (and the host's in a container).
HARDENING_SYSCTL_FILE = "/etc/sysctl.d/60-platform-hardening.conf"
# Network protocols no droplet uses: their kernel modules are never loaded.
UNUSED_NETWORK_MODULES = ("dccp", "sctp", "rds", "tipc")
# The weekly package integrity check (debsums).
INTEGRITY_UNIT = "platform-debsums"
PLATFORM_STATE = "/var/lib/platform"
# Every log the platform writes goes here as *.log (logrotate rotates them all).
PLATFORM_LOG_DIR = "/var/log/platform"
PROVISION_LOG = f"{PLATFORM_LOG_DIR}/provision.log"
PROVISIONED_MARKER = f"{PLATFORM_STATE}/provisioned"
PROVISION_FAILED_MARKER = f"{PLATFORM_STATE}/provision-failed"
PROVISION_COMMAND = "/usr/local/sbin/platform-provision"
# First boot ends by writing this: the droplet takes logins and waits for its platform.
FIRST_BOOT_MARKER = f"{PLATFORM_STATE}/first-boot-done"
# The platform arrives as a bundle, pushed: first boot's receiver (the one program that
# never changes) stores it by its digest here, next to the previous one, and `current`
# names the one in place.
BUNDLE_COMMAND = "/usr/local/sbin/platform-bundle"
BUNDLES_DIR = f"{PLATFORM_STATE}/bundles"
CURRENT_BUNDLE = f"{BUNDLES_DIR}/current"
# Where first boot writes the droplet's identity; the receiver refuses another role's bundle.
IDENTITY_FILE = f"{PLATFORM_STATE}/identity.json"
# Receives what the Pulumi program pushes over SSH (certificates, upstreams, secrets).
PUSH_COMMAND = "/usr/local/sbin/platform-push"
# The droplet lock: one change to a droplet at a time. Every platform-push (its files,
# check and then-steps) and every platform-provision run (first boot too) holds it.
LOCK_COMMAND = "/usr/local/sbin/platform-lock"
DROPLET_LOCK_FILE = "/run/lock/platform-droplet.lock"
# A line per take and release: `<UTC time, ms> took|released droplet lock: <holder> (pid N)`.
DROPLET_LOCK_LOG = f"{PLATFORM_LOG_DIR}/lock.log"
# A holder puts its pid here for its children: provisioning run by a push's then-step
# runs inside the push's hold instead of waiting for it forever.
DROPLET_LOCK_ENV = "PLATFORM_DROPLET_LOCK"
# A first `pulumi up` queues every push of a droplet at once, some running provisioning.
DROPLET_LOCK_WAIT_SECONDS = 1800
# The one home of "write a file only when it differs" (content, mode, owner): provisioning
# calls it, platform-push loads it.
WRITE_COMMAND = "/usr/local/sbin/platform-write"

# nginx reloaded, returning once the workers from before no longer take connections:
# `systemctl reload nginx` only signals the master, so a request sent right after (an ACME
# server's check of a name just added) may reach a worker still on the old files. A reload
# nginx has not taken within the wait (it keeps the old files when it cannot load the new
# ones) fails.
NGINX_RELOAD_COMMAND = "/usr/local/sbin/platform-nginx-reload"
NGINX_RELOAD_WAIT_SECONDS = 30
# sshd reads its configuration again; open sessions stay. Where ssh.socket starts sshd
# (IMAGES' sshd_socket) and it is not running, there is nothing to reload: the next
# connection reads the new files.
SSHD_RELOAD_COMMAND = "systemctl try-reload-or-restart ssh"

TLS_DIR = f"{PLATFORM_ETC}/tls"
CA_CERT_PATH = f"{TLS_DIR}/ca.crt"
SERVER_CERT_PATH = f"{TLS_DIR}/server.crt"
SERVER_KEY_PATH = f"{TLS_DIR}/server.key"
# update-ca-certificates reads *.crt there: this link to the pushed CA makes it trusted.
CA_TRUST_LINK = f"/usr/local/share/ca-certificates/{PROJECT}-ca.crt"
# The droplet's ufw rules, rendered from the cloud firewall's (model/firewalls.py).
FIREWALL_RULES_FILE = f"{PLATFORM_ETC}/firewall.rules"

APP_ROOT = "/srv/app"
RELEASES_DIR = f"{APP_ROOT}/releases"
# Inside releases/ (deploy's), so the app root is root's alone: deploy may not place
# anything where provisioning works as root.
CURRENT_RELEASE_LINK = f"{RELEASES_DIR}/current"
# Where older versions kept it; provisioning moves it.
OLD_CURRENT_RELEASE_LINK = f"{APP_ROOT}/current"
APP_ENV_FILE = f"{APP_ROOT}/shared/.env"
# The apps' environment as the platform sets it (app_server/app.env, the ecosystem file,
# the apps' unit): appEnv and appSecrets may not name these, nor start with one of the
# prefixes. Every engine's names, enabled or not: enabling one later must not clash.
ENGINE_ENV_SUFFIXES = ("HOST", "PORT", "USER", "PASSWORD", "DATABASE")
# NO_COLOR: their output goes to files and the journal, which colour codes would garble;
# PIDUSAGE_SILENT (the unit's, which they inherit): pm2's stack traces kept out of the journal.
PLATFORM_APP_ENV = ("NODE_ENV", "PORT", "NO_COLOR", "PIDUSAGE_SILENT")
PLATFORM_ENV_PREFIXES = ("PLATFORM_", "PM2_")

# The datastore's block volume, by its stable id, and where it is mounted.
VOLUME_DEVICE_PREFIX = "/dev/disk/by-id/scsi-0DO_Volume_"
DATA_MOUNT = "/mnt/data"
# DigitalOcean formats a new volume with this filesystem and label.
VOLUME_FILESYSTEM = "ext4"
VOLUME_LABEL = "platform-data"

# The datastore engines' logins. The app's login owns one database (PostgreSQL,
# MongoDB) or vhost (RabbitMQ) of this name; on Redis it is an ACL user kept from the
# administrative and dangerous commands. Passwords arrive in DATASTORE_SECRETS_FILE.
ENGINE_APP_USER = "app"
ENGINE_APP_DATABASE = "app"
ENGINE_ADMIN_USER = "admin"  # MongoDB's user administrator
DATASTORE_SECRETS_FILE = f"{PLATFORM_ETC}/secrets.env"
# mongod wants certificate and key in one PEM; provisioning concatenates them here.
MONGODB_PEM_PATH = f"{TLS_DIR}/mongodb.pem"
# Rendered configs say this where the droplet's private address goes: it is known only
# on the droplet, so provisioning substitutes it when installing the file.
PRIVATE_ADDRESS_PLACEHOLDER = "@PRIVATE_ADDRESS@"

LB_UPSTREAMS_FILE = "/etc/nginx/platform/upstreams.conf"
# The LB's public /healthz is up or down only, from the app servers' answer kept this long
# (nginx's cache, in this directory); the LB asks for it at this internal path.
LB_PUBLIC_HEALTH_CACHE_SECONDS = 5
LB_HEALTH_CACHE_DIR = "/var/lib/nginx/platform-health"
LB_HEALTH_PROBE_PATH = "/_platform/health"
# The LB's public certificate as nginx reads it: links to a self-signed pair until certbot
# has the real one, then to certbot's live files (certbot --cert-name LB_CERT_NAME).
LB_CERT_NAME = "platform"
LB_PUBLIC_CERT_PATH = f"{TLS_DIR}/public/fullchain.pem"
LB_PUBLIC_KEY_PATH = f"{TLS_DIR}/public/privkey.pem"
ACME_WEBROOT = "/var/www/acme"
CERTIFICATE_COMMAND = "/usr/local/sbin/platform-certificate"
# certbot runs this after every issue or renewal: relink, nginx -t, reload.
CERTIFICATE_DEPLOY_HOOK = "/usr/local/sbin/platform-certificate-deployed"
# Written by older bundles for OCSP stapling, which is gone; provisioning removes it.
LB_RESOLVER_FILE = "/etc/nginx/platform/resolver.conf"
MAINTENANCE_ROOT = "/var/www/maintenance"
# Maintenance mode: while this file exists the LB answers everything but the health check
# with the maintenance page (503, Retry-After). Outside the page's root, which provisioning
# rewrites; read by nginx at each request, so on and off need no reload.
MAINTENANCE_FLAG = "/var/lib/platform-maintenance/on"
MAINTENANCE_COMMAND = "/usr/local/sbin/platform-maintenance"
MAINTENANCE_RETRY_AFTER_SECONDS = 300
# Takes one app server out of the LB's pool (`down` in LB_UPSTREAMS_FILE, nginx reloaded)
# and waits until the LB's workers that still sent it requests are gone: a restart of its
# apps then cuts no request. At most this long: a websocket keeps an old worker alive.
DRAIN_COMMAND = "/usr/local/sbin/platform-drain"
DRAIN_WAIT_SECONDS = 60
# The drained addresses, one per line, as of nginx's last reload: a push of a new pool
# (platform-push upstreams) marks those still in it `down` again before nginx reads it
# (`platform-drain keep`), and records the list anew after the reload.
DRAINED_FILE = f"{PLATFORM_STATE}/drained"
# The app servers drained for their bundle push (`platform-drain for-push`), one empty file
# per address: `after-push` puts back only these, so a server drained by hand stays out.
DRAINED_FOR_PUSH_DIR = f"{PLATFORM_STATE}/drained-for-push"


def platform_app_env_names() -> tuple[str, ...]:
    """The variables the platform sets for the apps; see ENGINE_ENV_SUFFIXES."""
    engines = [f"{name.upper()}_{suffix}" for name in ENGINES for suffix in ENGINE_ENV_SUFFIXES]
    return (*PLATFORM_APP_ENV, *engines)


def app_pool_tls_name(stack: str) -> str:
    """A name every app server's certificate carries, so the LB verifies any of them by it."""
    return f"{stack}-app"


# --- The apps on an app server --------------------------------------------------------
PM2_MAJOR = 6
PM2_HOME = f"{APP_ROOT}/.pm2"
PM2_LOG_DIR = "/var/log/platform/pm2"
ECOSYSTEM_FILE = f"{APP_ROOT}/ecosystem.config.js"
APPS_UNIT = "platform-apps"
PM2_BIN_DIR = "/usr/local/bin"  # npm install -g --prefix /usr/local
# How long pm2 waits for a new worker's process.send('ready') before it goes on without it
# (listen_timeout), and for a stopped one to exit before its SIGKILL (kill_timeout): the
# ecosystem's, and the deploy's start check waits as long.
PM2_READY_TIMEOUT_MS = 10000
PM2_KILL_TIMEOUT_MS = 8000
# How long a server may take to answer its health check after the apps reload (the deploy's
# default), and a process the env push's start check started, the health path.
APP_HEALTH_TIMEOUT_SECONDS = 60
# `python -m deploy` holds this on every app server, taken in the pool's order, while it
# deploys (one deploy at a time): in deploy's home, so it needs no privilege.
DEPLOY_LOCK_DIR = f"{DEPLOY_HOME}/deploy.lock"
# The LB's list of where its deploy login may forward to (each app server's SSH), pushed
# with the upstreams; sshd's `Match User deploy` block includes it.
LB_DEPLOY_PERMIT_OPEN_FILE = "/etc/ssh/platform-deploy-permitopen.conf"
# Where the program's push of the example app lands before it becomes the first release.
EXAMPLE_APP_ARCHIVE = f"{PLATFORM_STATE}/example-app.tar.gz.b64"

# How long provisioning's apt-get waits for apt's locks (apt-daily may hold them at boot).
APT_LOCK_WAIT_SECONDS = 600
# Provisioning refreshes apt's package lists before an install when they are older than this.
APT_LISTS_MAX_AGE_MINUTES = 24 * 60
# The size DigitalOcean allows for a droplet's user_data.
USER_DATA_LIMIT_BYTES = 64 * 1024

# --- Backups (restic, from every droplet to the stack's Spaces bucket) ----------------
BACKUP_COMMAND = "/usr/local/sbin/platform-backup"
RESTORE_COMMAND = "/usr/local/sbin/platform-restore"
BACKUP_LIBRARY = "/usr/local/lib/platform/backup.sh"
# Provisioning's host hardening steps (sourced after the common library).
HARDENING_LIBRARY = "/usr/local/lib/platform/hardening.sh"
BACKUP_UNIT = "platform-backup"  # .service runs one backup, .timer schedules it
# Started by the backup unit's OnFailure=: alerts that a run failed, at once.
BACKUP_ALERT_UNIT = "platform-backup-alert"
# .timer runs `platform-backup check` hourly: a missed backup alerts (once per change of state).
BACKUP_CHECK_UNIT = "platform-backup-check"
# Root-only: the backup alerts' webhook URL, alertWebhookUrl (the `backup` push too).
ALERT_SETTINGS_FILE = f"{PLATFORM_ETC}/alert.env"
# Root-only: the repository, its password, the scoped Spaces key and the snapshots' host
# name (the `backup` push).
BACKUP_SECRETS_FILE = f"{PLATFORM_ETC}/backup.env"
# Retention, as pushed from the settings (not secret).
BACKUP_RETENTION_FILE = f"{PLATFORM_ETC}/backup.conf"
# Engine dumps (the datastore's) are written here, then sent; the root disk, not the
# volume being dumped.
BACKUP_SPOOL = "/var/backups/platform"
# last-success / last-failure markers that `platform-backup status` reads.
BACKUP_STATE_DIR = f"{PLATFORM_STATE}/backup"
BACKUP_LOG = f"{PLATFORM_LOG_DIR}/backup.log"
BACKUP_CACHE_DIR = "/var/cache/platform-backup"
# A backup run started while another runs waits this long for it, then fails (a run that
# hangs alerts); the LB's certificate hook and the daily timer may start runs together.
BACKUP_LOCK_WAIT_SECONDS = 900
# A backup older than this (hours) counts as missed: one daily run plus slack.
BACKUP_MAX_AGE_HOURS = 26
# Every snapshot this recent is kept besides the daily/weekly/monthly ones, so an
# on-demand backup (before a risky change) outlives a second run on the same day.
BACKUP_KEEP_WITHIN = "1d"
# Inside each role's bucket: its restic repository, restic/<role>, with its own password,
# so a load balancer's files open none of the datastore's dumps (nor can its key reach them).
BACKUP_REPOSITORY_PREFIX = "restic"
# Every bucket of the stack keeps a deleted or overwritten object this many days
# (versioning and a lifecycle rule), then clears it.
BUCKET_NONCURRENT_DAYS = 30
# Inside the release bucket: every release `python -m deploy` rolled out, with its signed manifest.
RELEASE_ARCHIVE_PREFIX = "releases"


def spaces_endpoint(region: str) -> str:
    """The S3 endpoint of a Spaces region."""
    return f"https://{region}.digitaloceanspaces.com"


def backup_repository_path(role: str) -> str:
    """A role's restic repository inside the role's bucket."""
    return f"{BACKUP_REPOSITORY_PREFIX}/{role}"


def backup_host(stack: str, member: str) -> str:
    """restic's host name for one droplet's snapshots (member: `datastore`, `lb`, `app-2`):
    the droplet's name in the stack, so a rebuilt droplet finds and continues its series."""
    return droplet_name(stack, member)


def release_archive_key(stack: str, release_id: str, suffix: str) -> str:
    """A release's object in the release bucket: releases/<stack>/<id>.tar.gz (and .json, .json.sig)."""
    return f"{RELEASE_ARCHIVE_PREFIX}/{stack}/{release_id}{suffix}"
