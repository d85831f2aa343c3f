#!/bin/bash
# The env push's check (pushes.json), as root, with the new .env in place: each process of
# the current release that serves a route started once beside the running apps, in their
# environment as it now reads, then stopped ({{ facts.START_CHECK_SCRIPT }}, the start check
# a deploy runs before it switches). A .env the apps die with as they start is so refused
# before the reload, which would have replaced every running worker with one that dies.
# On a server that answers its health check, the process that answers it must answer it
# with the new .env too (platform-push would put the old one back after the reload, once
# requests had met it): a .env the apps start with but cannot serve with is refused here.
# What a failing process wrote (the start check's indented lines) goes to the apps' unit's
# journal, where `deploy logs --journal` reads, not to this output: pulumi shows it and CI
# logs keep it, and an app may print its settings.
# With the apps not running there is no reload to guard.
set -euo pipefail
cd /   # the app user's node may not read the caller's directory

if ! systemctl is-active --quiet {{ c.APPS_UNIT }}; then
    echo "platform-apps-start-check: the apps are not running: nothing to check"
    exit 0
fi
# The path nginx asks the /api/ process for (platform-app-health's), if the server serves.
health=
if curl -fsk --max-time 5 -o /dev/null {{ facts.HEALTH_URL }}; then
    # shellcheck disable=SC2016  # $platform_health_path is nginx's variable, not the shell's
    path=$(sed -n 's/^set \$platform_health_path \(.*\);$/\1/p' {{ facts.HEALTH_SNIPPET }} 2>/dev/null || true)
    health=${path:-{{ c.HEALTH_PATH }}}
fi
# The processes as pm2 runs them (the ecosystem file reads the release's platform.json);
# those that serve a route are given a PORT.
spec=$(runuser -u {{ c.APP_USER }} -- node -e '
const [ecosystem, apiPort, health] = process.argv.slice(1);
const apps = require(ecosystem).apps.filter((app) => app.env.PORT);
console.log(JSON.stringify({
  processes: apps.map((app) => ({
    name: app.name, script: app.script, health: app.env.PORT === apiPort && health ? health : null,
  })),
  ready_ms: {{ c.PM2_READY_TIMEOUT_MS }}, stop_ms: {{ c.PM2_KILL_TIMEOUT_MS }},
  health_ms: {{ c.APP_HEALTH_TIMEOUT_SECONDS * 1000 }},
}));' {{ c.ECOSYSTEM_FILE }} {{ c.API_APP_PORT }} "$health")
if report=$(runuser -u {{ c.APP_USER }} -- {{ facts.APP_EXEC_COMMAND }} -- node {{ facts.START_CHECK_SCRIPT }} "$spec" 2>&1); then
    printf '%s\n' "$report"
    exit 0
fi
# An entry root sends naming a process (OBJECT_PID) is filed under that process's unit too:
# `journalctl --unit` shows it, and so the deploy user's platform-apps-journal.
apps_pid=$(systemctl show --property=MainPID --value {{ c.APPS_UNIT }})
while IFS= read -r line; do
    printf 'MESSAGE=%s\nSYSLOG_IDENTIFIER=%s\nOBJECT_PID=%s\n' "$line" {{ facts.START_CHECK_LOG_TAG }} "$apps_pid" |
        logger --journald
done <<<"$report"
printf '%s\n' "$report" | grep -v '^  ' || true
# The operator's command for it, narrowed to the processes that failed.
logs="python -m deploy logs {{ settings.stack }} --journal"
for name in $(printf '%s\n' "$report" | sed -En 's/^({{ facts.app_contract.PROCESS_NAME.pattern }}): FAILED.*/\1/p'); do
    logs+=" --process $name"
done
echo "platform-apps-start-check: what they wrote is in the apps' journal ($logs)"
exit 1
