# shellcheck shell=bash
# Provisioning's hardening of the host, sourced after common.sh (whose helpers it uses):
# the login keys sshd reads, the kernel's settings, process accounting and the package
# integrity check.

# sshd reads keys only from root's files in {{ c.LOGIN_KEYS_DIR }}: the automation key
# first boot gave {{ c.OPERATOR_USER }} joins that login's file before sshd reads the drop-in
# that says so, or the program's next login would be refused. It is read from cloud-init's
# copy of the user data (root's), never from ~/.ssh, which the login itself may write.
# Keys already in the file stay; the `operators` push later writes it whole, this key included.
ensure_automation_key() {
    local file={{ c.LOGIN_KEYS_DIR }}/{{ c.OPERATOR_USER }} keys
    keys=$(python3 - {{ c.FIRST_BOOT_USER_DATA }} {{ c.OPERATOR_USER }} "$file" <<'PYTHON'
import sys
import yaml

user_data, login, keys_file = sys.argv[1:]
with open(user_data) as f:
    config = yaml.safe_load(f) or {}
wanted = [key.strip() for user in config.get("users") or [] if isinstance(user, dict) and user.get("name") == login
          for key in user.get("ssh_authorized_keys") or []]
if not wanted:
    sys.exit(f"{user_data} gives {login} no key")
try:
    with open(keys_file) as f:
        lines = f.read().splitlines()
except FileNotFoundError:
    lines = []
print("\n".join(lines + [key for key in wanted if key not in lines]))
PYTHON
) || return 1
    write_file "$file" 0644 root:root <<<"$keys"
}

# The kernel settings of a sysctl.d file, applied now where they differ (systemd-sysctl
# applies the file at boot). A container shares its host's kernel: there only the keys of
# its own network namespace (net.*) are writable, and the others are the host's to set,
# skipped and named in the log. Anywhere else every key must apply.
ensure_sysctl() {
    local file=$1 line key value path
    local -a pending=() skipped=()
    while IFS= read -r line; do
        [[ "$line" =~ ^[[:space:]]*([a-z0-9_.*-]+)[[:space:]]*=[[:space:]]*([^[:space:]]+)[[:space:]]*$ ]] || continue
        key=${BASH_REMATCH[1]} value=${BASH_REMATCH[2]}
        # A glob names several keys: the first that differs decides. One that names no key
        # on this kernel (IPv6 turned off at boot) is skipped, as systemd-sysctl skips it.
        for path in /proc/sys/${key//.//}; do
            if [ ! -e "$path" ]; then log "sysctl: no $key on this kernel"; break; fi
            [ "$(cat "$path")" = "$value" ] && continue
            if [ ! -w "$path" ] && in_container; then skipped+=("$key"); else pending+=("$key = $value"); fi
            break
        done
    done < "$file"
    if [ "${#skipped[@]}" -gt 0 ]; then log "sysctl: read-only in this container, left to the host: ${skipped[*]}"; fi
    [ "${#pending[@]}" -eq 0 ] && return 0
    sysctl -q -p <(printf '%s\n' "${pending[@]}") || return 1
    changed "sysctl: ${pending[*]}"
}

# After the config files are in place (the sysctl file, the units, acct's drop-in).
host_hardening_steps() {
    ensure_sysctl {{ c.HARDENING_SYSCTL_FILE }}
    # systemd reads the units and acct's drop-in before acct's package starts its unit.
    if files_changed_under /etc/systemd/system/; then systemctl daemon-reload; fi
    # acct rotates its log (keeping 30 days) by its daily cron job: cron too.
    ensure_packages acct debsums cron
    ensure_running {{ c.INTEGRITY_UNIT }}.timer /etc/systemd/system/{{ c.INTEGRITY_UNIT }}.timer
}
