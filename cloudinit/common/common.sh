# shellcheck shell=bash
# Steps every role shares, and the helpers that keep provisioning idempotent: each one
# does nothing when the droplet is already as asked, and counts a change when it is not.

CHANGES=0
CHANGED_FILES=()

log() { printf '%s platform-provision: %s\n' "$(date -u +%FT%TZ)" "$*"; }

changed() {
    CHANGES=$((CHANGES + 1))
    log "changed: $*"
}

# Installs packages that are not installed yet; never upgrades (unattended-upgrades does).
ensure_packages() {
    local missing=()
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ ! -f /var/lib/platform/apt-updated ]; then
        apt-get update -q
        touch /var/lib/platform/apt-updated
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confold "${missing[@]}"
    changed "installed ${missing[*]}"
}

# A system user with no login shell, unless one is given.
ensure_user() {
    local name=$1 home=$2 shell=${3:-/usr/sbin/nologin}
    id -u "$name" >/dev/null 2>&1 && return 0
    useradd --system --create-home --home-dir "$home" --shell "$shell" "$name"
    changed "user $name"
}

ensure_group() {
    getent group "$1" >/dev/null && return 0
    groupadd --system "$1"
    changed "group $1"
}

# Puts a staged file in place when it differs; remembers it for restart_if_changed.
install_config() {
    local path=$1 mode=$2 owner=$3
    local staged="${STAGED_FILES}${path}"
    if [ -f "$path" ] && cmp -s "$staged" "$path" \
        && [ "$(stat -c '%a %U:%G' "$path")" = "${mode#0} ${owner}" ]; then
        return 0
    fi
    install -D -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$staged" "$path"
    CHANGED_FILES+=("$path")
    changed "$path"
}

# Every staged file whose path starts with the given prefix (all of them by default).
install_configs() {
    local prefix=${1:-/}
    local entry path mode owner group
    for entry in $CONFIG_FILES; do
        IFS=: read -r path mode owner group <<<"$entry"
        case "$path" in "$prefix"*) install_config "$path" "$mode" "$owner:$group" ;; esac
    done
}

# True when a file under the prefix was installed by this run.
files_changed_under() {
    local path
    for path in "${CHANGED_FILES[@]}"; do
        case "$path" in "$1"*) return 0 ;; esac
    done
    return 1
}

ensure_enabled() {
    systemctl is-enabled --quiet "$1" 2>/dev/null && return 0
    systemctl enable --quiet "$1"
    changed "enabled $1"
}

# Starts the unit if it is down; restarts it if its config changed in this run.
ensure_running() {
    local unit=$1 config_prefix=${2:-}
    ensure_enabled "$unit"
    if ! systemctl is-active --quiet "$unit"; then
        systemctl start "$unit"
        changed "started $unit"
    elif [ -n "$config_prefix" ] && files_changed_under "$config_prefix"; then
        systemctl restart "$unit"
        changed "restarted $unit"
    fi
}

common_steps() {
    ensure_group platform-tls
    install_configs /etc/ssh/
    if files_changed_under /etc/ssh/; then
        sshd -t
        systemctl reload ssh || systemctl reload sshd
    fi
}
