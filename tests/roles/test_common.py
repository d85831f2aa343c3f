"""What every droplet gets, checked by the programs that read it.

Anything that would touch the host (ufw, logrotate, platform-push's real paths) runs in
role_checks.sandboxed: a private mount namespace with overlays over /etc, /var/lib,
/var/log and /usr/local (and a private network namespace for ufw): the real paths are
used and the host keeps nothing.
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

LIB = "usr/local/lib/platform"


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
    }
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

    def run(steps, provisioned=True):
        lines = [
            f"mkdir -p {conventions.PLATFORM_ETC} {conventions.PLATFORM_STATE}",
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
        result = sandboxed(tmp_path, "\n".join(lines))
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


# --- fail2ban -----------------------------------------------------------------------


def fail2ban_test(tmp_path: Path, jail: str) -> subprocess.CompletedProcess:
    client = require_tool("fail2ban-client", "fail2ban")
    conf = tmp_path / "fail2ban"
    subprocess.run(["cp", "-a", "/etc/fail2ban", conf], check=True)
    (conf / "jail.d/platform.conf").write_text(jail)
    return subprocess.run([client, "-c", conf, "-d"], capture_output=True, text=True)


def test_fail2ban_loads_the_sshd_jail_with_the_systemd_backend(tmp_path, staging_settings):
    jail = cloudinit.render("common/fail2ban-jail.conf", **cloudinit.template_context("lb", staging_settings))
    result = fail2ban_test(tmp_path, jail)
    assert result.returncode == 0, result.stderr
    assert "['add', 'sshd', 'systemd']" in result.stdout
    assert f"'port', '{conventions.SSH_PORT}'" in result.stdout or f"port={conventions.SSH_PORT}" in result.stdout
    # The VPC is never banned (every login behind the LB comes from the LB's address).
    (ignored,) = [line for line in result.stdout.splitlines() if "'addignoreip'" in line]
    assert f"'{staging_settings.vpc_ip_range}'" in ignored, ignored
    # -t: the full test, as `fail2ban-client -t` runs it before a start.
    conf = tmp_path / "fail2ban"
    test = subprocess.run(["fail2ban-client", "-c", conf, "-t"], capture_output=True, text=True)
    assert test.returncode == 0 and "OK" in test.stdout + test.stderr, test.stdout + test.stderr


BAN_SCRIPT = r"""
conf={conf}
f2b() {{ fail2ban-client -c "$conf" -s {work}/f2b.sock -p {work}/f2b.pid "$@"; }}
: > {work}/auth.log
f2b --logtarget {work}/f2b.log start >/dev/null || exit 3
for i in $(seq 10); do
    for address in {internet} {vpc}; do
        echo "$(date '+%b %e %H:%M:%S') lb sshd[$((1000 + i))]: Invalid user intruder$i from $address port $((40000 + i))"
    done
done >> {work}/auth.log
for i in $(seq 100); do f2b status sshd | grep -q 'Currently banned:.*[1-9]' && break; sleep 0.2; done
f2b status sshd
f2b stop >/dev/null
"""


def test_the_jail_bans_an_internet_address_and_never_the_vpcs(tmp_path, staging_settings):
    """fail2ban itself, with the rendered jail (only its log source and its action swapped:
    a file for the journal, `dummy` for iptables): ten failed logins from an internet
    address ban it, as on the LB; ten from a VPC address (the LB's, as an app server or
    the datastore sees every login) ban nothing."""
    require_tool("fail2ban-client", "fail2ban")
    import ipaddress
    jail = cloudinit.render("common/fail2ban-jail.conf", **cloudinit.template_context("lb", staging_settings))
    conf = tmp_path / "fail2ban"
    subprocess.run(["cp", "-a", "/etc/fail2ban", conf], check=True)
    (conf / "jail.d/platform.conf").write_text(jail)
    # A .local file overrides its .conf's keys only: the rest (ignoreip, maxretry) is the rendered jail's.
    (conf / "jail.d/platform.local").write_text(
        f"[sshd]\nbackend = polling\nlogpath = {tmp_path}/auth.log\nbanaction = dummy\naction = dummy\n")
    vpc = str(next(ipaddress.ip_network(staging_settings.vpc_ip_range).hosts()) + 4)
    script = BAN_SCRIPT.format(conf=conf, work=tmp_path, internet="203.0.113.7", vpc=vpc)
    result = sandboxed(tmp_path, script)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out + (tmp_path / "f2b.log").read_text()
    (banned,) = [line.split(":", 1)[1].split() for line in out.splitlines() if "Banned IP list:" in line]
    assert banned == ["203.0.113.7"], out
    assert f"Ignore {vpc} by ip" in (tmp_path / "f2b.log").read_text()


def test_fail2ban_check_rejects_a_bad_jail(tmp_path):
    result = fail2ban_test(tmp_path, "[sshd]\nenabled = true\nfilter = no-such-filter\n")
    assert result.returncode != 0


# --- logrotate ----------------------------------------------------------------------


def test_logrotate_rotates_every_platform_log(tmp_path, render_role, staging_settings):
    require_tool("logrotate", "logrotate")
    files = render_role(conventions.LOAD_BALANCER, staging_settings)
    config = files[common.LOGROTATE]
    log = conventions.PROVISION_LOG
    result = sandboxed(tmp_path, textwrap.dedent(f"""\
        mkdir -p {conventions.PLATFORM_LOG_DIR}
        echo first-run > {log}; echo other > {conventions.PLATFORM_LOG_DIR}/other.log
        logrotate -d {config} 2>&1 | grep -i error && exit 3
        logrotate -f -s {tmp_path}/state {config} || exit 4
        ls {conventions.PLATFORM_LOG_DIR}; echo "size=$(stat -c %s {log})"; cat {log}.1
    """))
    assert result.returncode == 0, result.stdout + result.stderr
    listing = result.stdout.split()
    assert {"provision.log", "provision.log.1", "other.log", "other.log.1"} <= set(listing)
    assert "size=0" in result.stdout and "first-run" in result.stdout


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


# --- ufw ----------------------------------------------------------------------------


def firewall_run(tmp_path: Path, files: dict, rules_text: str | None = None, runs: int = 2):
    """Runs the library's ensure_firewall `runs` times in a private network namespace."""
    require_tool("ufw", "ufw")
    rules = files[conventions.FIREWALL_RULES_FILE]
    edited = tmp_path / "edited.rules"
    if rules_text is not None:
        edited.write_text(rules_text)
    script = [f"source {files[common.LIBRARY]}"]
    for i in range(runs):
        target = edited if (rules_text is not None and i == runs - 1) else rules
        script.append(f"CHANGES=0; ensure_firewall {target} || exit 5; echo \"== run {i}: $CHANGES change(s)\"")
    script.append("echo '== added'; ufw show added | sed -n 's/^ufw //p'; echo '== status'; ufw status verbose; "
                  "echo '== iptables'; iptables -S ufw-user-input")
    result = sandboxed(tmp_path, "\n".join(script), network=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def rule_lines(path: Path) -> list[str]:
    return [l for l in path.read_text().splitlines() if l and not l.startswith("#")]


@pytest.mark.parametrize("role", ROLES)
def test_ufw_mirrors_the_cloud_firewall_and_a_second_run_changes_nothing(tmp_path, role, stack_settings, render_role):
    files = render_role(role, stack_settings)
    wanted = rule_lines(files[conventions.FIREWALL_RULES_FILE])
    out = firewall_run(tmp_path, files)
    assert "== run 0: 0 change(s)" not in out
    assert "== run 1: 0 change(s)" in out
    added = out.split("== added\n", 1)[1].split("== status", 1)[0].splitlines()
    assert sorted(added) == sorted(wanted)
    assert "Status: active" in out and "Default: deny (incoming), allow (outgoing)" in out
    # Every port of the cloud firewall is opened, and only from where it allows.
    ssh_sources = {l.split()[2] for l in wanted if f"port {conventions.SSH_PORT} " in l}
    if role == conventions.LOAD_BALANCER:
        assert ssh_sources == {c.removesuffix("/32") for c in stack_settings.admin_cidrs}
        assert f"allow {conventions.HTTPS_PORT}/tcp" in wanted
    else:
        assert ssh_sources == {stack_settings.vpc_ip_range}
    iptables = out.split("== iptables\n", 1)[1]
    assert f"-s {stack_settings.vpc_ip_range if role != 'lb' else stack_settings.admin_cidrs[0]} " \
           f"-p tcp -m tcp --dport {conventions.SSH_PORT} -j ACCEPT" in iptables


def test_ufw_applies_only_the_difference_when_the_rules_change(tmp_path, staging_settings, render_role):
    files = render_role(conventions.APP_SERVER, staging_settings)
    wanted = rule_lines(files[conventions.FIREWALL_RULES_FILE])
    changed = wanted[1:] + ["allow from 10.9.9.0/24 to any port 9999 proto tcp"]
    out = firewall_run(tmp_path, files, rules_text="\n".join(changed) + "\n", runs=2)
    assert "== run 1: 2 change(s)" in out
    added = out.split("== added\n", 1)[1].split("== status", 1)[0].splitlines()
    assert sorted(added) == sorted(changed)


def test_every_role_creates_only_its_own_users(staging_settings):
    for role in ROLES:
        library = cloudinit.rendered_files(role, staging_settings)[common.LIBRARY]
        created = sorted(l.split()[1] for l in library.splitlines() if l.strip().startswith("ensure_user "))
        assert created == sorted(u.name for u in conventions.ROLE_USERS[role])
    # The LB's one account: deploy, passing through to the app servers, with no shell.
    (jump,) = conventions.ROLE_USERS[conventions.LOAD_BALANCER]
    assert (jump.name, jump.jump_only, jump.shell) == (conventions.DEPLOY_USER, True, "/usr/sbin/nologin")
    library = cloudinit.rendered_files(conventions.LOAD_BALANCER, staging_settings)[common.LIBRARY]
    assert f"ensure_user {conventions.DEPLOY_USER} {conventions.DEPLOY_HOME} /usr/sbin/nologin" in library


@pytest.mark.parametrize("role, change", [
    (conventions.DATASTORE, {"engines": ["postgresql"]}),
    (conventions.LOAD_BALANCER, {"adminCidrs": ["198.51.100.7/32", "203.0.113.0/24"]}),
], ids=["datastore-engines", "lb-admin-cidrs"])
def test_ufw_follows_a_settings_change_and_back(tmp_path, role, change, staging_settings, render_role):
    """Provisioning's firewall step (the rules file installed from the staged bundle, then
    ensure_firewall) run on the settings, the changed settings, and the first ones again:
    ufw holds exactly each one's rules, and the ports and sources the change dropped are
    closed."""
    import mockcloud
    require_tool("ufw", "ufw")
    changed_settings = mockcloud.stack_settings("staging", **change)
    stages = [("before", staging_settings), ("after", changed_settings), ("back", staging_settings)]
    rendered = {name: render_role(role, settings) for name, settings in stages}
    path = conventions.FIREWALL_RULES_FILE
    write = conventions.WRITE_COMMAND
    script = [f"install -D {rendered['before'][write]} {write}", f"source {rendered['before'][common.LIBRARY]}"]
    for name, _ in stages + [("steady", staging_settings)]:
        files = rendered["before" if name == "steady" else name]
        root = str(files[path])[: -len(path)]
        script.append(f"CHANGES=0; STAGED_FILES={root}; install_config {path} 0644 root:root && "
                      f"ensure_firewall {path} || exit 5; echo \"== {name}: $CHANGES change(s)\"; "
                      f"ufw show added | sed -n 's/^ufw /rule: /p'; iptables -S ufw-user-input | sed 's/^/ipt: /'")
    result = sandboxed(tmp_path, "\n".join(script), network=True)
    assert result.returncode == 0, result.stdout + result.stderr
    blocks = dict(re.findall(r"^== (\w+): \d+ change\(s\)\n(.*?)(?=^== |\Z)", result.stdout, re.M | re.S))
    for name, settings in stages:
        wanted = rule_lines(rendered[name][path])
        got = [l.removeprefix("rule: ") for l in blocks[name].splitlines() if l.startswith("rule: ")]
        assert sorted(got) == sorted(wanted), (name, result.stdout)
    assert "== steady: 0 change(s)" in result.stdout
    after = blocks["after"]
    if role == conventions.DATASTORE:
        for engine in set(staging_settings.engines) - set(change["engines"]):
            assert f"--dport {conventions.ENGINES[engine].tls_port} " not in after, after
        assert f"--dport {conventions.ENGINES['postgresql'].tls_port} -j ACCEPT" in after
    else:
        for cidr in staging_settings.admin_cidrs:
            assert f"-s {cidr} " not in after and f"-s {cidr.removesuffix('/32')} " not in after, after
        assert f"-s 203.0.113.0/24 -p tcp -m tcp --dport {conventions.SSH_PORT} -j ACCEPT" in after
        assert f"-s 198.51.100.7/32 -p tcp -m tcp --dport {conventions.SSH_PORT} -j ACCEPT" in after
