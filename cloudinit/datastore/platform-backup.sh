#!/bin/bash
# platform-backup: backs the datastore up with restic to the stack's Spaces bucket.
#
#   platform-backup [run]   dump every engine, send a snapshot, apply retention (the timer runs this)
#   platform-backup status  last success, last failure, the snapshots; exit 1 when failing or missed
#   platform-backup init    create the repository when it does not exist (the backup push runs this)
#
# Each run records {{ c.BACKUP_STATE_DIR }}/last-success or last-failure and logs to
# {{ c.BACKUP_LOG }}; a failed run also fails {{ c.BACKUP_UNIT }}.service.
set -Eeuo pipefail
# shellcheck source=backup.sh
. {{ c.BACKUP_LIBRARY }}

MAX_AGE_HOURS={{ c.BACKUP_MAX_AGE_HOURS }}
LOCK_FILE=/run/lock/platform-backup.lock
CURRENT="start"
# What a run could not back up (it fails once the rest is sent).
UNREADABLE=""

main() {
    local command=${1:-run}
    case "$command" in
        run) require_root "$@"; backup ;;
        status) require_root "$@"; status ;;
        init) require_root "$@"; load_backup_settings; init_repository ;;
        -h|--help|help) sed -n '2,10s/^# \{0,1\}//p' "$0" ;;
        *) die "unknown command $command (run, status, init)" ;;
    esac
}

init_repository() {
    if restic cat config >/dev/null 2>&1; then
        return 0
    fi
    restic init
    log "created the restic repository $RESTIC_REPOSITORY"
}

backup() {
    exec 9>"$LOCK_FILE"
    flock -n 9 || die "another backup is running"
    install -d -m 0700 "$STATE_DIR"
    trap 'failed $?' ERR
    # systemd stops a run that hangs (TimeoutStartSec): that is a failure too.
    trap 'failed 143' TERM INT
    CURRENT="settings"
    [ -r "$SECRETS_FILE" ] || { CURRENT="settings ($SECRETS_FILE missing: has the backup push run?)"; false; }
    load_backup_settings
    load_engine_secrets
    cd /
    local started
    started=$(date +%s)
    log "backup started (engines: ${ENGINES[*]:-none})"
    install -d -m 0711 "$SPOOL"
    rm -rf "$DUMPS"
    install -d -m 0711 "$DUMPS"
    local engine
    for engine in "${ENGINES[@]}"; do
        CURRENT="dump $engine"
        "dump_$engine"
    done
    CURRENT="send"
    # A run killed midway leaves its lock in the repository; restic removes only stale ones.
    restic unlock --quiet
    local configs=() path summary snapshot
    for path in "${CONFIG_PATHS[@]}"; do
        if [ -e "$path" ]; then configs+=("$path"); fi
    done
    summary=$(restic backup --json --quiet "${SNAPSHOTS[@]}" "${CONFIG_EXCLUDES[@]}" "$DUMPS" "${configs[@]}" \
        | grep '"message_type":"summary"')
    snapshot=$(printf '%s' "$summary" | sed -n 's/.*"snapshot_id":"\([0-9a-f]*\)".*/\1/p')
    [ -n "$snapshot" ] || { CURRENT="send (no snapshot id in restic's summary)"; false; }
    CURRENT="retention"
    restic forget --quiet "${SNAPSHOTS[@]}" --group-by host,tags --keep-within {{ c.BACKUP_KEEP_WITHIN }} \
        --keep-daily "$KEEP_DAILY" --keep-weekly "$KEEP_WEEKLY" --keep-monthly "$KEEP_MONTHLY" --prune
    rm -rf "$DUMPS"
    if [ -n "$UNREADABLE" ]; then
        CURRENT="PostgreSQL databases not in snapshot $snapshot (the backup role lacks CONNECT): $UNREADABLE"
        false
    fi
    printf '%s %s %s\n' "$(date +%s)" "$(date -u +%FT%TZ)" "$snapshot" > "$STATE_DIR/last-success"
    log "backup finished: snapshot $snapshot in $(( $(date +%s) - started ))s"
}

failed() {
    local status=$1
    trap - ERR TERM INT
    printf '%s %s %s\n' "$(date +%s)" "$(date -u +%FT%TZ)" "$CURRENT failed (exit $status)" > "$STATE_DIR/last-failure"
    rm -rf "$DUMPS"
    log "backup FAILED at: $CURRENT (exit $status)"
    exit 1
}

# --- One function per engine: each leaves its dump under $DUMPS/<engine> ----------------
{% if "postgresql" in settings.engines %}

# One custom-format dump per database, as the read-only backup role (peer login): each
# is a consistent snapshot of its database. Roles are the program's (provisioning makes them).
dump_postgresql() {
    local dir=$DUMPS/postgresql databases db
    install -d -m 0700 -o "$BACKUP_USER" -g "$BACKUP_USER" "$dir"
    databases=$(as_backup_user psql -X -A -t -d postgres -v ON_ERROR_STOP=1 -c \
        "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate AND has_database_privilege(datname, 'CONNECT') ORDER BY 1")
    for db in $databases; do
        as_backup_user pg_dump --format=custom --file="$dir/$db.dump" "$db"
    done
    # A database the backup role may not open is not in the snapshot: the run sends the
    # others, then fails, so the gap is seen (GRANT CONNECT ON DATABASE x TO {{ c.BACKUP_USER }}).
    UNREADABLE=$(as_backup_user psql -X -A -t -d postgres -v ON_ERROR_STOP=1 -c \
        "SELECT string_agg(datname, ' ') FROM pg_database WHERE datallowconn AND NOT datistemplate AND NOT has_database_privilege(datname, 'CONNECT')")
}
{% endif %}
{% if "redis" in settings.engines %}

# A point-in-time RDB snapshot over the replication protocol (the password from the
# environment, not argv).
dump_redis() {
    local dir=$DUMPS/redis
    install -d -m 0700 "$dir"
    REDISCLI_AUTH=$REDIS_PASSWORD redis-cli -h 127.0.0.1 -p {{ c.ENGINES["redis"].local_port }} \
        --rdb "$dir/dump.rdb" >/dev/null
    [ -s "$dir/dump.rdb" ]
}
{% endif %}
{% if "rabbitmq" in settings.engines %}

# Vhosts, users (password hashes), permissions, queues, exchanges, bindings, policies.
# Messages in flight are not kept: a queue is transport, not storage.
dump_rabbitmq() {
    local dir=$DUMPS/rabbitmq
    install -d -m 0700 "$dir"
    # To stdout: the broker, not this script, would write a named file (as rabbitmq).
    rabbitmqctl --quiet export_definitions - --format json > "$dir/definitions.json"
    [ -s "$dir/definitions.json" ]
}
{% endif %}
{% if "mongodb" in settings.engines %}

# The app's database as one gzipped archive, with the app's login (dbOwner of it).
dump_mongodb() {
    local dir=$DUMPS/mongodb config
    install -d -m 0700 "$dir"
    config=$(mongodb_tools_config)
    mongodump --quiet --config="$config" "${mongodb_connection[@]}" \
        --db={{ c.ENGINE_APP_DATABASE }} --gzip --archive="$dir/{{ c.ENGINE_APP_DATABASE }}.archive.gz" \
        || { rm -f "$config"; false; }
    rm -f "$config"
}
{% endif %}

# --- Status -----------------------------------------------------------------------------

marker() { cat "$STATE_DIR/$1" 2>/dev/null || true; }

status() {
    local healthy=1 success failure now age
    now=$(date +%s)
    success=$(marker last-success)
    failure=$(marker last-failure)
    if [ -z "$success" ]; then
        echo "last success: never"
        healthy=0
    else
        age=$(( (now - ${success%% *}) / 3600 ))
        echo "last success: $(cut -d' ' -f2- <<<"$success" | sed 's/ / snapshot /') (${age}h ago)"
        if [ "$age" -ge "$MAX_AGE_HOURS" ]; then
            echo "MISSED: no successful backup for ${MAX_AGE_HOURS}h or more"
            healthy=0
        fi
    fi
    if [ -n "$failure" ]; then
        echo "last failure: $(cut -d' ' -f2- <<<"$failure")"
        if [ -z "$success" ] || [ "${failure%% *}" -ge "${success%% *}" ]; then
            echo "FAILING: the last run failed; see $LOG_FILE"
            healthy=0
        fi
    else
        echo "last failure: none"
    fi
    echo "snapshots:"
    if [ -r "$SECRETS_FILE" ]; then load_backup_settings; fi
    if [ -z "${RESTIC_REPOSITORY:-}" ] || ! timeout "$STATUS_TIMEOUT_SECONDS" restic snapshots "${SNAPSHOTS[@]}"; then
        echo "UNREACHABLE: the repository ${RESTIC_REPOSITORY:-(not configured)} cannot be read"
        healthy=0
    fi
    if [ "$healthy" -eq 1 ]; then
        echo "status: ok"
        return 0
    fi
    echo "status: FAILING"
    return 1
}

main "$@"
