#!/bin/bash
# Gets the load balancer's public certificate from the ACME directory: the first one, and
# a new one when `domain`, `domainAliases` or `acmeDirectory` changed. Run by platform-certificate.timer
# (and by provisioning after a settings change) until the certificate in place is the one
# the settings ask for; certbot.timer renews it afterwards. Until certbot has the new
# certificate, nginx keeps serving the one in place: only the deploy hook switches it.
#   platform-certificate current   exit 0 when the certificate in place is as asked
{% if settings.backups %}
# A rebuilt LB first takes its certificate back from its backups: Let's Encrypt issues
# only 5 duplicate certificates a week.
{% endif %}
set -euo pipefail

# One change to the droplet at a time. A run the timer starts while provisioning changes
# the settings and nginx's files waits for it, then reads both as provisioning left them:
# it had read a name just added before nginx served it, and the ACME server's check of
# that name failed. Provisioning's own calls run inside its hold.
if ! {{ c.LOCK_COMMAND }} held; then
    exec {{ c.LOCK_COMMAND }} run certificate "$0" "$@"
fi

# shellcheck source=/dev/null
. {{ c.PLATFORM_ETC }}/platform.env

live_dir=/etc/letsencrypt/live/{{ c.LB_CERT_NAME }}
renewal=/etc/letsencrypt/renewal/{{ c.LB_CERT_NAME }}.conf
# The e-mail address the ACME account was last given (ACME_EMAIL), per ACME directory.
account_email={{ c.PLATFORM_STATE }}/acme-account-email
# Every name the certificate must carry: DOMAIN first (certbot makes it the subject).
read -ra aliases <<< "${DOMAIN_ALIASES:-}"
names=("$DOMAIN" "${aliases[@]}")

# The names a certificate carries, one a line, sorted.
certificate_names() {
    openssl x509 -noout -ext subjectAltName -in "$1" | tail -n +2 | tr ',' '\n' | sed -n 's/^ *DNS://p' | sort -u
}

# For exactly DOMAIN and DOMAIN_ALIASES (an alias removed is a new certificate too), and
# from ACME_DIRECTORY (certbot renews from the server it was issued by).
certificate_is_current() {
    [ -f "${live_dir}/fullchain.pem" ] || return 1
    [ "$(certificate_names "${live_dir}/fullchain.pem")" = "$(printf '%s\n' "${names[@]}" | sort -u)" ] \
        && grep -qxF "server = ${ACME_DIRECTORY}" "$renewal"
}

# A changed acmeEmail: the account at the ACME server is told (expiry notices go there).
# At a directory with no account yet, certonly registers one with ACME_EMAIL.
ensure_account_email() {
    local wanted="${ACME_DIRECTORY} ${ACME_EMAIL}" recorded
    recorded=$(cat "$account_email" 2>/dev/null || true)
    [ "$recorded" = "$wanted" ] && return 0
    if [ "${recorded%% *}" = "$ACME_DIRECTORY" ]; then
        certbot update_account --server "$ACME_DIRECTORY" --email "$ACME_EMAIL" --no-eff-email --non-interactive
    fi
    mkdir -p "$(dirname "$account_email")"
    printf '%s\n' "$wanted" > "$account_email"
}

if [ "${1:-}" = current ]; then
    certificate_is_current
    exit
fi

if certificate_is_current; then
    ensure_account_email
    # Already issued: make sure nginx reads it (a crash between issue and hook).
    if [ "$(readlink {{ c.LB_PUBLIC_CERT_PATH }})" != "${live_dir}/fullchain.pem" ]; then
        RENEWED_LINEAGE=$live_dir exec {{ c.CERTIFICATE_DEPLOY_HOOK }}
    fi
    exit 0
fi

renew=()
if [ -f "${live_dir}/fullchain.pem" ]; then
    # New names or a new ACME server: a new certificate in the same lineage, asked for now
    # (certbot would otherwise keep an unexpired one from the old server). --cert-name
    # with the whole list of names replaces the lineage's names, added and removed alike.
    echo "platform-certificate: the certificate in place is not for ${names[*]} from ${ACME_DIRECTORY}; asking for a new one (the one in place serves until then)"
    renew=(--force-renewal)
else
{% if settings.backups %}
    if [ ! -r {{ c.BACKUP_SECRETS_FILE }} ]; then
        echo "platform-certificate: waiting for the backup push before asking for a certificate (this LB may have one in its backups)"
        exit 0
    fi
    restored=0
    {{ c.RESTORE_COMMAND }} certificates || restored=$?
    if [ "$restored" -eq 0 ]; then
        RENEWED_LINEAGE=$live_dir exec {{ c.CERTIFICATE_DEPLOY_HOOK }}
    fi
    # 3: none in the backups. Otherwise the backups could not be read: a new certificate
    # beats serving none.
    [ "$restored" -eq 3 ] || echo "platform-certificate: the backups could not be read (exit $restored); asking for a new certificate" >&2
{% else %}
    : # no backups: straight to the ACME server
{% endif %}
fi

ensure_account_email
domains=()
for name in "${names[@]}"; do domains+=(--domain "$name"); done
exec certbot certonly --webroot --webroot-path {{ c.ACME_WEBROOT }} \
    --cert-name {{ c.LB_CERT_NAME }} "${domains[@]}" \
    --server "$ACME_DIRECTORY" --email "$ACME_EMAIL" --agree-tos --no-eff-email \
    --non-interactive --keep-until-expiring "${renew[@]}" \
    --deploy-hook {{ c.CERTIFICATE_DEPLOY_HOOK }}
