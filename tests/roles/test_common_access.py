"""Who may reach a droplet, checked by the programs that enforce it: ufw mirrors the cloud
firewall, fail2ban bans an internet address and never the VPC's, and each role creates
only its own users.

ufw and fail2ban's ban run in role_checks.sandboxed (private mount and network
namespaces): the real paths are used and the host keeps nothing.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

import cloudinit
from cloudinit import common
from model import conventions

from role_checks import ROLES, require_tool, sandboxed


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
