#!/bin/bash
# Makes this droplet a working member of its role. Safe to run again: it installs what
# is missing, installs config files that differ and restarts only what changed, then
# says how many changes it made.
set -Eeuo pipefail

# One change to the droplet at a time: the run holds the droplet lock, unless it runs
# inside a hold already (a push's then-step), which it must not wait for.
if ! {{ c.LOCK_COMMAND }} held; then
    exec {{ c.LOCK_COMMAND }} run provision "$0" "$@"
fi

# shellcheck source=/dev/null
. {{ c.PLATFORM_ETC }}/platform.env
# shellcheck source=common.sh
. /usr/local/lib/platform/common.sh
# shellcheck source=hardening.sh
. {{ c.HARDENING_LIBRARY }}
# shellcheck source=role.sh
. /usr/local/lib/platform/role.sh

main() {
    trap 'on_failure $LINENO "$BASH_COMMAND"' ERR
    log "provisioning role ${PLATFORM_ROLE} of stack ${PLATFORM_STACK}"
    common_steps
    step "role ${PLATFORM_ROLE}"
    role_steps
    rm -f "{{ c.PROVISION_FAILED_MARKER }}"
    date -u +%FT%TZ > "{{ c.PROVISIONED_MARKER }}"
    log "provisioning finished: ${CHANGES} change(s)"
}

on_failure() {
    local line=$1 command=$2
    trap - ERR
    log "provisioning FAILED in step '${CURRENT_STEP}': '${command}' failed (line ${line}); see {{ c.PROVISION_LOG }}"
    # The failure marker says what failed, for whoever looks first (and platform-push).
    printf '%s step=%s command=%s\n' "$(date -u +%FT%TZ)" "${CURRENT_STEP}" "${command}" \
        > "{{ c.PROVISION_FAILED_MARKER }}"
    rm -f "{{ c.PROVISIONED_MARKER }}"
    exit 1
}

mkdir -p "$(dirname "{{ c.PROVISION_LOG }}")" "{{ c.PLATFORM_STATE }}"
# A pipeline, not `exec > >(tee ...)`: the script ends only after tee has passed the last
# line on, which a caller that stops what is left when the script exits (a systemd unit)
# would otherwise never see.
main "$@" 2>&1 | tee -a "{{ c.PROVISION_LOG }}"
