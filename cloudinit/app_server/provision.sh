# shellcheck shell=bash
# An app server's steps, run by platform-provision after the common ones.

role_steps() {
    ensure_packages nginx
    install_configs /etc/nginx/
    if files_changed_under /etc/nginx/; then nginx -t -q; fi
    ensure_running nginx /etc/nginx/
}
