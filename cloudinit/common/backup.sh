# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables are for platform-backup and platform-restore
# Shared by platform-backup and platform-restore (sourced): what a snapshot holds, where
# the dumps go, how restic is reached, and the log. restic's settings (repository, password, Spaces key)
# come from {{ c.BACKUP_SECRETS_FILE }} (root-only, the `backup` push); retention from
# {{ c.BACKUP_RETENTION_FILE }} (same push, from the stack's settings).

SPOOL={{ c.BACKUP_SPOOL }}
# What a snapshot carries besides the configuration: one folder per engine.
DUMPS=$SPOOL/dumps
STATE_DIR={{ c.BACKUP_STATE_DIR }}
LOG_FILE={{ c.BACKUP_LOG }}
SECRETS_FILE={{ c.BACKUP_SECRETS_FILE }}
RETENTION_FILE={{ c.BACKUP_RETENTION_FILE }}
ALERT_FILE={{ c.ALERT_SETTINGS_FILE }}
ENGINE_SECRETS={{ c.DATASTORE_SECRETS_FILE }}
BACKUP_USER={{ c.BACKUP_USER }}
# The engines whose dumps a snapshot carries (the datastore's; none elsewhere).
ENGINES=({{ dumped_engines | join(" ") }})
# This role's configuration{{ " (and the LB's certificates)" if role == c.LOAD_BALANCER else "" }}.
CONFIG_PATHS=(
{% for path in backup_paths %}
    {{ path }}
{% endfor %}
)
# The logs it carries too (the configuration's restore leaves them out).
LOG_PATHS=(
{% for path in log_paths %}
    {{ path }}
{% endfor %}
)
# The repository's own password is no use inside the repository.
CONFIG_EXCLUDES=(--exclude "$SECRETS_FILE")
# S3 errors are retried for minutes; a status check should answer sooner.
STATUS_TIMEOUT_SECONDS=120
export RESTIC_CACHE_DIR={{ c.BACKUP_CACHE_DIR }}

log() {
    local line
    line="$(date -u +%FT%TZ) $*"
    printf '%s\n' "$line" >&2
    if [ -d "$(dirname "$LOG_FILE")" ]; then printf '%s\n' "$line" >> "$LOG_FILE"; fi
}

die() {
    log "error: $*"
    exit 1
}

require_root() {
    [ "$(id -u)" -eq 0 ] || die "run as root (sudo $0 $*)"
}

load_backup_settings() {
    [ -r "$SECRETS_FILE" ] || die "$SECRETS_FILE is missing: the backup push has not run yet"
    set -a
    # shellcheck source=/dev/null
    . "$SECRETS_FILE"
    set +a
    : "${RESTIC_REPOSITORY:?not set in $SECRETS_FILE}" "${RESTIC_PASSWORD:?not set in $SECRETS_FILE}"
    : "${BACKUP_HOST:?not set in $SECRETS_FILE}"
    # Snapshots are filed under the droplet's name in the stack, not its hostname: a
    # rebuilt droplet finds (and continues) the same series.
    SNAPSHOTS=(--host "$BACKUP_HOST" --tag platform)
    if [ -r "$RETENTION_FILE" ]; then
        # shellcheck source=/dev/null
        . "$RETENTION_FILE"
    fi
}

load_engine_secrets() {
    if [ -r "$ENGINE_SECRETS" ]; then
        # shellcheck source=/dev/null
        . "$ENGINE_SECRETS"
    fi
}

engine_enabled() {
    local engine
    for engine in "${ENGINES[@]}"; do [ "$engine" = "$1" ] && return 0; done
    return 1
}

# What runs as another user gets none of restic's settings: its /proc/PID/environ is that
# user's to read, and the repository's password and Spaces key are root's alone.
RESTIC_SECRETS=(RESTIC_REPOSITORY RESTIC_PASSWORD AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY)
as_user() {
    local user=$1
    shift
    runuser -u "$user" -- env "${RESTIC_SECRETS[@]/#/--unset=}" "$@"
}
as_backup_user() { as_user "$BACKUP_USER" "$@"; }
as_postgres() { as_user postgres "$@"; }
{% if "mongodb" in dumped_engines %}

# A MongoDB tools config holding the app login's password, so it is not in argv.
mongodb_tools_config() {
    local file
    file=$(mktemp)
    printf 'password: %s\n' "$MONGODB_PASSWORD" > "$file"
    printf '%s\n' "$file"
}

mongodb_connection=(
    --host=127.0.0.1 --port={{ c.ENGINES["mongodb"].tls_port }}
    --ssl --sslCAFile={{ c.CA_CERT_PATH }} --sslAllowInvalidHostnames
    --username={{ c.ENGINE_APP_USER }} --authenticationDatabase={{ c.ENGINE_APP_DATABASE }}
)
{% endif %}
