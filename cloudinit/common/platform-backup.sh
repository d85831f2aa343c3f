#!/bin/bash
# platform-backup: backs this droplet up with restic to its role's repository in the stack's
# Spaces bucket: its configuration{{ ', the certificates' if role == c.LOAD_BALANCER else '' }}{{ ', every engine\'s dump' if dumped_engines else '' }}.
#
#   platform-backup [run]   {{ 'dump every engine, ' if dumped_engines else '' }}send a snapshot, apply retention (the timer runs this)
#   platform-backup status  last success, last failure, the snapshots; exit 1 when failing or missed
#   platform-backup init    check the repository (the backup push runs this); create it if missing when BACKUP_CREATES_REPOSITORY=yes
#   platform-backup check   alert when the state changed: a run failed, a backup was missed, or
#                           they recovered ({{ c.BACKUP_CHECK_UNIT }}.timer, hourly; `check after-failure`
#                           from {{ c.BACKUP_ALERT_UNIT }}.service when a run's unit failed)
#   platform-backup test-alert  send a test alert where alerts go, changing no state
#
# Each run records {{ c.BACKUP_STATE_DIR }}/last-success or last-failure and logs to
# {{ c.BACKUP_LOG }}; a failed run also fails {{ c.BACKUP_UNIT }}.service. Alerts go to the
# webhook in {{ c.ALERT_SETTINGS_FILE }} (alertWebhookUrl), or only to that log without one.
set -Eeuo pipefail
# shellcheck source=backup.sh
. {{ c.BACKUP_LIBRARY }}

MAX_AGE_HOURS={{ c.BACKUP_MAX_AGE_HOURS }}
STACK={{ settings.stack }}
ROLE={{ role }}
LOCK_FILE=/run/lock/platform-backup.lock
# A run started while another is running (the timer's and the LB's certificate hook's, or
# one by hand) waits for it, then sends its own snapshot; a run that hangs is given up on.
LOCK_WAIT_SECONDS={{ c.BACKUP_LOCK_WAIT_SECONDS }}
CHECK_LOCK_FILE=/run/lock/platform-backup-check.lock
# A webhook that does not answer is given up on within about a minute (then retried by the
# next check): the alert units must not hang.
WEBHOOK_ATTEMPT_SECONDS=15
WEBHOOK_RETRIES=3
WEBHOOK_RETRY_SECONDS=60
CURRENT="start"
# What a run could not back up (it fails once the rest is sent).
UNREADABLE=""

main() {
    local command=${1:-run}
    case "$command" in
        run) require_root "$@"; backup ;;
        status) require_root "$@"; status ;;
        init) require_root "$@"; load_backup_settings; init_repository ;;
        check) require_root "$@"; check "${@:2}" ;;
        test-alert) require_root "$@"; send_alert "[$STACK] test alert from $(uname -n): backup alerts arrive here." ;;
        -h|--help|help) sed -n '2,15s/^# \{0,1\}//p' "$0" ;;
        *) die "unknown command $command (run, status, init, check, test-alert)" ;;
    esac
}

# One droplet per role creates the repository (its backup.env says
# BACKUP_CREATES_REPOSITORY=yes); the program pushes to the others after it, and they only
# check: two `restic init` at once can leave the config of one and the key of the other,
# which restic cannot open.
init_repository() {
    local problem
    if problem=$(restic cat config 2>&1 >/dev/null); then
        return 0
    fi
    if [ "${BACKUP_CREATES_REPOSITORY:-no}" != yes ]; then
        printf '%s\n' "$problem" >&2
        die "cannot open the repository $RESTIC_REPOSITORY, and this droplet does not create it: the role's first droplet does (its backup push, or sudo $0 init there)"
    fi
    restic init
    log "created the restic repository $RESTIC_REPOSITORY"
}

backup() {
    exec 9>"$LOCK_FILE"
    flock -w "$LOCK_WAIT_SECONDS" 9 || die "another backup has been running for ${LOCK_WAIT_SECONDS}s or more"
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
    for path in "${CONFIG_PATHS[@]}" "${LOG_PATHS[@]}"; do
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
{% if "postgresql" in dumped_engines %}

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
{% if "redis" in dumped_engines %}

# A point-in-time RDB snapshot over the replication protocol, as Redis's backup user (it
# may do nothing else; the password from the environment, not argv).
dump_redis() {
    local dir=$DUMPS/redis
    install -d -m 0700 "$dir"
    REDISCLI_AUTH=$REDIS_BACKUP_PASSWORD redis-cli -h 127.0.0.1 -p {{ c.ENGINES["redis"].local_port }} \
        --user {{ c.BACKUP_USER }} --rdb "$dir/dump.rdb" >/dev/null
    [ -s "$dir/dump.rdb" ]
}
{% endif %}
{% if "rabbitmq" in dumped_engines %}

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
{% if "mongodb" in dumped_engines %}

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

# --- State, status and alerts ---------------------------------------------------------

marker() { cat "$STATE_DIR/$1" 2>/dev/null || true; }

# The backups' state from the markers alone (no network): STATE is ok, missed, or
# "failing <when the run failed>" (so each failed run is a new state); PROBLEM says why.
# Before the first success a backup counts as missed from the first check, since a new
# droplet makes its first backup only at the next backup hour.
backup_state() {
    local success failure since epoch when what
    success=$(marker last-success)
    failure=$(marker last-failure)
    STATE=ok
    PROBLEM=""
    if [ -n "$failure" ] && { [ -z "$success" ] || [ "${failure%% *}" -ge "${success%% *}" ]; }; then
        read -r epoch when what <<<"$failure"
        STATE="failing $epoch"
        PROBLEM="the run of $when failed at: $what"
        return 0
    fi
    since=${success%% *}
    if [ -z "$since" ]; then since=$(marker watched-since); fi
    if [ -n "$since" ] && [ $(( ($(date +%s) - since) / 3600 )) -ge "$MAX_AGE_HOURS" ]; then
        STATE=missed
        PROBLEM="no successful backup for ${MAX_AGE_HOURS}h or more (last success: $(success_summary))"
    fi
}

success_summary() {
    local epoch when snapshot
    read -r epoch when snapshot <<<"$(marker last-success)"
    if [ -z "${epoch:-}" ]; then echo never; return 0; fi
    echo "$when snapshot $snapshot ($(( ($(date +%s) - epoch) / 3600 ))h ago)"
}

status() {
    local healthy=1 epoch when what target alerted_at
    echo "last success: $(success_summary)"
    if [ -z "$(marker last-success)" ]; then healthy=0; fi
    if [ -n "$(marker last-failure)" ]; then
        read -r epoch when what <<<"$(marker last-failure)"
        echo "last failure: $when $what"
    else
        echo "last failure: none"
    fi
    backup_state
    case "$STATE" in
        failing*) echo "FAILING: the last run failed; see $LOG_FILE"; healthy=0 ;;
        missed) echo "MISSED: no successful backup for ${MAX_AGE_HOURS}h or more"; healthy=0 ;;
    esac
    target="$LOG_FILE only (no alertWebhookUrl)"
    if [ -n "$(webhook_url)" ]; then target="the webhook"; fi
    alerted_at=$(marker alerted | cut -s -f2)
    echo "alerts: to $target; last alert: ${alerted_at:-none}"
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

# Alerts once per change of state: each failed run, a missed backup, and the recovery
# after either. When the webhook cannot be reached nothing is recorded, so the next
# check tries again.
check() {
    local alerted text
    exec 8>"$CHECK_LOCK_FILE"
    flock -w 300 8 || die "another check is still running"
    install -d -m 0700 "$STATE_DIR"
    [ -s "$STATE_DIR/watched-since" ] || date +%s > "$STATE_DIR/watched-since"
    if [ "${1:-}" = after-failure ]; then record_unit_failure; fi
    backup_state
    alerted=$(marker alerted | cut -f1)
    [ "$STATE" != "$alerted" ] || return 0
    case "$STATE" in
        ok)
            # The first check on a healthy droplet has nothing to report.
            if [ -z "$alerted" ]; then echo ok > "$STATE_DIR/alerted"; return 0; fi
            text="recovered: last success $(success_summary)" ;;
        missed) text="MISSED: $PROBLEM" ;;
        *) text="FAILED: $PROBLEM" ;;
    esac
    text="[$STACK] $ROLE backup $text, on $(uname -n). Details: sudo $0 status"
    send_alert "$text" || return 1
    printf '%s\t%s\t%s\n' "$STATE" "$(date -u +%FT%TZ)" "$text" > "$STATE_DIR/alerted"
}

# The backup unit failed (OnFailure=). A run records where it failed; a run that could
# not (killed, or refused by the lock) is recorded here, so that it alerts too.
record_unit_failure() {
    backup_state
    case "$STATE" in failing*) return 0 ;; esac
    printf '%s %s %s\n' "$(date +%s)" "$(date -u +%FT%TZ)" \
        "a step it could not record: the unit ended with ${MONITOR_SERVICE_RESULT:-an unknown result} (journalctl -u {{ c.BACKUP_UNIT }})" \
        > "$STATE_DIR/last-failure"
}

webhook_url() {
    if [ -r "$ALERT_FILE" ]; then
        # shellcheck source=/dev/null
        ( . "$ALERT_FILE" && printf '%s' "${ALERT_WEBHOOK_URL:-}" )
    fi
}

# One alert as Slack and Mattermost take it, {"text": ...}, or a log line when there is no
# webhook. The URL is a secret: curl reads it from a config on a pipe, not from argv
# (which every user can read in ps), and it is never logged.
send_alert() {
    local text=$1 url body status=0
    url=$(webhook_url)
    if [ -z "$url" ]; then
        log "ALERT (logged only: no alertWebhookUrl): $text"
        return 0
    fi
    log "ALERT (to the webhook): $text"
    body=$(python3 -c 'import json, sys; print(json.dumps({"text": sys.argv[1]}))' "$text")
    curl --config <(curl_url "$url") --proto =https --fail --silent --show-error --output /dev/null \
        --max-time "$WEBHOOK_ATTEMPT_SECONDS" --retry "$WEBHOOK_RETRIES" --retry-connrefused \
        --retry-max-time "$WEBHOOK_RETRY_SECONDS" \
        --header 'Content-Type: application/json' --data-binary "$body" || status=$?
    if [ "$status" -ne 0 ]; then
        log "alert NOT delivered to the webhook (curl exit $status); the next check tries again"
        return 1
    fi
}

# The URL in curl's config syntax: backslashes and double quotes escaped.
curl_url() {
    local url=${1//\\/\\\\}
    printf 'url = "%s"\n' "${url//\"/\\\"}"
}

main "$@"
