# shellcheck shell=bash
# The datastore's steps, run by platform-provision after the common ones.

role_steps() {
    mkdir -p "{{ c.DATA_MOUNT }}"
}
