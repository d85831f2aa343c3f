"""The common provisioning on a real booted Debian 12 droplet (the local cloud), twice.

The droplet boots the real first-boot cloud-config of an app server, then receives its
bundle with one change: its role steps are empty and its TLS push reloads nothing but the
CA store (nginx, pm2 and the rest are proven by the local stack). The bundle's install
runs provisioning once; running it again must report `0 change(s)` and restart nothing.

It boots a droplet (a container, packages through the local cloud's proxy): tier
`localcloud`, not its folder's `sandbox`; `pytest -m localcloud` runs it.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

import cloudinit
from cloudinit import common
from model import conventions

from role_checks import require_tool

pytestmark = pytest.mark.localcloud

DROPLET = "roles-common"
ROLE = conventions.APP_SERVER
NO_ROLE_STEPS = "# shellcheck shell=bash\nrole_steps() { :; }\n"
NSPAWN_SETTINGS = Path(f"/run/systemd/nspawn/{DROPLET}.nspawn")
FINISHED = re.compile(r"provisioning finished: (\d+) change\(s\)")


def common_only_bundle(settings) -> cloudinit.Bundle:
    """The role's bundle with empty role steps and a TLS push that reloads only the CA store."""
    files = cloudinit.placed_files(ROLE, settings)
    files[common.ROLE_STEPS] = (NO_ROLE_STEPS, files[common.ROLE_STEPS][1])
    table = json.loads(files[cloudinit.PUSH_TABLE][0])
    files[cloudinit.PUSH_TABLE] = (json.dumps({"tls": {**table["tls"], "then": [["update-ca-certificates"]]}}), "0644")
    return cloudinit.bundle(ROLE, settings, files)


@pytest.fixture(scope="module")
def droplet(staging_settings, tmp_path_factory, local_cloud_to_ourselves):
    from localcloud import cloud, droplet as lc_droplet

    # A droplet is a VM that runs its own firewall: the container needs CAP_NET_ADMIN,
    # which nspawn drops by default. A trusted settings file grants it to this machine.
    # (The local cloud should grant it to every droplet; see the report.)
    NSPAWN_SETTINGS.parent.mkdir(parents=True, exist_ok=True)
    NSPAWN_SETTINGS.write_text("[Exec]\nCapability=CAP_NET_ADMIN\n")
    keys = tmp_path_factory.mktemp("keys")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keys / "automation"], check=True)
    user_data = cloudinit.first_boot(ROLE, staging_settings.stack, (keys / "automation.pub").read_text().strip())

    def run(argv, check=True, input=None):
        # Started by the droplet's own systemd, so with the droplet's privileges (nsenter
        # alone would lend it the host's capabilities).
        unit = ["systemd-run", "--quiet", "--wait", "--pipe", "--collect", "--"]
        return lc_droplet.exec(DROPLET, [*unit, *argv], check=check, input=input, timeout=900)

    try:
        cloud.up([cloud.DropletSpec(DROPLET, user_data, tags=(f"{staging_settings.stack}-{ROLE}",))], timeout=900)
        bundle = common_only_bundle(staging_settings)
        installed = run([conventions.BUNDLE_COMMAND, bundle.digest], check=False, input=bundle.payload)
        assert installed.returncode == 0, installed.stdout[-3000:]
        yield run
    finally:
        if DROPLET in cloud.status():  # another run's teardown may have removed it already
            cloud.destroy(DROPLET)
        NSPAWN_SETTINGS.unlink(missing_ok=True)


def provision(run) -> tuple[int, str]:
    result = run([conventions.PROVISION_COMMAND], check=False)
    out = result.stdout  # stdout and stderr together
    assert result.returncode == 0, out
    return int(FINISHED.findall(out)[-1]), out


def main_pids(run) -> dict[str, str]:
    units = ["fail2ban", "ssh", "systemd-journald"]
    return {u: run(["systemctl", "show", "-p", "MainPID", "--value", u]).stdout.strip() for u in units}


def test_the_first_bundle_provisioned_with_changes(droplet):
    assert droplet(["test", "-f", conventions.PROVISIONED_MARKER], check=False).returncode == 0
    assert droplet(["test", "-f", conventions.PROVISION_FAILED_MARKER], check=False).returncode != 0
    log = droplet(["cat", conventions.PROVISION_LOG]).stdout
    (first,) = [int(n) for n in FINISHED.findall(log)]
    assert first > 0, log
    # The bundle's install held the droplet lock, provisioning inside its hold, and let it go.
    lock_log = droplet(["cat", conventions.DROPLET_LOCK_LOG]).stdout
    assert re.search(r"^\S+Z took droplet lock: bundle \w{12} \(pid (\d+)\)\n\S+Z released droplet lock: bundle \w{12} "
                     r"\(pid \1\)$", lock_log, re.M), lock_log


def test_second_run_changes_nothing_and_restarts_nothing(droplet):
    before = main_pids(droplet)
    changes, out = provision(droplet)
    assert changes == 0, out
    assert "changed:" not in out
    assert main_pids(droplet) == before


def test_the_droplet_is_as_every_droplet_must_be(droplet, staging_settings):
    ufw = droplet(["ufw", "status", "verbose"]).stdout
    assert "Status: active" in ufw and "Default: deny (incoming), allow (outgoing)" in ufw
    added = droplet(["ufw", "show", "added"]).stdout
    assert f"ufw allow from {staging_settings.vpc_ip_range} to any port {conventions.SSH_PORT} proto tcp" in added
    assert droplet(["systemctl", "is-active", "fail2ban"]).stdout.strip() == "active"
    jails = droplet(["fail2ban-client", "status"]).stdout
    assert "sshd" in jails
    sshd = droplet(["sshd", "-T", "-C", "user=ops,host=h,addr=10.0.0.1"]).stdout.splitlines()
    assert "passwordauthentication no" in sshd and "permitrootlogin no" in sshd
    assert sorted(l for l in sshd if l.startswith("allowusers")) == ["allowusers deploy", "allowusers ops"]
    for user in conventions.ROLE_USERS[ROLE]:
        entry = droplet(["getent", "passwd", user.name]).stdout.strip().split(":")
        assert entry[5] == user.home and entry[6] == user.shell
    shadow = droplet(["getent", "shadow", conventions.OPERATOR_USER]).stdout.split(":")
    assert shadow[1].startswith("!")  # no password: keys only
    dump = droplet(["apt-config", "dump"]).stdout
    assert 'Unattended-Upgrade::Automatic-Reboot "false";' in dump
    assert [l for l in dump.splitlines() if "Origins-Pattern::" in l or "Allowed-Origins::" in l] == [
        'Unattended-Upgrade::Origins-Pattern:: "origin=Debian,codename=${distro_codename}-security,label=Debian-Security";',
        'Unattended-Upgrade::Origins-Pattern:: "origin=Ubuntu,archive=${distro_codename}-security";',
        'Unattended-Upgrade::Origins-Pattern:: "origin=. nodistro,label=. nodistro,codename=nodistro,site=deb.nodesource.com";',
        'Unattended-Upgrade::Origins-Pattern:: '
        '"origin=mongodb,label=mongodb,codename=${distro_codename}/mongodb-org,site=repo.mongodb.org";',
    ]
    assert droplet(["systemctl", "is-enabled", "systemd-timesyncd"]).stdout.strip() == "enabled"
    droplet(["logrotate", "-d", common.LOGROTATE])


def test_tls_push_installs_the_key_root_only_and_trusts_the_ca(droplet, tmp_path):
    require_tool("openssl", "openssl")

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", "/CN=roles-test-ca", "-keyout", "ca.key", "-out", "ca.crt")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", "/CN=droplet", "-keyout", "server.key", "-out", "server.csr")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-days", "2",
            "-out", "server.crt")
    payload = json.dumps({name: (tmp_path / name).read_text() for name in ("ca.crt", "server.crt", "server.key")})

    first = droplet([conventions.PUSH_COMMAND, "tls"], input=payload)
    assert "tls: 3 file(s) changed" in first.stdout
    assert "released droplet lock: push tls" in droplet(["cat", conventions.DROPLET_LOCK_LOG]).stdout
    assert "PRIVATE KEY" not in first.stdout
    key = droplet(["stat", "-c", "%a %U:%G", conventions.SERVER_KEY_PATH]).stdout.strip()
    assert key == f"640 root:{conventions.TLS_KEY_GROUP}"
    assert droplet(["cat", conventions.CA_CERT_PATH]).stdout == (tmp_path / "ca.crt").read_text()
    bundle = droplet(["cat", "/etc/ssl/certs/ca-certificates.crt"]).stdout
    ca_body = "".join((tmp_path / "ca.crt").read_text().splitlines()[1:-1])
    assert ca_body in bundle.replace("\n", "")
    # The droplet now trusts a server certificate signed by the internal CA.
    droplet(["openssl", "verify", conventions.SERVER_CERT_PATH])

    again = droplet([conventions.PUSH_COMMAND, "tls"], input=payload)
    assert "tls: no change" in again.stdout and "running" not in again.stdout
    changes, out = provision(droplet)
    assert changes == 0, out


def test_a_failure_is_marked_with_what_failed_and_pushes_wait_for_a_fix(droplet):
    staged = cloudinit.STAGED_FILES + common.SSHD_DROP_IN
    good = droplet(["cat", staged]).stdout
    droplet(["sh", "-c", f"echo 'NoSuchOption yes' >> {staged}"])
    result = droplet([conventions.PROVISION_COMMAND], check=False)
    assert result.returncode != 0
    assert "provisioning FAILED in step 'sshd': 'sshd -t' failed" in result.stdout
    marker = droplet(["cat", conventions.PROVISION_FAILED_MARKER]).stdout
    assert "step=sshd command=sshd -t" in marker
    assert droplet(["test", "-f", conventions.PROVISIONED_MARKER], check=False).returncode != 0
    names = json.dumps({"ca.crt": "x", "server.crt": "x", "server.key": "x"})
    push = droplet([conventions.PUSH_COMMAND, "tls"], check=False, input=names)
    assert push.returncode != 0 and "provisioning failed on this droplet" in push.stdout

    droplet(["sh", "-c", f"cat > {staged}"], input=good)
    changes, out = provision(droplet)
    assert changes == 1, out  # the drop-in put back as it was
    assert droplet(["test", "-f", conventions.PROVISION_FAILED_MARKER], check=False).returncode != 0
    changes, out = provision(droplet)
    assert changes == 0, out
