#!/bin/bash
# One app server out of the LB's pool and back, so its apps can restart without cutting a
# request (deploy restart runs it as ops):
#   platform-drain on ADDRESS    its upstream line gets `down`, nginx reloads, and this
#                                waits until the workers from before the reload are gone
#                                (each finishes the requests it sent there first)
#   platform-drain off ADDRESS   `down` goes, nginx reloads
#   platform-drain status        the drained addresses, one per line
# The upstreams file is the one platform-push writes when the pool changes: such a push
# puts every server back in the pool. A change holds the droplet lock, as pushes do.
set -euo pipefail

upstreams={{ c.LB_UPSTREAMS_FILE }}
port={{ c.APP_TLS_PORT }}
wait_seconds={{ c.DRAIN_WAIT_SECONDS }}

usage() {
    echo "usage: platform-drain on ADDRESS | off ADDRESS | status" >&2
    exit 2
}

# The pool's server lines: "ADDRESS up" or "ADDRESS down" (the placeholder of an empty
# pool, on 127.0.0.1, is none).
pool() {
    sed -nE "s/^\s*server ([0-9.]+):$port\b.*\bdown;\s*$/\1 down/p; t; s/^\s*server ([0-9.]+):$port\b.*;\s*$/\1 up/p" \
        "$upstreams" | grep -v '^127\.'
}

case "${1:-}" in
    status)
        pool | awk '$2 == "down" { print $1 }'
        exit 0
        ;;
    on | off) [ $# -eq 2 ] || usage ;;
    *) usage ;;
esac
action=$1 address=$2

if ! {{ c.LOCK_COMMAND }} held; then
    exec {{ c.LOCK_COMMAND }} run "drain $action $address" "$0" "$@"
fi

if ! pool | awk -v a="$address" '$1 == a { found = 1 } END { exit !found }'; then
    echo "platform-drain: $address is not in the LB's pool (it has: $(pool | awk '{ print $1 }' | xargs))" >&2
    exit 2
fi
if [ "$action" = on ] && ! pool | awk -v a="$address" '$1 != a && $2 == "up" { up = 1 } END { exit !up }'; then
    echo "platform-drain: refused: $address is the only app server the LB sends requests to" >&2
    exit 2
fi

line="^(\s*server ${address//./\\.}:$port\b.*)"
if [ "$action" = on ]; then
    edit="/\bdown;\s*$/! s/$line;\s*$/\1 down;/"
else
    edit="s/$line down;\s*$/\1;/"
fi
before=$(mktemp)
trap 'rm -f "$before"' EXIT
cp "$upstreams" "$before"
put() { {{ c.WRITE_COMMAND }} "$upstreams" "$(stat -c %a "$before")" "$(stat -c %U:%G "$before")" >/dev/null; }
workers=$(pgrep -P "$(cat /run/nginx.pid)" || true)
sed -E "$edit" "$before" | put
if ! nginx -t -q; then
    put <"$before"
    echo "platform-drain: nginx -t refused the changed upstreams: put back as they were" >&2
    exit 1
fi
systemctl reload nginx

if [ "$action" = off ]; then
    echo "$address: in the pool"
    exit 0
fi
# The workers started before the reload may still send it requests; each leaves once
# its own are answered. The new ones never send it any.
start=$SECONDS
for pid in $workers; do
    while kill -0 "$pid" 2>/dev/null; do
        if [ $((SECONDS - start)) -ge "$wait_seconds" ]; then
            echo "platform-drain: $address is marked down, but nginx workers from before still run after" \
                "${wait_seconds}s (long requests or websockets to the pool): $(pgrep -P "$(cat /run/nginx.pid)" |
                    grep -cxF "$workers") of them" >&2
            exit 1
        fi
        sleep 0.2
    done
done
echo "$address: drained in $((SECONDS - start))s"
