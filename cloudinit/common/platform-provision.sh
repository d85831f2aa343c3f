#!/bin/bash
# Makes this droplet a working member of its role. Safe to run again: it installs what
# is missing, installs config files that differ and restarts only what changed, then
# says how many changes it made.
set -Eeuo pipefail

# shellcheck source=/dev/null
. {{ c.PLATFORM_ETC }}/platform.env
# shellcheck source=common.sh
. /usr/local/lib/platform/common.sh
# shellcheck source=/dev/null
. /usr/local/lib/platform/role.sh

main() {
    mkdir -p "$(dirname "{{ c.PROVISION_LOG }}")" "{{ c.PLATFORM_STATE }}"
    exec > >(tee -a "{{ c.PROVISION_LOG }}") 2>&1
    trap 'on_failure $LINENO' ERR
    rm -f "{{ c.PROVISION_FAILED_MARKER }}"
    log "provisioning role ${PLATFORM_ROLE} of stack ${PLATFORM_STACK}"
    common_steps
    role_steps
    date -u +%FT%TZ > "{{ c.PROVISIONED_MARKER }}"
    log "provisioning finished: ${CHANGES} change(s)"
}

on_failure() {
    log "provisioning FAILED at line $1"
    date -u +%FT%TZ > "{{ c.PROVISION_FAILED_MARKER }}"
    exit 1
}

main "$@"
