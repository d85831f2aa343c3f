#!/bin/bash
# platform-restore: puts back what a restic snapshot of this droplet holds.
#
#   platform-restore list                      the snapshots (newest last)
{% if dumped_engines %}
#   platform-restore ENGINE [SNAPSHOT]         one engine from the latest (or the named) snapshot
#   platform-restore all [SNAPSHOT]            every enabled engine
{% endif %}
#   platform-restore config [SNAPSHOT]         this role's configuration, into {{ c.BACKUP_SPOOL }}/restored/ (for reading)
{% if role == c.LOAD_BALANCER %}
#   platform-restore certificates [SNAPSHOT]   certbot's certificate and account, onto an LB that has none
#                                              (platform-certificate does this before asking for a new one)
{% endif %}
{% if dumped_engines %}
#
# ENGINE is one of: {{ dumped_engines | join(", ") }}.
# The engine must be running (provisioning starts it on a new droplet); its current data
# is replaced by the snapshot's.
{% endif %}
set -Eeuo pipefail
# shellcheck source=backup.sh
. {{ c.BACKUP_LIBRARY }}

main() {
    local what=${1:-} snapshot=${2:-latest}
    case "$what" in
        list) require_root "$@"; load_backup_settings; restic snapshots "${SNAPSHOTS[@]}" ;;
        all)
            [ "${#ENGINES[@]}" -gt 0 ] || die "no engine's data on this droplet: list, config{{ ', certificates' if role == c.LOAD_BALANCER else '' }}"
            require_root "$@"
            restore_engines "$snapshot" "${ENGINES[@]}"
            ;;
        config) require_root "$@"; restore_config "$snapshot" ;;
{% if role == c.LOAD_BALANCER %}
        certificates) require_root "$@"; restore_certificates "$snapshot" ;;
{% endif %}
        ""|-h|--help|help) sed -n '2,/^set /{/^set /d;s/^# \{0,1\}//p}' "$0" ;;
        *)
            engine_enabled "$what" || die "$what: not one of list, config{{ ', certificates' if role == c.LOAD_BALANCER else '' }}{{ ', all or an enabled engine (' ~ (dumped_engines | join(', ')) ~ ')' if dumped_engines else '' }}"
            require_root "$@"
            restore_engines "$snapshot" "$what"
            ;;
    esac
}

# Fetches the engines' dumps from the snapshot into a work directory, then loads each.
restore_engines() {
    local snapshot=$1 engine
    shift
    load_backup_settings
    load_engine_secrets
    cd /
    WORK=$(mktemp -d "$SPOOL/restore.XXXXXX")
    trap 'rm -rf "$WORK"' EXIT
    local work=$WORK
    local includes=()
    for engine in "$@"; do includes+=(--include "$DUMPS/$engine"); done
    log "restore of ${*} from snapshot $snapshot started"
    restic restore "$snapshot" "${SNAPSHOTS[@]}" --target "$work" "${includes[@]}"
    for engine in "$@"; do
        [ -d "$work$DUMPS/$engine" ] || die "snapshot $snapshot holds no $engine backup"
        "restore_$engine" "$work$DUMPS/$engine"
        log "restored $engine from snapshot $snapshot"
    done
}

restore_config() {
    local snapshot=$1 target=$SPOOL/restored
    load_backup_settings
    rm -rf "$target"
    install -d -m 0700 "$target"
    local includes=() path
    for path in "${CONFIG_PATHS[@]}"; do includes+=(--include "$path"); done
    restic restore "$snapshot" "${SNAPSHOTS[@]}" --target "$target" "${includes[@]}"
    log "configuration of snapshot $snapshot restored under $target (compare, then copy what you need)"
}
{% if role == c.LOAD_BALANCER %}

# certbot's whole /etc/letsencrypt (account, archive, live links, renewal settings) from
# the snapshot, if it holds a certificate for {{ settings.domain }} that has not expired.
# Exit 3: nothing usable to restore (ask the ACME directory instead).
restore_certificates() {
    local snapshot=$1 found
    local live=/etc/letsencrypt/live/{{ c.LB_CERT_NAME }}
    load_backup_settings
    [ ! -e "$live" ] || die "$live exists: this LB has its certificate (move /etc/letsencrypt aside to restore over it)"
    if [ "$snapshot" = latest ] && ! restic snapshots --json "${SNAPSHOTS[@]}" | grep -q '"id"'; then
        log "no snapshot of $BACKUP_HOST yet: no certificate to restore"
        return 3
    fi
    WORK=$(mktemp -d "$SPOOL/restore.XXXXXX")
    trap 'rm -rf "$WORK"' EXIT
    restic restore "$snapshot" "${SNAPSHOTS[@]}" --target "$WORK" --include /etc/letsencrypt
    found=$WORK$live/fullchain.pem
    if [ ! -f "$found" ]; then
        log "snapshot $snapshot holds no certificate"
        return 3
    fi
    if ! openssl x509 -noout -checkend 0 -in "$found" >/dev/null \
        || ! openssl x509 -noout -ext subjectAltName -in "$found" | grep -qF "DNS:{{ settings.domain }}"; then
        log "the certificate in snapshot $snapshot has expired or is not for {{ settings.domain }}: not restored"
        return 3
    fi
    install -d -m 0755 /etc/letsencrypt
    cp -a "$WORK/etc/letsencrypt/." /etc/letsencrypt/
    log "restored the certificate for {{ settings.domain }} from snapshot $snapshot ($(openssl x509 -noout -enddate -in "$live/fullchain.pem"))"
}
{% endif %}
{% if "postgresql" in dumped_engines %}

# Each database is dropped (its sessions ended) and re-created from its dump, owner and
# grants included. The roles are the program's: provisioning has made them.
restore_postgresql() {
    local dir=$1 dump db
    for dump in "$dir"/*.dump; do
        [ -e "$dump" ] || die "no PostgreSQL dump in the snapshot"
        db=$(basename "$dump" .dump)
        # On stdin: the dump stays readable by root only.
        if [ "$db" = postgres ]; then
            # The maintenance database cannot be dropped while we are connected to it.
            as_postgres pg_restore --exit-on-error --clean --if-exists -d postgres < "$dump"
            continue
        fi
        as_postgres psql -X -q -v ON_ERROR_STOP=1 -d postgres -v db="$db" <<'SQL'
SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', :'db') \gexec
SQL
        as_postgres pg_restore --exit-on-error --create -d postgres < "$dump"
    done
}
{% endif %}
{% if "redis" in dumped_engines %}

# Redis loads its data only when it starts, and with append-only on it ignores an RDB
# file. So: stop it, put the snapshot in place of its files, load it in a private
# instance with append-only off (a socket, no port), turn append-only on there so Redis
# writes its own files from memory, stop that, start the real one. The private instance
# has its own users: one, without a password, reached only through its socket in a
# directory only root and redis enter (Redis's own users may not reconfigure or stop it).
restore_redis() {
    local dir=$1 data private=$WORK/redis
    [ -s "$dir/dump.rdb" ] || die "no Redis snapshot in the backup"
    data=$(redis_data_dir)
    systemctl stop redis-server
    rm -rf "${data:?}/appendonlydir" "$data/appendonly.aof"
    install -m 0660 -o redis -g redis "$dir/dump.rdb" "$data/dump.rdb"
    chmod 0711 "$WORK"
    install -d -m 0700 -o redis -g redis "$private"
    echo "user default on nopass ~* &* +@all" > "$private/users.acl"
    chown redis:redis "$private/users.acl"
    as_user redis redis-server {{ facts.REDIS_CONF }} --appendonly no --port 0 --aclfile "$private/users.acl" \
        --unixsocket "$private/redis.sock" --pidfile "$private/redis.pid" --supervised no --daemonize yes
    until private_redis PING >/dev/null 2>&1; do sleep 0.2; done
    private_redis CONFIG SET appendonly yes >/dev/null
    until private_redis INFO persistence | grep -q '^aof_rewrite_in_progress:0' \
        && private_redis INFO persistence | grep -q '^aof_rewrite_scheduled:0' \
        && compgen -G "$data/appendonlydir/*.base.rdb" >/dev/null; do
        sleep 0.2
    done
    local pid
    pid=$(cat "$private/redis.pid")
    private_redis SHUTDOWN >/dev/null 2>&1 || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    systemctl start redis-server
}

private_redis() { redis-cli -s "$WORK/redis/redis.sock" "$@"; }

redis_data_dir() { sed -n 's/^dir[[:space:]]\{1,\}//p' {{ facts.REDIS_CONF }} | tail -n 1; }
{% endif %}
{% if "rabbitmq" in dumped_engines %}

# Definitions are merged into the running broker: vhosts, users, permissions, queues.
restore_rabbitmq() {
    local dir=$1
    [ -s "$dir/definitions.json" ] || die "no RabbitMQ definitions in the backup"
    # rabbitmqctl runs as rabbitmq (the distribution's wrapper): it reads its own copy.
    local readable=$WORK/rabbitmq
    chmod 0711 "$WORK"
    install -d -m 0700 -o rabbitmq -g rabbitmq "$readable"
    install -m 0600 -o rabbitmq -g rabbitmq "$dir/definitions.json" "$readable/definitions.json"
    rabbitmqctl --quiet import_definitions "$readable/definitions.json"
}
{% endif %}
{% if "mongodb" in dumped_engines %}

# The app's collections are dropped and loaded from the archive.
restore_mongodb() {
    local dir=$1 config
    local archive=$dir/{{ c.ENGINE_APP_DATABASE }}.archive.gz
    [ -s "$archive" ] || die "no MongoDB archive in the backup"
    config=$(mongodb_tools_config)
    mongorestore --quiet --config="$config" "${mongodb_connection[@]}" \
        --nsInclude='{{ c.ENGINE_APP_DATABASE }}.*' --drop --gzip --archive="$archive" \
        || { rm -f "$config"; false; }
    rm -f "$config"
}
{% endif %}

main "$@"
