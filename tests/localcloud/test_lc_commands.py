"""Command builders: the exact argument lists the local cloud runs."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from localcloud import config, daemon, droplet, image, network, package_cache, shell, volume


def test_droplet_net_addresses_and_ports():
    net = network.DropletNet("app-1", 2, "10.20.0.0/24")
    assert (net.public_ip, net.vpc_ip) == ("198.51.100.12", "10.20.0.4")
    assert (net.public_port, net.vpc_port, net.netns) == ("pub2", "vpc2", "lc-app-1")
    # the emulated public range avoids the machine's own and the mirror's ranges
    assert not config.PUBLIC_NET.overlaps(__import__("ipaddress").ip_network("192.0.2.0/24"))
    assert not config.PUBLIC_NET.overlaps(__import__("ipaddress").ip_network("203.0.113.0/24"))


def test_veth_is_created_with_each_end_in_its_namespace():
    assert network.veth_pair("pub0", "lc-switch", "eth0", "lc-app") == [
        "ip", "link", "add", "pub0", "netns", "lc-switch", "type", "veth", "peer", "name", "eth0",
        "netns", "lc-app"]
    assert network.veth_pair("lc-host", None, "host0", "lc-switch")[:5] == [
        "ip", "link", "add", "lc-host", "type"]


def test_nspawn_command_has_the_flags_the_notes_require():
    cmd = droplet.nspawn_command("web", droplet.Paths("web"))
    assert cmd[:6] == ["systemd-nspawn", "-D", str(config.DROPLETS_DIR / "web" / "root"), "-M", "web", "-b"]
    for flag in ("--register=no", "--keep-unit", "--console=read-only",
                 "--network-namespace-path=/run/netns/lc-web",
                 f"--bind={config.DROPLETS_DIR}/web/by-id:/dev/disk/by-id"):
        assert flag in cmd


def test_launcher_moves_into_droplet_cgroups_before_nspawn():
    cmd = droplet.launcher_command("web", ["systemd-nspawn", "-b"])
    assert cmd[:2] == ["sh", "-c"]
    sep = cmd.index("--")
    assert cmd[4:sep] == ["/sys/fs/cgroup/systemd/lc-web", "/sys/fs/cgroup/unified/lc-web"]
    assert cmd[sep + 1:] == ["systemd-nspawn", "-b"]


def test_launcher_script_restarts_on_reboot_exit_code_only(tmp_path):
    """Run the real launcher script with plain dirs as cgroups and a fake nspawn."""
    runs = tmp_path / "runs"
    fake = tmp_path / "fake-nspawn"
    # exits 133 (reboot) twice, then 7 (anything else ends the launcher)
    fake.write_text(f'#!/bin/sh\necho x >> {runs}\nn=$(wc -l < {runs})\n'
                    f'[ "$n" -lt 3 ] && exit {config.NSPAWN_REBOOT_EXIT}\nexit 7\n')
    fake.chmod(0o755)
    cg = tmp_path / "cg"
    proc = subprocess.run(["sh", "-c", droplet.LAUNCHER_SCRIPT, "x", str(cg), "--", str(fake)],
                          capture_output=True, text=True, timeout=10)
    assert proc.returncode == 7
    assert runs.read_text().count("x") == 3
    assert (cg / "cgroup.procs").read_text().strip().isdigit()


def test_exec_command_enters_all_namespaces_with_a_clean_environment():
    cmd = droplet.exec_command(1234, ["cloud-init", "status"])
    assert cmd[:4] == ["nsenter", "-t", "1234", "-a"]
    assert cmd[-2:] == ["cloud-init", "status"]
    assert "-i" in cmd


def test_nocloud_meta_data():
    assert droplet.meta_data("db") == "instance-id: db\nlocal-hostname: db\n"


def test_overlay_mount_command():
    p = droplet.Paths("db")
    assert droplet.overlay_mount_command(Path("/img"), p) == [
        "mount", "-t", "overlay", "overlay", "-o",
        f"lowerdir=/img,upperdir={p.upper},workdir={p.work}", str(p.root)]


def test_debootstrap_command_uses_given_mirror_and_includes():
    cmd = image.debootstrap_command(Path("/r"), "http://mirror.test/debian")
    assert cmd[:2] == ["debootstrap", "--variant=minbase"]
    assert cmd[2] == "--include=" + ",".join(config.DEBOOTSTRAP_INCLUDE)
    assert cmd[-3:] == ["bookworm", "/r", "http://mirror.test/debian"]
    assert "sudo" in config.DEBOOTSTRAP_INCLUDE and "systemd-sysv" in config.DEBOOTSTRAP_INCLUDE


def test_image_settings_text():
    assert "datasource_list: [NoCloud, None]" in image.CLOUD_CFG
    assert "network: {config: disabled}" in image.CLOUD_CFG
    # Plain http through the package cache; https tunnels through the egress proxy.
    assert image.apt_proxy_conf("http://cache:1", "http://p:2") == (
        'Acquire::http::Proxy "http://cache:1";\nAcquire::https::Proxy "http://p:2";\n')
    # npm asks the registry cache, directly: no proxy would let it through.
    assert image.npmrc("http://cache:2/").splitlines() == [
        "registry=http://cache:2/", "cafile=/etc/ssl/certs/ca-certificates.crt"]


def test_the_apt_cache_serves_only_the_hosts_http_repositories():
    conf = package_cache.apt_cacher_conf(["http://mirror.test/debian", "http://mirror.test/debian-security"])
    assert "ForceManaged: 1" in conf.splitlines()
    assert [l for l in conf.splitlines() if l.startswith("Remap-")] == [
        "Remap-source0: http://mirror.test/debian ; http://mirror.test/debian",
        "Remap-source1: http://mirror.test/debian-security ; http://mirror.test/debian-security"]


def test_the_npm_cache_has_one_uplink_the_hosts_registry():
    conf = json.loads(package_cache.verdaccio_config("https://registry.test/"))
    assert conf["uplinks"] == {"registry": {"url": "https://registry.test/", "maxage": "1d", "cache": True,
                                            "timeout": "60s"}}
    assert {p["proxy"] for p in conf["packages"].values()} == {"registry"}


CERT = "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----"


def test_extra_host_cas_are_those_missing_from_the_image_bundle():
    stock = CERT.format("AAAA") + "\n" + CERT.format("BBBB")
    host = CERT.format("AAAA") + "\n\n" + CERT.format("CCCC\nDDDD")
    assert image.extra_host_cas(host, stock) == [CERT.format("CCCC\nDDDD")]
    assert image.extra_host_cas(stock, stock) == []


def test_recipe_hash_follows_the_recipe():
    r = {"a": 1, "b": [1, 2]}
    assert image.recipe_hash(r) == image.recipe_hash({"b": [1, 2], "a": 1})
    assert image.recipe_hash(r) != image.recipe_hash({"a": 2, "b": [1, 2]})


def test_volume_paths_and_commands():
    assert volume.device_path("pgdata") == "/dev/disk/by-id/scsi-0DO_Volume_pgdata"
    assert volume.losetup_attach_command(Path("/v.img")) == ["losetup", "--find", "--show", "/v.img"]
    assert volume.mkfs_command("ext4", "/v.img", "pgdata") == ["mkfs.ext4", "-q", "-L", "pgdata", "/v.img"]


@pytest.mark.sandbox
def test_a_volume_grows_with_its_loop_device_and_never_shrinks(tmp_path, monkeypatch):
    """As DigitalOcean's: the device under the droplet takes the new size at once (the
    datastore's provisioning grows the filesystem), and a smaller size is refused."""
    monkeypatch.setattr(config, "VOLUMES_DIR", tmp_path)
    path = volume.create("grows", 8, filesystem=None)
    loop = volume.ensure_loop("grows")
    try:
        volume.create("grows", 12, filesystem=None)
        assert path.stat().st_size == 12 << 20
        assert shell.run(["blockdev", "--getsize64", loop]).stdout.strip() == str(12 << 20)
        with pytest.raises(ValueError, match="^volume grows: 8 MB is less than its 12 MB; a volume can only grow$"):
            volume.create("grows", 8, filesystem=None)
    finally:
        shell.run(volume.losetup_detach_command(loop), check=False)


def test_a_droplet_boots_with_sshd_answering_before_cloud_init(tmp_path):
    from localcloud.droplet import BootQuirks, boot_files
    unit = tmp_path / "lib/systemd/system/cloud-init.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Unit]\nBefore=sshd-keygen.service\nBefore=sshd.service\nBefore=sysinit.target\n")
    files = boot_files(tmp_path, BootQuirks())
    assert files["etc/systemd/system/cloud-init.service"] == "[Unit]\nBefore=sysinit.target\n"
    early = files["etc/systemd/system/ssh.service.d/localcloud-boot.conf"]
    assert "DefaultDependencies=no" in early and "ExecStartPre=/usr/bin/ssh-keygen -A" in early
    assert "sleep" not in early and len(files) == 2
    slow = boot_files(tmp_path, BootQuirks(sshd_late=30, logins_refused=60))
    assert "ExecStartPre=/bin/sleep 30\nExecStartPre=/usr/bin/ssh-keygen -A" in \
        slow["etc/systemd/system/ssh.service.d/localcloud-boot.conf"]
    assert "ExecStartPre=/bin/sleep 60" in \
        slow["etc/systemd/system/systemd-user-sessions.service.d/localcloud-late.conf"]


def test_wait_until_returns_the_first_true_answer_or_says_what_it_last_found():
    answers = iter([0, "", "up"])
    assert shell.wait_until(lambda: next(answers), 5, "never said", every=0) == "up"
    asked = []
    with pytest.raises(TimeoutError, match=r"^still 1 left: not ready after 0s$"):
        shell.wait_until(lambda: asked.append(1), 0, lambda: f"still {len(asked)} left", every=0)
    assert asked == [1], "asked once even with no time left"

    def exited():
        raise RuntimeError("it exited")
    with pytest.raises(RuntimeError, match="^it exited$"):   # a check that raises gives up at once
        shell.wait_until(exited, 60, "never")


def test_a_daemon_is_awaited_until_it_listens_or_answers_and_its_exit_or_silence_names_its_log(tmp_path):
    marker = f"lc-test-daemon-{os.getpid()}"
    service = daemon.Daemon(tmp_path / "toy.pid", tmp_path / "toy.log", f"\0{marker}\0".encode())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    listens = f"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(60)"
    try:
        service.wait_listening(service.start([sys.executable, "-c", listens, marker]), "127.0.0.1", port, "toy")
        service.stop()
        ready = tmp_path / "ready"
        service.start(["sh", "-c", f"sleep 0.3; touch {ready}; sleep 60", marker])
        service.wait_answering(["test", "-e", str(ready)], "toy")
        with pytest.raises(TimeoutError, match=f"^toy: no answer; see {tmp_path}/toy.log: not ready after 1s$"):
            service.wait_answering(["false"], "toy", timeout=1)
        service.stop()
        exits = ["sh", "-c", "echo bad config; exit 3", marker]
        with pytest.raises(RuntimeError, match=f"^toy exited; see {tmp_path}/toy.log$"):
            service.wait_listening(service.start(exits), "127.0.0.1", port, "toy")
        service.start(exits).wait()
        with pytest.raises(RuntimeError, match=f"^toy exited; see {tmp_path}/toy.log$"):
            service.wait_answering(["false"], "toy")
        assert "bad config" in (tmp_path / "toy.log").read_text()
    finally:
        service.stop()


def test_a_process_that_ended_is_not_alive_even_before_its_parent_collects_it():
    # The launchers and daemons are often this process's own children: a stop that
    # waited for the zombie to go would wait out its whole timeout.
    running = subprocess.Popen(["sleep", "30"])
    ended = subprocess.Popen(["true"])
    try:
        assert shell.alive(running.pid)
        os.waitid(os.P_PID, ended.pid, os.WEXITED | os.WNOWAIT)   # it has exited, uncollected
        assert not shell.alive(ended.pid)
        assert not shell.alive(None)
    finally:
        running.kill()
        running.wait()
        ended.wait()
    assert not shell.alive(ended.pid)


def stream_on_this_machine(tmp_path: Path, seconds, limit: float) -> subprocess.Popen:
    """localcloud.traffic's stream run here, outside the internet client's namespace, to a
    closed port (each request fails fast): how it ends, not what it counts."""
    import certifi
    from localcloud import traffic
    argv = traffic.argv("example.test", "127.0.0.1", certifi.where(), ["/a", "/b"], 50, seconds, tmp_path / "stop",
                        limit)
    assert argv[0] == "python3"
    return subprocess.Popen([sys.executable, *argv[1:]], stdout=subprocess.PIPE, text=True)   # the fast tier's Python


def ended(stream: subprocess.Popen, timeout: float) -> dict:
    try:
        out, _ = stream.communicate(timeout=timeout)
    finally:
        stream.kill()   # one that did not end is not left running
    return json.loads(out)


def test_an_open_ended_stream_ends_when_told_and_otherwise_at_its_limit(tmp_path):
    from localcloud import traffic
    told = stream_on_this_machine(tmp_path, None, limit=60)

    def going() -> bool:   # what traffic.start waits for: it runs
        assert told.poll() is None, "the stream ended before its first answer"
        return traffic.answered_file(tmp_path / "stop").exists()
    shell.wait_until(going, 30, "the stream did not get going", every=0.05)
    (tmp_path / "stop").touch()
    counts = ended(told, timeout=30)
    assert counts["requests"] >= 1 and counts["failed"] == counts["requests"], counts   # nothing listens there
    assert counts["seconds"] < 10, counts   # told, long before its limit
    (tmp_path / "stop").unlink()
    forgotten = stream_on_this_machine(tmp_path, None, limit=1)
    counts = ended(forgotten, timeout=30)
    assert 1 <= counts["seconds"] < 10, counts


def test_a_second_run_finds_the_local_cloud_in_use_and_is_told_by_whom(tmp_path, monkeypatch):
    from localcloud import tenancy
    monkeypatch.setattr(config, "STATE_ROOT", tmp_path)
    monkeypatch.setattr(config, "IN_USE_LOCK", tmp_path / "in-use.lock")
    with tenancy.held("pytest in /tmp/ci1"):
        # Another open of the lock (another process's, as the suite's fixture sees it) is refused.
        with pytest.raises(tenancy.InUse) as busy, tenancy.held("pytest in /work/main"):
            pass
        assert str(busy.value) == f"the local cloud is in use by pid {os.getpid()} (pytest in /tmp/ci1)"
    with tenancy.held("pytest in /work/main"):   # released with its holder
        pass


@pytest.mark.parametrize("found, expected", [
    ("nothing", [False, "the tests", "removed staging and everything"]),
    ("a killed run's droplets", ["removed staging and everything", False, "the tests", "removed staging and everything"]),
    ("the stack up", [True, "the tests"]),   # a developer's `localcloud up`: used and left up
])
def test_a_test_run_starts_from_nothing_and_leaves_the_machine_as_it_found_it(found, expected, tmp_path, monkeypatch):
    from localcloud import teardown, tenancy
    monkeypatch.setattr(config, "STATE_ROOT", tmp_path)
    monkeypatch.setattr(config, "IN_USE_LOCK", tmp_path / "in-use.lock")
    monkeypatch.setattr(tenancy, "stack_is_up", lambda name: found == "the stack up")
    monkeypatch.setattr(teardown, "leftovers", lambda: {"netns": [] if found == "nothing" else ["lc-vpc"]})
    happened = []
    monkeypatch.setattr(tenancy, "remove_everything", lambda name: happened.append(f"removed {name} and everything"))
    with tenancy.a_test_run("pytest in /work/main", "staging") as stack_was_up:
        happened += [stack_was_up, "the tests"]
    assert happened == expected


def test_the_cli_does_not_tear_down_a_local_cloud_that_a_test_run_has(tmp_path, monkeypatch):
    from localcloud import __main__ as cli, teardown, tenancy
    monkeypatch.setattr(config, "STATE_ROOT", tmp_path)
    monkeypatch.setattr(config, "IN_USE_LOCK", tmp_path / "in-use.lock")
    torn_down = []
    monkeypatch.setattr(teardown, "teardown", lambda **kw: torn_down.append(kw))
    monkeypatch.setattr(sys, "argv", ["localcloud", "teardown"])
    with tenancy.held("pytest in /tmp/ci1"), pytest.raises(SystemExit) as refused:
        cli.main()
    assert str(refused.value) == ("localcloud teardown: the local cloud is in use by "
                                  f"pid {os.getpid()} (pytest in /tmp/ci1)")
    assert torn_down == []
    assert cli.main() == 0 and torn_down == [{"keep_volumes": False}]   # once the run has ended
