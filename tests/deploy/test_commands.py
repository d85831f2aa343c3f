"""The commands deploy builds, the targets it reads, and a real build of a small app."""

from __future__ import annotations

import datetime as dt
import dataclasses
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

import cloudinit
from cloudinit import app_server
from model import app_contract, conventions
from deploy import commands, release
from deploy.executor import Executor
from deploy.records import Server, Stack
from deploy.targets import LocalStack, PulumiStack, TargetError, stack_from_outputs

from deploy_helpers import require_tool

SERVER = Server("app-1", "10.110.16.3")
STACK = Stack("staging", "198.51.100.2", (SERVER,), identity="/keys/operator")


def test_app_servers_are_reached_as_deploy_through_the_lb_as_deploy_too():
    argv = commands.list_releases(STACK, SERVER).argv
    assert argv[0] == "ssh" and argv[-2:] == ["10.110.16.3", "bash -s -- list"]
    assert argv[argv.index("-l") + 1] == conventions.DEPLOY_USER
    assert argv[argv.index("-i") + 1] == "/keys/operator"
    (proxy,) = [a.split("=", 1)[1] for a in argv if a.startswith("ProxyCommand=")]
    proxy = shlex.split(proxy)
    # The LB's deploy login, which may only forward (sshd's Match block): never `ops`.
    assert proxy[0] == "ssh" and proxy[-3:] == ["-W", "%h:%p", f"{conventions.DEPLOY_USER}@198.51.100.2"]
    assert proxy[proxy.index("-i") + 1] == "/keys/operator"
    assert "BatchMode=yes" in argv and "BatchMode=yes" in proxy


def test_the_deploy_users_sudo_commands_are_exactly_those_its_sudoers_allows(staging_settings):
    """The reload as root, with no arguments; the journal wrapper as root, two numbers; the
    exec wrapper as the app user only."""
    reload = shlex.split(commands.reload_apps(STACK, SERVER).argv[-1])
    assert reload[:2] == ["sudo", "-n"]
    app_exec = shlex.split(commands.app_exec(STACK, SERVER, ["node", "-e", "1"]).argv[-1])
    assert app_exec == ["sudo", "-n", "-u", conventions.APP_USER, "/usr/local/sbin/platform-app-exec", "--", "node",
                        "-e", "1"]
    journal = shlex.split(commands.apps_journal(STACK, SERVER, 1764452000, 20).argv[-1])
    assert journal == ["sudo", "-n", "/usr/local/sbin/platform-apps-journal", "1764452000", "20"]
    migrate = shlex.split(commands.release_command(STACK, SERVER, "R2", "node migrate.js").argv[-1])
    assert migrate == ["sudo", "-n", "-u", conventions.APP_USER, "/usr/local/sbin/platform-app-exec", "--release", "R2",
                       "--", "sh", "-c", "node migrate.js"], "the same wrapper, in the uploaded release"
    sudoers = cloudinit.rendered_files(conventions.APP_SERVER, staging_settings)["/etc/sudoers.d/platform-deploy"]
    aliases = dict(line.removeprefix("Cmnd_Alias ").split(" = ", 1) for line in sudoers.splitlines()
                   if line.startswith("Cmnd_Alias"))
    # sudo finds systemctl on its secure_path: /usr/bin comes first there on both images.
    assert aliases == {"PLATFORM_RELOAD_APPS": "/usr/bin/" + " ".join(reload[2:]),
                       "PLATFORM_APPS_JOURNAL": journal[2], "PLATFORM_APP_EXEC": app_exec[4]}
    rules = [line for line in sudoers.splitlines() if line.startswith(conventions.DEPLOY_USER + " ")]
    assert rules == [f"{conventions.DEPLOY_USER} ALL=(root) NOPASSWD: PLATFORM_RELOAD_APPS, PLATFORM_APPS_JOURNAL",
                     f"{conventions.DEPLOY_USER} ALL=({conventions.APP_USER}) NOPASSWD: PLATFORM_APP_EXEC"]


def test_the_start_check_a_deploy_sends_is_the_one_the_env_push_runs_on_the_app_servers(staging_settings):
    installed = cloudinit.rendered_files(conventions.APP_SERVER, staging_settings)[app_server.START_CHECK_SCRIPT]
    assert installed == commands.START_CHECK_SCRIPT.read_text(), "the app servers' copy is the file as it is"


@pytest.fixture(scope="module")
def staging_settings():
    import mockcloud
    return mockcloud.stack_settings("staging")


def test_the_lock_is_taken_as_deploy_on_an_app_server_without_sudo_the_holder_as_one_argument():
    command = commands.lock(STACK, SERVER, "alice@laptop since 2026-11-29T21:30:05Z (deploy, pid 1)")
    assert command.argv[-2] == "10.110.16.3"
    assert command.argv[command.argv.index("-l") + 1] == conventions.DEPLOY_USER
    assert shlex.split(command.argv[-1]) == ["bash", "-s", "--", "lock",
                                             "alice@laptop since 2026-11-29T21:30:05Z (deploy, pid 1)"]
    assert f"LOCK_DIR={conventions.DEPLOY_LOCK_DIR}\n" in command.stdin
    assert conventions.DEPLOY_LOCK_DIR.startswith(conventions.DEPLOY_HOME + "/")


def test_nothing_the_deploy_tool_runs_uses_sudo_but_the_reload_and_exec_nor_logs_in_as_ops():
    """Every remote command of a deploy and of the operators' verbs, built: only pm2's
    graceful reload goes through sudo as root, exec's wrapper as the app user, and the
    operators' login appears nowhere (a deploy key is not root anywhere)."""
    built = [commands.lock(STACK, SERVER, "me"), commands.unlock(STACK, SERVER, "me"),
             commands.break_lock(STACK, SERVER), commands.list_releases(STACK, SERVER),
             commands.accept(STACK, SERVER, "R1"), commands.switch(STACK, SERVER, "R1"),
             commands.health(STACK, SERVER, 5), commands.activated(STACK, SERVER, "R1"),
             commands.prune(STACK, SERVER, 3), commands.reload_apps(STACK, SERVER),
             commands.through_jump_host(STACK, SERVER), commands.status(STACK, SERVER),
             commands.logs(STACK, SERVER, 5, None, True, ("web",)),
             commands.app_exec(STACK, SERVER, ["sh", "-c", "sudo -i"])]
    argvs = [c.argv for c in built] + [commands.upload(STACK, SERVER, "/tmp/b", "R1"),
                                       commands.close_connection(STACK, "/tmp/c", SERVER)]
    for argv in argvs:
        assert not any(f"{conventions.OPERATOR_USER}@" in arg for arg in argv), argv
    sudo = [shlex.split(argv[-1])[:5] for argv in argvs if argv[-1].startswith("sudo")]
    assert sudo == [["sudo", "-n", "systemctl", "reload", conventions.APPS_UNIT],
                    ["sudo", "-n", "-u", conventions.APP_USER, "/usr/local/sbin/platform-app-exec"]]
    assert not any("sudo" in (c.stdin or "") for c in built), "remote.sh runs nothing through sudo"


def test_the_lbs_host_key_is_checked_by_a_jump_to_an_app_servers_ssh():
    command = commands.through_jump_host(STACK, SERVER)
    assert command.argv[-3:] == ["-W", f"10.110.16.3:{conventions.SSH_PORT}", f"{conventions.DEPLOY_USER}@198.51.100.2"]
    assert command.stdin == "", "stdin ends at once: the forward closes and ssh exits"


def test_the_script_carries_the_facts_from_conventions():
    sent = commands.script(STACK)
    assert f"RELEASES_DIR={conventions.RELEASES_DIR}\n" in sent
    assert f"CURRENT_LINK={conventions.CURRENT_RELEASE_LINK}\n" in sent
    assert f"CA_FILE={conventions.CA_CERT_PATH}\n" in sent
    name = conventions.app_pool_tls_name("staging")
    assert f"HEALTH_URL=https://{name}:{conventions.APP_LOCAL_TLS_PORT}{conventions.HEALTH_PATH}\n" in sent


def test_upload_goes_to_a_partial_directory_hard_linking_against_current():
    argv = commands.upload(STACK, SERVER, "/tmp/build/R1", "R1")
    assert argv[0] == "rsync" and argv[-2:] == ["/tmp/build/R1/", f"10.110.16.3:{conventions.RELEASES_DIR}/R1.partial/"]
    assert f"--link-dest={conventions.CURRENT_RELEASE_LINK}/" in argv
    assert "--delete" in argv and "--chmod=Du=rwx,Dgo=rx,Fu+rw,Fgo+rX,Fgo-w" in argv
    # Owner and group are not sent (deploy could not set them): the app user reads a
    # release as "other", past the releases directory that only its group may enter.
    assert not {"-a", "--archive", "--owner", "--group"} & set(argv)
    remote_shell = shlex.split(argv[argv.index("-e") + 1])
    assert remote_shell[:1] == ["ssh"] and remote_shell[-2:] == ["-l", conventions.DEPLOY_USER]


def test_a_deploy_accepts_only_the_host_keys_the_stack_recorded_filed_by_droplet():
    stack = dataclasses.replace(STACK, host_keys={"lb": "ssh-ed25519 AAAAlb", "app-1": "ssh-ed25519 AAAAapp1"},
                                known_hosts="/work/known_hosts")
    assert commands.known_hosts(stack) == ("staging-app-1 ssh-ed25519 AAAAapp1\n"
                                           "staging-lb ssh-ed25519 AAAAlb\n")
    argv = commands.list_releases(stack, SERVER).argv
    (proxy,) = [shlex.split(a.split("=", 1)[1]) for a in argv if a.startswith("ProxyCommand=")]
    for hop, droplet in ((argv, "staging-app-1"), (proxy, "staging-lb")):
        assert {"StrictHostKeyChecking=yes", "UserKnownHostsFile=/work/known_hosts",
                f"HostKeyAlias={droplet}"} <= set(hop), droplet
        assert "StrictHostKeyChecking=accept-new" not in hop
    assert "HostKeyAlias=staging-lb" in commands.through_jump_host(stack, SERVER).argv
    # Without a known_hosts (never from the deploy command): the operator's own.
    assert "StrictHostKeyChecking=accept-new" in commands.ssh_options(STACK)
    assert "-i" not in commands.ssh_options(Stack("s", "1.2.3.4", (SERVER,)))


def test_pulumi_target_reads_the_programs_own_outputs():
    import mockcloud
    outputs = mockcloud.deploy(mockcloud.stack_settings("staging")).outputs
    stack = stack_from_outputs("staging", json.loads(json.dumps(outputs)))
    assert stack.jump_host == outputs["public_ip"] and stack.host_keys == outputs["host_keys"]
    assert [s.address for s in stack.servers] == outputs["private_ips"]["app"]
    assert [s.name for s in stack.servers] == ["app-1", "app-2"]
    assert PulumiStack("staging", Executor()).output_command() == [
        "pulumi", "stack", "output", "--json", "--stack", "staging"]


def test_pulumi_target_says_what_is_missing():
    with pytest.raises(TargetError, match="lack public_ip, private_ips.app or host_keys"):
        stack_from_outputs("staging", {"url": "https://x"})
    with pytest.raises(TargetError, match=r"host_keys \('host_keys'\); run `pulumi up`"):
        stack_from_outputs("staging", {"public_ip": "198.51.100.2", "private_ips": {"app": []}})


@pytest.mark.parametrize("where, outputs", [
    ("public_ip", {"public_ip": "-oProxyCommand=sh", "private_ips": {"app": ["10.0.0.3"]}, "host_keys": {}}),
    ("private_ips.app[1]", {"public_ip": "198.51.100.2", "private_ips": {"app": ["10.0.0.3", "app.internal"]},
                            "host_keys": {}}),
])
def test_pulumi_target_refuses_an_address_that_is_not_one(where, outputs):
    """Outputs reach ssh's command line: anything but an IPv4 address is refused, named."""
    with pytest.raises(TargetError, match=rf"output {re.escape(where)} is '.*', not an IPv4 address"):
        stack_from_outputs("staging", outputs)


def test_local_target_reads_what_the_local_clouds_last_up_deployed(tmp_path, monkeypatch):
    from localcloud import records
    droplets = [("lb", "10.0.0.1"), ("app-10", "10.0.0.12"), ("app-2", "10.0.0.4"), ("datastore", "10.0.0.2")]
    record = {"domain": "staging.example.com", "vpc_ip_range": "10.0.0.0/24", "overrides": {}, "raw_state": [],
              "resources": [
                  {"type": "digitalocean:index/droplet:Droplet", "name": n, "id": str(i), "inputs": {},
                   "state": {"name": f"staging-{n}", "ipv4AddressPrivate": ip, "ipv4Address": f"198.51.100.{10 + i}",
                             "userData": "", "tags": []}}
                  for i, (n, ip) in enumerate(droplets)
              ] + [
                  {"type": "digitalocean:index/reservedIp:ReservedIp", "name": "lb-ip", "id": "ip", "inputs": {},
                   "state": {"ipAddress": "198.51.100.2"}},
                  {"type": "digitalocean:index/reservedIpAssignment:ReservedIpAssignment", "name": "lb-ip-a",
                   "id": "a", "inputs": {}, "state": {"ipAddress": "198.51.100.2", "dropletId": 0}},
              ], "outputs": {"host_keys": {n: f"ssh-ed25519 AAAA{n}" for n, _ in droplets}}}
    state = tmp_path / "staging.json"
    state.write_text(json.dumps(record))
    monkeypatch.setattr(records, "state_file", lambda name: state)
    stack = LocalStack("staging", identity="/keys/k").resolve()
    assert stack.jump_host == "198.51.100.2" and stack.identity == "/keys/k"
    assert stack.servers == (Server("app-2", "10.0.0.4"), Server("app-10", "10.0.0.12"))
    assert stack.host_keys["app-10"] == "ssh-ed25519 AAAAapp-10" and stack.known_hosts is None
    monkeypatch.setattr(LocalStack, "default_identity", lambda self: None)
    with pytest.raises(TargetError, match="no operator key"):
        LocalStack("staging").resolve()
    monkeypatch.setattr(records, "state_file", lambda name: tmp_path / "none.json")
    with pytest.raises(TargetError, match="localcloud up"):
        LocalStack("staging", identity="/k").resolve()


# --- the build -----------------------------------------------------------------------------

def test_release_ids_sort_by_utc_time_and_name_commit_and_dirt():
    now = dt.datetime(2026, 11, 29, 22, 30, 5, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert release.release_id("abc1234", False, now) == "20261129T213005Z-abc1234"
    assert release.release_id("abc1234", True, now) == "20261129T213005Z-abc1234-dirty"


@pytest.mark.sandbox  # runs git and npm
def test_build_installs_dependencies_from_the_lockfile_and_names_the_commit(tmp_path):
    """The example app, built for real (npm ci from the registry, as an operator's machine does)."""
    require_tool("git", "git")
    require_tool("npm", "npm")
    from deploy import DEFAULT_APP_DIR
    app = Path(DEFAULT_APP_DIR)
    commit = subprocess.run(["git", "-C", str(app), "rev-parse", "--short=7", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(app), "status", "--porcelain", "--", "."],
                                capture_output=True, text=True, check=True).stdout.strip())
    built = release.build(str(app), str(tmp_path / "work"), Executor())
    assert built.release_id.endswith(f"Z-{commit}" + ("-dirty" if dirty else ""))
    # What the archive's manifest records of it.
    assert (built.commit, built.dirty) == (commit, dirty)
    assert built.release_id.startswith(built.built_at.replace("-", "").replace(":", ""))
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    assert built.node_version == node
    out = Path(built.directory)
    lock = json.loads((app / "package-lock.json").read_text())
    for name, entry in lock["packages"].items():
        if name.startswith("node_modules/") and not entry.get("dev"):
            assert (out / name / "package.json").exists(), name
    assert not (out / "test").exists()
    assert (out / "api" / "server.js").exists()
    assert (out / "REVISION").read_text() == built.release_id + "\n"


def test_dependencies_are_installed_for_production_from_the_lockfile():
    assert commands.install_dependencies("/tmp/b") == ["npm", "ci", "--omit=dev", "--no-audit", "--no-fund",
                                                        "--prefix", "/tmp/b"]


def test_build_refuses_a_directory_without_a_lockfile(tmp_path):
    (tmp_path / "package.json").write_text("{}")
    with pytest.raises(ValueError, match="package-lock.json"):
        release.build(str(tmp_path), str(tmp_path / "work"), Executor())


# An app directory as a developer's machine holds it: each file, and whether a release holds it.
APP_FILES = {
    "package.json": True, "web/server.js": True, "api/server.js": True, "api/test/fixture.json": True,
    ".env.example": True, "api/.env.example": True, "api/.npmrc": False, ".envrc": False, ".env": False,
    ".env.production": False, "api/.env": False, "web/.env.local": False, "test/api.test.js": False,
    "node_modules/x/index.js": False, ".git/HEAD": False, ".npmrc": False,
}


def app_directory(root: Path) -> Path:
    for name in APP_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"{name}\n")
    return root


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_a_release_leaves_out_a_developers_local_settings_in_any_folder_and_keeps_their_template():
    from pathlib import PurePosixPath
    assert {name: app_contract.released(PurePosixPath(name)) for name in APP_FILES} == APP_FILES


def test_the_example_apps_archive_leaves_out_what_a_release_does(tmp_path, monkeypatch):
    import base64
    import io
    import tarfile
    monkeypatch.setattr(app_server, "EXAMPLE_APP", app_directory(tmp_path))
    raw = base64.b64decode(app_server.example_app_archive())
    with tarfile.open(fileobj=io.BytesIO(raw)) as archive:
        assert set(archive.getnames()) == {name for name, kept in APP_FILES.items() if kept}


@pytest.mark.sandbox  # runs rsync and npm
def test_a_release_holds_the_app_but_what_it_leaves_out_though_the_build_reads_npmrc(tmp_path):
    require_tool("rsync", "rsync")
    require_tool("npm", "npm")
    app = app_directory(tmp_path / "app")
    (app / "package.json").write_text('{"name": "t", "version": "1.0.0"}\n')
    (app / "package-lock.json").write_text(json.dumps({"name": "t", "version": "1.0.0", "lockfileVersion": 3,
                                                       "packages": {"": {"name": "t", "version": "1.0.0"}}}))
    subprocess.run(commands.copy_sources(str(app), str(tmp_path / "build")), check=True)
    build_only = {name for name in APP_FILES if Path(name).name in app_contract.BUILD_ONLY}
    assert build_only == {".npmrc", "api/.npmrc"}
    assert files_under(tmp_path / "build") == {name for name, kept in APP_FILES.items() if kept} | \
        {"package-lock.json", *build_only}
    built = release.build(str(app), str(tmp_path / "work"), Executor())
    assert {name for name in files_under(Path(built.directory)) if not name.startswith("node_modules/")} == \
        {name for name, kept in APP_FILES.items() if kept} | {"package-lock.json", "platform.json", "REVISION"}


@pytest.mark.sandbox  # runs rsync
def test_uploaded_files_are_readable_and_never_writable_by_others(tmp_path):
    """rsync with the upload's modes, locally: what lands is what the app user can read."""
    require_tool("rsync", "rsync")
    src = tmp_path / "src"
    (src / "node_modules" / ".bin").mkdir(parents=True)
    (src / "server.js").write_text("x")
    (src / "server.js").chmod(0o600)
    (src / "node_modules" / ".bin" / "tool").write_text("#!/bin/sh\n")
    (src / "node_modules" / ".bin" / "tool").chmod(0o700)
    (src / "node_modules").chmod(0o700)
    argv = commands.upload(STACK, SERVER, str(src), "R1")
    local = [a for a in argv[: argv.index("-e")]] + [f"{src}/", f"{tmp_path / 'dest'}/"]
    subprocess.run(local, check=True)
    mode = lambda p: oct((tmp_path / "dest" / p).stat().st_mode & 0o7777)  # noqa: E731
    assert mode("server.js") == "0o644"
    assert mode("node_modules") == "0o755"
    assert mode("node_modules/.bin/tool") == "0o755"
