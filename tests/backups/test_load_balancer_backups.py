"""The LB's rendered backup scripts for real: restic (a local repository) and openssl in a
private mount namespace where /etc, /var and /usr/local are overlays, so nothing reaches
the host.

`platform-restore certificates`: a certificate for the stack's domain comes back with
certbot's links intact; one that has expired or is for another domain, or an empty
repository, gives exit 3 (the caller asks the ACME server instead); an LB that has its
certificate is never overwritten. `platform-backup run` during another run waits for it.
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import cloudinit
import mockcloud
from cloudinit import common
from model import conventions

LIVE = f"/etc/letsencrypt/live/{conventions.LB_CERT_NAME}"
ARCHIVE = f"/etc/letsencrypt/archive/{conventions.LB_CERT_NAME}"

PRELUDE = r"""
set -uo pipefail
T={tmp}
for dir in /etc /var /usr/local; do
    name=$(echo "$dir" | tr / _)
    mkdir -p "$T/ov/$name.up" "$T/ov/$name.work"
    mount -t overlay overlay -o "lowerdir=$dir,upperdir=$T/ov/$name.up,workdir=$T/ov/$name.work" "$dir"
done
mount -t tmpfs tmpfs /run
mkdir -p /run/lock
rm -rf /etc/letsencrypt
cp -a "$T/root/." /
check() {{
    local label=$1
    shift
    "$@" >>"$T/out.log" 2>&1
    echo "CHECK $label $?"
}}
# certbot's layout: live/ links into archive/.
issue() {{
    rm -rf /etc/letsencrypt
    mkdir -p {archive} {live} /etc/letsencrypt/renewal /etc/letsencrypt/accounts/acme/directory/0123
    cp "$T/certs/$1.pem" {archive}/fullchain1.pem
    cp "$T/certs/key.pem" {archive}/privkey1.pem
    ln -s ../../archive/{name}/fullchain1.pem {live}/fullchain.pem
    ln -s ../../archive/{name}/privkey1.pem {live}/privkey.pem
    echo "account = 0123" > /etc/letsencrypt/renewal/{name}.conf
    echo '{{"key": "account"}}' > /etc/letsencrypt/accounts/acme/directory/0123/private_key.json
}}
restic init >/dev/null 2>&1
"""


def certificate(key, domain: str, not_after: datetime.datetime) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - datetime.timedelta(days=90)).not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def run_lb(tmp_path_factory):
    """Runs a script as root on the LB's rendered backup files; returns (stdout, log)."""
    assert os.geteuid() == 0, "runs in a mount namespace: needs root"
    settings = mockcloud.stack_settings("staging")
    tmp = tmp_path_factory.mktemp("lb-restore")
    files = cloudinit.rendered_files(conventions.LOAD_BALANCER, settings)
    for path in (conventions.BACKUP_LIBRARY, conventions.BACKUP_COMMAND, conventions.RESTORE_COMMAND):
        target = tmp / "root" / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(files[path])
        target.chmod(0o755)
    backup_env = tmp / "root" / conventions.BACKUP_SECRETS_FILE.lstrip("/")
    backup_env.parent.mkdir(parents=True)
    backup_env.write_text(common.backup_env(
        repository=str(tmp / "repository"), password="test-password", access_key="unused", secret_key="unused",
        host=conventions.backup_host(settings.stack, "lb"), creates_repository=True,
    ))
    backup_env.chmod(0o600)
    retention = tmp / "root" / conventions.BACKUP_RETENTION_FILE.lstrip("/")
    retention.write_text(common.backup_schedule_files(settings)["backup.conf"])
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    certs = tmp / "certs"
    certs.mkdir()
    (certs / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (certs / "valid.pem").write_bytes(certificate(key, settings.domain, now + datetime.timedelta(days=60)))
    (certs / "expired.pem").write_bytes(certificate(key, settings.domain, now - datetime.timedelta(days=1)))
    (certs / "other-domain.pem").write_bytes(certificate(key, "other.example.org", now + datetime.timedelta(days=60)))
    prelude = PRELUDE.format(tmp=tmp, archive=ARCHIVE, live=LIVE, name=conventions.LB_CERT_NAME)

    def run(script: str) -> tuple[str, str]:
        env = {**os.environ, "RESTIC_REPOSITORY": str(tmp / "repository"), "RESTIC_PASSWORD": "test-password"}
        # Its own processes too: what it waits for (pgrep) is the script's own.
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
                               "--mount-proc", "bash", "-c", prelude + script],
                              capture_output=True, text=True, timeout=300, env=env)
        log = tmp / "out.log"
        output = log.read_text() if log.exists() else ""
        log.unlink(missing_ok=True)
        return proc.stdout, output + proc.stderr

    return run


def status(stdout: str, label: str) -> int:
    found = re.findall(rf"^CHECK {re.escape(label)} (\d+)$", stdout, re.M)
    assert found, f"check {label!r} did not run:\n{stdout}"
    return int(found[-1])


RESTORE = conventions.RESTORE_COMMAND
BACKUP = conventions.BACKUP_COMMAND


def test_a_certificate_in_the_backups_comes_back_with_certbots_links(run_lb):
    stdout, log = run_lb(f"""
check nothing-backed-up {RESTORE} certificates
issue valid
cp {ARCHIVE}/fullchain1.pem "$T/issued.pem"
check backup {BACKUP} run
rm -rf /etc/letsencrypt
check restore {RESTORE} certificates
check same-certificate cmp "$T/issued.pem" {LIVE}/fullchain.pem
check still-a-link test "$(readlink {LIVE}/fullchain.pem)" = ../../archive/{conventions.LB_CERT_NAME}/fullchain1.pem
check account-too test -s /etc/letsencrypt/accounts/acme/directory/0123/private_key.json
check renewal-too test -s /etc/letsencrypt/renewal/{conventions.LB_CERT_NAME}.conf
check not-over-a-certificate {RESTORE} certificates
""")
    assert status(stdout, "nothing-backed-up") == 3, log
    assert "no snapshot of staging-lb yet" in log
    assert status(stdout, "backup") == 0, log
    for label in ("restore", "same-certificate", "still-a-link", "account-too", "renewal-too"):
        assert status(stdout, label) == 0, f"{label}\n{log}"
    assert status(stdout, "not-over-a-certificate") == 1, log
    assert f"{LIVE} exists" in log


@pytest.mark.parametrize("kind", ["expired", "other-domain"])
def test_an_expired_or_foreign_certificate_is_not_restored(run_lb, kind):
    stdout, log = run_lb(f"""
issue {kind}
check backup {BACKUP} run
rm -rf /etc/letsencrypt
check restore {RESTORE} certificates
check nothing-in-place test ! -e {LIVE}
""")
    assert status(stdout, "backup") == 0, log
    assert status(stdout, "restore") == 3, log
    assert "has expired or is not for" in log
    assert status(stdout, "nothing-in-place") == 0, log


def test_a_backup_started_during_another_waits_for_it(run_lb):
    """The LB's certificate hook and the daily timer may start the backup unit together:
    the second run waits for the first, then sends its own snapshot (no false alert)."""
    script = cloudinit.rendered_files(conventions.LOAD_BALANCER, mockcloud.stack_settings("staging"))[BACKUP]
    lock_file = re.search(r"^LOCK_FILE=(\S+)$", script, re.M).group(1)
    # The first run holds the lock until the second is blocked on it (its flock) and a
    # second more, records whether the second started meanwhile, and lets it go.
    stdout, log = run_lb(f"""
issue valid
: > "$T/out.log"
( exec 9>{lock_file}; flock 9; touch {lock_file}.held
  for _ in $(seq 400); do pgrep -x flock >/dev/null && break; sleep 0.05; done
  sleep 1; grep -c "backup started" "$T/out.log" > {lock_file}.started-meanwhile ) &
until [ -e {lock_file}.held ]; do sleep 0.05; done
check backup {BACKUP} run
wait
check waited test "$(cat {lock_file}.started-meanwhile)" = 0
""")
    assert status(stdout, "backup") == 0, log
    assert status(stdout, "waited") == 0, log
