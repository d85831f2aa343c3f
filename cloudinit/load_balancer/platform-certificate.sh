#!/bin/bash
# Gets the load balancer's public certificate from the ACME directory, once. Run by
# platform-certificate.timer until it succeeds; certbot.timer renews it afterwards.
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

exec certbot certonly --webroot --webroot-path {{ c.ACME_WEBROOT }} \
    --cert-name {{ c.LB_CERT_NAME }} --domain "$DOMAIN" \
    --server "$ACME_DIRECTORY" --email "$ACME_EMAIL" --agree-tos --no-eff-email \
    --non-interactive --keep-until-expiring \
    --deploy-hook {{ c.CERTIFICATE_DEPLOY_HOOK }}
