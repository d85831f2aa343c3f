# shellcheck shell=bash
# The server side of `python -m deploy`, sent on stdin with each command (`bash -s -- ACTION
# ARGS`), after a prelude of facts from model/ (conventions, the app contract; deploy/commands.py
# writes it). Shipped per command rather than installed at first boot, so the tool and
# its server half always match and a change here replaces no droplet.
#
# On an app server, as the deploy user:
#   list                  one line per release: <id> <mtime> [current] [previous]
#   accept ID             ID.partial (the rsync target) becomes the release ID
#   switch ID             point `current` at release ID, atomically
#   contract ID           release ID's platform.json (the app contract), or nothing
#   health SECONDS        wait until /healthz answers 200 three times in a row
#   activated ID          record that ID ran healthy (what `previous` is made of)
#   prune KEEP            keep the KEEP newest releases, `current` and `previous`
#   lock HOLDER           take this server's deploy lock; refuses (exit 3) naming who holds it
#   unlock HOLDER         release the lock if HOLDER holds it
#   break-lock            remove the lock whoever holds it, saying whose it was
#   status                the current release, its declared processes, the apps' unit and
#                         processes, one /healthz
#   runtime               the Node.js version, OS and CPU the apps run on (node's own words)
#   logs LINES SINCE [FOLLOW] [PROCESS...]
#                         the apps' log lines, each as `<process>[.err] <line>`: the last
#                         LINES of each log, those since SINCE (date -d's words, or -), then
#                         with FOLLOW=follow new ones until the caller's stdin closes
set -euo pipefail

: "${RELEASES_DIR:?}" "${CURRENT_LINK:?}" "${LOCK_DIR:?}" "${CA_FILE:?}" "${HEALTH_NAME:?}" "${HEALTH_PORT:?}" "${HEALTH_URL:?}"
: "${APP_USER:?}" "${APPS_UNIT:?}" "${LOG_DIR:?}"
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

contract() {
    valid_id "$1"
    [ -d "$RELEASES_DIR/$1" ] || { echo "deploy: no release $1 on $(hostname)" >&2; exit 1; }
    if [ -r "$RELEASES_DIR/$1/$CONTRACT_FILE" ]; then cat "$RELEASES_DIR/$1/$CONTRACT_FILE"; fi
}

# One /healthz answer, status and body: `health` waits for three, this only looks.
probe() {
    curl --silent --show-error --max-time 5 --write-out '\n%{http_code}' \
        --cacert "$CA_FILE" --resolve "$HEALTH_NAME:$HEALTH_PORT:127.0.0.1" "$HEALTH_URL" 2>/dev/null || true
}

# Read by the deploy user without privilege: systemd's properties and /proc are open to all.
status() {
    local answer
    echo "release $(current_id)"
    # The processes the release declares (its contract), on one line: status names the
    # workers it sees by their scripts.
    if [ -r "$CURRENT_LINK/$CONTRACT_FILE" ]; then echo "contract $(tr -d '\n' < "$CURRENT_LINK/$CONTRACT_FILE")"; fi
    # One systemctl: it prints the properties asked for as KEY=VALUE lines, in its own order.
    local key value state=unknown pid=0 fragment="" changed
    while IFS='=' read -r key value; do
        case $key in
            ActiveState) state=${value:-unknown} ;;
            MainPID) pid=${value:-0} ;;
            FragmentPath) fragment=$value ;;
        esac
    done < <(systemctl show "$APPS_UNIT" --property=ActiveState,MainPID,FragmentPath 2>/dev/null || true)
    echo "unit $state $pid"
    # How long ago its file changed: a change after the apps started waits for their next start.
    if [ -n "$fragment" ] && changed=$(stat -c %Y -- "$fragment" 2>/dev/null); then
        echo "unitfile $(($(date +%s) - changed))"
    fi
    ps -o pid=,etimes=,args= -u "$APP_USER" 2>/dev/null | sed 's/^ */process /' || true
    answer=$(probe)
    echo "health ${answer##*$'\n'} $(printf '%s' "${answer%$'\n'*}" | tr '\n' ' ' | cut -c1-2000)"
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

# pm2 prefixes each write with `YYYY-MM-DDTHH:MM:SS: ` (the ecosystem's `time`), in the
# server's time zone, as `date` writes it; a line without one (the rest of a multi-line
# write) goes with the line before it.
since_filter() {
    if [ "$1" = - ]; then cat; return 0; fi
    local cutoff
    cutoff=$(date -d "$1" +%Y-%m-%dT%H:%M:%S) || { echo "deploy: --since: date cannot read '$1'" >&2; exit 2; }
    awk -v cutoff="$cutoff" '
        /^[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]: / { keep = substr($0, 1, 19) >= cutoff }
        keep { print; fflush() }'
}

# NAME.out.log as NAME, NAME.error.log as NAME.err.
log_tag() {
    local name=${1##*/}
    name=${name%.log}
    case "$name" in
        *.out) echo "${name%.out}" ;;
        *.error) echo "${name%.error}.err" ;;
        *) echo "$name" ;;
    esac
}

logs() {
    local lines=$1 since=$2 follow=$3 file tag
    shift 3
    case "$lines" in '' | *[!0-9]*) echo "deploy: bad line count '$lines'" >&2; exit 2 ;; esac
    if [ ! -r "$LOG_DIR" ] || [ ! -x "$LOG_DIR" ]; then
        echo "deploy: $(id -un) cannot read $LOG_DIR on $(hostname) (provisioning makes it readable to group $(id -un): pulumi up with this version)" >&2
        exit 1
    fi
    local -a files=()
    if [ "$#" -eq 0 ]; then
        for file in "$LOG_DIR"/*.log; do [ -e "$file" ] && files+=("$file"); done
    else
        for name in "$@"; do
            case "$name" in '' | *[!A-Za-z0-9_-]*) echo "deploy: bad process name '$name'" >&2; exit 2 ;; esac
            for file in "$LOG_DIR/$name.out.log" "$LOG_DIR/$name.error.log"; do [ -e "$file" ] && files+=("$file"); done
        done
    fi
    [ "${#files[@]}" -gt 0 ] || { echo "deploy: no logs in $LOG_DIR on $(hostname) for: ${*:-any process}" >&2; exit 1; }
    if [ "$follow" != follow ]; then
        for file in "${files[@]}"; do
            tag=$(log_tag "$file")
            tail -n "$lines" -- "$file" | since_filter "$since" | sed "s/^/$tag /"
        done
        return 0
    fi
    for file in "${files[@]}"; do
        tag=$(log_tag "$file")
        # -F: logrotate copies and truncates; tail follows on from the start.
        tail -n "$lines" -F -- "$file" 2>/dev/null | since_filter "$since" | sed -u "s/^/$tag /" &
    done
    # Until the caller goes: its ssh closing ends our stdin (the script came on it).
    while read -r _; do :; done
    # Gone before we end: the caller's next command (or a test) finds no tail running.
    pkill -P "$$" || true
    wait
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
    contract) contract "$1" ;;
    health) health "$1" ;;
    activated) activated "$1" ;;
    prune) prune "$1" ;;
    lock) lock "$1" ;;
    unlock) unlock "$1" ;;
    break-lock) break_lock ;;
    status) status ;;
    runtime) node -p 'process.version + " " + process.platform + " " + process.arch' ;;
    logs) logs "$@" ;;
    *) echo "deploy: unknown action '$action'" >&2; exit 2 ;;
esac
