#!/bin/bash
# The apps' unit's reload, as the app user: pm2 reloads gracefully what the current
# release declares (its platform.json, through the ecosystem file) and starts what it
# adds; only then is a process no longer declared deleted (pm2 stops it gracefully): a
# new process serving the same route shares the port through pm2's cluster, so a renamed
# process leaves no gap. pm2 keeps a running process's script across reloads, so one
# declared with another script is replaced the same way: its new script starts first
# under a stand-in name (NAME.next: a declared name has no dot), the old one is deleted,
# the declared name starts on the new script, and the stand-in goes. A changed instance
# count is scaled last. A declared process pm2 gave up on (it kept exiting as it started:
# status "errored") fails the reload at once, so a deploy switches back without waiting
# out its health timeout; one that starts slowly is left to that wait.
set -euo pipefail

ecosystem={{ c.ECOSYSTEM_FILE }}
pm2={{ c.PM2_BIN_DIR }}/pm2

# What to do, one "ACTION NAME [ARG]" per line: PHASE "before" (moved) or "after" (gone,
# scale, errored).
actions() {
    "$pm2" jlist | node -e '
const [ecosystem, phase] = process.argv.slice(1);
const cpus = require("node:os").cpus().length;
const declared = new Map(require(ecosystem).apps.map((app) => [app.name, app]));
const running = new Map();
for (const p of JSON.parse(require("node:fs").readFileSync(0, "utf8"))) {
  const seen = running.get(p.name) || { count: 0, script: p.pm2_env.pm_exec_path, errored: false };
  seen.count += 1;
  seen.errored ||= p.pm2_env.status === "errored";
  running.set(p.name, seen);
}
for (const [name, seen] of running) {
  const app = declared.get(name);
  if (phase === "after" && !app) console.log("gone", name);
  else if (phase === "before" && app && app.script !== seen.script) console.log("moved", name, app.script);
  else if (phase === "after" && app && seen.errored) console.log("errored", name);
  else if (phase === "after" && app) {
    const wanted = app.instances === "max" ? cpus : app.instances;
    if (seen.count !== wanted) console.log("scale", name, wanted);
  }
}' "$ecosystem" "$1"
}

# The declared process NAME as a pm2 file of its own, under the name NAME.next.
stand_in() {
    # shellcheck disable=SC2016  # ${name} is the JavaScript's template, not the shell's
    node -e '
const [ecosystem, name, file] = process.argv.slice(1);
const app = require(ecosystem).apps.find((a) => a.name === name);
require("node:fs").writeFileSync(file, JSON.stringify({ apps: [{ ...app, name: `${name}.next` }] }));
' "$ecosystem" "$1" "$2"
}

stand_ins=()
while read -r action name script; do
    [ "$action" = moved ] || continue
    echo "platform-apps-reload: $name runs another script now ($script): replaced through $name.next"
    file="${PM2_HOME:?}/$name.next.json"
    stand_in "$name" "$file"
    "$pm2" start "$file"
    rm -f "$file"
    "$pm2" delete "$name"
    stand_ins+=("$name.next")
done < <(actions before)

"$pm2" startOrReload "$ecosystem" --update-env

for name in "${stand_ins[@]}"; do "$pm2" delete "$name"; done

given_up=()
while read -r action name count; do
    case "$action" in
        errored) given_up+=("$name") ;;
        gone)
            echo "platform-apps-reload: $name is no longer declared: deleted"
            "$pm2" delete "$name"
            ;;
        scale)
            echo "platform-apps-reload: $name: $count instance(s)"
            "$pm2" scale "$name" "$count"
            ;;
    esac
done < <(actions after)

for name in "${given_up[@]}"; do
    echo "platform-apps-reload: pm2 gave up on $name: it kept exiting as it started" \
        "(what it wrote as it died: journalctl -u {{ c.APPS_UNIT }})" >&2
done
[ "${#given_up[@]}" -eq 0 ]
