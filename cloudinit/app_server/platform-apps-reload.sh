#!/bin/bash
# The apps' unit's reload, as the app user: pm2 reloads gracefully what the current
# release declares (its platform.json, through the ecosystem file) and starts what it
# adds; then a process whose instance count changed is scaled, and one no longer
# declared is deleted (a rollback to a release without a worker stops the worker).
set -euo pipefail

ecosystem={{ c.ECOSYSTEM_FILE }}
pm2={{ c.PM2_BIN_DIR }}/pm2

"$pm2" startOrReload "$ecosystem" --update-env

# "name count" per declared process; "max" is pm2's: one per CPU.
declared=$(node -e '
const cpus = require("node:os").cpus().length;
for (const app of require(process.argv[1]).apps) console.log(app.name, app.instances === "max" ? cpus : app.instances);
' "$ecosystem")
# "name count" per process pm2 runs.
running=$("$pm2" jlist | node -e '
const counts = {};
for (const p of JSON.parse(require("node:fs").readFileSync(0, "utf8"))) counts[p.name] = (counts[p.name] || 0) + 1;
for (const [name, count] of Object.entries(counts)) console.log(name, count);
')

while read -r name count; do
    [ -n "$name" ] || continue
    now=$(awk -v n="$name" '$1 == n { print $2 }' <<< "$running")
    if [ -n "$now" ] && [ "$now" != "$count" ]; then
        echo "platform-apps-reload: $name: $now -> $count instance(s)"
        "$pm2" scale "$name" "$count"
    fi
done <<< "$declared"
while read -r name _; do
    [ -n "$name" ] || continue
    if ! awk -v n="$name" '$1 == n { found = 1 } END { exit !found }' <<< "$declared"; then
        echo "platform-apps-reload: $name is no longer declared: deleted"
        "$pm2" delete "$name"
    fi
done <<< "$running"
