# shellcheck shell=bash
# The server side of `python -m deploy`, sent on stdin with each command (`bash -s -- ACTION
# ARGS`), after a prelude of facts from model/conventions.py (deploy/commands.py
# writes it). Shipped per command rather than installed at first boot, so the tool and
# its server half always match and a change here replaces no droplet.
#
# On an app server, as the deploy user:
#   list                  one line per release: <id> <mtime> [current] [previous]
#   accept ID             ID.partial (the rsync target) becomes the release ID
#   switch ID             point `current` at release ID, atomically
#   health SECONDS        wait until /healthz answers 200 three times in a row
#   activated ID          record that ID ran healthy (what `previous` is made of)
#   prune KEEP            keep the KEEP newest releases, `current` and `previous`
#   lock HOLDER           take this server's deploy lock; refuses (exit 3) naming who holds it
#   unlock HOLDER         release the lock if HOLDER holds it
#   break-lock            remove the lock whoever holds it, saying whose it was
set -euo pipefail

: "${RELEASES_DIR:?}" "${CURRENT_LINK:?}" "${LOCK_DIR:?}" "${CA_FILE:?}" "${HEALTH_NAME:?}" "${HEALTH_PORT:?}" "${HEALTH_URL:?}"
LOCKED_EXIT=3

valid_id() {
    case "$1" in
        '' | *[!A-Za-z0-9._-]* | .*) echo "deploy: bad release id: '$1'" >&2; exit 2 ;;
    esac
    # `current` lives among the releases: no release may take its name.
    case "$1" in
        "${CURRENT_LINK##*/}" | "${CURRENT_LINK##*/}.new") echo "deploy: '$1' is not a release id (the link's name)" >&2; exit 2 ;;
    esac
}

# Releases that ran healthy, oldest first: a release uploaded but never healthy (a stopped
# deploy) is newer on disk, yet never what a rollback returns to.
HISTORY="$RELEASES_DIR/.activated"

current_id() {
    if [ -L "$CURRENT_LINK" ]; then basename "$(readlink "$CURRENT_LINK")"; fi
}

# Releases oldest first: the order they were accepted in (accept touches the directory).
releases_by_age() {
    find "$RELEASES_DIR" -mindepth 1 -maxdepth 1 -type d ! -name '*.partial' -printf '%T@ %f\n' \
        | sort -n | cut -d' ' -f2
}

# The last release that ran healthy before the current one, if it is still here.
previous_id() {
    local current id
    current=$(current_id)
    [ -f "$HISTORY" ] || return 0
    while read -r id; do
        if [ "$id" != "$current" ] && [ -d "$RELEASES_DIR/$id" ]; then echo "$id"; return 0; fi
    done < <(tac "$HISTORY")
}

list() {
    local current previous id marks
    current=$(current_id)
    previous=$(previous_id)
    while read -r id; do
        [ -n "$id" ] || continue
        marks=""
        if [ "$id" = "$current" ]; then marks+=" current"; fi
        if [ "$id" = "$previous" ]; then marks+=" previous"; fi
        printf '%s %s%s\n' "$id" "$(stat -c %Y "$RELEASES_DIR/$id")" "$marks"
    done < <(releases_by_age)
}

accept() {
    valid_id "$1"
    local partial="$RELEASES_DIR/$1.partial"
    [ -d "$partial" ] || { echo "deploy: $partial is missing (upload failed?)" >&2; exit 1; }
    if [ -d "$RELEASES_DIR/$1" ]; then
        # Already here (a repeated upload): the files in use are never rewritten.
        rm -rf "$partial"
    else
        mv -T "$partial" "$RELEASES_DIR/$1"
    fi
    touch "$RELEASES_DIR/$1"
}

switch() {
    valid_id "$1"
    [ -d "$RELEASES_DIR/$1" ] || { echo "deploy: no release $1 on $(hostname)" >&2; exit 1; }
    # What ran before the first deploy (the example app) ran healthy: the history starts with it.
    if [ ! -s "$HISTORY" ] && [ -n "$(current_id)" ]; then current_id > "$HISTORY"; fi
    # A new link beside the old one, renamed over it: `current` is never missing.
    ln -sfn "$RELEASES_DIR/$1" "$CURRENT_LINK.new"
    mv -T "$CURRENT_LINK.new" "$CURRENT_LINK"
}

health() {
    local deadline=$((SECONDS + $1)) good=0 status
    while [ "$SECONDS" -lt "$deadline" ]; do
        status=$(curl --silent --output /dev/null --write-out '%{http_code}' --max-time 5 \
            --cacert "$CA_FILE" --resolve "$HEALTH_NAME:$HEALTH_PORT:127.0.0.1" "$HEALTH_URL" || true)
        if [ "$status" = 200 ]; then good=$((good + 1)); else good=0; fi
        if [ "$good" -ge 3 ]; then echo "healthy"; return 0; fi
        sleep 1
    done
    echo "deploy: $HEALTH_URL on $(hostname) did not answer 200 three times in a row within $1s (last: ${status:-none})" >&2
    exit 1
}

activated() {
    valid_id "$1"
    echo "$1" >> "$HISTORY"
    # Only the recent past matters for `previous`.
    tail -n 100 "$HISTORY" > "$HISTORY.new" && mv -T "$HISTORY.new" "$HISTORY"
}

prune() {
    local keep=$1 current previous id
    current=$(current_id)
    previous=$(previous_id)
    mapfile -t ids < <(releases_by_age)
    for ((i = 0; i < ${#ids[@]} - keep; i++)); do
        id=${ids[i]}
        if [ "$id" = "$current" ] || [ "$id" = "$previous" ]; then continue; fi
        rm -rf "${RELEASES_DIR:?}/$id"
        echo "removed $id"
    done
}

holder_of() {
    cat "$LOCK_DIR/holder" 2>/dev/null || echo "unknown (no holder file)"
}

lock() {
    local taking
    taking=$(mktemp -d "$LOCK_DIR.XXXXXX")
    printf '%s\n' "$1" > "$taking/holder"
    # rename(2) onto a non-empty directory fails: exactly one deploy gets the lock.
    if mv -T "$taking" "$LOCK_DIR" 2>/dev/null; then
        echo "locked"
        return 0
    fi
    rm -rf "$taking"
    echo "held by $(holder_of)"
    exit "$LOCKED_EXIT"
}

unlock() {
    if [ ! -d "$LOCK_DIR" ]; then return 0; fi
    if [ "$(holder_of)" != "$1" ]; then
        echo "deploy: the lock is now held by $(holder_of); leaving it" >&2
        exit 1
    fi
    rm -rf "$LOCK_DIR"
}

break_lock() {
    if [ -d "$LOCK_DIR" ]; then
        echo "removed the lock of $(holder_of)"
        rm -rf "$LOCK_DIR"
    else
        echo "no lock was held"
    fi
}

action=${1:-}
shift || true
case "$action" in
    list) list ;;
    accept) accept "$1" ;;
    switch) switch "$1" ;;
    health) health "$1" ;;
    activated) activated "$1" ;;
    prune) prune "$1" ;;
    lock) lock "$1" ;;
    unlock) unlock "$1" ;;
    break-lock) break_lock ;;
    *) echo "deploy: unknown action '$action'" >&2; exit 2 ;;
esac
