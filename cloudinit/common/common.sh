# shellcheck shell=bash
# Steps every role shares, and the helpers that keep provisioning idempotent: each one
# does nothing when the droplet is already as asked, and counts a change when it is not.

CHANGES=0
CHANGED_FILES=()
# Touched by every successful apt-get update of provisioning (apt_lists_ready reads its age).
APT_LISTS_REFRESHED={{ c.PLATFORM_STATE }}/apt-updated

log() { printf '%s platform-provision: %s\n' "$(date -u +%FT%TZ)" "$*"; }

changed() {
    CHANGES=$((CHANGES + 1))
    log "changed: $*"
}

# apt-get that waits for apt's locks instead of failing: the distribution's apt-daily and
# unattended-upgrades may hold them while first boot provisions.
apt_get() { apt-get -o DPkg::Lock::Timeout={{ c.APT_LOCK_WAIT_SECONDS }} "$@"; }

# apt-get update, waiting for apt's lists lock: DPkg::Lock::Timeout covers only dpkg's
# locks, and apt takes the lists lock with fcntl without waiting (flock cannot wait on
# it). Another apt (apt-daily) holding it is waited for; any other failure fails at once.
apt_update() {
    local waited=0 holder
    while true; do
        if holder=$(apt_lists_lock_holder); then
            if [ "$waited" -ge {{ c.APT_LOCK_WAIT_SECONDS }} ]; then
                log "apt-get update gave up: apt's lists lock is still held by ${holder} after ${waited}s"
                return 1
            fi
            if [ "$waited" -eq 0 ]; then
                log "apt-get update waits (up to {{ c.APT_LOCK_WAIT_SECONDS }}s) for apt's lists lock, held by ${holder}"
            fi
            sleep 1
            waited=$((waited + 1))
            continue
        fi
        if apt_get update -q; then
            mkdir -p "$(dirname "$APT_LISTS_REFRESHED")"
            touch "$APT_LISTS_REFRESHED"
            return 0
        fi
        # Failed while nobody holds the lock: not a wait, a failure.
        apt_lists_lock_holder >/dev/null || return 1
    done
}

# Who holds apt's lists lock ("pid N (command)"); false when nobody does. F_GETLK only
# asks: taking the lock, even for an instant, could fail the apt that wants it.
apt_lists_lock_holder() {
    local lists=/var/lib/apt/lists/
    eval "$(apt-config shell lists Dir::State::Lists/d)"
    python3 - "${lists}lock" <<'PYTHON'
import ctypes, fcntl, os, sys

class Flock(ctypes.Structure):  # struct flock of 64-bit Linux, as fcntl(2) reads it
    _fields_ = [("l_type", ctypes.c_short), ("l_whence", ctypes.c_short),
                ("l_start", ctypes.c_int64), ("l_len", ctypes.c_int64), ("l_pid", ctypes.c_int)]

try:
    fd = os.open(sys.argv[1], os.O_RDONLY)
except FileNotFoundError:
    sys.exit(1)
asked = Flock(l_type=fcntl.F_WRLCK)
found = Flock.from_buffer_copy(fcntl.fcntl(fd, fcntl.F_GETLK, bytes(asked)))
if found.l_type == fcntl.F_UNLCK:
    sys.exit(1)
try:
    with open(f"/proc/{found.l_pid}/comm") as f:
        name = f.read().strip()
except OSError:
    name = "unknown"
print(f"pid {found.l_pid} ({name})")
PYTHON
}

# The package lists, refreshed before an install when the last refresh is older than a
# day (or never happened): a mirror drops superseded packages, so old lists fail installs.
apt_lists_ready() {
    [ -n "$(find "$APT_LISTS_REFRESHED" -maxdepth 0 -mmin -{{ c.APT_LISTS_MAX_AGE_MINUTES }} 2>/dev/null)" ] && return 0
    apt_update
}

# Installs packages that are not installed yet; never upgrades (unattended-upgrades does).
ensure_packages() {
    local missing=()
    local pkg
    for pkg in "$@"; do
        [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" = "install ok installed" ] || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    apt_lists_ready
    DEBIAN_FRONTEND=noninteractive apt_get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confold "${missing[@]}"
    changed "installed ${missing[*]}"
}

# The fingerprint of each primary key in a key file, one a line (a subkey's is not listed).
primary_fingerprints() {
    gpg --show-keys --with-colons "$1" 2>/dev/null \
        | awk -F: '$1 == "pub" { primary = 1; next } $1 == "fpr" && primary { print $10; primary = 0 }'
}

# A vendor's apt repository: its signing key, fetched over HTTPS and checked against the
# pinned fingerprint, and a deb822 sources file signed by it.
ensure_apt_repository() {
    local name=$1 key_url=$2 fingerprint=$3 sources_text=$4
    local keyring=/etc/apt/keyrings/$name.gpg sources=/etc/apt/sources.list.d/$name.sources
    local key actual
    ensure_packages ca-certificates curl gnupg
    # Fetched when missing, and again when the keyring holds anything but the pinned key
    # (a keyring from before the pin, or of another series).
    if [ ! -s "$keyring" ] || [ "$(primary_fingerprints "$keyring")" != "$fingerprint" ]; then
        key=$(mktemp)
        curl -fsSL --retry 5 "$key_url" | gpg --dearmor > "$key"
        actual=$(primary_fingerprints "$key")
        # Exactly the pinned key: apt would trust any other key in the file as well.
        if [ -z "$fingerprint" ] || [ "$actual" != "$fingerprint" ]; then
            log "$name key file holds the key(s) ${actual//$'\n'/ }, expected ${fingerprint:-a pinned fingerprint}"
            rm -f "$key"
            return 1
        fi
        install -D -m 0644 "$key" "$keyring"
        rm -f "$key"
        changed "$keyring (key fingerprint $actual)"
    fi
    sources_text="${sources_text}
Signed-By: ${keyring}"
    write_file "$sources" 0644 root:root <<<"$sources_text"
    if files_changed_under "$sources"; then apt_update; fi
}

# A system user (no password) with no login shell, unless one is given.
ensure_user() {
    local name=$1 home=$2 shell=${3:-/usr/sbin/nologin}
    id -u "$name" >/dev/null 2>&1 && return 0
    useradd --system --create-home --home-dir "$home" --shell "$shell" "$name"
    changed "user $name"
}

ensure_member() {
    local user=$1 group=$2
    [[ " $(id -nG "$user") " == *" $group "* ]] && return 0
    usermod -a -G "$group" "$user"
    changed "$user joined $group"
}

# A directory as asked. Never through a symbolic link: one where a directory belongs was
# placed by someone (a user who owns the directory or once could write beside it), and
# install -d would give its target the mode and owner asked for. Refused, not replaced:
# provisioning stops, naming it, for an operator to look at who placed it and why. (The
# check is not racy where it matters: every parent here is root's.)
ensure_dir() {
    local path=$1 mode=$2 owner=$3
    if [ -L "$path" ]; then
        log "refusing ${path}: a symbolic link (to $(readlink "$path"), owned by $(stat -c %U "$path")) where a directory belongs; remove it once you know who placed it"
        return 1
    fi
    [ -d "$path" ] && [ "$(stat -c '%a %U:%G' "$path")" = "${mode#0} ${owner}" ] && return 0
    install -d -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$path"
    changed "directory $path"
}

ensure_symlink() {
    local target=$1 link=$2
    [ "$(readlink "$link" 2>/dev/null)" = "$target" ] && return 0
    mkdir -p "$(dirname "$link")"
    ln -sfn "$target" "$link"
    changed "link $link -> $target"
}

ensure_group() {
    getent group "$1" >/dev/null && return 0
    groupadd --system "$1"
    changed "group $1"
}

# Writes stdin to a file only when its content, mode or owner differ, by platform-write
# (the one home of that rule; platform-push uses it too). A write is remembered for
# files_changed_under and counted as a change.
write_file() {
    local path=$1 mode=$2 owner=$3 result
    # `|| return`: a failed write fails the caller also where errexit is off (`if`, `&&`).
    result=$({{ c.WRITE_COMMAND }} "$path" "$mode" "$owner") || return 1
    [ "$result" = changed ] || return 0
    CHANGED_FILES+=("$path")
    changed "$path"
}

# Puts a staged file in place when it differs.
install_config() {
    local path=$1 mode=$2 owner=$3
    write_file "$path" "$mode" "$owner" < "${STAGED_FILES}${path}"
}

# The mode and owner a staged file is installed with: "MODE OWNER:GROUP".
staged_file_entry() {
    local path=$1 entry listed mode owner group
    for entry in $CONFIG_FILES; do
        IFS=: read -r listed mode owner group <<<"$entry"
        if [ "$listed" = "$path" ]; then
            printf '%s %s:%s\n' "$mode" "$owner" "$group"
            return 0
        fi
    done
    log "$path is not a staged file of this role"
    return 1
}

# logrotate reads all of logrotate.d at each run: a line it cannot parse is skipped, and
# what it said may then never happen (a log left to grow). Checked before any is installed.
check_staged_logrotate_files() {
    local conf said
    for conf in "${STAGED_FILES}"/etc/logrotate.d/*; do
        said=$(logrotate -d "$conf" 2>&1) || { log "$conf: $(grep '^error:' <<<"$said" | head -3)"; return 1; }
    done
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

# Starts the unit if it is down; restarts it if its config changed in this run (or
# reloads it, when the third argument is `reload`: nginx finishes its requests).
ensure_running() {
    local unit=$1 config_prefix=${2:-} apply=${3:-restart}
    ensure_enabled "$unit"
    if ! systemctl is-active --quiet "$unit"; then
        systemctl start "$unit"
        changed "started $unit"
    elif [ -n "$config_prefix" ] && files_changed_under "$config_prefix"; then
        systemctl "$apply" "$unit"
        changed "$unit: $apply"
    fi
}

# The step running now, for platform-provision's failure message.
# shellcheck disable=SC2034 # read by platform-provision
CURRENT_STEP="start"
step() {
    # shellcheck disable=SC2034
    CURRENT_STEP=$1
    log "step: $1"
}

# True when the first argument equals one of the others.
contains() {
    local needle=$1 item
    shift
    for item in "$@"; do [ "$item" = "$needle" ] && return 0; done
    return 1
}

in_container() { systemd-detect-virt --container --quiet; }

# ufw mirrors the cloud firewall: deny incoming, allow outgoing, and exactly the rules in
# the rules file. Only the difference is applied, so a second run touches nothing.
ensure_firewall() {
    local rules_file=$1 rule
    local -a wanted current
    mapfile -t wanted < <(grep -v -e '^#' -e '^$' "$rules_file" | sort -u)
    mapfile -t current < <(ufw show added | sed -n 's/^ufw //p' | sort -u)
    for rule in "${current[@]}"; do
        contains "$rule" "${wanted[@]}" && continue
        # shellcheck disable=SC2086 # a rule is several ufw arguments
        ufw --force delete $rule >/dev/null
        changed "ufw: removed $rule"
    done
    for rule in "${wanted[@]}"; do
        contains "$rule" "${current[@]}" && continue
        # shellcheck disable=SC2086
        ufw $rule >/dev/null
        changed "ufw: $rule"
    done
    if ! grep -qx 'DEFAULT_INPUT_POLICY="DROP"' /etc/default/ufw; then
        ufw default deny incoming >/dev/null
        changed "ufw: deny incoming by default"
    fi
    if ! grep -qx 'DEFAULT_OUTPUT_POLICY="ACCEPT"' /etc/default/ufw; then
        ufw default allow outgoing >/dev/null
        changed "ufw: allow outgoing by default"
    fi
    # No `ufw status | grep -q`: grep leaving early breaks ufw's pipe under pipefail.
    if [[ "$(ufw status)" != "Status: active"* ]]; then
        ufw --force enable >/dev/null
        changed "ufw: enabled"
    fi
}

common_steps() {
    step "packages"
    ensure_packages ufw python3-systemd unattended-upgrades needrestart logrotate \
        systemd-timesyncd ca-certificates openssl

    step "users and groups"
    ensure_group {{ c.TLS_KEY_GROUP }}
{% for user in c.ROLE_USERS[role] %}
    ensure_user {{ user.name }} {{ user.home }} {{ user.shell }}
{% endfor %}

    step "platform directories"
    ensure_dir {{ c.PLATFORM_LOG_DIR }} 0755 root:root
    ensure_dir {{ c.TLS_DIR }} 0755 root:root
    # The internal CA (pushed later to {{ c.CA_CERT_PATH }}) becomes a trusted root
    # when update-ca-certificates runs: it reads *.crt here, following links.
    ensure_symlink {{ c.CA_CERT_PATH }} {{ c.CA_TRUST_LINK }}

    step "login keys"
    ensure_dir {{ c.LOGIN_KEYS_DIR }} 0755 root:root
    ensure_automation_key

    step "config files"
    local entry path mode owner group conf
    local -a common_files
    # needrestart evaluates its conf.d files as Perl: one that does not compile stops it.
    for conf in "${STAGED_FILES}"/etc/needrestart/conf.d/*.conf; do
        perl -c "$conf" 2>/dev/null || { log "$conf is not valid Perl"; return 1; }
    done
    check_staged_logrotate_files || return 1
    read -ra common_files <<<"$COMMON_CONFIG_FILES"
    for entry in $CONFIG_FILES; do
        IFS=: read -r path mode owner group <<<"$entry"
        # Only the common files: a role installs its own after its packages.
        if contains "$path" "${common_files[@]}"; then install_config "$path" "$mode" "$owner:$group"; fi
    done

    step "host hardening"
    host_hardening_steps

    step "sshd"
    if files_changed_under /etc/ssh/; then
        sshd -t
        # {{ c.images_where("sshd_socket") }} starts sshd from ssh.socket: when it is not running there is
        # nothing to reload and the next start reads the new config.
        {{ c.SSHD_RELOAD_COMMAND }}
    fi

    step "firewall"
    ensure_firewall {{ c.FIREWALL_RULES_FILE }}

    step "fail2ban"
    # Installed once our jail is in place: the package starts it at once, and Debian's own
    # jail alone reads /var/log/auth.log, which an image without rsyslog lacks (it fails).
    ensure_packages fail2ban
    ensure_running fail2ban /etc/fail2ban/

    step "security updates"
    ensure_enabled unattended-upgrades
    ensure_enabled apt-daily.timer
    ensure_enabled apt-daily-upgrade.timer

    step "time sync"
    ensure_enabled systemd-timesyncd
    # In a container the host keeps the clock and timesyncd refuses to start.
    if ! in_container; then ensure_running systemd-timesyncd; fi
{% if settings.backups %}

    step "backups"
    backup_steps
{% endif %}
}
{% if settings.backups %}

# restic and the units that run platform-backup; the `backup` push brings the repository's
# settings and the timer, then enables it. The alert units need no push: without a
# webhook their alerts go to the log.
backup_steps() {
    ensure_packages restic curl
    ensure_dir {{ c.BACKUP_SPOOL }} 0711 root:root
    ensure_dir {{ c.BACKUP_STATE_DIR }} 0700 root:root
    ensure_dir {{ c.BACKUP_CACHE_DIR }} 0700 root:root
    install_configs /etc/systemd/system/{{ c.BACKUP_UNIT }}
    if files_changed_under /etc/systemd/system/{{ c.BACKUP_UNIT }}; then systemctl daemon-reload; fi
    ensure_running {{ c.BACKUP_CHECK_UNIT }}.timer /etc/systemd/system/{{ c.BACKUP_CHECK_UNIT }}.timer
}
{% endif %}
