"""Logs on the booted stack: logrotate runs every hour on every droplet, reads all of its
configuration without an error, and on the LB rotates nginx's access log as soon as it
passes its size: the real service, scripts included (nginx reopens its logs).
"""

from __future__ import annotations

import pytest

from localcloud import shell
from model import conventions

pytestmark = pytest.mark.localcloud

ACCESS_LOG = "/var/log/nginx/access.log"
LIMIT = conventions.NGINX_LOG_MAX_MIB * 1024 * 1024   # logrotate's M


def test_logrotate_runs_hourly_and_reads_its_whole_configuration_on_every_droplet(local_stack):
    for droplet in local_stack.plan.droplets:
        timer = local_stack.run(droplet.name, ["systemctl", "show", "logrotate.timer", "-p", "ActiveState",
                                               "-p", "TimersCalendar"], check=True).stdout
        assert "ActiveState=active" in timer, (droplet.name, timer)
        assert "OnCalendar=*-*-* *:00:00 ; next_elapse=" in timer, (droplet.name, timer)
        # droplet.exec gives stderr within stdout.
        checked = local_stack.run(droplet.name, ["logrotate", "-d", "/etc/logrotate.conf"])
        assert checked.returncode == 0, (droplet.name, [l for l in checked.stdout.splitlines() if "error" in l])


def test_the_lbs_access_log_past_its_size_is_rotated_and_nginx_writes_the_new_one(local_stack):
    lb = local_stack.plan.lb.name

    def on_lb(command: str) -> str:
        return local_stack.run(lb, ["bash", "-c", command], check=True, timeout=120).stdout

    # Sparse: the size logrotate reads, not a gigabyte written. nginx appends after it.
    on_lb(f"truncate -s {LIMIT + 1} {ACCESS_LOG}")
    try:
        on_lb("systemctl start logrotate.service")
        listed = on_lb(f"stat -c '%n %s' {ACCESS_LOG}.1 {ACCESS_LOG}")
        sizes = dict(line.rsplit(" ", 1) for line in listed.splitlines())
        assert int(sizes[f"{ACCESS_LOG}.1"]) > LIMIT and int(sizes[ACCESS_LOG]) < LIMIT, sizes
        # logrotate returns once it has signalled nginx; the workers reopen the log after.
        def probe_logged() -> bool:
            on_lb(f"curl -s -o /dev/null -H 'Host: {local_stack.plan.domain}' http://127.0.0.1/rotated-log-probe")
            return "rotated-log-probe" in on_lb(f"cat {ACCESS_LOG}")
        shell.wait_until(probe_logged, 60, "nginx still writes to the rotated file", every=1)
    finally:
        # Nothing left past the limit, whatever failed: the next hourly run would rotate it.
        on_lb(f"rm -f {ACCESS_LOG}.1; [ $(stat -c %s {ACCESS_LOG}) -le {LIMIT} ] || : > {ACCESS_LOG}")
