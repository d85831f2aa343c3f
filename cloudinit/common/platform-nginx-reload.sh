#!/bin/bash
# Reloads nginx and returns once the workers from before the reload no longer accept
# connections, so that whatever runs next meets the new files. systemctl only signals
# nginx's master; the master then starts new workers and tells the old ones to stop
# listening (they finish the requests they hold). Fails, naming what still listens, when
# that has not happened within the wait: nginx keeps its old files when it cannot load
# the new ones (error.log says why).
#   platform-nginx-reload [WAIT_SECONDS]
set -euo pipefail

wait_seconds=${1:-{{ c.NGINX_RELOAD_WAIT_SECONDS }}}
master=$(cat /run/nginx.pid)
before=$(pgrep -P "$master" | sort || true)

systemctl reload nginx

# The workers from before that still hold a listening socket (ss names every holder).
still_listening() {
    comm -12 <(printf '%s\n' "$before") <(ss -Hltnp | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u)
}
deadline=$((SECONDS + wait_seconds))
while [ -n "$(still_listening)" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "platform-nginx-reload: nginx has not taken its new files after ${wait_seconds}s: workers" \
            "$(still_listening | paste -sd ' ') from before the reload still listen (see {{ c.NGINX_ERROR_LOG }})" >&2
        exit 1
    fi
    sleep 0.1
done
