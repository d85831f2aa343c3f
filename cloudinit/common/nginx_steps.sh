# nginx's steps, shared by the roles that run it (the LB and the app servers): their
# provision.sh includes this file.

# Debian's and Ubuntu's default nginx site claims port 80 as default_server.
remove_default_site() {
    [ -e /etc/nginx/sites-enabled/default ] || return 0
    rm -f /etc/nginx/sites-enabled/default
    CHANGED_FILES+=(/etc/nginx/sites-enabled/default)
    changed "removed nginx's default site"
}

# nginx's files as they were before this run changed any (hold_nginx_files first), so
# that files nginx -t refuses are not left in place: put back, they are those nginx runs
# with, and the restore of the previous bundle has no reload to make. A reload under
# traffic is not free: the old workers close their idle kept-alive connections, and the
# LB may be sending a POST on one (a 502 it may not send again elsewhere).
NGINX_HELD={{ c.PLATFORM_STATE }}/nginx-before-this-run

hold_nginx_files() {
    rm -rf "$NGINX_HELD"
    cp -a /etc/nginx "$NGINX_HELD"
}

# nginx -t on the files this run changed (refused: put back, and the run fails naming
# the check), then nginx reloaded with them, or started. The steps after a reload meet the
# new files: the LB asks for a certificate for a name the new files have just added.
apply_nginx_files() {
    if files_changed_under /etc/nginx/ && ! nginx -t -q; then
        put_back_nginx_files
        on_failure "$LINENO" "nginx -t -q"
    fi
    if systemctl is-active --quiet nginx && files_changed_under /etc/nginx/; then
        {{ c.NGINX_RELOAD_COMMAND }}
        changed "nginx: reload"
    fi
    ensure_running nginx
    rm -rf "$NGINX_HELD"
}

put_back_nginx_files() {
    local path held
    for path in "${CHANGED_FILES[@]}"; do
        case "$path" in /etc/nginx/*) ;; *) continue ;; esac
        held=${NGINX_HELD}${path#/etc/nginx}
        rm -f "$path"
        if [ -e "$held" ] || [ -L "$held" ]; then cp -a "$held" "$path"; fi
        log "put back as it was: $path"
    done
}
