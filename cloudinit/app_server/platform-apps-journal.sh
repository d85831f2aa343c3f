#!/bin/bash
# `platform-apps-journal SINCE LINES`: the apps' unit's journal from SINCE (seconds since
# the epoch; 0 for no bound), its last LINES entries. `platform-apps-journal 0 LINES
# follow`: the last LINES, then each new entry until the caller goes. The deploy user may
# run exactly this, as root (sudoers): pm2 in cluster mode loses from its log files what a
# worker writes just before it dies (its exception included), and the journal has it
# through pm2-runtime, beside pm2's own and the reload's messages (a failed deploy shows
# them; `logs --journal`) and what an env push's failed start check saw the apps write.
set -euo pipefail

max_lines={{ facts.APPS_JOURNAL_MAX_LINES }}
if ! { [ "$#" -eq 2 ] || { [ "$#" -eq 3 ] && [ "$1" = 0 ] && [ "$3" = follow ]; }; } ||
    ! [[ $1 =~ ^[0-9]{1,12}$ && $2 =~ ^[0-9]{1,12}$ ]] || ((10#$2 > max_lines)); then
    echo "usage: platform-apps-journal SINCE LINES | platform-apps-journal 0 LINES follow" \
        "(seconds since the epoch; at most $max_lines lines)" >&2
    exit 2
fi
# Times in UTC whatever the server's zone: the deploy tool merges the servers' lines and
# compares them with --since as text.
export TZ=UTC
read_journal=(journalctl --unit={{ c.APPS_UNIT }} --no-pager --quiet --output=short-iso)
if [ "$#" -eq 3 ]; then
    # It ends with the caller's ssh: journalctl --follow leaves when its output's reader
    # does (systemd 252, measured).
    exec "${read_journal[@]}" --lines="$2" --follow
elif [ "$1" -eq 0 ]; then
    "${read_journal[@]}" --lines="$2"
else
    # journalctl's --lines with --since counts from SINCE on (systemd 252): tail instead.
    "${read_journal[@]}" --since="@$1" | tail -n "$2"
fi
