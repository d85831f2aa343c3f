"""sshd as a droplet runs it: the platform's drop-in in a real sshd, logged in to by the
program's own clients, audited by ssh-audit.

Each test runs in role_checks.sandboxed with a private network: the host's /etc/ssh with
the drop-in installed as provisioning installs it, fresh host keys of every type (as
Debian makes them), an `ops` login whose keys come from provisioning's own step
(ensure_automation_key, reading the first-boot user data), and sshd on port 22 of the
sandbox's loopback. The clients are the local cloud's copy of pulumi-command's client
(localcloud/pulumi_ssh.py, paramiko) and OpenSSH with the deploy tool's options.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import cloudinit
from cloudinit import common
from components import ssh
from model import conventions

import sshd_audit
from role_checks import require_tool, sandboxed

ROOT = Path(__file__).resolve().parents[2]
ROLE = conventions.LOAD_BALANCER
LOGIN = conventions.OPERATOR_USER
HOME = f"/var/lib/test-{LOGIN}-home"
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key"

PARAMIKO_LOGIN = """\
import sys
sys.path.insert(0, sys.argv[1])
from localcloud import pulumi_ssh

key_file, host_key_file, command = sys.argv[2:]
host_key = " ".join(open(host_key_file).read().split()[:2])
hop = pulumi_ssh.Hop("127.0.0.1", "{login}", open(key_file).read(), dial_error_limit=1, host_key=host_key)
log = lambda line: print(line, file=sys.stderr)
connection = pulumi_ssh.dial(hop, None, log)
transport = connection.transport
print(f"negotiated cipher={{transport.local_cipher}}/{{transport.remote_cipher}}"
      f" host_key={{transport.host_key_type}}")
print(f"banner={{(transport.get_banner() or b'').decode()!r}}")
connection.close()
code, output = pulumi_ssh.run(hop, None, command, log=log)
print(f"exit={{code}} output={{output.strip()}}")
"""


def rendered(role: str, settings) -> dict[str, str]:
    return cloudinit.rendered_files(role, settings)


def sshd_script(tmp_path: Path, settings, clients: str, *, drop_in: str | None = None) -> str:
    """bash: sshd set up as on a droplet, then `clients` (automation_key(tmp_path) logs in)."""
    require_tool("sshd", "openssh-server")
    files = rendered(ROLE, settings)
    drop_in = files[common.SSHD_DROP_IN] if drop_in is None else drop_in
    (tmp_path / "drop-in.conf").write_text(drop_in)
    (tmp_path / "banner").write_text(files[conventions.LOGIN_BANNER_FILE])
    (tmp_path / "no-core-dumps.conf").write_text(files[common.NO_CORE_DUMPS])
    (tmp_path / "umask.sh").write_text(files[common.LOGIN_UMASK])
    (tmp_path / "common.sh").write_text(files[common.LIBRARY])
    (tmp_path / "hardening.sh").write_text(files[conventions.HARDENING_LIBRARY])
    (tmp_path / "platform-write").write_text(files[conventions.WRITE_COMMAND])
    (tmp_path / "paramiko_login.py").write_text(PARAMIKO_LOGIN.format(login=LOGIN))
    user_data = cloudinit.first_boot(ROLE, settings.stack, Path(automation_key(tmp_path) + ".pub").read_text().strip())
    (tmp_path / "user-data.txt").write_text(user_data)
    return textwrap.dedent(f"""\
        set -e
        ip link set lo up
        # Host keys of every type, as Debian's first boot makes them: the drop-in picks one.
        rm -f /etc/ssh/ssh_host_*
        ssh-keygen -q -A
        rm -f /etc/ssh/sshd_config.d/*
        install -m 0644 {tmp_path}/drop-in.conf {common.SSHD_DROP_IN}
        install -m 0644 {tmp_path}/banner {conventions.LOGIN_BANNER_FILE}
        install -m 0644 {tmp_path}/no-core-dumps.conf {common.NO_CORE_DUMPS}
        install -m 0644 {tmp_path}/umask.sh {common.LOGIN_UMASK}
        useradd -M -d {HOME} -s /bin/bash {LOGIN}
        install -d -o {LOGIN} -g {LOGIN} -m 0700 {HOME} {HOME}/.ssh
        # The automation key reaches {conventions.LOGIN_KEYS_DIR} as provisioning puts it there.
        install -D -m 0600 {tmp_path}/user-data.txt {conventions.FIRST_BOOT_USER_DATA}
        install -D -m 0755 {tmp_path}/platform-write {conventions.WRITE_COMMAND}
        source {tmp_path}/common.sh; source {tmp_path}/hardening.sh
        ensure_dir {conventions.LOGIN_KEYS_DIR} 0755 root:root >/dev/null
        ensure_automation_key >/dev/null
        mkdir -p /run/sshd
        /usr/sbin/sshd -t
        /usr/sbin/sshd -D -e -p 22 2> {tmp_path}/sshd.log &
        for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/22) 2>/dev/null && break; sleep 0.1; done
        set +e
        printf '127.0.0.1 %s\\n' "$(cut -d' ' -f1,2 {HOST_KEY}.pub)" > {tmp_path}/known_hosts
    """) + clients


def automation_key(tmp_path: Path) -> str:
    """The program's key (made once per test): first boot gives it to the login."""
    key = tmp_path / "automation"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "automation", "-f", key], check=True)
    return str(key)


def openssh(tmp_path: Path, key: str, command: str) -> str:
    """OpenSSH's login with the deploy tool's options: the pinned host key, batch mode."""
    options = ssh.openssh_options(identity=key, known_hosts=str(tmp_path / "known_hosts"))
    return shlex.join(["ssh", *options, ssh.login("127.0.0.1"), command])


def paramiko(tmp_path: Path, key: str, command: str) -> str:
    return shlex.join([sys.executable, str(tmp_path / "paramiko_login.py"), str(ROOT), key, f"{HOST_KEY}.pub", command])


def run(tmp_path: Path, settings, clients: str, **options) -> subprocess.CompletedProcess:
    result = sandboxed(tmp_path, sshd_script(tmp_path, settings, clients, **options), network=True)
    log = (tmp_path / "sshd.log").read_text() if (tmp_path / "sshd.log").exists() else ""
    result.stderr += "\n--- sshd ---\n" + log
    return result


def marked(stdout: str, name: str) -> str:
    """What the script printed between `== name` and the next marker."""
    match = re.search(rf"^== {re.escape(name)}\n(.*?)(?=^== |\Z)", stdout, re.S | re.M)
    assert match, f"no section {name!r} in:\n{stdout}"
    return match.group(1)


def test_the_programs_clients_log_in_to_the_hardened_sshd(tmp_path, staging_settings):
    """pulumi-command's client (as the local cloud mirrors it) and OpenSSH (the deploy tool,
    the boot gate) both negotiate with the drop-in and log in with the automation key."""
    clients = textwrap.dedent(f"""\
        echo '== paramiko'; {paramiko(tmp_path, automation_key(tmp_path), "id -un")} 2>&1; echo "rc=$?"
        echo '== openssh'; {openssh(tmp_path, automation_key(tmp_path), "id -un")} 2>&1; echo "rc=$?"
    """)
    result = run(tmp_path, staging_settings, clients)
    assert result.returncode == 0, result.stdout + result.stderr
    through_paramiko = marked(result.stdout, "paramiko")
    assert f"exit=0 output={LOGIN}\nrc=0" in through_paramiko, result.stdout + result.stderr
    # paramiko has no chacha20-poly1305: an AES-GCM cipher is what it shares with sshd.
    assert re.search(r"cipher=aes(128|256)-gcm@openssh.com/aes(128|256)-gcm@openssh.com "
                     r"host_key=ssh-ed25519", through_paramiko), through_paramiko
    banner = rendered(ROLE, staging_settings)[conventions.LOGIN_BANNER_FILE]
    assert f"banner={banner!r}" in through_paramiko
    assert marked(result.stdout, "openssh") == f"{LOGIN}\nrc=0\n", result.stdout + result.stderr


def test_sshd_offers_only_modern_algorithms_and_the_ed25519_host_key(tmp_path, staging_settings):
    result = run(tmp_path, staging_settings, "echo '== effective'; sshd -T -C user=ops,host=h,addr=127.0.0.1\n")
    assert result.returncode == 0, result.stdout + result.stderr
    effective = marked(result.stdout, "effective").splitlines()
    settings = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in effective if " " in line}
    assert settings["kexalgorithms"] == "curve25519-sha256,curve25519-sha256@libssh.org"
    assert settings["ciphers"] == "chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-gcm@openssh.com"
    assert settings["macs"] == "hmac-sha2-512-etm@openssh.com,hmac-sha2-256-etm@openssh.com"
    assert settings["hostkeyalgorithms"] == "ssh-ed25519"
    assert [line for line in effective if line.startswith("hostkey ")] == [f"hostkey {HOST_KEY}"]
    assert settings["authorizedkeysfile"] == f"{conventions.LOGIN_KEYS_DIR}/%u"
    assert settings["banner"] == conventions.LOGIN_BANNER_FILE


def test_a_key_only_in_the_logins_own_authorized_keys_is_refused(tmp_path, staging_settings):
    """A login that writes ~/.ssh/authorized_keys gains nothing: sshd reads root's files only."""
    planted = tmp_path / "planted"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", planted], check=True)
    clients = textwrap.dedent(f"""\
        install -o {LOGIN} -g {LOGIN} -m 0600 {planted}.pub {HOME}/.ssh/authorized_keys
        cat {automation_key(tmp_path)}.pub >> {HOME}/.ssh/authorized_keys
        echo '== planted openssh'; {openssh(tmp_path, str(planted), "id -un")} 2>&1; echo "rc=$?"
        echo '== planted paramiko'; {paramiko(tmp_path, str(planted), "id -un")} 2>&1 | tail -n 1; echo "rc=$?"
        echo '== automation'; {openssh(tmp_path, automation_key(tmp_path), "id -un")} 2>&1; echo "rc=$?"
    """)
    result = run(tmp_path, staging_settings, clients)
    assert result.returncode == 0, result.stdout + result.stderr
    refused = marked(result.stdout, "planted openssh")
    assert "Permission denied (publickey)" in refused and refused.endswith("rc=255\n"), result.stdout + result.stderr
    assert "Authentication failed" in marked(result.stdout, "planted paramiko"), result.stdout
    assert marked(result.stdout, "automation") == f"{LOGIN}\nrc=0\n", result.stdout + result.stderr


def test_a_login_gets_no_core_dumps_and_its_login_shell_umask_027_its_commands_022(tmp_path, staging_settings):
    """pam_limits (sshd's PAM session) caps core dumps at 0 for the login; a login shell (an
    operator's) creates files others cannot read, while the commands the program and the
    deploy tool run keep 022, which the services' files rely on."""
    key = automation_key(tmp_path)
    clients = textwrap.dedent(f"""\
        echo '== command'; {openssh(tmp_path, key, "ulimit -H -c; umask")} 2>&1; echo "rc=$?"
        echo '== login shell'; {openssh(tmp_path, key, "bash -l -c umask")} 2>&1; echo "rc=$?"
    """)
    result = run(tmp_path, staging_settings, clients)
    assert result.returncode == 0, result.stdout + result.stderr
    assert marked(result.stdout, "command") == "0\n0022\nrc=0\n", result.stdout + result.stderr
    assert marked(result.stdout, "login shell") == "0027\nrc=0\n", result.stdout + result.stderr


def audit(tmp_path: Path, settings, **options) -> dict:
    clients = f"echo '== audit'; {shlex.join(sshd_audit.command('127.0.0.1'))}; echo\n"
    result = run(tmp_path, settings, clients, **options)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(marked(result.stdout, "audit"))


def test_ssh_audit_finds_no_failure_and_only_the_accepted_warnings(tmp_path, staging_settings):
    report = audit(tmp_path, staging_settings)
    assert sshd_audit.problems(report) == []
    assert sshd_audit.findings(report)[1] == sshd_audit.ACCEPTED_WARNINGS


def test_ssh_audit_fails_debians_default_algorithms(tmp_path, staging_settings):
    """The audit's check itself: without the drop-in's algorithm lines, it finds failures."""
    drop_in = rendered(ROLE, staging_settings)[common.SSHD_DROP_IN]
    crypto = ("HostKey ", "HostKeyAlgorithms ", "KexAlgorithms ", "Ciphers ", "MACs ")
    stock = "".join(line for line in drop_in.splitlines(keepends=True) if not line.startswith(crypto))
    report = audit(tmp_path, staging_settings, drop_in=stock)
    failures, warnings = sshd_audit.findings(report)
    assert failures and set(warnings) - set(sshd_audit.ACCEPTED_WARNINGS), (failures, warnings)
    assert any(problem.startswith("host keys offered") for problem in sshd_audit.problems(report))


# --- The automation key, placed by provisioning ---------------------------------------


def test_provisioning_adds_the_automation_key_to_the_operator_logins_file_keeping_the_rest(tmp_path, staging_settings):
    """From the first-boot user data (root's), not from ~/.ssh; the operators' keys already
    in the file stay; a second run changes nothing; user data without the key fails."""
    files = rendered(ROLE, staging_settings)
    (tmp_path / "common.sh").write_text(files[common.LIBRARY])
    (tmp_path / "hardening.sh").write_text(files[conventions.HARDENING_LIBRARY])
    (tmp_path / "platform-write").write_text(files[conventions.WRITE_COMMAND])
    automation = Path(automation_key(tmp_path) + ".pub").read_text().strip()
    (tmp_path / "user-data.txt").write_text(cloudinit.first_boot(ROLE, staging_settings.stack, automation))
    keys = f"{conventions.LOGIN_KEYS_DIR}/{LOGIN}"
    result = sandboxed(tmp_path, textwrap.dedent(f"""\
        install -D -m 0755 {tmp_path}/platform-write {conventions.WRITE_COMMAND}
        install -D -m 0600 {tmp_path}/user-data.txt {conventions.FIRST_BOOT_USER_DATA}
        install -d -m 0755 {conventions.LOGIN_KEYS_DIR}
        echo 'ssh-ed25519 AAAAoperator operator' > {keys}
        source {tmp_path}/common.sh; source {tmp_path}/hardening.sh
        ensure_automation_key >/dev/null; echo "== first: $CHANGES $(stat -c '%a %U:%G' {keys})"; cat {keys}
        ensure_automation_key; echo "== second: $CHANGES"
        echo '#cloud-config' > {conventions.FIRST_BOOT_USER_DATA}
        ensure_automation_key; echo "== no key: $?"
    """))
    assert result.returncode == 0, result.stdout + result.stderr
    assert marked(result.stdout, "first: 1 644 root:root") == f"ssh-ed25519 AAAAoperator operator\n{automation}\n"
    assert "== second: 1\n" in result.stdout
    assert "== no key: 1" in result.stdout
    assert f"{conventions.FIRST_BOOT_USER_DATA} gives {LOGIN} no key" in result.stderr


def test_the_automation_key_is_in_place_before_sshd_reads_the_drop_in(staging_settings):
    """Provisioning's order: the login's keys, then the config files (the drop-in), then the
    sshd reload."""
    library = rendered(ROLE, staging_settings)[common.LIBRARY]
    steps = library[library.index("common_steps() {"):]
    order = [steps.index(text) for text in ('step "login keys"', "    ensure_automation_key\n",
                                            'step "config files"', 'step "sshd"')]
    assert order == sorted(order), order
