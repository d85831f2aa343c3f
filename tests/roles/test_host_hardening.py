"""Host hardening every droplet gets: its kernel settings (applied as provisioning applies
them, on a VM and in a container), the unused protocols' modules, the weekly package
integrity check. (Core dumps and the login umask are checked through a real sshd login in
test_sshd_hardening.py.)

The kernel settings are applied in role_checks.sandboxed with a private network: its net.*
keys are the sandbox's own. /proc/sys is made read-only there with /proc/sys/net writable,
as systemd-nspawn mounts it for a container with its own network (the local droplets), so
no key of the host's kernel is ever written.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import cloudinit
from cloudinit import common
from model import conventions

from role_checks import require_tool, sandboxed

ROLE = conventions.APP_SERVER
# As systemd-nspawn mounts /proc/sys for a container with a private network.
CONTAINER_PROC_SYS = ("mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && "
                      "mount --bind /proc/sys/net /proc/sys/net && mount -o remount,bind,rw /proc/sys/net")
NET_KEYS = ["net.ipv4.conf.{}.rp_filter", "net.ipv4.conf.{}.accept_redirects", "net.ipv4.conf.{}.secure_redirects",
            "net.ipv4.conf.{}.send_redirects", "net.ipv4.conf.{}.accept_source_route",
            "net.ipv6.conf.{}.accept_redirects", "net.ipv6.conf.{}.accept_source_route"]


def library(tmp_path: Path, settings) -> dict[str, str]:
    files = cloudinit.rendered_files(ROLE, settings)
    (tmp_path / "common.sh").write_text(files[common.LIBRARY])
    (tmp_path / "hardening.sh").write_text(files[conventions.HARDENING_LIBRARY])
    (tmp_path / "hardening.conf").write_text(files[conventions.HARDENING_SYSCTL_FILE])
    return files


def test_the_kernel_settings_apply_in_a_container_all_but_the_hosts_keys_and_once(tmp_path, staging_settings):
    library(tmp_path, staging_settings)
    interfaces = ("all", "default", "lo", "v0")
    show = " ".join(key.format(i) for key in NET_KEYS for i in interfaces) + " net.ipv4.tcp_syncookies"
    result = sandboxed(tmp_path, textwrap.dedent(f"""\
        set -e
        # An interface that exists before the settings apply, as eth0 does on a droplet.
        ip link add v0 type veth peer name v1
        sysctl -q -w net.ipv4.conf.v0.accept_redirects=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.tcp_syncookies=0
        {CONTAINER_PROC_SYS}
        set +e
        source {tmp_path}/common.sh; source {tmp_path}/hardening.sh
        in_container() {{ true; }}
        ensure_sysctl {tmp_path}/hardening.conf; echo "== first: $? $CHANGES"
        sysctl {show}
        ensure_sysctl {tmp_path}/hardening.conf; echo "== second: $? $CHANGES"
    """), network=True)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "== first: 0 1\n" in out and "== second: 0 1\n" in out, out
    values = dict(line.split(" = ") for line in out.splitlines() if " = " in line and "platform-provision" not in line)
    expected = {key.format(i): "1" if "rp_filter" in key else "0" for key in NET_KEYS for i in interfaces}
    assert {key: values.get(key) for key in expected} == expected
    assert values["net.ipv4.tcp_syncookies"] == "1"


def test_outside_a_container_a_key_that_cannot_be_set_fails_and_in_one_it_is_named(tmp_path, staging_settings):
    """Read-only keys are tolerated only in a container (the host's kernel is not its own)."""
    library(tmp_path, staging_settings)
    # A value the host's kernel does not have (nothing is written: /proc/sys is read-only).
    current = Path("/proc/sys/kernel/core_uses_pid").read_text().strip()
    (tmp_path / "kernel.conf").write_text(f"kernel.core_uses_pid = {1 - int(current)}\nnet.ipv4.tcp_syncookies = 1\n")
    result = sandboxed(tmp_path, textwrap.dedent(f"""\
        {CONTAINER_PROC_SYS} || exit 9
        source {tmp_path}/common.sh; source {tmp_path}/hardening.sh
        in_container() {{ false; }}
        ensure_sysctl {tmp_path}/kernel.conf; echo "== vm: $?"
        in_container() {{ true; }}
        ensure_sysctl {tmp_path}/kernel.conf; echo "== container: $?"
    """), network=True)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "== vm: 1\n" in out and 'permission denied on key "kernel.core_uses_pid"' in result.stderr, out + result.stderr
    assert "== container: 0\n" in out, out
    assert "sysctl: read-only in this container, left to the host: kernel.core_uses_pid" in out
    assert Path("/proc/sys/kernel/core_uses_pid").read_text().strip() == current


def test_the_unused_protocols_modules_are_never_loaded(tmp_path, staging_settings):
    modprobe = require_tool("modprobe", "kmod")
    files = cloudinit.rendered_files(ROLE, staging_settings)
    (tmp_path / "blacklist.conf").write_text(files[common.MODPROBE_BLACKLIST])
    for module in ("dccp", "sctp", "rds", "tipc"):
        result = subprocess.run([modprobe, "--dry-run", "--verbose", "-C", tmp_path / "blacklist.conf", module],
                                capture_output=True, text=True)
        assert result.returncode == 0 and result.stdout.split() == ["install", "/bin/false"], (module, result)


def test_the_weekly_integrity_check_fails_on_a_changed_packaged_file(tmp_path, staging_settings):
    """The unit's command, limited to one package: a file that no longer matches its
    package's checksum fails it and is named (the package database is the sandbox's copy)."""
    require_tool("debsums", "debsums")
    require_tool("sshd", "openssh-server")
    files = cloudinit.rendered_files(ROLE, staging_settings)
    for path in (common.INTEGRITY_SERVICE, common.INTEGRITY_TIMER):
        (tmp_path / Path(path).name).write_text(files[path])
    verify = subprocess.run(["systemd-analyze", "verify", *(tmp_path / Path(p).name for p in
                                                          (common.INTEGRITY_SERVICE, common.INTEGRITY_TIMER))],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    (command,) = [line.split("=", 1)[1] for line in files[common.INTEGRITY_SERVICE].splitlines()
                  if line.startswith("ExecStart=")]
    sums = "/var/lib/dpkg/info/openssh-server.md5sums"
    result = sandboxed(tmp_path, textwrap.dedent(f"""\
        {command} openssh-server; echo "== intact: $?"
        sed -i 's|^[0-9a-f]*  usr/sbin/sshd$|00000000000000000000000000000000  usr/sbin/sshd|' {sums}
        {command} openssh-server; echo "== changed: $?"
    """))
    assert "== intact: 0\n" in result.stdout, result.stdout + result.stderr
    assert "/usr/sbin/sshd\n== changed: 2\n" in result.stdout, result.stdout + result.stderr
