#!/bin/bash
# One app server out of the LB's pool and back, so its apps can restart without cutting a
# request (deploy restart runs it as ops):
#   platform-drain on ADDRESS    its upstream line gets `down`, nginx reloads, and this
#                                waits until the workers from before the reload are gone
#                                (each finishes the requests it sent there first);
#                                one already out: nothing to do
#   platform-drain off ADDRESS   `down` goes, nginx reloads
#   platform-drain status        the drained addresses, one per line
#   platform-drain for-push ADDRESS    around an app server's bundle and certificate
#   platform-drain after-push ADDRESS  pushes (the program runs them), whose nginx reload
#                                could cut a request the LB sends on a closing kept-alive
#                                connection: `on` and `off` where they apply. Nothing
#                                to drain (not in the pool yet, the only server the LB
#                                sends to) is no failure, a wait that runs out neither
#                                (the reload would cut those requests anyway), and
#                                `after-push` puts back only a server that `for-push`
#                                took out: one drained by hand stays out.
#   platform-drain keep          the first check of a push of the upstreams file (a new
#                                pool, written without marks): the addresses drained before
#                                and still in the pool are marked `down` again, before
#                                nginx reads it; the push reloads nginx
#   platform-drain record        a push's step after that reload: the addresses marked
#                                `down` now are the drained ones
# Which addresses are drained is also kept apart from the upstreams file, for `keep`, and
# written only once nginx runs with them: a push that nginx -t refuses, whose old file
# platform-push puts back, leaves the list as it was. A change holds the droplet lock, as
# pushes do.
set -euo pipefail

upstreams={{ c.LB_UPSTREAMS_FILE }}
drained={{ c.DRAINED_FILE }}
pushing={{ c.DRAINED_FOR_PUSH_DIR }}
port={{ c.APP_TLS_PORT }}
wait_seconds={{ c.DRAIN_WAIT_SECONDS }}

usage() {
    echo "usage: platform-drain on|off|for-push|after-push ADDRESS | status | keep | record" >&2
    exit 2
}

# The pool's server lines: "ADDRESS up" or "ADDRESS down" (the placeholder of an empty
# pool, on 127.0.0.1, is none).
pool() {
    sed -nE "s/^\s*server ([0-9.]+):$port\b.*\bdown;\s*$/\1 down/p; t; s/^\s*server ([0-9.]+):$port\b.*;\s*$/\1 up/p" \
        "$upstreams" | grep -v '^127\.'
}

marked_down() { pool | awk '$2 == "down" { print $1 }'; }
is_down() { marked_down | grep -qxF "$1"; }
in_pool() { pool | awk -v a="$1" '$1 == a { found = 1 } END { exit !found }'; }
# Another server than $1 still gets requests.
other_up() { pool | awk -v a="$1" '$1 != a && $2 == "up" { up = 1 } END { exit !up }'; }

# Writes stdin to $1 as platform-write does (only if it differs), keeping its mode and owner.
put() {
    if [ -e "$1" ]; then
        {{ c.WRITE_COMMAND }} "$1" "$(stat -c %a "$1")" "$(stat -c %U:%G "$1")" >/dev/null
    else
        {{ c.WRITE_COMMAND }} "$1" 644 root:root >/dev/null
    fi
}

# ADDRESS's upstream line with `down` (on) or without (off).
mark() {
    local line="^(\s*server ${1//./\\.}:$port\b.*)" edit changed
    if [ "$2" = on ]; then
        edit="/\bdown;\s*$/! s/$line;\s*$/\1 down;/"
    else
        edit="s/$line down;\s*$/\1;/"
    fi
    changed=$(sed -E "$edit" "$upstreams")
    printf '%s\n' "$changed" | put "$upstreams"
}

# The drained list: the addresses marked down in the upstreams file nginx runs with.
record() { marked_down | put "$drained"; }

keep() {
    local address addresses
    [ -s "$drained" ] || return 0
    mapfile -t addresses < "$drained"
    for address in "${addresses[@]}"; do
        if ! in_pool "$address"; then
            rm -f "$pushing/$address"
            echo "platform-drain: $address left the pool: no longer drained"
        elif ! other_up "$address"; then
            echo "platform-drain: $address is back in the pool: the only app server the LB would send requests to" >&2
        else
            mark "$address" on
            echo "platform-drain: $address is still drained"
        fi
    done
}

case "${1:-}" in
    status)
        marked_down
        exit 0
        ;;
    keep | record) [ $# -eq 1 ] || usage ;;
    on | off | for-push | after-push) [ $# -eq 2 ] || usage ;;
    *) usage ;;
esac
action=$1 address=${2:-}

if ! {{ c.LOCK_COMMAND }} held; then
    exec {{ c.LOCK_COMMAND }} run "drain $action $address" "$0" "$@"
fi
if [ "$action" = keep ] || [ "$action" = record ]; then
    "$action"
    exit 0
fi

# Already out (drained by hand, or by a push that failed after its drain): no reload, no
# worker to wait for; `after-push` leaves it out.
if { [ "$action" = on ] || [ "$action" = for-push ]; } && is_down "$address"; then
    echo "$address: already out of the LB's pool"
    exit 0
fi

# A push's drain: on or off where they apply, nothing where there is nothing to do.
for_push=
if [ "$action" = for-push ]; then
    if ! in_pool "$address"; then
        echo "$address: not in the LB's pool yet: nothing to drain for its push"
        exit 0
    elif ! other_up "$address"; then
        echo "$address: not drained for its push: the only app server the LB sends requests to"
        exit 0
    fi
    mkdir -p "$pushing"
    touch "$pushing/$address"
    action=on for_push=yes
elif [ "$action" = after-push ]; then
    if [ ! -e "$pushing/$address" ]; then
        echo "$address: not drained for its push: left as it is"
        exit 0
    fi
    if ! is_down "$address"; then
        rm "$pushing/$address"
        echo "$address: not marked down: nothing to put back"
        exit 0
    fi
    action=off
fi

if ! in_pool "$address"; then
    echo "platform-drain: $address is not in the LB's pool (it has: $(pool | awk '{ print $1 }' | xargs))" >&2
    exit 2
fi
if [ "$action" = on ] && ! other_up "$address"; then
    echo "platform-drain: refused: $address is the only app server the LB sends requests to" >&2
    exit 2
fi

before=$(mktemp)
trap 'rm -f "$before"' EXIT
cp -p "$upstreams" "$before"
workers=$(pgrep -P "$(cat /run/nginx.pid)" || true)
mark "$address" "$action"
if ! nginx -t -q; then
    put "$upstreams" <"$before"
    echo "platform-drain: nginx -t refused the changed upstreams: put back as they were" >&2
    exit 1
fi
{{ c.NGINX_RELOAD_COMMAND }}
record

if [ "$action" = off ]; then
    rm -f "$pushing/$address"
    echo "$address: in the pool"
    exit 0
fi
# The workers started before the reload may still send it requests; each leaves once
# its own are answered. The new ones never send it any.
start=$SECONDS
said=
for pid in $workers; do
    while kill -0 "$pid" 2>/dev/null; do
        if [ -z "$said" ] && [ $((SECONDS - start)) -ge 2 ]; then
            # A wait says what it waits for (pulumi-command shows it as the command's status).
            echo "$address: marked down; waiting up to ${wait_seconds}s for the LB's workers from before the reload," \
                "which may still be answering its requests"
            said=1
        fi
        if [ $((SECONDS - start)) -ge "$wait_seconds" ]; then
            echo "platform-drain: $address is marked down, but nginx workers from before still run after" \
                "${wait_seconds}s (long requests or websockets to the pool): $(pgrep -P "$(cat /run/nginx.pid)" |
                    grep -cxF "$workers") of them" >&2
            # A push goes on: its reload would cut those requests whether it waits or not.
            [ -n "$for_push" ] || exit 1
            echo "platform-drain: its push goes on" >&2
            exit 0
        fi
        sleep 0.2
    done
done
echo "$address: drained in $((SECONDS - start))s"
