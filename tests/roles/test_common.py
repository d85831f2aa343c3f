"""What every droplet gets, checked by the programs that read it.

Anything that would touch the host (platform-push's real paths) runs in
role_checks.sandboxed: a private mount namespace with overlays over /etc, /var/lib,
/var/log and /usr/local: the real paths are used and the host keeps nothing. Who may
reach a droplet (ufw, fail2ban, the role's users) is in test_common_access.py.
"""

from __future__ import annotations

import json
import re
import os
import shlex
import subprocess
import textwrap
from pathlib import Path

import pytest

import cloudinit
from cloudinit import common
from model import conventions

from role_checks import ROLES, require_tool, sandboxed, sshd_effective


# --- platform-push -------------------------------------------------------------------

PUSH_TABLE = {
    "conf": {
        "files": {
            "a.conf": {"path": "/etc/platform/test/a.conf", "mode": "0640", "owner": "root:daemon"},
            "b.conf": {"path": "/etc/platform/test/sub/b.conf", "mode": "0600", "owner": "root:root"},
        },
        # The check sees the new files in place: a.conf must start with "good".
        "check": [["grep", "-q", "^good", "/etc/platform/test/a.conf"]],
        # Fails once when told to (a `!` step creates then-fails), like a reload that fails.
        "then": [["sh", "-c", "if rm /etc/platform/test/then-fails 2>/dev/null; then exit 1; fi; "
                              "echo then-ran >> /etc/platform/test/then.log"]],
    },
    # Like the apps' environment: its reload serves the health check while app.env says
    # "good", stops serving otherwise, and fails outright when it says "crash".
    "app": {
        "files": {"app.env": {"path": "/etc/platform/test/app.env", "mode": "0640", "owner": "root:daemon"}},
        "check": [],
        "then": [["sh", "-c", "echo reload $(cut -d' ' -f1 /etc/platform/test/app.env) >> /etc/platform/test/then.log; "
                              "rm -f /var/lib/health-www/health; "
                              "if grep -q ^good /etc/platform/test/app.env; then echo ok > /var/lib/health-www/health; fi; "
                              "! grep -q ^crash /etc/platform/test/app.env"]],
        "health": "http://127.0.0.1:18081/health",
    },
}


@pytest.fixture
def push_sandbox(tmp_path, render_role, staging_settings):
    """run(steps) -> (output of the whole run, final state of the test files).

    Each step is (kind, payload dict or raw text), or ("!", a shell line); the rendered
    platform-push runs with the test table at its real path, on a droplet that has
    finished provisioning.
    """
    files = render_role(conventions.LOAD_BALANCER, staging_settings)
    push = files[conventions.PUSH_COMMAND]
    (tmp_path / "table.json").write_text(json.dumps(PUSH_TABLE))

    def run(steps, provisioned=True, health_server=False):
        lines = [
            f"mkdir -p {conventions.PLATFORM_ETC} {conventions.PLATFORM_STATE}",
            *(["ip link set lo up", "mkdir -p /var/lib/health-www",
               "(cd /var/lib/health-www && exec python3 -m http.server 18081 --bind 127.0.0.1 >/dev/null "
               "2>/var/lib/health-asked.log) &",
               "for _ in $(seq 50); do python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 18081))' "
               "2>/dev/null && break; sleep 0.1; done"] if health_server else []),
            f"install -D {files[conventions.LOCK_COMMAND]} {conventions.LOCK_COMMAND}",
            f"install -D {files[conventions.WRITE_COMMAND]} {conventions.WRITE_COMMAND}",
            f"cp {tmp_path}/table.json {conventions.PLATFORM_ETC}/pushes.json",
            f"touch {conventions.PROVISIONED_MARKER}" if provisioned
            else f"echo 'step=packages' > {conventions.PROVISION_FAILED_MARKER}",
        ]
        for i, (kind, payload) in enumerate(steps):
            if kind == "!":
                lines.append(payload)
                continue
            text = payload if isinstance(payload, str) else json.dumps(payload)
            (tmp_path / f"payload{i}").write_text(text)
            lines.append(f"echo '== step {i}'; python3 {push} {shlex.quote(kind)} < {tmp_path}/payload{i}; "
                         f"echo \"== exit $?\"")
        lines.append("echo '== state'; cd /etc/platform/test 2>/dev/null && "
                     "for f in $(find . -type f | sort); do echo \"$f $(stat -c '%a %U:%G' $f) $(cat $f)\"; done; true")
        result = sandboxed(tmp_path, "\n".join(lines), network=health_server, timeout=240)
        assert result.returncode == 0, result.stderr
        out = result.stdout + result.stderr
        return out, result.stdout.split("== state\n", 1)[1]

    return run


GOOD = {"a.conf": "good secret-one", "b.conf": "b secret-two"}


def test_push_writes_files_with_mode_and_owner_then_checks_and_runs(push_sandbox):
    out, state = push_sandbox([("conf", GOOD)])
    assert "platform-push conf: 2 file(s) changed" in out
    assert "== exit 0" in out
    assert state.splitlines() == [
        "./a.conf 640 root:daemon good secret-one",
        "./sub/b.conf 600 root:root b secret-two",
        "./then.log 644 root:root then-ran",
    ]


def test_push_of_the_same_files_changes_nothing_and_runs_nothing(push_sandbox):
    out, state = push_sandbox([("conf", GOOD), ("conf", GOOD)])
    second = out.split("== step 1", 1)[1]
    assert "platform-push conf: no change" in second
    assert "running" not in second
    assert state.count("then-ran") == 1


def test_push_that_fails_its_check_restores_the_old_files_and_reloads_nothing(push_sandbox):
    bad = {"a.conf": "bad secret-three", "b.conf": "b secret-four"}
    out, state = push_sandbox([("conf", GOOD), ("conf", bad)])
    second = out.split("== step 1", 1)[1]
    assert "check failed; previous files restored, nothing reloaded" in second
    assert "== exit 1" in second
    assert state.splitlines() == [
        "./a.conf 640 root:daemon good secret-one",
        "./sub/b.conf 600 root:root b secret-two",
        "./then.log 644 root:root then-ran",
    ]


def test_push_whose_follow_up_failed_runs_it_again_next_time_though_no_file_changed(push_sandbox):
    out, state = push_sandbox([("!", "mkdir -p /etc/platform/test && touch /etc/platform/test/then-fails"),
                               ("conf", GOOD), ("conf", GOOD), ("conf", GOOD)])
    first, second, third = out.split("== step")[1:4]
    assert "== exit 1" in first and "the push stays pending" in out   # its message went to stderr
    assert "running them again" in second and "== exit 0" in second
    assert "platform-push conf: no change" in third
    assert state.count("then-ran") == 1


@pytest.mark.parametrize("new, failure", [
    ("crash", "failed"),                                 # its reload fails (pm2 gave up on a worker)
    ("silent", "/health did not answer within 90s"),     # its reload succeeds, the check stops answering
])
def test_push_naming_a_health_check_puts_the_old_files_back_where_it_answered_before(push_sandbox, new, failure):
    out, state = push_sandbox([("app", {"app.env": "good one"}), ("app", {"app.env": f"{new} two"})],
                              health_server=True)
    second = out.split("== step 1", 1)[1]
    assert "== exit 1" in second
    assert f"{failure}; previous files restored and reloaded" in second
    assert ("does not answer yet; waiting up to 90s" in second) == (new == "silent")
    # The reload ran with the new file, then again with the old one: the server serves again.
    assert state.splitlines() == ["./app.env 640 root:daemon good one", "./then.log 644 root:root reload good",
                                  f"reload {new}", "reload good"]


def test_push_naming_a_health_check_keeps_new_files_where_it_did_not_answer_before(push_sandbox):
    # Not serving before (its datastore down, say): the push may be what fixes it.
    out, state = push_sandbox([("app", {"app.env": "silent one"}), ("app", {"app.env": "good two"})],
                              health_server=True)
    assert out.count("== exit 0") == 2, out
    assert state.splitlines() == ["./app.env 640 root:daemon good two", "./then.log 644 root:root reload silent",
                                  "reload good"]


def test_push_naming_a_health_check_asks_it_nothing_when_no_file_differs(push_sandbox):
    # Only a push that changes something asks (a hung nginx would cost each asking 5 s).
    asked = "echo asked $(grep -c 'GET /health' /var/lib/health-asked.log)"
    out, _ = push_sandbox([("app", {"app.env": "good one"}), ("!", asked), ("app", {"app.env": "good one"}),
                           ("!", asked)], health_server=True)
    assert "platform-push app: no change" in out.split("== step 2", 1)[1]
    assert [line for line in out.splitlines() if line.startswith("asked")] == ["asked 1", "asked 1"], out


def test_first_push_that_fails_its_check_leaves_no_file_behind(push_sandbox):
    out, state = push_sandbox([("conf", {"a.conf": "bad", "b.conf": "b"})])
    assert "check failed" in out
    assert state.strip() == ""


@pytest.mark.parametrize("kind, payload, message", [
    ("nope", GOOD, "unknown push kind 'nope'"),
    ("conf", {**GOOD, "c.conf": "x"}, "unexpected files ['c.conf'], missing files []"),
    ("conf", {"a.conf": "good"}, "unexpected files [], missing files ['b.conf']"),
])
def test_push_refuses_unknown_kinds_and_unexpected_files(push_sandbox, kind, payload, message):
    out, state = push_sandbox([(kind, payload)])
    assert message in out
    assert "== exit 1" in out
    assert state.strip() == ""


def test_push_never_prints_contents(push_sandbox):
    bad = {"a.conf": "bad secret-three", "b.conf": "b secret-four"}
    out, _ = push_sandbox([("conf", GOOD), ("conf", GOOD), ("conf", bad), ("conf", {**bad, "x": "secret-five"})])
    for secret in ("secret-one", "secret-two", "secret-three", "secret-four", "secret-five"):
        assert secret not in out.split("== state", 1)[0]


def test_push_stops_when_provisioning_failed(push_sandbox):
    out, state = push_sandbox([("conf", GOOD)], provisioned=False)
    assert "provisioning failed on this droplet" in out
    assert state.strip() == ""


@pytest.mark.parametrize("role", ROLES)
def test_push_table_of_every_role_is_what_platform_push_reads(role, staging_settings):
    table = json.loads(cloudinit.push_table(role, staging_settings))
    tls = table["tls"]
    assert tls["files"]["server.key"] == {
        "path": conventions.SERVER_KEY_PATH, "mode": "0640", "owner": f"root:{conventions.TLS_KEY_GROUP}"}
    assert tls["then"][0] == ["update-ca-certificates"]
    for kind, spec in table.items():
        for target in spec["files"].values():
            assert set(target) == {"path", "mode", "owner"} and target["path"].startswith("/")
            assert len(target["owner"].split(":")) == 2 and int(target["mode"], 8) <= 0o777
        for argv in spec["check"] + spec["then"]:
            assert argv and all(isinstance(a, str) for a in argv), (kind, argv)


# --- platform-write: the one home of "write a file only when it differs" ----------------


def test_platform_write_writes_only_what_differs_and_provisioning_counts_it(tmp_path, render_role, staging_settings):
    """The program itself, then common.sh's write_file on top of it (what every role's
    provisioning and the datastore's secret files go through)."""
    files = render_role(conventions.LOAD_BALANCER, staging_settings)
    target = "/etc/platform/test/f.conf"
    write = conventions.WRITE_COMMAND
    result = sandboxed(tmp_path, textwrap.dedent(f"""\
        install -D {files[write]} {write}
        step() {{ local name=$1 out; shift; out=$("$@"); echo "== $name: [$out] $(stat -c '%a %U:%G' {target}) $(cat {target})"; }}
        step new {write} {target} 0640 root:daemon <<<one
        step same {write} {target} 0640 root:daemon <<<one
        step content {write} {target} 0640 root:daemon <<<two
        step mode {write} {target} 0600 root:daemon <<<two
        step owner {write} {target} 0600 root:root <<<two
        ls -A /etc/platform/test
        source {files[common.LIBRARY]}
        write_file {target} 0600 root:root <<<two; echo "== write_file same: $CHANGES"
        write_file {target} 0600 root:root <<<three; echo "== write_file new: $CHANGES ${{CHANGED_FILES[*]}}"
        files_changed_under /etc/platform/ && echo "== remembered"
    """))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for line in ("== new: [changed] 640 root:daemon one", "== same: [] 640 root:daemon one",
                 "== content: [changed] 640 root:daemon two", "== mode: [changed] 600 root:daemon two",
                 "== owner: [changed] 600 root:root two", "== write_file same: 0",
                 f"== write_file new: 1 {target}", "== remembered"):
        assert line in out, out
    assert out.split("\n== owner")[1].splitlines()[1] == "f.conf", out  # no temporary file left


# --- shell scripts ---------------------------------------------------------------------


def shellcheck(root: Path) -> subprocess.CompletedProcess:
    """The driver with the files it sources, each checked (-x follows the sources)."""
    require_tool("shellcheck", "shellcheck")
    local = root / "usr/local"
    scripts = [f"sbin/{Path(conventions.PROVISION_COMMAND).name}", f"lib/platform/{Path(common.LIBRARY).name}",
               f"lib/platform/{Path(common.ROLE_STEPS).name}", f"lib/platform/{Path(conventions.HARDENING_LIBRARY).name}"]
    others = [p for p in root.rglob("*") if p.is_file() and p.read_text(errors="replace").startswith("#!/bin/")]
    # Scripts outside /usr/local too (needrestart's restart.d, under /etc).
    others = [str(p) for p in others if not (p.is_relative_to(local) and str(p.relative_to(local)) in scripts)]
    return subprocess.run(["shellcheck", "-x", "-P", "lib/platform", *scripts, *others],
                          cwd=local, capture_output=True, text=True)


@pytest.mark.parametrize("role", ROLES)
def test_every_shell_script_passes_shellcheck(role, stack_settings, render_role):
    files = render_role(role, stack_settings)
    root = Path(str(files[conventions.PROVISION_COMMAND])[: -len(conventions.PROVISION_COMMAND)])
    result = shellcheck(root)
    assert result.returncode == 0, result.stdout


def test_shellcheck_finds_a_bug_in_a_sourced_file(staging_settings, render_role):
    files = render_role(conventions.DATASTORE, staging_settings)
    with open(files[common.LIBRARY], "a") as f:
        f.write('broken() { rm -rf $UNQUOTED_PATH/; }\n')
    root = Path(str(files[conventions.PROVISION_COMMAND])[: -len(conventions.PROVISION_COMMAND)])
    result = shellcheck(root)
    assert result.returncode != 0 and "SC2086" in result.stdout


# --- sshd ---------------------------------------------------------------------------


@pytest.mark.parametrize("role, allowed, forwarding", [
    (conventions.LOAD_BALANCER, "ops deploy", "yes"),
    (conventions.APP_SERVER, "ops deploy", "no"),
    (conventions.DATASTORE, "ops", "no"),
])
def test_sshd_accepts_the_drop_in_keys_only_no_root(tmp_path, role, allowed, forwarding, stack_settings):
    drop_in = cloudinit.render("common/sshd_platform.conf", **cloudinit.template_context(role, stack_settings))
    result = sshd_effective(tmp_path, drop_in)
    assert result.returncode == 0, result.stderr
    effective = set(result.stdout.splitlines())
    assert {"permitrootlogin no", "passwordauthentication no", "kbdinteractiveauthentication no",
            "authenticationmethods publickey", f"allowtcpforwarding {forwarding}"} <= effective
    assert sorted(l for l in effective if l.startswith("allowusers ")) == sorted(
        f"allowusers {u}" for u in allowed.split())


def test_sshd_check_rejects_a_bad_drop_in(tmp_path):
    result = sshd_effective(tmp_path, "PermitRootLogin perhaps\n")
    assert result.returncode != 0 and "drop-in.conf line 1" in result.stderr


# --- unattended upgrades ------------------------------------------------------------


def test_unattended_upgrades_take_security_updates_and_the_vendors_repositories_only_and_never_reboot(tmp_path, staging_settings):
    require_tool("apt-config", "apt")
    parts = tmp_path / "apt.conf.d"
    parts.mkdir()
    # What the distribution's package ships: updates too. Ours must replace it.
    (parts / "50unattended-upgrades").write_text(
        'Unattended-Upgrade::Origins-Pattern { "origin=Debian,codename=${distro_codename},label=Debian"; };\n'
        'Unattended-Upgrade::Allowed-Origins { "${distro_id}:${distro_codename}-updates"; };\n'
        'Unattended-Upgrade::Automatic-Reboot "true";\n')
    (parts / "20auto-upgrades").write_text('APT::Periodic::Unattended-Upgrade "0";\n')
    context = cloudinit.template_context("lb", staging_settings)
    for template, path in (("common/auto-upgrades.conf", common.AUTO_UPGRADES),
                           ("common/unattended-upgrades.conf", common.UNATTENDED_UPGRADES)):
        (parts / Path(path).name).write_text(cloudinit.render(template, **context))
    (tmp_path / "apt.conf").write_text(f'Dir::Etc::Parts "{parts}";\n')
    dump = subprocess.run(["apt-config", "dump"], env={**os.environ, "APT_CONFIG": str(tmp_path / "apt.conf")},
                          capture_output=True, text=True, check=True).stdout
    origins = [l for l in dump.splitlines() if l.startswith("Unattended-Upgrade::Origins-Pattern:: ")
               or l.startswith("Unattended-Upgrade::Allowed-Origins:: ")]
    assert origins == [
        'Unattended-Upgrade::Origins-Pattern:: "origin=Debian,codename=${distro_codename}-security,label=Debian-Security";',
        'Unattended-Upgrade::Origins-Pattern:: "origin=Ubuntu,archive=${distro_codename}-security";',
        'Unattended-Upgrade::Origins-Pattern:: "origin=. nodistro,label=. nodistro,codename=nodistro,site=deb.nodesource.com";',
        'Unattended-Upgrade::Origins-Pattern:: "origin=mongodb,label=mongodb,codename=${distro_codename}/mongodb-org,site=repo.mongodb.org";',
    ]
    assert 'Unattended-Upgrade::Automatic-Reboot "false";' in dump
    assert 'APT::Periodic::Unattended-Upgrade "1";' in dump
    # unattended-upgrades installs an update that ships a new nginx.conf only when dpkg
    # is told what to do with ours (its dpkg_conffile_prompt() looks for these options).
    assert 'DPkg::Options:: "--force-confold";' in dump


# --- needrestart ---------------------------------------------------------------------

# needrestart's own steps: its defaults, each conf.d file evaluated as its needrestart.conf
# does, then its choice per unit (the first override_rc pattern that matches; else restart).
NEEDRESTART_READS = r"""
our %nrconf = (restart => 'i', kernelhints => 1, override_rc => {qr(^dbus) => 0});
eval do { local(@ARGV, $/) = $ARGV[0]; <> };
die "Error parsing $ARGV[0]: $@" if($@);
print "restart=$nrconf{restart} kernelhints=$nrconf{kernelhints}\n";
for my $unit (@ARGV[1..$#ARGV]) {
    my $restart = 1;
    foreach my $re (keys %{$nrconf{override_rc}}) {
        next unless($unit =~ /$re/);
        $restart = $nrconf{override_rc}->{$re};
        last;
    }
    print "$unit=$restart\n";
}
"""
RESTARTED = ["ssh.service", "nginx.service", "platform-apps.service", "mongod.service", "postgresql@15-main.service"]
ONESHOTS = {conventions.LOAD_BALANCER: ["platform-backup.service", "platform-backup-check.service",
                                        "platform-backup-alert.service", "platform-certificate.service"],
            conventions.APP_SERVER: ["platform-backup.service", "platform-backup-check.service"]}


def needrestart_reads(conf: Path, units: list[str]) -> list[str]:
    perl = require_tool("perl", "perl-base")
    result = subprocess.run([perl, "-e", NEEDRESTART_READS, conf, *units], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.parametrize("role", [conventions.LOAD_BALANCER, conventions.APP_SERVER])
def test_needrestart_restarts_services_on_replaced_libraries_without_asking_but_not_the_jobs(
        tmp_path, render_role, staging_settings, role):
    conf = render_role(role, staging_settings)[common.NEEDRESTART_CONF]
    assert subprocess.run([require_tool("perl", "perl-base"), "-c", conf], capture_output=True).returncode == 0
    lines = needrestart_reads(conf, RESTARTED + ONESHOTS[role])
    assert lines == ["restart=a kernelhints=-1"] + [f"{u}=1" for u in RESTARTED] + [f"{u}=0" for u in ONESHOTS[role]]
    # The check can fail: a conf.d file that does not compile stops needrestart.
    broken = tmp_path / "broken.conf"
    broken.write_text(conf.read_text().replace("= 'a';", "= 'a'"))
    assert subprocess.run(["perl", "-e", NEEDRESTART_READS, broken], capture_output=True).returncode != 0


def test_provisioning_installs_needrestart_and_checks_its_conf_with_perl(staging_settings):
    library = cloudinit.rendered_files(conventions.LOAD_BALANCER, staging_settings)[common.LIBRARY]
    (packages,) = re.findall(r"^    ensure_packages (ufw [^\n]*\\\n[^\n]*)$", library, re.M)
    assert {"needrestart", "unattended-upgrades"} <= set(packages.split())
    assert 'perl -c "$conf"' in library and "/etc/needrestart/conf.d/*.conf" in library
