#!/bin/bash
# Gets the load balancer's public certificate from the ACME directory, once. Run by
# platform-certificate.timer until it succeeds; certbot.timer renews it afterwards.
{% if settings.backups %}
# A rebuilt LB first takes its certificate back from its backups: Let's Encrypt issues
# only 5 duplicate certificates a week.
{% endif %}
set -euo pipefail

# shellcheck source=/dev/null
. {{ c.PLATFORM_ETC }}/platform.env

live_dir=/etc/letsencrypt/live/{{ c.LB_CERT_NAME }}

if [ -f "${live_dir}/fullchain.pem" ]; then
    # Already issued: make sure nginx reads it (a crash between issue and hook).
    if [ "$(readlink {{ c.LB_PUBLIC_CERT_PATH }})" != "${live_dir}/fullchain.pem" ]; then
        RENEWED_LINEAGE=$live_dir exec {{ c.CERTIFICATE_DEPLOY_HOOK }}
    fi
    exit 0
fi

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

{% endif %}
exec certbot certonly --webroot --webroot-path {{ c.ACME_WEBROOT }} \
    --cert-name {{ c.LB_CERT_NAME }} --domain "$DOMAIN" \
    --server "$ACME_DIRECTORY" --email "$ACME_EMAIL" --agree-tos --no-eff-email \
    --non-interactive --keep-until-expiring \
    --deploy-hook {{ c.CERTIFICATE_DEPLOY_HOOK }}
