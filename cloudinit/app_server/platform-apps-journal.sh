#!/bin/bash
# `platform-apps-journal SINCE LINES`: the apps' unit's journal from SINCE (seconds since
# the epoch), its last LINES entries. The deploy user may run exactly this, as root
# (sudoers), to show why a release did not come up: pm2 in cluster mode loses from the
# log files what a worker writes just before it dies (its exception included), and the
# journal has it through pm2-runtime, beside pm2's own and the reload's messages.
set -euo pipefail

if [ "$#" -ne 2 ] || ! [[ $1 =~ ^[0-9]{1,12}$ && $2 =~ ^[0-9]{1,4}$ ]]; then
    echo "usage: platform-apps-journal SINCE LINES (seconds since the epoch; at most 9999 lines)" >&2
    exit 2
fi
# The last LINES: journalctl's --lines with --since counts from SINCE on (systemd 252).
journalctl --unit={{ c.APPS_UNIT }} --since="@$1" --no-pager --quiet --output=short-iso | tail -n "$2"
