# shellcheck shell=bash
# The load balancer's steps, run by platform-provision after the common ones.

role_steps() {
    ensure_packages nginx
    install_configs /etc/nginx/
    mkdir -p /etc/nginx/platform /var/www/acme
    if files_changed_under /etc/nginx/; then nginx -t -q; fi
    ensure_running nginx /etc/nginx/
}
