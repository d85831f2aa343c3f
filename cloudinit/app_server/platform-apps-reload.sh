#!/bin/bash
# The apps' unit's reload, as the app user: pm2 reloads gracefully what the current
# release declares (its platform.json, through the ecosystem file) and starts what it
# adds. pm2 keeps a running process's script across reloads, so a process no longer
# declared, or declared with another script, is deleted first (and then started anew);
# a changed instance count is scaled after.
set -euo pipefail

ecosystem={{ c.ECOSYSTEM_FILE }}
pm2={{ c.PM2_BIN_DIR }}/pm2

# What to do, one "ACTION NAME [ARG]" per line: PHASE "before" (delete) or "after" (scale).
actions() {
    "$pm2" jlist | node -e '
const [ecosystem, phase] = process.argv.slice(1);
const cpus = require("node:os").cpus().length;
const declared = new Map(require(ecosystem).apps.map((app) => [app.name, app]));
const running = new Map();
for (const p of JSON.parse(require("node:fs").readFileSync(0, "utf8"))) {
  const seen = running.get(p.name) || { count: 0, script: p.pm2_env.pm_exec_path };
  seen.count += 1;
  running.set(p.name, seen);
}
for (const [name, seen] of running) {
  const app = declared.get(name);
  if (phase === "before" && !app) console.log("gone", name);
  else if (phase === "before" && app.script !== seen.script) console.log("moved", name, app.script);
  else if (phase === "after" && app) {
    const wanted = app.instances === "max" ? cpus : app.instances;
    if (seen.count !== wanted) console.log("scale", name, wanted);
  }
}' "$ecosystem" "$1"
}

while read -r action name detail; do
    case "$action" in
        gone) echo "platform-apps-reload: $name is no longer declared: deleted" ;;
        moved) echo "platform-apps-reload: $name runs another script now ($detail): started anew" ;;
        *) continue ;;
    esac
    "$pm2" delete "$name"
done < <(actions before)

"$pm2" startOrReload "$ecosystem" --update-env

while read -r action name count; do
    [ "$action" = scale ] || continue
    echo "platform-apps-reload: $name: $count instance(s)"
    "$pm2" scale "$name" "$count"
done < <(actions after)
