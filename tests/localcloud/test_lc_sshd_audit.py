"""sshd on every droplet of the booted stack, as an outsider and the program meet it.

ssh-audit (the venv's) audits the load balancer on its public address from this machine
(an admin address the stack's firewalls let in), and each private droplet from inside the
load balancer's network namespace: their SSH port is open to the jump host only, so the
audit comes from the address every push and deploy comes from. Each report must show no
failure, no CVE, only the accepted warnings (tests/sshd_audit.py) and the ed25519 host
key alone. The audit's probes must not get this machine banned by the LB's fail2ban.
Then, on every droplet: sshd reads keys from root's files only, and the operator login's
file there holds the automation key first boot gave it.
"""

from __future__ import annotations

import json
import subprocess

import pytest

import sshd_audit
from model import conventions

pytestmark = pytest.mark.localcloud


def audit(address: str, netns: str | None = None) -> dict:
    from localcloud import network

    argv = sshd_audit.command(address)
    if netns:
        argv = network.in_netns(netns, *argv)
    # Exit 2 means warnings, which the report's own check weighs; 1 is a failed connection.
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode in (0, 2, 3), f"{argv}: exit {result.returncode}: {result.stdout}{result.stderr}"
    return json.loads(result.stdout)


def test_ssh_audit_of_every_droplet_finds_no_failure(local_stack):
    from localcloud import config, network

    lb = local_stack.plan.lb
    reports = {lb.name: audit(lb.public_ip)}
    for droplet in local_stack.plan.droplets:
        if droplet.name != lb.name:
            reports[droplet.name] = audit(droplet.vpc_ip, netns=network.netns_name(lb.name))
    for name, report in reports.items():
        failures, warnings = sshd_audit.findings(report)
        print(f"{name}: {report['banner']['software']}: {len(failures)} failure(s), warnings: {sorted(warnings)}")
    problems = {name: sshd_audit.problems(report) for name, report in reports.items()}
    assert problems == {name: [] for name in reports}
    banned = local_stack.run(lb.name, ["fail2ban-client", "get", "sshd", "banip"], check=True).stdout
    assert str(config.HOST_PUBLIC_IP) not in banned.split(), banned


def test_every_droplet_reads_login_keys_from_root_files_holding_the_automation_key(local_stack):
    keys = f"{conventions.LOGIN_KEYS_DIR}/{conventions.OPERATOR_USER}"
    for droplet in local_stack.plan.droplets:
        effective = local_stack.run(droplet.name, ["sshd", "-T", "-C", "user=ops,host=h,addr=10.0.0.1"],
                                    check=True).stdout.splitlines()
        assert f"authorizedkeysfile {conventions.LOGIN_KEYS_DIR}/%u" in effective, droplet.name
        assert local_stack.run(droplet.name, ["stat", "-c", "%a %U:%G", keys], check=True).stdout.split() == \
            ["644", "root:root"], droplet.name
        # cloud-init wrote the automation key (alone) to the login's own file at first boot.
        first_boot = local_stack.run(droplet.name, ["cat", f"/home/{conventions.OPERATOR_USER}/.ssh/authorized_keys"],
                                     check=True).stdout.split("\n")[0].strip()
        held = local_stack.run(droplet.name, ["cat", keys], check=True).stdout.splitlines()
        assert first_boot and first_boot in held, (droplet.name, held)
