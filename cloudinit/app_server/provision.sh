# shellcheck shell=bash
# An app server's steps, run by platform-provision after the common ones.

{% include "common/nginx_steps.sh" %}

NODESOURCE_PIN=/etc/apt/preferences.d/nodesource
# Where ensure_apt_repository puts the `nodesource` sources.
NODESOURCE_SOURCES=/etc/apt/sources.list.d/nodesource.sources
# NodeSource's repository signing key, as published by NodeSource.
NODESOURCE_KEY_FINGERPRINT=6F71F525282841EEDAF851B42F59B5F99B1BE0B4
NODESOURCE_URL=https://deb.nodesource.com
# The Node.js major this run replaced with nodeMajor (empty: none was replaced).
NODE_REPLACED=

role_steps() {
    # rsync receives releases from `python -m deploy`; curl is its health check.
    ensure_packages nginx openssl sudo rsync curl
    ensure_node
    ensure_pm2
    ensure_release_layout
    hold_nginx_files
    remove_default_site
    visudo -cqf "${STAGED_FILES}/etc/sudoers.d/platform-deploy"
    bash -n "${STAGED_FILES}{{ facts.NEEDRESTART_APPS_RELOAD }}"
    install_configs /etc/sudoers.d/
    install_configs /etc/needrestart/
    install_configs /etc/logrotate.d/
    install_configs /etc/nginx/
    install_configs {{ c.APP_ROOT }}/
    install_configs /etc/systemd/system/
    ensure_temporary_certificate
    apply_nginx_files
    if files_changed_under /etc/systemd/system/; then systemctl daemon-reload; fi
    # pm2-runtime is the apps' pm2: restarting it would stop every app on this server at
    # once, so a change to its unit (its command, its environment) waits for its next start.
    if files_changed_under {{ facts.APPS_UNIT_FILE }} && systemctl is-active --quiet {{ c.APPS_UNIT }}; then
        log "{{ c.APPS_UNIT }}.service changed: the running apps keep the unit they started with until it next" \
            "starts (python -m deploy restart STACK: one server at a time, each out of the LB's pool meanwhile)"
    fi
    ensure_enabled {{ c.APPS_UNIT }}
    # Before the first release there is nothing to run (the unit's condition says so).
    if [ -L {{ c.CURRENT_RELEASE_LINK }} ]; then
        local counted=$CHANGES
        # A changed ecosystem file is applied by the graceful reload: no request fails.
        ensure_running {{ c.APPS_UNIT }} {{ c.APP_ROOT }}/ reload
        # Left running on the replaced node (neither started nor restarted just now).
        if [ -n "$NODE_REPLACED" ] && [ "$CHANGES" -eq "$counted" ]; then reload_apps_on_new_node; fi
    fi
}

# The distribution's Node.js when it is the major asked for, NodeSource's otherwise. A
# changed nodeMajor is installed over the running one, up or down, in place.
ensure_node() {
    local installed
    installed=$(node_major)
    if [ "$installed" = "$NODE_MAJOR" ]; then return 0; fi
    apt_lists_ready
    remove_other_nodesource_repository
    # A NodeSource repository left now is the asked major's (a run that failed after adding it).
    if [ ! -e "$NODESOURCE_SOURCES" ] && [ "$(candidate_major)" = "$NODE_MAJOR" ]; then
        install_node nodejs npm
    else
        ensure_nodesource_repository
        install_node nodejs  # NodeSource's package carries npm
    fi
    [ "$(node_major)" = "$NODE_MAJOR" ] || {
        log "node $(node -v) is installed, but nodeMajor is ${NODE_MAJOR}"
        return 1
    }
    NODE_REPLACED=$installed
}

# The installed node's major; empty when there is none.
node_major() {
    local version
    version=$(node -v 2>/dev/null) || return 0
    version=${version#v}
    printf '%s\n' "${version%%.*}"
}

# The major of the nodejs package apt would install now.
candidate_major() {
    apt-cache policy nodejs | awk '/Candidate:/ { print $2 }' | sed -E 's/^[0-9]+://; s/^([0-9]+).*/\1/'
}

# NodeSource's repository of another major goes, with its pin: else its nodejs stays the
# candidate (over the distribution's too). apt reads only the lists of the sources it has,
# so no update is needed; the signing key, the same for every major, stays.
remove_other_nodesource_repository() {
    [ -e "$NODESOURCE_SOURCES" ] || [ -e "$NODESOURCE_PIN" ] || return 0
    if grep -qx "URIs: ${NODESOURCE_URL}/node_${NODE_MAJOR}.x" "$NODESOURCE_SOURCES" 2>/dev/null; then return 0; fi
    rm -f "$NODESOURCE_SOURCES" "$NODESOURCE_PIN"
    changed "removed NodeSource's repository of another Node.js major"
}

# The candidate, whether another major is installed or not, and also when it is older
# (ensure_packages would leave an installed nodejs as it is).
install_node() {
    DEBIAN_FRONTEND=noninteractive apt_get install -y -q --no-install-recommends --allow-downgrades \
        -o Dpkg::Options::=--force-confold "$@"
    changed "installed $* (node $(node -v))"
}

# pm2's graceful reload (the unit's ExecReload): it starts each worker anew from the node
# now on disk and stops the old one once the new one is ready, so no request fails. pm2's
# own daemon keeps the node it started with until the unit next restarts.
reload_apps_on_new_node() {
    systemctl reload {{ c.APPS_UNIT }}
    changed "{{ c.APPS_UNIT }} reloaded onto node ${NODE_MAJOR} (was ${NODE_REPLACED})"
}

ensure_nodesource_repository() {
    ensure_apt_repository nodesource "${NODESOURCE_URL}/gpgkey/nodesource-repo.gpg.key" \
        "$NODESOURCE_KEY_FINGERPRINT" "Types: deb
URIs: ${NODESOURCE_URL}/node_${NODE_MAJOR}.x
Suites: nodistro
Components: main"
    # NodeSource's nodejs must win over the distribution's older one.
    local pin='Package: nodejs
Pin: origin deb.nodesource.com
Pin-Priority: 600'
    write_file "$NODESOURCE_PIN" 0644 root:root <<<"$pin"
}

ensure_pm2() {
    # The installed package's own version: running `pm2 --version` first prints pm2's
    # first-run banner instead, which read as "not installed" once (a needless reinstall).
    local package={{ c.PM2_BIN_DIR }}/../lib/node_modules/pm2/package.json
    if [ -x {{ c.PM2_BIN_DIR }}/pm2 ] && [ "$(node -p "require('$package').version.split('.')[0]" 2>/dev/null)" = "{{ c.PM2_MAJOR }}" ]; then
        return 0
    fi
    npm install --global --prefix /usr/local --no-fund --no-audit "pm2@{{ c.PM2_MAJOR }}"
    changed "pm2 {{ c.PM2_MAJOR }}"
}

# releases/ (with `current` in it) belongs to deploy, and group app reads it; the app root
# is root's alone: deploy can place nothing where provisioning works as root (a link
# there, followed by a root command, would hand deploy its target).
ensure_release_layout() {
    ensure_dir {{ c.APP_ROOT }} 0755 root:root
    ensure_dir {{ c.RELEASES_DIR }} 2750 {{ c.DEPLOY_USER }}:{{ c.APP_USER }}
    move_current_link
    ensure_dir "$(dirname {{ c.APP_ENV_FILE }})" 0750 root:{{ c.APP_USER }}
    ensure_dir {{ c.PM2_HOME }} 0700 {{ c.APP_USER }}:{{ c.APP_USER }}
    # The apps' logs: group deploy reads them (`python -m deploy logs`), and only them;
    # new files (logrotate's) keep the group.
    ensure_dir {{ c.PM2_LOG_DIR }} 2750 {{ c.APP_USER }}:{{ c.DEPLOY_USER }}
}

# `current` moved from the app root into releases/: the release it named stays current.
# The new link is made by deploy (root writes nothing in deploy's directory); the old one
# is only removed (rm never follows a link).
move_current_link() {
    local old={{ c.OLD_CURRENT_RELEASE_LINK }} new={{ c.CURRENT_RELEASE_LINK }}
    [ -L "$old" ] || return 0
    if [ ! -L "$new" ]; then
        runuser -u {{ c.DEPLOY_USER }} -- ln -sfn "$(readlink "$old")" "$new.new"
        runuser -u {{ c.DEPLOY_USER }} -- mv -T "$new.new" "$new"
    fi
    rm -f "$old"
    changed "moved $old to $new"
}

# nginx must start before the program pushes the internal CA's certificate. It checks
# the LB's client certificate against the CA: until the push, a placeholder whose key is
# thrown away at once, so no client passes.
ensure_temporary_certificate() {
    if [ ! -e {{ c.CA_CERT_PATH }} ]; then
        install -d -m 0755 {{ c.TLS_DIR }}
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
            -subj "/CN=placeholder until the tls push" -keyout /dev/null -out {{ c.CA_CERT_PATH }} 2>/dev/null
        chmod 0644 {{ c.CA_CERT_PATH }}
        changed "placeholder {{ c.CA_CERT_PATH }} until the tls push"
    fi
    [ -e {{ c.SERVER_CERT_PATH }} ] && [ -e {{ c.SERVER_KEY_PATH }} ] && return 0
    install -d -m 0755 {{ c.TLS_DIR }}
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj "/CN=$(hostname)" -keyout {{ c.SERVER_KEY_PATH }} -out {{ c.SERVER_CERT_PATH }} 2>/dev/null
    chown root:{{ c.TLS_KEY_GROUP }} {{ c.SERVER_KEY_PATH }}
    chmod 0640 {{ c.SERVER_KEY_PATH }}
    changed "temporary self-signed certificate"
}
