"""pm2 on an app server follows the current release's platform.json: the rendered
ecosystem file and the unit's reload script, run for real (pm2 at the pinned major, in a
private mount namespace): a worker added by a release starts, an instance count changed
is scaled, a process moved to another script answers throughout, and a rollback to a
release without the worker deletes it; a release whose process dies as it starts fails
the reload once pm2 gives up on it, and the release before it reloads healthy; what the
unit's pm2-runtime writes to the journal is what the deploy tool reads there."""

from __future__ import annotations

import json
import socket

from deploy import journal

import pytest

from model import conventions as c

from render_helpers_lb_app import nginx_tree
from pm2_sandbox import REPO, app_files, apps_reload, apps_start, run_pm2_script

pytestmark = pytest.mark.sandbox   # node, npm, pm2, root for the namespace; ports 3000 and 3001

WORKER = """'use strict';
// A worker: no port; says ready, then waits for SIGINT.
process.send && process.send('ready');
const timer = setInterval(() => {}, 1000);
process.on('SIGINT', () => { clearInterval(timer); process.exit(0); });
"""

# The releases {release_names} (filled in below), each the example app without platform.json.
RELEASES = r"""
set -eu
export PM2_HOME={pm2_home} PATH={bin}:$PATH
mkdir -p {releases} {logs}
for r in {release_names}; do
  cp -r {source} {releases}/$r
  rm -f {releases}/$r/platform.json
  ln -s {modules} {releases}/$r/node_modules
done
"""

SCRIPT = RELEASES.replace("{release_names}", "r1 r2") + r"""
mkdir {releases}/r2/worker && cp {worker} {releases}/r2/worker/index.js
cp {releases}/r2/web/server.js {releases}/r2/web/site.js && sed -i 's/It works/Moved script/' {releases}/r2/web/site.js
cp {contract} {releases}/r2/platform.json
names() {{ pm2 jlist | node -e 'const c = {{}}; for (const p of JSON.parse(require("fs").readFileSync(0))) c[p.name] = (c[p.name] || 0) + 1; console.log(JSON.stringify(c))'; }}
ln -sfn {releases}/r1 {current}
pm2 start {ecosystem} >/dev/null
echo "R1 $(names)"
ln -sfn {releases}/r2 {current}.new && mv -T {current}.new {current}
probe() {{ while :; do curl -s -o /dev/null -w '%{{http_code}}\n' --max-time 5 http://127.0.0.1:{web}/ || echo refused; done; }}
probe > {probe_log} & probing=$!
{reload}
kill $probing
echo "PROBE $(grep -c . {probe_log}) $(grep -vc '^200$' {probe_log})"
echo "R2 $(names)"
echo "WEB2 $(node -e "fetch('http://127.0.0.1:{web}/').then(async r => console.log(r.status, /Moved script/.test(await r.text())))")"
echo "WORKERENV $(pm2 jlist | node -e 'const w = JSON.parse(require("fs").readFileSync(0)).find(p => p.name === "worker"); console.log(w.pm2_env.status, "PORT" in w.pm2_env.env ? "port" : "noport")')"
ln -sfn {releases}/r1 {current}.new && mv -T {current}.new {current}
{reload}
echo "BACK $(names)"
pm2 kill >/dev/null
"""


def ports_free() -> None:
    for port in (c.WEB_APP_PORT, c.API_APP_PORT):
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} is taken on this host"


def test_the_apps_reload_follows_each_releases_declared_processes(tmp_path, pm2_bin, example_app_modules):
    ports_free()
    (tmp_path / "worker.js").write_text(WORKER)
    (tmp_path / "platform.json").write_text(json.dumps({"processes": {
        "web": {"script": "web/site.js", "serves": "/"},
        "api": {"script": "api/server.js", "serves": "/api/", "instances": 1},
        "worker": {"script": "worker/index.js"},
    }}))
    root = nginx_tree(tmp_path / "ns", {c.ECOSYSTEM_FILE: app_files()[c.ECOSYSTEM_FILE]})
    script = SCRIPT.format(
        pm2_home=tmp_path / "pm2-home", bin=pm2_bin, releases=c.RELEASES_DIR, logs=c.PM2_LOG_DIR,
        source=REPO / "example-app", modules=example_app_modules, worker=tmp_path / "worker.js",
        contract=tmp_path / "platform.json", current=c.CURRENT_RELEASE_LINK, ecosystem=c.ECOSYSTEM_FILE,
        reload=apps_reload(tmp_path), web=c.WEB_APP_PORT, probe_log=tmp_path / "probe.log")
    result, seen = run_pm2_script(root, script, tmp_path / "pm2-home", timeout=240)
    cpus = len(__import__("os").sched_getaffinity(0))
    assert json.loads(seen["R1"]) == {"web": cpus, "api": cpus}, "no platform.json: the default processes"
    assert json.loads(seen["R2"]) == {"web": cpus, "api": 1, "worker": 1}, result.stdout
    assert seen["WORKERENV"] == "online noport", "a worker is given no PORT"
    assert seen["WEB2"] == "200 true", "a process declared with another script runs the new one"
    assert "web runs another script now" in result.stdout
    answered, failed = map(int, seen["PROBE"].split())
    assert answered > 20 and failed == 0, f"requests to web while its script moved: {seen['PROBE']}"
    assert json.loads(seen["BACK"]) == {"web": cpus, "api": cpus}, result.stdout
    assert "worker is no longer declared: deleted" in result.stdout


DYING_SCRIPT = RELEASES.replace("{release_names}", "good bad") + r"""
sed -i "1i throw new Error('dying at start');" {releases}/bad/api/server.js
statuses() {{ pm2 jlist | node -e 'console.log(JSON.parse(require("fs").readFileSync(0)).map(p => p.name + ":" + p.pm2_env.status).sort().join(","))'; }}
ln -sfn {releases}/good {current}
pm2 start {ecosystem} >/dev/null
ln -sfn {releases}/bad {current}.new && mv -T {current}.new {current}
start=$SECONDS
if {reload} 2> {tmp}/bad.err; then echo "BAD reloaded"; else echo "BAD failed"; fi
echo "BADSECONDS $((SECONDS - start))"
echo "BADSTATUS $(statuses)"
echo "BADLOGGED $(grep -c 'dying at start' {logs}/api.error.log || true)"
ln -sfn {releases}/good {current}.new && mv -T {current}.new {current}
if {reload} 2> {tmp}/good.err; then echo "GOOD reloaded"; else echo "GOOD failed"; fi
echo "GOODSTATUS $(statuses)"
echo "API $(curl -s --max-time 5 http://127.0.0.1:{api}/api/hello || echo refused)"
pm2 kill >/dev/null
"""


def test_a_release_dying_as_it_starts_fails_the_reload_and_the_one_before_reloads_healthy(
        tmp_path, pm2_bin, example_app_modules):
    ports_free()
    root = nginx_tree(tmp_path / "ns", {c.ECOSYSTEM_FILE: app_files()[c.ECOSYSTEM_FILE]})
    script = DYING_SCRIPT.format(
        pm2_home=tmp_path / "pm2-home", bin=pm2_bin, releases=c.RELEASES_DIR, logs=c.PM2_LOG_DIR,
        source=REPO / "example-app", modules=example_app_modules, current=c.CURRENT_RELEASE_LINK,
        ecosystem=c.ECOSYSTEM_FILE, reload=apps_reload(tmp_path), tmp=tmp_path, api=c.API_APP_PORT)
    result, seen = run_pm2_script(root, script, tmp_path / "pm2-home", timeout=240)
    cpus = len(__import__("os").sched_getaffinity(0))
    said = (tmp_path / "bad.err").read_text()
    assert seen["BAD"] == "failed", result.stdout + said
    assert (f"pm2 gave up on api: it kept exiting as it started (what it wrote as it died: journalctl -u "
            f"{c.APPS_UNIT})") in said
    assert "web" not in said, "web started on the new release: only api is named"
    assert seen["BADSTATUS"] == ",".join(sorted(["api:errored"] * cpus + ["web:online"] * cpus)), result.stdout
    # pm2 in cluster mode loses what a worker writes as it dies (pm2#4075): not in its log
    # file, hence the deploy's reading of the unit's journal (which has it, via pm2-runtime).
    assert seen["BADLOGGED"] == "0", "pm2 now keeps a dying worker's last words: `deploy logs` may show them"
    # Each api worker's reload waits out listen_timeout (10 s): not the deploy's health timeout besides.
    print(f"the failing reload took {seen['BADSECONDS']} s")
    assert seen["GOOD"] == "reloaded", (tmp_path / "good.err").read_text()
    assert seen["GOODSTATUS"] == ",".join(sorted(["api:online"] * cpus + ["web:online"] * cpus)), result.stdout
    assert '"hello":"world"' in seen["API"], seen["API"]


STARTED_SCRIPT = RELEASES.replace("{release_names}", "bad") + r"""
sed -i "1i console.error('dying at start'); process.exit(1);" {releases}/bad/api/server.js
ln -sfn {releases}/bad {current}
mkdir {tmp}/failing && printf '#!/bin/sh\necho "$*" >> {tmp}/getconf-ran\nexit 1\n' > {tmp}/failing/getconf
chmod +x {tmp}/failing/getconf
PATH={tmp}/failing:$PATH {start} > {tmp}/stdout 2> {tmp}/stderr &
# The unit's stop signal, once web has started and api has died twice, a line said again
# (or two minutes have passed).
for _ in $(seq 240); do
    grep -qs 'web listening' {tmp}/stdout && [ "$(cat {tmp}/stdout {tmp}/stderr | grep -c 'dying at start')" -ge 2 ] && break
    sleep 0.5
done
kill -INT $! && wait $! || true
"""


def test_the_units_pm2_runtime_writes_each_apps_lines_under_its_name_without_colour_as_the_deploy_reads_them(
        tmp_path, pm2_bin, example_app_modules):
    """The journal's shape the deploy tool parses (deploy/journal.py) comes from the unit's
    flags: pm2-runtime run as the unit runs it, its output read as the journal would give it.
    `getconf` fails in it, as it does when the unit's stop signal reaches the one pm2's
    process-usage library runs: its error is silenced, and a stack pm2 writes must not end
    the apps' words."""
    ports_free()
    root = nginx_tree(tmp_path / "ns", {c.ECOSYSTEM_FILE: app_files()[c.ECOSYSTEM_FILE]})
    script = STARTED_SCRIPT.format(
        pm2_home=tmp_path / "pm2-home", bin=pm2_bin, releases=c.RELEASES_DIR, logs=c.PM2_LOG_DIR,
        source=REPO / "example-app", modules=example_app_modules, current=c.CURRENT_RELEASE_LINK,
        start=apps_start(tmp_path / "pm2-home"), tmp=tmp_path)
    run_pm2_script(root, script, tmp_path / "pm2-home", timeout=180)
    written = (tmp_path / "stdout").read_text() + (tmp_path / "stderr").read_text()
    assert "\x1b" not in written, "colour codes: journalctl shows such a line as a blob"
    assert (tmp_path / "getconf-ran").exists(), "pm2 did not run getconf: nothing here tells its error is silenced"
    assert "getconf" not in written, "pm2's process-usage library printed its error: PIDUSAGE_SILENT unset?"
    as_journal = "".join(f"2026-12-04T15:12:05+0000 app-1 pm2-runtime[812]: {line}\n" for line in written.splitlines())
    api = journal.merged({"app-1": as_journal}, processes=("api",))
    assert api and all(line.endswith("|api: dying at start") for line in api), written
    assert any(line.endswith("|web: web listening on 3000") for line in journal.merged(
        {"app-1": as_journal}, processes=("web",))), written
    said = journal.apps_said(as_journal, 20)
    assert any(line.startswith("api: dying at start (") for line in said), said
    assert all(line.startswith(("api: ", "web: ")) for line in said), "not the apps' words: " + "\n".join(said)
    assert not any("PM2 log:" in line for line in said), said
