"""The load balancer's deploy login, checked by sshd itself: what `sshd -T` says the
`deploy` user gets there (the LB's drop-in with the pushed PermitOpen list), and a real
sshd with that drop-in, in a sandbox with its own network, taking the deploy tool's own
commands."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

import cloudinit
from cloudinit import load_balancer
from model import conventions as c
from deploy import commands
from deploy.records import Server, Stack

from render_helpers_lb_app import require, run, settings
from role_checks import sandboxed, sshd_effective


def lb_drop_in(tmp_path: Path, settings) -> str:
    """The LB's drop-in, its pushed PermitOpen file moved under tmp_path."""
    drop_in = cloudinit.render("common/sshd_platform.conf", **cloudinit.template_context(c.LOAD_BALANCER, settings))
    assert c.LB_DEPLOY_PERMIT_OPEN_FILE in drop_in
    return drop_in.replace(c.LB_DEPLOY_PERMIT_OPEN_FILE, str(tmp_path / "permitopen.conf"))


JUMP_ONLY = {"allowtcpforwarding local", "permitlisten none", "gatewayports no", "allowstreamlocalforwarding no",
             "allowagentforwarding no", "x11forwarding no", "permittunnel no", "permittty no", "permituserrc no",
             "forcecommand /usr/sbin/nologin"}


def test_the_lbs_deploy_login_may_only_forward_to_the_app_servers_ssh(tmp_path, stack_settings):
    """sshd -T for `deploy` on the LB: no command, TTY or listening, and TCP only to the
    addresses the upstreams push lists; nothing at all before that push. `ops` keeps its
    forwarding (it is the operators' jump host)."""
    drop_in = lb_drop_in(tmp_path, stack_settings)
    before = sshd_effective(tmp_path / "before", drop_in, user=c.DEPLOY_USER)
    assert before.returncode == 0, before.stderr
    assert JUMP_ONLY | {"permitopen none"} <= set(before.stdout.splitlines())
    (tmp_path / "permitopen.conf").write_text(load_balancer.deploy_permit_open(["10.110.16.4", "10.110.16.3"]))
    pushed = sshd_effective(tmp_path / "pushed", drop_in, user=c.DEPLOY_USER)
    assert pushed.returncode == 0, pushed.stderr
    effective = set(pushed.stdout.splitlines())
    assert JUMP_ONLY | {"permitopen 10.110.16.3:22 10.110.16.4:22"} <= effective
    assert not [line for line in effective if line.startswith("permitopen ") and line != "permitopen 10.110.16.3:22 10.110.16.4:22"]
    operator = set(sshd_effective(tmp_path / "ops", drop_in).stdout.splitlines())
    assert {"allowtcpforwarding yes", "permitopen any", "forcecommand none", "permittty yes"} <= operator


def test_a_bad_permitopen_push_fails_sshds_check(tmp_path, stack_settings):
    """The upstreams push's check is `sshd -t` of the whole configuration, pushed file included."""
    drop_in = lb_drop_in(tmp_path, stack_settings)
    (tmp_path / "permitopen.conf").write_text("PermitOpen 10.110.16.3:ssh-port\n")
    result = sshd_effective(tmp_path / "bad", drop_in, user=c.DEPLOY_USER)
    assert result.returncode != 0 and "permitopen.conf line 1" in result.stderr, result.stderr
    push = cloudinit.pushes(c.LOAD_BALANCER, stack_settings)["upstreams"]
    assert ["sshd", "-t"] in push.check and ["systemctl", "try-reload-or-restart", "ssh"] in push.then
    assert push.files["deploy-permitopen.conf"].path == c.LB_DEPLOY_PERMIT_OPEN_FILE
    with pytest.raises(ValueError):
        load_balancer.deploy_permit_open(["10.110.16.3:22 0.0.0.0"])


# --- the deploy login: a real sshd with the LB's drop-in ------------------------------------

# Debian's own sshd_config (the drop-ins come first, as there).
DEBIAN_SSHD_CONFIG = """Include /etc/ssh/sshd_config.d/*.conf
KbdInteractiveAuthentication no
UsePAM yes
X11Forwarding yes
PrintMotd no
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
"""

JUMP_SCRIPT = r"""
ip link set lo up
useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin {deploy}
mkdir -p /run/sshd {keys_dir}
cp {work}/drop-in.conf /etc/ssh/sshd_config.d/10-platform.conf
cp {work}/sshd_config /etc/ssh/sshd_config
cp {work}/permitopen.conf {permit_open}
cp {work}/client.pub {keys_dir}/{deploy}
sshd -t -h {work}/host_key || exit 3
# The LB (127.0.0.1), an app server's SSH (127.0.0.2) and another droplet's (127.0.0.3): one sshd.
/usr/sbin/sshd -D -e -h {work}/host_key -o ListenAddress=127.0.0.1 -o ListenAddress=127.0.0.2 -o ListenAddress=127.0.0.3 \
    2>{work}/sshd.log &
for i in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/22) 2>/dev/null && break; sleep 0.1; done
ssh() {{ command ssh -o LogLevel=ERROR "$@"; }}
echo "== check"; {check} </dev/null 2>&1; echo "exit=$?"
echo "== elsewhere"; {elsewhere} </dev/null 2>&1; echo "exit=$?"
echo "== command"; {command} 2>&1; echo "exit=$?"
echo "== tty"; {tty} </dev/null 2>&1; echo "exit=$?"
echo "== sftp"; {sftp} </dev/null 2>&1; echo "exit=$?"
echo "== ran $(test -e {work}/ran && echo yes || echo no)"
"""


def test_the_deploy_tools_jump_check_passes_the_lbs_deploy_login_which_runs_no_command(tmp_path):
    """sshd with the LB's rendered drop-in and a pushed PermitOpen list, in a sandbox with
    its own network: the deploy tool's check (commands.through_jump_host, its very argv)
    forwards to the listed app server's SSH and exits 0; a forward elsewhere is refused;
    a command sent as deploy does not run."""
    require("sshd")
    work = tmp_path / "work"
    work.mkdir()
    for name in ("host_key", "client"):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / name)])
    drop_in = cloudinit.render("common/sshd_platform.conf", **cloudinit.template_context(c.LOAD_BALANCER, settings()))
    (work / "drop-in.conf").write_text(drop_in)
    (work / "sshd_config").write_text(DEBIAN_SSHD_CONFIG)
    (work / "permitopen.conf").write_text(load_balancer.deploy_permit_open(["127.0.0.2"]))
    host_key = " ".join((work / "host_key.pub").read_text().split()[:2])
    app = Server("app-1", "127.0.0.2")
    stack = Stack("staging", "127.0.0.1", (app,), identity=str(work / "client"),
                  host_keys={"lb": host_key, "app-1": host_key}, known_hosts=str(work / "known_hosts"))
    (work / "known_hosts").write_text(commands.known_hosts(stack))
    check = commands.through_jump_host(stack, app).argv
    elsewhere = commands.through_jump_host(stack, Server("app-9", "127.0.0.3")).argv
    command = check[:-3] + [commands.jump_login(stack), f"touch {work}/ran"]
    tty = check[:-3] + ["-tt", commands.jump_login(stack)]
    sftp = check[:-3] + ["-s", commands.jump_login(stack), "sftp"]
    script = JUMP_SCRIPT.format(
        deploy=c.DEPLOY_USER, keys_dir=c.LOGIN_KEYS_DIR, permit_open=c.LB_DEPLOY_PERMIT_OPEN_FILE, work=work,
        check=shlex.join(check), elsewhere=shlex.join(elsewhere), command=shlex.join(command),
        tty=shlex.join(tty), sftp=shlex.join(sftp))
    result = sandboxed(tmp_path / "sandbox", script, network=True)
    out = result.stdout + result.stderr
    sections = {part.split("\n", 1)[0].strip(): part.split("\n", 1)[1] if "\n" in part else ""
                for part in out.split("== ")[1:]}
    assert result.returncode == 0, out + (work / "sshd.log").read_text()
    assert sections["check"].startswith("SSH-2.0-") and sections["check"].rstrip().endswith("exit=0"), out
    assert "stdio forwarding failed" in sections["elsewhere"] and sections["elsewhere"].rstrip().endswith("exit=255"), out
    assert "to connect to host 127.0.0.3 port 22, but the request was denied" in (work / "sshd.log").read_text()
    assert "This account is currently not available." in sections["command"], out
    assert not sections["command"].rstrip().endswith("exit=0"), out
    assert "== ran no" in out, "a command sent as deploy ran on the LB"
    assert "PTY allocation request failed" in sections["tty"] and not sections["tty"].rstrip().endswith("exit=0"), out
    # A subsystem gets the forced command too: no file server for deploy.
    assert "This account is currently not available." in sections["sftp"], out
