#!/bin/bash
# The apps' unit's last step at each start and reload, as root: this server's health
# check ({{ c.HEALTH_PATH }}, which the LB, the deploy and `status` ask) goes to the path the
# current release declares (its platform.json's `health`) on the `/api/` process. The
# release is the deploy user's: its file is read as the app user, and the answer is used
# only as a plain path (model/app_contract.py refuses the same before any upload).
set -euo pipefail

snippet={{ facts.HEALTH_SNIPPET }}
pattern='^{{ facts.HEALTH_PATH_PATTERN }}$'

# setpriv, not runuser: no PAM session, which would log two lines to the apps' journal at
# every reload.
path=$(setpriv --reuid={{ c.APP_USER }} --regid={{ c.APP_USER }} --init-groups --reset-env node -e '
const fs = require("node:fs");
try {
  console.log(JSON.parse(fs.readFileSync(process.argv[1], "utf8")).health ?? process.argv[2]);
} catch (err) {
  if (err.code !== "ENOENT") throw err;
  console.log(process.argv[2]);
}' "{{ c.CURRENT_RELEASE_LINK }}/{{ facts.CONTRACT_FILE }}" "{{ c.HEALTH_PATH }}")

if ! [[ $path =~ $pattern ]] || [[ $path == *//* || /$path/ == */../* ]]; then
    echo "platform-app-health: the release's health path is not a plain path; {{ c.HEALTH_PATH }} stays as it was" >&2
    exit 1
fi

# Written (and put back) by the one "write if it differs" of the droplet.
write_snippet() { {{ c.WRITE_COMMAND }} "$snippet" 0644 root:root; }

previous=$(cat "$snippet" 2>/dev/null || true)
mkdir -p "$(dirname "$snippet")"
# shellcheck disable=SC2016  # $platform_health_path is nginx's variable, not the shell's
changed=$(printf 'set $platform_health_path %s;\n' "$path" | write_snippet)
[ -n "$changed" ] || exit 0
if ! nginx -t -q; then
    if [ -n "$previous" ]; then printf '%s\n' "$previous" | write_snippet >/dev/null; else rm -f "$snippet"; fi
    echo "platform-app-health: nginx refused the health path $path; the previous one stays" >&2
    exit 1
fi
{{ c.NGINX_RELOAD_COMMAND }}
echo "platform-app-health: {{ c.HEALTH_PATH }} asks the /api/ process for $path"
