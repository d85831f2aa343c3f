#!/bin/bash
# certbot's deploy hook (first issue and every renewal): points nginx at the new
# certificate and reloads it gracefully, only if nginx accepts the result.
set -euo pipefail

# One change to the droplet at a time: a renewal (certbot.timer) waits for a push or
# provisioning to finish with nginx's files before it reloads nginx. A hook run by
# platform-certificate runs inside that run's hold.
if ! {{ c.LOCK_COMMAND }} held; then
    exec {{ c.LOCK_COMMAND }} run certificate-renewal "$0" "$@"
fi

lineage=${RENEWED_LINEAGE:?certbot sets RENEWED_LINEAGE}
old_cert=$(readlink {{ c.LB_PUBLIC_CERT_PATH }} || true)
old_key=$(readlink {{ c.LB_PUBLIC_KEY_PATH }} || true)

ln -sfn "${lineage}/fullchain.pem" {{ c.LB_PUBLIC_CERT_PATH }}
ln -sfn "${lineage}/privkey.pem" {{ c.LB_PUBLIC_KEY_PATH }}
if ! nginx -t -q; then
    # Keep serving what worked; certbot reports the hook's failure.
    [ -n "$old_cert" ] && ln -sfn "$old_cert" {{ c.LB_PUBLIC_CERT_PATH }}
    [ -n "$old_key" ] && ln -sfn "$old_key" {{ c.LB_PUBLIC_KEY_PATH }}
    echo "platform-certificate-deployed: nginx -t failed; kept the previous certificate" >&2
    exit 1
fi
{{ c.NGINX_RELOAD_COMMAND }}
{% if settings.backups %}
# A new certificate is in the backups within minutes, not at the next backup hour.
systemctl start --no-block {{ c.BACKUP_UNIT }}.service
{% endif %}
