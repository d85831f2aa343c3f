#!/bin/bash
# `platform-app-exec [--release ID] [--] COMMAND [ARG...]`: COMMAND as the apps run, in the
# current release (or release ID, uploaded and not yet current: a deploy's release
# command) with the apps' environment (.env as the apps read it, then what pm2's
# ecosystem file sets). The deploy user may run exactly this, as the app user and no
# other (sudoers): it runs nothing a release it ships could not already run as that user.
set -euo pipefail

releases={{ c.RELEASES_DIR }}
directory={{ c.CURRENT_RELEASE_LINK }}
env_file={{ c.APP_ENV_FILE }}
usage="usage: platform-app-exec [--release ID] [--] COMMAND [ARG...]"

if [ "${1:-}" = --release ]; then
    id=${2:-}
    case "$id" in
        '' | *[!A-Za-z0-9._-]* | .* | "${directory##*/}" | "${directory##*/}.new")
            echo "platform-app-exec: --release '$id' is not a release id ($usage)" >&2; exit 2 ;;
    esac
    directory=$releases/$id
    if [ ! -d "$directory" ] || [ -L "$directory" ]; then
        echo "platform-app-exec: no release $id in $releases" >&2
        exit 1
    fi
    shift 2
fi
if [ "${1:-}" = -- ]; then shift; fi
if [ "$#" -eq 0 ]; then
    echo "platform-app-exec: no command given ($usage)" >&2
    exit 2
fi
if [ "$(id -un)" != {{ c.APP_USER }} ]; then
    echo "platform-app-exec: runs as {{ c.APP_USER }} only (sudo -u {{ c.APP_USER }}), not as $(id -un)" >&2
    exit 2
fi
cd "$directory" 2>/dev/null || { echo "platform-app-exec: no release at $directory" >&2; exit 1; }

# NAME=value, the value as is to the end of the line: example-app/lib/env.js's reading.
if [ -r "$env_file" ]; then
    while IFS= read -r line || [ -n "$line" ]; do
        line=${line#"${line%%[![:space:]]*}"}
        if [[ $line =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
            export "${BASH_REMATCH[1]}=${BASH_REMATCH[2]}"
        fi
    done < "$env_file"
fi
export HOME={{ c.APP_HOME }} NODE_ENV=production PLATFORM_ENV_FILE="$env_file"
exec "$@"
