"""The load balancer is lost and rebuilt, on the booted staging stack: the new droplet
takes its Let's Encrypt certificate back from its backups instead of asking the ACME
server again (Let's Encrypt issues 5 duplicate certificates a week). And every role's
configuration is in the Spaces stand-in, one repository per role.

It replaces the LB, so it runs after the other tests of the shared stack and leaves the
stack healthy.
"""

from __future__ import annotations

import time

import pytest

from cloudinit import load_balancer
from model import conventions
from localcloud import spaces, stack

pytestmark = pytest.mark.localcloud
RUNS_LAST_ON_THE_STACK = True   # tests/conftest.py


def served_certificate(s) -> str:
    """The serial and fingerprint of the certificate the LB serves to the internet."""
    proc = s.internet(["sh", "-c", f"openssl s_client -connect {s.address}:443 -servername {s.domain}"
                       " </dev/null 2>/dev/null | openssl x509 -noout -serial -fingerprint -sha256"])
    assert proc.returncode == 0 and "Fingerprint=" in proc.stdout, proc.stdout + (proc.stderr or "")
    return proc.stdout


# Each role backs up to a bucket of its own (its resource in the program).
ROLE_BUCKETS = {conventions.DATASTORE: "datastore-backups", conventions.LOAD_BALANCER: "lb-backups",
                conventions.APP_SERVER: "app-backups"}


def snapshot_objects(s, role: str) -> list[str]:
    bucket = s.plan.bucket(ROLE_BUCKETS[role]).name
    listed = spaces.client().list_objects_v2(Bucket=bucket, Prefix=f"{conventions.backup_repository_path(role)}/snapshots/")
    return [o["Key"] for o in listed.get("Contents", [])]


def backup_unit_idle(s, name: str, timeout: float = 600) -> str:
    """Waits out a run of the backup unit (the LB's deploy hook, or the daily timer): a run
    by hand meanwhile is refused by the lock. Returns the unit's state."""
    deadline = time.monotonic() + timeout
    while True:
        state = s.run(name, ["systemctl", "is-active", f"{conventions.BACKUP_UNIT}.service"]).stdout.strip()
        if state not in ("activating", "active", "reloading") or time.monotonic() > deadline:
            return state
        time.sleep(2)


def test_every_droplet_backs_its_configuration_up_to_its_roles_repository(local_stack):
    s = local_stack
    # The certificate went to the backups when it was issued: certbot's deploy hook
    # started the backup unit (this test runs its backups as a command, not as the unit).
    assert backup_unit_idle(s, "lb") == "inactive"
    hooked = s.run("lb", ["journalctl", "--no-pager", "-u", f"{conventions.BACKUP_UNIT}.service"])
    assert "backup finished: snapshot" in hooked.stdout, hooked.stdout
    for droplet in s.plan.droplets:
        backup_unit_idle(s, droplet.name)
        # systemd has the daily run and the hourly check scheduled (the `backup` push enabled
        # the first, provisioning the second).
        for timer in (conventions.BACKUP_UNIT, conventions.BACKUP_CHECK_UNIT):
            active = s.run(droplet.name, ["systemctl", "is-active", f"{timer}.timer"])
            assert active.stdout.strip() == "active", f"{droplet.name} {timer}.timer: {active.stdout}"
        backup = s.run(droplet.name, [conventions.BACKUP_COMMAND, "run"], timeout=600)
        assert backup.returncode == 0, droplet.name + backup.stdout + (backup.stderr or "")
        status = s.run(droplet.name, [conventions.BACKUP_COMMAND, "status"], timeout=180)
        assert status.returncode == 0 and "status: ok" in status.stdout, droplet.name + status.stdout
        # What the hourly timer starts runs as a unit and finds nothing to alert.
        check = s.run(droplet.name, ["systemctl", "start", f"{conventions.BACKUP_CHECK_UNIT}.service"], timeout=300)
        assert check.returncode == 0, droplet.name + check.stdout + (check.stderr or "")
        alerted = s.run(droplet.name, ["cut", "-f1", f"{conventions.BACKUP_STATE_DIR}/alerted"])
        assert alerted.stdout.strip() == "ok", droplet.name + alerted.stdout + (alerted.stderr or "")
    for role in conventions.ROLES:
        assert snapshot_objects(s, role), f"no snapshot in restic/{role}"
    # What an app server's snapshot holds comes back as it is on the server.
    (app, *_) = s.app_servers()
    restored = s.run(app, [conventions.RESTORE_COMMAND, "config"], timeout=300)
    assert restored.returncode == 0, restored.stdout + (restored.stderr or "")
    for path in ("/etc/nginx/conf.d/platform.conf", conventions.APP_ENV_FILE, conventions.ECOSYSTEM_FILE):
        same = s.run(app, ["cmp", f"{conventions.BACKUP_SPOOL}/restored{path}", path])
        assert same.returncode == 0, path + same.stdout + (same.stderr or "")
    # The repository's own settings stay out of it.
    secrets = s.run(app, ["test", "-e", f"{conventions.BACKUP_SPOOL}/restored{conventions.BACKUP_SECRETS_FILE}"])
    assert secrets.returncode == 1


def test_a_rebuilt_load_balancer_serves_its_certificate_from_the_backups(local_stack):
    s = local_stack
    s.wait_healthy()
    before = served_certificate(s)
    # The LB's backups hold the certificate (the deploy hook's run, finished).
    assert backup_unit_idle(s, "lb") == "inactive"
    assert snapshot_objects(s, conventions.LOAD_BALANCER)

    old = s.plan.droplet("lb")
    stack.lose(s.plan, "lb")
    s.up(stack.plan(s.plan.stack))
    new = s.plan.droplet("lb")
    assert new.id != old.id, "a new droplet, not the old one restarted"
    s.wait_healthy(timeout=300)
    assert served_certificate(s) == before, "the same certificate, not a new one from the ACME server"
    journal = s.run("lb", ["journalctl", "--no-pager", "-u", f"{load_balancer.CERTIFICATE_UNIT}.service"])
    assert "restored the certificate for" in journal.stdout, journal.stdout
    assert "Requesting a certificate" not in journal.stdout, journal.stdout
