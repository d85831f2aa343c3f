# shellcheck shell=bash
# The load balancer's steps, run by platform-provision after the common ones.

{% include "common/nginx_steps.sh" %}

LB_CERT_DIR={{ c.TLS_DIR }}/public
SELF_SIGNED_CERT=${LB_CERT_DIR}/self-signed.crt
SELF_SIGNED_KEY=${LB_CERT_DIR}/self-signed.key

role_steps() {
    ensure_packages nginx certbot openssl
    hold_nginx_files
    remove_default_site
    install_configs /etc/logrotate.d/
    install_configs /etc/nginx/
    install_configs {{ c.MAINTENANCE_ROOT }}/
    install_configs /etc/systemd/system/
    mkdir -p {{ c.ACME_WEBROOT }} "$(dirname {{ c.LB_UPSTREAMS_FILE }})"
    ensure_initial_upstreams
    remove_resolver_file
    ensure_temporary_certificate
    ensure_placeholder_ca
    # A reload: a changed domain must not drop the requests in flight.
    apply_nginx_files
    if files_changed_under /etc/systemd/system/; then systemctl daemon-reload; fi
    # certbot runs from a timer that retries until it has the certificate, so an ACME
    # server that cannot reach us yet (DNS not pointed) never fails provisioning.
    ensure_running {{ facts.CERTIFICATE_UNIT }}.timer
    ensure_running certbot.timer
    ensure_certificate_asked
}

# The certificate in place is not for DOMAIN and DOMAIN_ALIASES from ACME_DIRECTORY (first
# boot, or one of them changed): ask now rather than at the timer's next try. The one in place serves
# until the new one exists. Not a change: it is asked again until certbot has it.
ensure_certificate_asked() {
    {{ c.CERTIFICATE_COMMAND }} current && return 0
    log "the certificate is not yet for ${DOMAIN} ${DOMAIN_ALIASES} from ${ACME_DIRECTORY}: started {{ facts.CERTIFICATE_UNIT }}"
    systemctl start --no-block {{ facts.CERTIFICATE_UNIT }}.service
}

# Before the first push there is no pool: an upstream that sends everyone to the
# maintenance page. Later pushes own this file; provisioning never rewrites it.
ensure_initial_upstreams() {
    [ -f {{ c.LB_UPSTREAMS_FILE }} ] && return 0
    cat > {{ c.LB_UPSTREAMS_FILE }} <<'UPSTREAMS'
{% include "load_balancer/upstreams.conf" %}
UPSTREAMS
    CHANGED_FILES+=({{ c.LB_UPSTREAMS_FILE }})
    changed "initial {{ c.LB_UPSTREAMS_FILE }}"
}

# OCSP stapling (and the resolver it needed) is gone: remove what an older bundle wrote.
remove_resolver_file() {
    [ -e {{ c.LB_RESOLVER_FILE }} ] || return 0
    rm -f {{ c.LB_RESOLVER_FILE }}
    CHANGED_FILES+=({{ c.LB_RESOLVER_FILE }})
    changed "removed {{ c.LB_RESOLVER_FILE }}"
}

# nginx must start before certbot has run: a short-lived self-signed pair behind the
# links nginx reads. platform-certificate-deployed points them at certbot's files.
ensure_temporary_certificate() {
    if [ -e {{ c.LB_PUBLIC_CERT_PATH }} ] && [ -e {{ c.LB_PUBLIC_KEY_PATH }} ]; then
        # certbot's, or a temporary one for this domain: kept (a new domain's temporary one
        # is made again; certbot's keeps serving until the new one is there).
        [ "$(readlink {{ c.LB_PUBLIC_CERT_PATH }})" != "$SELF_SIGNED_CERT" ] && return 0
        [[ "$(openssl x509 -noout -checkhost "$DOMAIN" -in "$SELF_SIGNED_CERT")" == *" does match "* ]] && return 0
    fi
    install -d -m 0700 "$LB_CERT_DIR"
    # The name in subjectAltName alone: a subject's CN holds at most 64 characters, a DNS name 253.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj "/" -addext "subjectAltName=DNS:${DOMAIN}" \
        -keyout "$SELF_SIGNED_KEY" -out "$SELF_SIGNED_CERT" 2>/dev/null
    chmod 0600 "$SELF_SIGNED_KEY"
    ln -sfn "$SELF_SIGNED_CERT" {{ c.LB_PUBLIC_CERT_PATH }}
    ln -sfn "$SELF_SIGNED_KEY" {{ c.LB_PUBLIC_KEY_PATH }}
    changed "temporary self-signed certificate for ${DOMAIN}"
}

# nginx verifies the app servers against the stack's CA, and shows them its own client
# certificate from that CA, both of which only the tls push brings. Until then it reads
# placeholders: a CA whose key is thrown away at once (nothing can pass its check) and a
# self-signed pair no app server accepts; before the first upstreams push there is no
# app server anyway.
ensure_placeholder_ca() {
    if [ ! -e {{ c.SERVER_CERT_PATH }} ] || [ ! -e {{ c.SERVER_KEY_PATH }} ]; then
        install -d -m 0755 {{ c.TLS_DIR }}
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
            -subj "/CN=placeholder until the tls push" -keyout {{ c.SERVER_KEY_PATH }} -out {{ c.SERVER_CERT_PATH }} 2>/dev/null
        chmod 0600 {{ c.SERVER_KEY_PATH }}
        changed "placeholder {{ c.SERVER_CERT_PATH }} until the tls push"
    fi
    [ -e {{ c.CA_CERT_PATH }} ] && return 0
    install -d -m 0755 {{ c.TLS_DIR }}
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj "/CN=placeholder until the tls push" -keyout /dev/null -out {{ c.CA_CERT_PATH }} 2>/dev/null
    chmod 0644 {{ c.CA_CERT_PATH }}
    changed "placeholder {{ c.CA_CERT_PATH }} until the tls push"
}
