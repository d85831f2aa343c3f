"""The host hardening of every droplet of the booted stack (containers: the kernel is the
host's, only each droplet's own network keys are its to set).

On every droplet: the network's kernel settings hold on its interfaces; acct's unit is
skipped (a container may not switch process accounting), not failed; the weekly package
integrity check is scheduled, and run now it finds every packaged file as its package has it.
"""

from __future__ import annotations

import pytest

from model import conventions

pytestmark = pytest.mark.localcloud

NET_SETTINGS = {
    "net.ipv4.conf.eth0.rp_filter": "1", "net.ipv4.conf.eth1.rp_filter": "1",
    "net.ipv4.conf.eth0.accept_redirects": "0", "net.ipv4.conf.eth1.accept_redirects": "0",
    "net.ipv4.conf.eth0.send_redirects": "0", "net.ipv4.conf.eth0.accept_source_route": "0",
    "net.ipv4.tcp_syncookies": "1",
}


def test_every_droplet_holds_the_network_settings_and_skips_process_accounting(local_stack):
    for droplet in local_stack.plan.droplets:
        shown = local_stack.run(droplet.name, ["sysctl", *NET_SETTINGS], check=True).stdout
        assert dict(line.split(" = ") for line in shown.splitlines()) == NET_SETTINGS, droplet.name
        acct = local_stack.run(droplet.name, ["systemctl", "show", "acct.service", "-p", "ConditionResult",
                                              "-p", "ActiveState"], check=True).stdout.split()
        assert sorted(acct) == ["ActiveState=inactive", "ConditionResult=no"], (droplet.name, acct)
        timer = local_stack.run(droplet.name, ["systemctl", "is-active", f"{conventions.INTEGRITY_UNIT}.timer"])
        assert timer.stdout.strip() == "active", (droplet.name, timer.stdout)


def test_the_package_integrity_check_passes_on_every_droplet(local_stack):
    for droplet in local_stack.plan.droplets:
        run = local_stack.run(droplet.name, ["systemctl", "start", f"{conventions.INTEGRITY_UNIT}.service"],
                              timeout=900)
        journal = local_stack.run(droplet.name, ["journalctl", "-q", "-n", "50", "-u",
                                                 f"{conventions.INTEGRITY_UNIT}.service"]).stdout
        assert run.returncode == 0, (droplet.name, journal)
