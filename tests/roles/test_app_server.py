"""The app server's files, checked by the programs that read them: nginx, shellcheck,
logrotate, visudo, and pm2 running the example app from the rendered ecosystem file."""

from __future__ import annotations

import json
import re
import socket
import subprocess

import pytest

import cloudinit
from cloudinit import app_server, common
from model import conventions as c

from pm2_sandbox import REPO, app_files, apps_reload, run_pm2_script
from render_helpers_lb_app import (
    APP_SITE, ENGINE_CASES, app_server_nginx, app_site_tree, in_namespace, make_ca, nginx_check, nginx_tree, issue,
    require, run, settings,
)

SITE = APP_SITE
LOGROTATE = "/etc/logrotate.d/platform-pm2"


@pytest.mark.parametrize("engines", ENGINE_CASES.values(), ids=ENGINE_CASES.keys())
def test_nginx_accepts_the_rendered_app_server_config(tmp_path, engines):
    ca = make_ca(tmp_path / "ca", "ca")
    cert = issue(ca, tmp_path / "ca", "server", dns=["staging-app-1", "staging-app"], ips=["10.110.16.5"])
    root = nginx_tree(tmp_path / "ns", {
        SITE: app_files(engines)[SITE], c.SERVER_CERT_PATH: cert.cert, c.SERVER_KEY_PATH: cert.key,
        c.CA_CERT_PATH: ca.cert,
    })
    result = nginx_check(root)
    assert result.returncode == 0, result.stderr


def test_app_server_takes_the_lbs_connections_only_with_its_certificate(tmp_path):
    """The rendered site on nginx (ports 8443 and loopback 8444 of this host, so run under
    the sandbox lock): no client certificate, nothing served (nginx's 400); another droplet's certificate
    from the same CA is refused (403); the LB's is served. The loopback listener serves
    the health check to whoever is on the server, without a certificate, and nothing else."""
    stack = settings().stack
    root, ca = app_site_tree(tmp_path)
    lb = issue(ca, tmp_path / "ca", "lb", dns=[c.droplet_name(stack, c.LOAD_BALANCER), "example.com"])
    other = issue(ca, tmp_path / "ca", "other", dns=[f"{stack}-app-2", c.app_pool_tls_name(stack)])
    # The API app's stand-in: a file server with /healthz.
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "healthz").write_text("full health\n")
    with app_server_nginx(root, tmp_path / "api", (c.APP_TLS_PORT, c.APP_LOCAL_TLS_PORT)):
        def curl(port: int, path: str, *cert: str) -> str:
            result = run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                          "--cacert", str(ca.cert), "--resolve", f"{stack}-app:{port}:127.0.0.1", *cert,
                          f"https://{stack}-app:{port}{path}"])
            return result.stdout.strip() if result.returncode == 0 else f"refused ({result.stderr.strip()})"

        health = c.HEALTH_PATH
        # nginx ends the handshake, then answers 400 (no certificate sent) to anything.
        assert curl(c.APP_TLS_PORT, health) == "400", "no client certificate"
        assert curl(c.APP_TLS_PORT, "/") == "400", "no client certificate"
        assert curl(c.APP_TLS_PORT, health, "--cert", str(lb.cert), "--key", str(lb.key)) == "200"
        assert curl(c.APP_TLS_PORT, health, "--cert", str(other.cert), "--key", str(other.key)) == "403"
        assert curl(c.APP_LOCAL_TLS_PORT, health) == "200"
        assert curl(c.APP_LOCAL_TLS_PORT, "/api/anything") == "404"
        listening = run(["ss", "-Hltn", f"sport = :{c.APP_LOCAL_TLS_PORT}"]).stdout
        assert listening.split() and all(" 127.0.0.1:" in f" {line.split()[3]}" for line in listening.splitlines()), listening


def test_site_routes_api_and_health_to_the_api_app():
    site = app_files()[SITE]
    assert f"listen {c.APP_TLS_PORT} ssl" in site
    assert site.count(f"location = {c.HEALTH_PATH} {{") == 2      # the LB's port and the loopback one
    assert site.count("proxy_pass http://api_app$platform_health_path;") == 2
    assert f"location {c.API_PATH_PREFIX} {{ proxy_pass http://api_app; }}" in site
    assert f"server 127.0.0.1:{c.API_APP_PORT};" in site and f"server 127.0.0.1:{c.WEB_APP_PORT};" in site


@pytest.mark.parametrize("path", [p.path for p in app_server.PROGRAMS if not p.template.endswith(".js")])
def test_shellcheck_passes_on_app_server_scripts(path):
    result = run([require("shellcheck"), "--shell=bash", "-"], input=app_files()[path])
    assert result.returncode == 0, result.stdout


def test_node_reads_the_start_check_as_the_app_servers_get_it(tmp_path):
    script = tmp_path / "start-check.js"
    script.write_text(app_files()[app_server.START_CHECK_SCRIPT])
    result = run([require("node"), "--check", str(script)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_passes_on_the_provisioning_with_the_library():
    files = app_files()
    combined = "\n".join(files[p] for p in (common.LIBRARY, app_server.PROGRAMS[0].path))
    result = run([require("shellcheck"), "--shell=bash", "-"], input="#!/bin/bash\n" + combined + "\nrole_steps\n")
    assert result.returncode == 0, result.stdout


RELOAD_CASES = {
    # name: (node replaced, release current, unit active, a file under the app root changed), reloaded
    "new-node-apps-running": (("20", True, True, False), True),
    "same-node": (("", True, True, False), False),
    "new-node-no-release-yet": (("20", False, False, False), False),
    "new-node-apps-were-down": (("20", True, False, False), False),      # started: already on it
    "new-node-app-file-changed": (("20", True, True, True), False),      # its reload: already on it
}


@pytest.mark.fast  # bash and the rendered scripts only
@pytest.mark.parametrize("case", RELOAD_CASES.values(), ids=RELOAD_CASES.keys())
def test_a_replaced_node_reloads_the_running_apps_once_and_gracefully(case, tmp_path):
    """role_steps with the real common.sh helpers (ensure_running, changed) and systemctl
    stubbed: a changed nodeMajor ends in `systemctl reload` of the apps (pm2's graceful
    reload), and only when the apps were left running on the old node."""
    (replaced, release, active, app_file_changed), reloaded = case
    files = app_files()
    library = files[common.LIBRARY]
    role = files[app_server.PROGRAMS[0].path]
    helpers = "\n".join(re.search(rf"^{name}\(\) \{{.*?^\}}$", library, re.M | re.S).group(0)
                        for name in ("log", "changed", "files_changed_under", "ensure_enabled", "ensure_running"))
    functions = "\n".join(re.search(rf"^{name}\(\) \{{.*?^\}}$", role, re.M | re.S).group(0)
                          for name in ("role_steps", "reload_apps_on_new_node"))
    link = tmp_path / "current"
    if release:
        link.symlink_to(tmp_path)
    stubs = f"""
CHANGES=0; CHANGED_FILES=({c.APP_ROOT + "/x" if app_file_changed else ""}); NODE_MAJOR=22; NODE_REPLACED=; STAGED_FILES=
ensure_node() {{ NODE_REPLACED={replaced}; }}
for f in ensure_packages ensure_pm2 ensure_release_layout hold_nginx_files apply_nginx_files remove_default_site \\
         visudo install_configs ensure_temporary_certificate bash; do eval "$f() {{ :; }}"; done  # bash: its -n check
systemctl() {{ case $1 in is-enabled) ;; is-active) {'true' if active else 'false'} ;; *) echo "systemctl $*" ;; esac; }}
"""
    script = stubs + helpers + "\n" + functions.replace(c.CURRENT_RELEASE_LINK, str(link)) + "\nrole_steps\n"
    result = run(["bash", "-euc", script])
    assert result.returncode == 0, result.stdout + result.stderr
    calls = [line for line in result.stdout.splitlines() if line.startswith("systemctl ") and c.APPS_UNIT in line]
    if not release:
        assert calls == []
    elif not active:
        assert calls == [f"systemctl start {c.APPS_UNIT}"]
    elif app_file_changed:
        assert calls == [f"systemctl reload {c.APPS_UNIT}"], "a changed ecosystem file: one graceful reload"
    else:
        assert calls == ([f"systemctl reload {c.APPS_UNIT}"] if reloaded else [])
    if reloaded:
        assert f"reloaded onto node 22 (was {replaced})" in result.stdout


def test_sudoers_drop_in_passes_visudo_and_allows_only_the_reload_and_the_two_wrappers(tmp_path):
    sudoers = tmp_path / "platform-deploy"
    sudoers.write_text(app_files()[app_server.SUDOERS_FILE])
    sudoers.chmod(0o440)
    result = run([require("visudo"), "-cf", str(sudoers)])
    assert result.returncode == 0, result.stdout + result.stderr
    rules = [line for line in sudoers.read_text().splitlines() if line and not line.startswith("#")]
    assert rules == [
        f"Cmnd_Alias PLATFORM_RELOAD_APPS = /usr/bin/systemctl reload {c.APPS_UNIT}",
        f"Cmnd_Alias PLATFORM_APPS_JOURNAL = {app_server.APPS_JOURNAL_COMMAND}",
        f"Cmnd_Alias PLATFORM_APP_EXEC = {app_server.APP_EXEC_COMMAND}",
        f"{c.DEPLOY_USER} ALL=(root) NOPASSWD: PLATFORM_RELOAD_APPS, PLATFORM_APPS_JOURNAL",
        # As the app user only: what deploy could already run as app by shipping a release.
        f"{c.DEPLOY_USER} ALL=({c.APP_USER}) NOPASSWD: PLATFORM_APP_EXEC",
    ]
    broken = tmp_path / "broken"
    broken.write_text(sudoers.read_text().replace("NOPASSWD:", "NOPASSWD"))
    assert run([require("visudo"), "-cf", str(broken)]).returncode != 0, "visudo really checks"


def test_logrotate_accepts_the_pm2_rotation(tmp_path):
    root = nginx_tree(tmp_path / "ns", {
        LOGROTATE: app_files()[LOGROTATE],
        f"{c.PM2_LOG_DIR}/web.out.log": "a line\n",
    })
    # logrotate wants the su user to exist: the namespace's /etc/passwd is an overlay copy.
    script = (
        f"id -u {c.APP_USER} >/dev/null 2>&1 || useradd --system {c.APP_USER}; "
        f"chown -R {c.APP_USER}:{c.APP_USER} {c.PM2_LOG_DIR}; chmod 0750 {c.PM2_LOG_DIR}; "
        f"logrotate -d -f {LOGROTATE}"
    )
    require("logrotate")
    result = run(in_namespace(root, ["sh", "-c", script]))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "error" not in output.lower(), output
    assert f"rotating pattern: {c.PM2_LOG_DIR}/*.log" in output
    assert "copying" in output and "truncating" in output, output


def test_env_push_names_every_enabled_engine_and_is_readable_by_app_only():
    env = app_server.app_env("10.110.16.9", {"postgresql": "pw1", "redis": "pw2"}, settings(["postgresql", "redis"]))
    assert "POSTGRESQL_HOST=10.110.16.9" in env and "REDIS_PORT=6380" in env and "REDIS_PASSWORD=pw2" in env
    assert "MONGODB" not in env and f"PLATFORM_CA_FILE={c.CA_CERT_PATH}" in env
    # The datastore creates an `app` login in every engine; on Redis the default user is
    # off, so a password alone would be refused (WRONGPASS) and /healthz never turn 200.
    assert f"POSTGRESQL_USER={c.ENGINE_APP_USER}" in env and f"REDIS_USER={c.ENGINE_APP_USER}" in env
    target = cloudinit.pushes(c.APP_SERVER, settings())["env"].files[".env"]
    assert (target.path, target.mode, target.owner) == (c.APP_ENV_FILE, "0640", f"root:{c.APP_USER}")


def test_example_app_archive_is_stable_and_holds_the_sources(tmp_path):
    archive = app_server.example_app_archive()
    assert archive == app_server.example_app_archive(), "same sources, same push: no re-run"
    (tmp_path / "a.b64").write_text(archive)
    listing = run(["sh", "-c", f"base64 -d {tmp_path}/a.b64 | tar -tz"]).stdout.split()
    assert {"package.json", "package-lock.json", "api/server.js", "web/server.js"} <= set(listing)
    assert not any(name.startswith(("node_modules", "test/")) for name in listing)


# --- pm2 running the rendered ecosystem -------------------------------------------------


PM2_SCRIPT = r"""
set -eu
# node where the package puts it: pm2's daemon and the workers it forks run this file.
mkdir -p {node_dir} && cp "$(command -v node)" {node_dir}/node
export PM2_HOME={pm2_home} PATH={node_dir}:{bin}:$PATH
mkdir -p {releases} {logs}
for r in r1 r2; do
  cp -r {source} {releases}/$r
  ln -s {modules} {releases}/$r/node_modules
done
sed -i 's/It works/Release two/' {releases}/r2/web/server.js
ln -sfn {releases}/r1 {current}
pm2 start {ecosystem} >/dev/null
get() {{ node -e "fetch('http://127.0.0.1:'+process.argv[1]+process.argv[2]).then(async r=>console.log(r.status, (await r.text()).replace(/\s+/g,' ')))" "$@"; }}
echo "WEB $(get {web} /)"
echo "HEALTH $(get {api} /healthz)"
echo "HELLO $(get {api} /api/hello)"
# A release switch and a graceful reload, with requests running all along: until it has
# ended, however long it takes, and at least 20 (a quick reload sees only a few).
during() {{ local n=0; until [ -e "$1" ] && [ $n -ge 20 ]; do get {web} / | cut -c1-3; n=$((n + 1)); sleep 0.05; done; }}
( during {work}/reloaded > {work}/during-reload ) &
loader=$!
ln -sfn {releases}/r2 {current}.new && mv -T {current}.new {current}
{reload} >/dev/null
touch {work}/reloaded
wait $loader
echo "DURING $(sort {work}/during-reload | uniq -c | tr '\n' ' ')"
echo "AFTER $(get {web} /)"
# Another node installed (a changed nodeMajor): dpkg renames a new file over the old one,
# and the running workers' binary is the deleted old file until the reload replaces them.
workers() {{ for pid in $(pm2 jlist | node -p "JSON.parse(require('fs').readFileSync(0)).map(p => p.pid).join(' ')"); do readlink /proc/$pid/exe; done | sort | uniq -c | tr '\n' ' '; }}
cp {node_dir}/node {node_dir}/node.dpkg-new && mv {node_dir}/node.dpkg-new {node_dir}/node
echo "OLDNODE $(workers)"
( during {work}/reloaded-node > {work}/during-node ) &
loader=$!
{reload} >/dev/null
touch {work}/reloaded-node
wait $loader
echo "NODEDURING $(sort {work}/during-node | uniq -c | tr '\n' ' ')"
echo "NEWNODE $(workers)"
echo "JLIST $(pm2 jlist)"
ls {logs}
pm2 kill >/dev/null
"""


def all_answered(counted: str) -> bool:
    """`uniq -c` of the status codes: the requests `during` sent, all 200."""
    counts = counted.split()
    return len(counts) == 2 and counts[1] == "200" and int(counts[0]) >= 20


def test_pm2_runs_the_rendered_ecosystem_and_reloads_without_dropping_requests_onto_a_new_node(tmp_path, pm2_bin, example_app_modules):
    for port in (c.WEB_APP_PORT, c.API_APP_PORT):
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} is taken on this host"
    root = nginx_tree(tmp_path / "ns", {c.ECOSYSTEM_FILE: app_files()[c.ECOSYSTEM_FILE]})
    reload = apps_reload(tmp_path)
    script = PM2_SCRIPT.format(
        node_dir=tmp_path / "usr-bin", reload=reload, bin=pm2_bin, releases=c.RELEASES_DIR, logs=c.PM2_LOG_DIR, source=REPO / "example-app",
        modules=example_app_modules, current=c.CURRENT_RELEASE_LINK, ecosystem=c.ECOSYSTEM_FILE,
        web=c.WEB_APP_PORT, api=c.API_APP_PORT, pm2_home=tmp_path / "pm2-home", work=tmp_path,
    )
    result, lines = run_pm2_script(root, script, tmp_path / "pm2-home", timeout=180)
    assert lines["WEB"].startswith("200 ") and "It works" in lines["WEB"]
    assert lines["HEALTH"].startswith("200 ") and '"status":"disabled"' in lines["HEALTH"]
    assert lines["HELLO"].startswith("200 ")
    assert all_answered(lines["DURING"]), f"every request during the reload answered: {lines['DURING']}"
    assert "Release two" in lines["AFTER"], "the reload picked up the new `current`"
    node = str(tmp_path / "usr-bin" / "node")
    workers = len(json.loads(lines["JLIST"]))
    assert lines["OLDNODE"].split() == [str(workers), node, "(deleted)"], "the workers ran the replaced node"
    assert all_answered(lines["NODEDURING"]), f"every request answered: {lines['NODEDURING']}"
    assert lines["NEWNODE"].split() == [str(workers), node], "the unit's reload put every worker on the new node"
    processes = json.loads(lines["JLIST"])
    assert sorted({p["name"] for p in processes}) == ["api", "web", "worker"], "as example-app/platform.json declares"
    assert all(p["pm2_env"]["status"] == "online" and p["pm2_env"]["exec_mode"] == "cluster_mode" for p in processes)
    # pm2 counts a reload in restart_time; crash loops show up as unstable restarts.
    assert all(p["pm2_env"]["unstable_restarts"] == 0 for p in processes), "no crash-restarts"
    assert "web.out.log" in result.stdout and "api.out.log" in result.stdout


def test_needrestart_reloads_the_apps_gracefully_instead_of_restarting_them(tmp_path):
    """needrestart runs restart.d/<unit> (when executable) in place of `systemctl restart`:
    after a Node.js update the apps are reloaded one worker at a time, as a deploy does."""
    files = app_files()
    path = app_server.NEEDRESTART_APPS_RELOAD
    assert path == f"/etc/needrestart/restart.d/{c.APPS_UNIT}.service"
    assert {f.path: f.mode for f in cloudinit.config_files(c.APP_SERVER, settings(None))}[path] == "0755"
    assert run([require("shellcheck"), "--shell=bash", "-"], input=files[path]).returncode == 0
    script = tmp_path / "reload"
    script.write_text(files[path])
    (tmp_path / "bin").mkdir()
    stub = tmp_path / "bin" / "systemctl"
    stub.write_text(f'#!/bin/sh\necho "systemctl $*" >> {tmp_path}/calls\n'
                    '[ "$1" != is-active ] || [ -e "$ACTIVE" ]\n')
    stub.chmod(0o755)
    calls = tmp_path / "calls"
    for active in (True, False):
        calls.write_text("")
        env = {"PATH": f"{tmp_path}/bin:/usr/bin:/bin", "ACTIVE": str(script if active else tmp_path / "none")}
        assert subprocess.run(["bash", script], env=env).returncode == 0
        unit = f"{c.APPS_UNIT}.service"
        assert calls.read_text().splitlines() == [f"systemctl is-active --quiet {unit}"] + (
            [f"systemctl reload {unit}"] if active else [])


# --- the release layout: nothing deploy places is followed by root ----------------------

LAYOUT_SCRIPT = r"""
set -u
{library}
{role_steps}
mount -t tmpfs tmpfs /srv
useradd --system --no-create-home {app}
useradd --system --no-create-home --shell /bin/bash {deploy}
as_deploy() {{ runuser -u {deploy} -- "$@"; }}
# The layout older bundles made: the app root writable by deploy's group (sticky), and
# deploy's `current` link in it.
install -d -m 1775 -o root -g {deploy} {app_root}
install -d -m 2750 -o {deploy} -g {app} {releases}
as_deploy mkdir {releases}/r1
as_deploy ln -s {releases}/r1 {old_current}
# Each run as platform-provision runs it: errexit on (not in a condition, which would mute it).
( set -e; ensure_release_layout ); [ $? -eq 0 ] || echo "FIRST-RUN-FAILED"
echo "ROOT $(stat -c '%a %U:%G' {app_root})"
echo "CURRENT $(readlink {current}) $(stat -c %U {current})"
echo "OLD $(if [ -L {old_current} ]; then echo present; else echo gone; fi)"
before=$CHANGES
( set -e; ensure_release_layout; echo "AGAIN $((CHANGES - before))" )
# deploy swapping its releases/ for a link to root's programs: no longer possible.
if as_deploy sh -c 'mv {releases} {app_root}/kept && ln -s {target} {releases}' 2>/dev/null; then
    echo "DEPLOY-PLANTED"
else
    echo "DEPLOY-COULD-NOT-PLANT"
fi
# A link left from the old layout (deploy could make one then): provisioning refuses it.
mv {releases} {app_root}/kept && ln -s {target} {releases} && chown -h {deploy}:{deploy} {releases}
echo "TARGET-BEFORE $(stat -c '%a %U:%G' {target})"
( set -e; ensure_release_layout; echo "PROVISIONED" ); [ $? -eq 0 ] || echo "REFUSED"
echo "TARGET-AFTER $(stat -c '%a %U:%G' {target})"
"""


def test_provisioning_never_follows_a_releases_link_to_a_root_owned_directory(tmp_path):
    """The app server's release layout step, for real (users, install -d, runuser) in a
    sandbox: an older layout is moved to the new one (`current` inside releases/, the app
    root root's alone), deploy cannot swap releases/ for a link any more, and a link left
    there (to root's programs, /usr/local/sbin) is refused: its target keeps its owner and
    mode, and provisioning stops, naming it."""
    from role_checks import sandboxed
    files = app_files()
    target = "/usr/local/sbin"
    script = LAYOUT_SCRIPT.format(
        library=files[common.LIBRARY], role_steps=files[common.ROLE_STEPS], app=c.APP_USER, deploy=c.DEPLOY_USER,
        app_root=c.APP_ROOT, releases=c.RELEASES_DIR, current=c.CURRENT_RELEASE_LINK,
        old_current=c.OLD_CURRENT_RELEASE_LINK, target=target)
    result = sandboxed(tmp_path, script)
    out = result.stdout
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] if " " in line else "" for line in out.splitlines()}
    assert "FIRST-RUN-FAILED" not in lines, out + result.stderr
    assert lines["ROOT"] == "755 root:root", "the app root is no longer deploy's group's to write"
    assert lines["CURRENT"] == f"{c.RELEASES_DIR}/r1 {c.DEPLOY_USER}", "the release current before stays current"
    assert lines["OLD"] == "gone"
    assert lines["AGAIN"] == "0", out
    assert "DEPLOY-COULD-NOT-PLANT" in lines, out
    assert lines["TARGET-AFTER"] == lines["TARGET-BEFORE"], out
    assert lines["TARGET-BEFORE"].endswith("root:root")
    assert "REFUSED" in lines, out
    assert f"refusing {c.RELEASES_DIR}: a symbolic link (to {target}, owned by {c.DEPLOY_USER})" in out
