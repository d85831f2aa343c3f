#!/bin/bash
# Maintenance mode on the LB: `on [WHO]`, `off`, `status`. While it is on, nginx answers
# everything but the health check with the maintenance page (503, Retry-After); it reads
# the flag at each request, so nothing is reloaded. The flag survives a reboot.
set -euo pipefail

flag={{ c.MAINTENANCE_FLAG }}

case "${1:-}" in
    on)
        who=${2:-$(logname 2>/dev/null || id -un)}
        # nginx's workers (www-data) must see the flag, whatever umask the caller has.
        install -d -m 0755 "$(dirname "$flag")"
        # A new file renamed over the old: nginx never sees half of one.
        printf '%s since %s\n' "$who" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$flag.new"
        chmod 0644 "$flag.new"
        mv -f "$flag.new" "$flag"
        echo "maintenance on: $(cat "$flag")"
        ;;
    off)
        rm -f "$flag"
        echo "maintenance off"
        ;;
    status)
        if [ -f "$flag" ]; then echo "maintenance on: $(cat "$flag")"; else echo "maintenance off"; fi
        ;;
    *)
        echo "usage: platform-maintenance on [WHO] | off | status" >&2
        exit 2
        ;;
esac
