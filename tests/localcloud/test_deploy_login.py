"""The deploy login on the session's local stack (marker `localcloud`, root).

What a key of the `deploy` login (deployKeys; the operators' keys while it is empty, as on
the local stack) can do: on the LB, run nothing (no shell, no command, no sudo) and
forward only to the app servers' SSH; on an app server, deploy. What it cannot do: make
provisioning follow a link of its own to a root-owned path. And the app servers' fail2ban
never bans the LB's address, which every login behind it comes from.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from localcloud import droplet, shell
from model import conventions

pytestmark = pytest.mark.localcloud

ROOT = Path(__file__).resolve().parents[2]
STACK = "staging"
F2B_LOG = "/var/log/fail2ban.log"


@pytest.fixture(scope="module")
def plan(local_stack):
    from localcloud import stack as local
    assert local_stack.plan.stack == STACK
    return local.deployed(STACK)


@pytest.fixture(scope="module")
def stack(plan, tmp_path_factory):
    """The stack as `python -m deploy --local` sees it, its droplets' host keys pinned."""
    from deploy.__main__ import pinned
    from deploy.targets import LocalStack
    return pinned(LocalStack(STACK).resolve(), str(tmp_path_factory.mktemp("deploy-login")))


def on(name: str, script: str, check: bool = False) -> subprocess.CompletedProcess:
    return droplet.exec(name, ["bash", "-c", script], check=check, timeout=120)


def as_deploy_on_lb(stack, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    """ssh to the LB as deploy, with the stack's key and pinned host key (as the deploy tool logs in)."""
    from deploy import commands
    argv = ["ssh", *commands.ssh_options(stack, host=conventions.LOAD_BALANCER), *args]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)


def jump_to(stack, address: str, port: int) -> subprocess.CompletedProcess:
    return as_deploy_on_lb(stack, "-W", f"{address}:{port}", f"{conventions.DEPLOY_USER}@{stack.jump_host}")


def test_the_deploy_login_runs_nothing_on_the_lb_and_has_no_sudo(plan, stack):
    login = f"{conventions.DEPLOY_USER}@{stack.jump_host}"
    marker = "/tmp/deploy-login-ran-this"
    on(plan.lb.name, f"rm -f {marker}")
    for remote in (f"touch {marker}", f"sudo -n touch {marker}", f"bash -c 'touch {marker}'"):
        ran = as_deploy_on_lb(stack, login, remote)
        assert ran.returncode != 0, (remote, ran.stdout, ran.stderr)
    # A TTY is refused too, and a subsystem (sftp) gets the forced command, not a file server.
    tty = as_deploy_on_lb(stack, "-tt", login)
    assert tty.returncode != 0 and "PTY allocation request failed" in tty.stderr + tty.stdout, tty.stderr
    sftp = as_deploy_on_lb(stack, "-s", login, "sftp")
    assert sftp.returncode != 0
    assert on(plan.lb.name, f"test -e {marker} && echo ran").stdout.strip() == "", "a command ran as deploy"
    passwd = on(plan.lb.name, f"getent passwd {conventions.DEPLOY_USER}").stdout.strip().split(":")
    assert passwd[6] == "/usr/sbin/nologin", passwd
    sudo = on(plan.lb.name, f"sudo -l -U {conventions.DEPLOY_USER}").stdout
    assert "is not allowed to run sudo" in sudo, sudo
    # What it is: allowed in, forced to nologin, forwarding local only.
    effective = on(plan.lb.name, f"sshd -T -C user={conventions.DEPLOY_USER},host=h,addr=192.0.2.9").stdout
    assert {"forcecommand /usr/sbin/nologin", "permittty no", "allowtcpforwarding local",
            "permitlisten none"} <= set(effective.splitlines()), effective


def test_the_deploy_login_forwards_to_each_app_servers_ssh_and_nowhere_else(plan, stack):
    for server in stack.servers:
        jumped = jump_to(stack, server.address, conventions.SSH_PORT)
        assert jumped.returncode == 0 and jumped.stdout.startswith("SSH-2.0-"), (server, jumped.stderr)
    datastore = plan.droplet("datastore")
    refused = [(datastore.vpc_ip, conventions.SSH_PORT), (stack.servers[0].address, conventions.APP_TLS_PORT),
               ("127.0.0.1", conventions.SSH_PORT), (plan.lb.vpc_ip, conventions.SSH_PORT)]
    for address, port in refused:
        tried = jump_to(stack, address, port)
        assert tried.returncode != 0 and "stdio forwarding failed" in tried.stderr, (address, port, tried.stderr)
    # Nor may it listen on the LB (a remote forward).
    login = f"{conventions.DEPLOY_USER}@{stack.jump_host}"
    listen = as_deploy_on_lb(stack, "-N", "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:22", login)
    assert listen.returncode != 0, listen.stderr


def test_the_deploy_tool_still_jumps_to_every_app_server_as_deploy(stack):
    from localcloud import config
    listed = subprocess.run([sys.executable, "-m", "deploy", "releases", STACK, "--local", "-i",
                             str(config.OPERATOR_KEY)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    for server in stack.servers:
        assert f"{server.name} ({server.address}):" in listed.stdout


ROOT_OWNED = ("/usr/local/sbin", conventions.PROVISION_COMMAND, "/etc/sudoers.d", conventions.APP_ROOT,
              "/etc/ssh/sshd_config.d")


def stats(name: str) -> dict[str, str]:
    out = on(name, "stat -c '%n %a %U:%G' " + " ".join(ROOT_OWNED), check=True).stdout
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.splitlines()}


def test_links_planted_by_deploy_change_no_root_owned_path_after_provisioning(plan):
    app = plan.droplet("app-1").name
    before = stats(app)
    assert before[conventions.APP_ROOT] == "755 root:root"
    as_deploy = f"runuser -u {conventions.DEPLOY_USER} --"
    # releases/ swapped for a link to root's programs: the app root is not deploy's to write.
    swapped = on(app, f"{as_deploy} sh -c 'mv {conventions.RELEASES_DIR} {conventions.APP_ROOT}/kept "
                      f"&& ln -s /usr/local/sbin {conventions.RELEASES_DIR}'")
    assert swapped.returncode != 0 and "Permission denied" in swapped.stdout, swapped.stdout
    assert on(app, f"test -d {conventions.RELEASES_DIR} && test ! -L {conventions.RELEASES_DIR} && echo ok").stdout.strip() == "ok"
    # What deploy can place, in its own directories: links to root-owned paths, named as
    # what provisioning knows there.
    planted = [f"{conventions.RELEASES_DIR}/planted-release", f"{conventions.RELEASES_DIR}/current.new",
               f"{conventions.DEPLOY_HOME}/deploy.lock.planted"]
    try:
        for link in planted:
            on(app, f"{as_deploy} ln -sfn /usr/local/sbin {link}", check=True)
        # As platform-provision runs there: started by the droplet's own systemd.
        provisioned = on(app, f"systemd-run --quiet --wait --pipe --collect -- {conventions.PROVISION_COMMAND}")
        assert provisioned.returncode == 0, provisioned.stdout[-3000:] + provisioned.stderr[-3000:]
        assert stats(app) == before
    finally:
        on(app, f"{as_deploy} rm -f {' '.join(planted)}")
        on(app, f"rm -rf {conventions.APP_ROOT}/kept")


def test_ten_failed_logins_from_the_lbs_address_to_an_app_server_do_not_ban_it(plan, stack):
    app = plan.droplet("app-1")
    lb_address = plan.lb.vpc_ip
    since = on(app.name, "date -u '+%Y-%m-%d %H:%M:%S'", check=True).stdout.strip()

    def let_go() -> int:
        return int(on(app.name, f"grep -c '\\[sshd\\] Ignore {lb_address} by ip' {F2B_LOG} || true").stdout)
    let_go_before = let_go()
    try:
        for attempt in range(10):
            # A user that does not exist, no key: sshd logs "Invalid user", which the jail counts.
            on(plan.lb.name, f"ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                             f"-o ConnectTimeout=10 -l intruder-{attempt} {app.vpc_ip} true")
        journal = on(app.name, f"journalctl -u ssh --since '{since}' --no-pager -o cat").stdout
        assert journal.count("Invalid user intruder-") >= 10 and lb_address in journal, journal[-2000:]
        # fail2ban read them, and let them go for the address it ignores.
        shell.wait_until(lambda: let_go() >= let_go_before + 10, 60,
                           lambda: "fail2ban let fewer than 10 go: " + on(app.name, f"tail -20 {F2B_LOG}").stdout, every=1)
        status = on(app.name, "fail2ban-client status sshd").stdout
        assert "Banned IP list:" in status and lb_address not in status, status
        ignored = on(app.name, "fail2ban-client get sshd ignoreip").stdout
        assert plan.vpc_cidr in ignored or lb_address in ignored, ignored
        # And the LB's logins still get through: a deploy's jump, as deploy.
        jumped = jump_to(stack, app.vpc_ip, conventions.SSH_PORT)
        assert jumped.returncode == 0 and jumped.stdout.startswith("SSH-2.0-"), jumped.stderr
    finally:
        on(app.name, f"fail2ban-client set sshd unbanip {lb_address}")
