# shellcheck shell=bash
# The datastore's steps, run by platform-provision after the common ones.
# Each enabled engine is installed without starting. It starts once the volume is
# mounted and the droplet's certificate has been pushed; its passwords are applied once
# the secrets push has written {{ c.DATASTORE_SECRETS_FILE }}. Both pushes run this again.
# One file past 400 lines on purpose: it is the role's one role.sh, a section per engine
# after the helpers they share, as the droplet sources it.

VOLUME_DEVICE={{ c.VOLUME_DEVICE_PREFIX }}{{ c.volume_name(settings.stack) }}
# The volume is attached after the droplet is created: first boot may have to wait.
VOLUME_WAIT_SECONDS=600
VOLUME_MOUNT_OPTIONS=defaults,nofail,noatime,x-systemd.device-timeout=30s
# A digest of each password applied to an engine, kept with the data it belongs to.
APPLIED_PASSWORDS={{ c.DATA_MOUNT }}/platform/applied-passwords
TLS_FINGERPRINT={{ c.PLATFORM_STATE }}/datastore-tls.sha256
PRIVATE_ADDRESS=

role_steps() {
    step "data volume"
    ensure_data_volume
    engine_steps
}

# Each engine as the settings ask, on every run: an enabled one installed, configured and
# started; one switched off stopped and disabled, its data left on the volume untouched
# (switched on again, it starts on that data). Its port is closed by the firewall step,
# whose rules follow the enabled engines.
engine_steps() {
    step "engine units"
{% for engine in engines %}
    install_file {{ facts.drop_in(engine.name) }}
{% endfor %}
{% if "redis" in settings.engines %}
    install_file {{ facts.STUNNEL_REDIS_DROP_IN }}
{% endif %}
    if files_changed_under /etc/systemd/system/; then systemctl daemon-reload; fi
    note_certificate_change
    load_secrets
{% for engine in engines %}
    step "{{ engine.name }}"
    {{ engine.name }}_steps
{% endfor %}
{% for name in c.ENGINES if name not in settings.engines %}
    step "{{ name }}: switched off"
    engine_off {{ name }}
{% endfor %}
}

# --- The volume --------------------------------------------------------------------

ensure_data_volume() {
    wait_for_volume
    # DigitalOcean formats a new volume; format only when there is no filesystem at all.
    if [ -z "$(blkid -o value -s TYPE "$VOLUME_DEVICE")" ]; then
        mkfs -t {{ c.VOLUME_FILESYSTEM }} -q -L {{ c.VOLUME_LABEL }} "$VOLUME_DEVICE"
        changed "formatted $VOLUME_DEVICE"
    fi
    # nofail: a missing volume must not stop the droplet from booting (and SSH from working).
    local entry="$VOLUME_DEVICE {{ c.DATA_MOUNT }} {{ c.VOLUME_FILESYSTEM }} $VOLUME_MOUNT_OPTIONS 0 2"
    if ! grep -qxF "$entry" /etc/fstab; then
        sed -i "\\|^$VOLUME_DEVICE |d" /etc/fstab
        printf '%s\n' "$entry" >> /etc/fstab
        changed "fstab: $VOLUME_DEVICE on {{ c.DATA_MOUNT }}"
    fi
    if ! mountpoint -q {{ c.DATA_MOUNT }}; then
        mkdir -p {{ c.DATA_MOUNT }}
        mount {{ c.DATA_MOUNT }}
        changed "mounted {{ c.DATA_MOUNT }}"
    fi
    grow_data_filesystem
}

# A volume made bigger (volumeSizeGb, VOLUME_SIZE_GB) has a bigger device, not yet a
# bigger filesystem: ext4 grows while mounted, the engines running. DigitalOcean grows a
# volume by whole gigabytes; less than 64 MiB to gain is rounding, not a resize.
grow_data_filesystem() {
    local device_bytes key value blocks=0 block_size=0
    device_bytes=$(blockdev --getsize64 "$VOLUME_DEVICE")
    # Bash's arithmetic, 64-bit: mawk's printf "%d" stops at 2^31 - 1.
    while IFS=: read -r key value; do
        case "$key" in
            "Block count") blocks=$((value)) ;;
            "Block size") block_size=$((value)) ;;
        esac
    done < <(dumpe2fs -h "$VOLUME_DEVICE" 2>/dev/null)
    if [ "$blocks" -eq 0 ] || [ "$block_size" -eq 0 ]; then
        log "dumpe2fs -h $VOLUME_DEVICE gave no block count and size"
        return 1
    fi
    [ $((device_bytes - blocks * block_size)) -ge $((64 << 20)) ] || return 0
    resize2fs "$VOLUME_DEVICE" 2>&1 | sed 's/^/resize2fs: /'
    changed "grew the filesystem on {{ c.DATA_MOUNT }} to its volume's ${VOLUME_SIZE_GB} GB"
}

wait_for_volume() {
    local waited=0
    until [ -e "$VOLUME_DEVICE" ]; do
        if [ "$waited" -ge "$VOLUME_WAIT_SECONDS" ]; then
            log "the volume $VOLUME_DEVICE is not attached after ${VOLUME_WAIT_SECONDS}s"
            return 1
        fi
        sleep 5
        waited=$((waited + 5))
    done
}

# --- Shared by the engines -----------------------------------------------------------

# Packages are installed without starting their services: a package's defaults would
# start an engine on the root disk without TLS. Provisioning starts each one when ready.
ensure_packages_unstarted() {
    local policy=/usr/sbin/policy-rc.d
    if [ -e "$policy" ]; then
        ensure_packages "$@"
        return 0
    fi
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 0755 "$policy"
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    ensure_packages "$@"
    rm -f "$policy"
    trap - EXIT
}

# The droplet's address in the VPC, which engines listen on besides loopback.
private_address() {
    python3 - "$VPC_IP_RANGE" <<'PYTHON'
import ipaddress, json, subprocess, sys
vpc = ipaddress.ip_network(sys.argv[1])
shown = subprocess.run(["ip", "-json", "-4", "addr", "show"], capture_output=True, text=True, check=True)
found = [a["local"] for i in json.loads(shown.stdout) for a in i.get("addr_info", [])
         if ipaddress.ip_address(a["local"]) in vpc]
if not found:
    sys.exit(f"no address in the VPC range {vpc} on this droplet")
print(found[0])
PYTHON
}

# Installs one staged file, with the private address in place of its placeholder.
install_file() {
    local path=$1 entry resolved
    if [ -z "$PRIVATE_ADDRESS" ]; then PRIVATE_ADDRESS=$(private_address); fi
    entry=$(staged_file_entry "$path")
    # A failed sed fails here, before anything is written; the x keeps trailing newlines.
    resolved=$(sed "s/{{ c.PRIVATE_ADDRESS_PLACEHOLDER }}/$PRIVATE_ADDRESS/g" "$STAGED_FILES$path"; printf x)
    # shellcheck disable=SC2086 # the entry is two arguments: mode and owner
    write_file "$path" $entry < <(printf '%s' "${resolved%x}")
}

# A file that holds a secret, written when it differs; the secret never appears in argv.
ensure_secret_file() {
    local path=$1 mode=$2 owner=$3 content=$4
    write_file "$path" "$mode" "$owner" <<<"$content"
}

tls_ready() { [ -s {{ c.SERVER_CERT_PATH }} ] && [ -s {{ c.SERVER_KEY_PATH }} ]; }

# Engines read the certificate when they start: a new one means a restart.
note_certificate_change() {
    tls_ready || return 0
    local now
    now=$(cat {{ c.SERVER_CERT_PATH }} {{ c.SERVER_KEY_PATH }} | sha256sum | cut -d' ' -f1)
    [ "$(cat "$TLS_FINGERPRINT" 2>/dev/null)" = "$now" ] && return 0
    printf '%s\n' "$now" > "$TLS_FINGERPRINT"
    CHANGED_FILES+=("{{ c.TLS_DIR }}/")
    changed "the engines' certificate"
}

# With no argument: the secrets push has come. With an engine's variable: it brought that
# password too (a secrets file from before an engine was first switched on has not).
# shellcheck disable=SC2120 # with no engine on, no step passes a variable
have_secrets() {
    [ -f {{ c.DATASTORE_SECRETS_FILE }} ] || return 1
    [ -z "${1:-}" ] || [ -n "${!1:-}" ]
}

load_secrets() {
    have_secrets "" || return 0
    # shellcheck source=/dev/null
    . {{ c.DATASTORE_SECRETS_FILE }}
}

password_digest() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

password_applied() {
    [ "$(cat "$APPLIED_PASSWORDS/$1" 2>/dev/null)" = "$(password_digest "$2")" ]
}

note_password_applied() {
    install -d -m 0700 "$APPLIED_PASSWORDS"
    (umask 077 && password_digest "$2" > "$APPLIED_PASSWORDS/$1")
}

# Starts an engine that is down; restarts it when its config or the certificate changed.
engine_running() {
    local unit=$1 prefix
    shift
    ensure_enabled "$unit"
    if ! systemctl is-active --quiet "$unit"; then
        systemctl start "$unit"
        changed "started $unit"
        return 0
    fi
    for prefix in "$@" "{{ c.TLS_DIR }}/"; do
        if files_changed_under "$prefix"; then
            systemctl restart "$unit"
            changed "restarted $unit"
            return 0
        fi
    done
}
# An engine switched off: its units stopped and disabled; its packages, configuration and
# data stay (nothing is removed: the operator removes the data when it is no longer wanted).
engine_off() {
    local unit version
    case "$1" in
        postgresql)
            [ -d /usr/lib/postgresql ] || return 0
            version=$(postgresql_version)
            # Not started at boot by postgresql.service either (its generator reads start.conf).
            postgresql_start_mode "$version" manual
            unit_off "postgresql@$version-main" ;;
        redis) for unit in {{ facts.STUNNEL_REDIS_UNIT }} redis-server; do unit_off "$unit"; done ;;
        rabbitmq) unit_off rabbitmq-server ;;
        mongodb) unit_off mongod ;;
    esac
}

unit_off() {
    local unit=$1
    if systemctl is-active --quiet "$unit"; then
        systemctl stop "$unit"
        changed "stopped $unit"
    fi
    if systemctl is-enabled --quiet "$unit" 2>/dev/null; then
        systemctl disable --quiet "$unit"
        changed "disabled $unit"
    fi
}

# The distribution's version ({{ c.per_image("postgresql_major") }}), as installed.
postgresql_version() {
    find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -n | tail -n 1
}

# Whether the cluster starts with the machine (auto) or only when asked (manual).
postgresql_start_mode() {
    local version=$1 mode=$2
    [ -d "/etc/postgresql/$version/main" ] || return 0
    write_file "/etc/postgresql/$version/main/start.conf" 0644 postgres:postgres <<<"$mode"
}
{% if "postgresql" in settings.engines %}

# --- PostgreSQL ----------------------------------------------------------------------

postgresql_steps() {
    # Read by the package's install: no default cluster on the root disk.
    install_file {{ facts.POSTGRESQL_CREATECLUSTER }}
    ensure_packages_unstarted postgresql
    ensure_member postgres {{ c.TLS_KEY_GROUP }}
    install_file {{ facts.POSTGRESQL_CONF }}
    install_file {{ facts.POSTGRESQL_HBA }}
    ensure_dir {{ c.DATA_MOUNT }}/postgresql 0755 postgres:postgres
    local version
    version=$(postgresql_version)
    ensure_postgresql_cluster "$version"
    tls_ready || return 0
    engine_running "postgresql@$version-main" {{ facts.POSTGRESQL_DIR }}/
    postgresql_logins
}

# The cluster's data is on the volume (createcluster.d); its /etc files are on the root
# disk, so a copy of them is kept beside the data: a new droplet on the same volume (the
# old one replaced or lost) takes the cluster over instead of failing to create it.
ensure_postgresql_cluster() {
    local version=$1
    local conf_dir=/etc/postgresql/$version/main
    local kept={{ c.DATA_MOUNT }}/postgresql/$version/etc-main
    if [ ! -f "$conf_dir/postgresql.conf" ]; then
        if [ -f "$kept/postgresql.conf" ]; then
            mkdir -p "$(dirname "$conf_dir")"
            cp -a "$kept" "$conf_dir"
            changed "PostgreSQL $version cluster main taken over from the volume"
        else
            pg_createcluster "$version" main
            changed "PostgreSQL $version cluster main"
        fi
    fi
    # Back on after a time switched off.
    postgresql_start_mode "$version" auto
    if ! diff -r "$conf_dir" "$kept" >/dev/null 2>&1; then
        rm -rf "$kept"
        cp -a "$conf_dir" "$kept"
        changed "$conf_dir kept on the volume"
    fi
}

psql_admin() { runuser -u postgres -- psql -X -q -A -t -v ON_ERROR_STOP=1 "$@"; }

postgresql_logins() {
    if [ -z "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '{{ c.BACKUP_USER }}'")" ]; then
        # pg_dump as the backup OS user (peer): reads everything, writes nothing.
        psql_admin <<'SQL'
CREATE ROLE {{ c.BACKUP_USER }} LOGIN;
GRANT pg_read_all_data TO {{ c.BACKUP_USER }};
ALTER ROLE {{ c.BACKUP_USER }} SET default_transaction_read_only = on;
SQL
        changed "PostgreSQL role {{ c.BACKUP_USER }}"
    fi
    have_secrets POSTGRESQL_PASSWORD || return 0
    if [ -z "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '{{ c.ENGINE_APP_USER }}'")" ]; then
        psql_admin -c "CREATE ROLE {{ c.ENGINE_APP_USER }} LOGIN"
        changed "PostgreSQL role {{ c.ENGINE_APP_USER }}"
    fi
    if [ -z "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '{{ c.ENGINE_APP_DATABASE }}'")" ]; then
        psql_admin -c "CREATE DATABASE {{ c.ENGINE_APP_DATABASE }} OWNER {{ c.ENGINE_APP_USER }}"
        psql_admin -c "REVOKE ALL ON DATABASE {{ c.ENGINE_APP_DATABASE }} FROM PUBLIC"
        psql_admin -c "GRANT CONNECT ON DATABASE {{ c.ENGINE_APP_DATABASE }} TO {{ c.BACKUP_USER }}"
        changed "PostgreSQL database {{ c.ENGINE_APP_DATABASE }}"
    fi
    if ! password_applied postgresql "$POSTGRESQL_PASSWORD"; then
        # On stdin, not argv; the server stores only the SCRAM verifier.
        printf '\\set password %s\nALTER ROLE {{ c.ENGINE_APP_USER }} PASSWORD :'"'"'password'"'"';\n' \
            "$POSTGRESQL_PASSWORD" | psql_admin
        note_password_applied postgresql "$POSTGRESQL_PASSWORD"
        changed "PostgreSQL password of {{ c.ENGINE_APP_USER }}"
    fi
}
{% endif %}
{% if "redis" in settings.engines %}

# --- Redis behind stunnel ------------------------------------------------------------

redis_steps() {
    ensure_packages_unstarted redis-server stunnel4
    # stunnel re-reads the key as stunnel4 on reload; Redis itself never sees it.
    ensure_member stunnel4 {{ c.TLS_KEY_GROUP }}
    install_file {{ facts.REDIS_CONF }}
    ensure_dir {{ c.DATA_MOUNT }}/redis 0750 redis:redis
    # Without its users Redis does not start: stunnel would expose it to the VPC.
    have_secrets REDIS_PASSWORD || return 0
    have_secrets REDIS_BACKUP_PASSWORD || return 0
    ensure_secret_file {{ facts.REDIS_ACL_FILE }} 0640 root:redis "$(redis_users)"
    rm -f {{ facts.REDIS_OLD_PASSWORD_CONF }}
    tls_ready || return 0
    engine_running redis-server /etc/redis/
    install_file {{ facts.REDIS_STUNNEL_CONF }}
    engine_running {{ facts.STUNNEL_REDIS_UNIT }} {{ facts.REDIS_STUNNEL_CONF }}
}

# Redis's ACL file (no comments allowed there), passwords as SHA-256 digests only. The
# default user is off and has no password: every login names its user. It keeps every
# right all the same: Redis (7.0 to 7.2) replays its append-only file as the default user
# and checks each MULTI/EXEC against its rights, so with none every transaction written
# since the file's last rewrite is refused at the next start, and its data lost
# (redis/redis#14541). The app may use every key and
# channel but none of the administrative or dangerous commands (FLUSHALL, CONFIG,
# REPLICAOF, DEBUG, SHUTDOWN, MONITOR, KEYS ...), INFO excepted: clients such as ioredis
# read it on connect to wait while Redis loads its data. The backup may only take a
# snapshot over replication (redis-cli --rdb: REPLCONF, then SYNC).
redis_users() {
    printf '%s\n' \
        "user default off resetpass ~* &* +@all" \
        "user {{ c.ENGINE_APP_USER }} on #$(password_digest "$REDIS_PASSWORD") ~* &* +@all -@dangerous -@admin +info" \
        "user {{ c.BACKUP_USER }} on #$(password_digest "$REDIS_BACKUP_PASSWORD") resetkeys resetchannels -@all +replconf +sync"
}
{% endif %}
{% if "rabbitmq" in settings.engines %}

# --- RabbitMQ ------------------------------------------------------------------------

rabbitmq_steps() {
    ensure_packages_unstarted rabbitmq-server
    ensure_member rabbitmq {{ c.TLS_KEY_GROUP }}
    install_file {{ facts.RABBITMQ_CONF }}
    install_file {{ facts.RABBITMQ_ENV }}
    ensure_dir {{ c.DATA_MOUNT }}/rabbitmq 0750 rabbitmq:rabbitmq
    tls_ready || return 0
    engine_running rabbitmq-server /etc/rabbitmq/
    rabbitmq_logins
}

# One name per line: the first column of a rabbitmqctl listing.
rabbitmq_names() { rabbitmqctl --quiet --no-table-headers "$@" | cut -f1; }

rabbitmq_logins() {
    if rabbitmq_names list_users | grep -qx guest; then
        rabbitmqctl --quiet delete_user guest
        changed "RabbitMQ user guest deleted"
    fi
    have_secrets RABBITMQ_PASSWORD || return 0
    if ! rabbitmq_names list_vhosts | grep -qx {{ c.ENGINE_APP_DATABASE }}; then
        rabbitmqctl --quiet add_vhost {{ c.ENGINE_APP_DATABASE }}
        changed "RabbitMQ vhost {{ c.ENGINE_APP_DATABASE }}"
    fi
    # Passwords on stdin, not argv.
    if ! rabbitmq_names list_users | grep -qx {{ c.ENGINE_APP_USER }}; then
        printf '%s\n' "$RABBITMQ_PASSWORD" | rabbitmqctl --quiet add_user {{ c.ENGINE_APP_USER }} >/dev/null
        changed "RabbitMQ user {{ c.ENGINE_APP_USER }}"
    elif ! printf '%s\n' "$RABBITMQ_PASSWORD" \
        | rabbitmqctl --quiet authenticate_user {{ c.ENGINE_APP_USER }} >/dev/null 2>&1; then
        printf '%s\n' "$RABBITMQ_PASSWORD" | rabbitmqctl --quiet change_password {{ c.ENGINE_APP_USER }} >/dev/null
        changed "RabbitMQ password of {{ c.ENGINE_APP_USER }}"
    fi
    local wanted
    wanted=$(printf '%s\t.*\t.*\t.*' {{ c.ENGINE_APP_USER }})
    if [ "$(rabbitmqctl --quiet --no-table-headers list_permissions -p {{ c.ENGINE_APP_DATABASE }})" != "$wanted" ]; then
        rabbitmqctl --quiet set_permissions -p {{ c.ENGINE_APP_DATABASE }} {{ c.ENGINE_APP_USER }} '.*' '.*' '.*'
        changed "RabbitMQ permissions of {{ c.ENGINE_APP_USER }} on {{ c.ENGINE_APP_DATABASE }}"
    fi
}
{% endif %}
{% if "mongodb" in settings.engines %}
MONGODB_SERIES=8.0
MONGODB_REPOSITORY=https://repo.mongodb.org
MONGODB_KEY_URL=https://pgp.mongodb.com/server-${MONGODB_SERIES}.asc
# The key of server-8.0.asc ("MongoDB 8.0 Release Signing Key"), as the official image
# pins it (docker-library/mongo, 8.0/Dockerfile); 7.0's is E58830201F7DD82CD808AA84160D26BB1785BA38
# (7.0/Dockerfile). Another MONGODB_SERIES needs its key here.
MONGODB_KEY_FINGERPRINT=4B0752C1BCA238C0B4EE14DC41DE058A4E7DCA05
MONGODB_PIN=/etc/apt/preferences.d/mongodb-org


# --- MongoDB -------------------------------------------------------------------------

# Not in Debian's or Ubuntu's archive: MongoDB publishes its own repository for both.
ensure_mongodb_repository() {
    local distro codename component=main
    distro=$(sed -n 's/^ID=//p' /etc/os-release)
    codename=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release)
{% for image in c.IMAGES.values() if image.mongodb_component != "main" %}
    [ "$distro" = {{ image.os_id }} ] && component={{ image.mongodb_component }}
{% endfor %}
    ensure_apt_repository mongodb-org "${MONGODB_KEY_URL}" "$MONGODB_KEY_FINGERPRINT" "Types: deb
URIs: ${MONGODB_REPOSITORY}/apt/${distro}
Suites: ${codename}/mongodb-org/${MONGODB_SERIES}
Components: ${component}"
    # The suite carries one series; the pin holds it there whatever sources are added (an
    # upgrade to another series is a migration: unattended-upgrades takes fixes only).
    local pin="Package: mongodb-org*
Pin: version ${MONGODB_SERIES}.*
Pin-Priority: 500

Package: mongodb-org*
Pin: release o=mongodb
Pin-Priority: -1"
    write_file "$MONGODB_PIN" 0644 root:root <<<"$pin"
}

mongodb_steps() {
    ensure_mongodb_repository
    ensure_packages_unstarted mongodb-org-server mongodb-mongosh
    install_file {{ facts.MONGODB_CONF }}
    install_file {{ facts.MONGODB_USERS_SCRIPT }}
    ensure_dir {{ c.DATA_MOUNT }}/mongodb 0750 mongodb:mongodb
    tls_ready || return 0
    # mongod reads certificate and key from one file.
    ensure_secret_file {{ c.MONGODB_PEM_PATH }} 0640 root:mongodb \
        "$(cat {{ c.SERVER_CERT_PATH }} {{ c.SERVER_KEY_PATH }})"
    engine_running mongod {{ facts.MONGODB_CONF }} {{ c.MONGODB_PEM_PATH }}
    have_secrets MONGODB_PASSWORD || return 0
    if ! password_applied mongodb "$MONGODB_PASSWORD" \
        || ! password_applied mongodb_admin "$MONGODB_ADMIN_PASSWORD"; then
        # Passwords in the environment, not argv; loopback, so the localhost exception
        # lets the first run create the administrator.
        MONGODB_PASSWORD=$MONGODB_PASSWORD MONGODB_ADMIN_PASSWORD=$MONGODB_ADMIN_PASSWORD \
            mongosh --quiet --tls --tlsCAFile {{ c.CA_CERT_PATH }} --tlsAllowInvalidHostnames \
            --host 127.0.0.1 --port {{ c.ENGINES["mongodb"].tls_port }} --file {{ facts.MONGODB_USERS_SCRIPT }}
        note_password_applied mongodb "$MONGODB_PASSWORD"
        note_password_applied mongodb_admin "$MONGODB_ADMIN_PASSWORD"
        changed "MongoDB users {{ c.ENGINE_ADMIN_USER }} and {{ c.ENGINE_APP_USER }}"
    fi
}
{% endif %}
