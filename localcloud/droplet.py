"""Droplets: systemd-nspawn containers booted from the image, seeded for cloud-init.

Each droplet is an overlay over the shared image (lower = image, upper/work its own),
a network namespace made by `network`, and a launcher: a shell that first moves itself
into the droplet's own cgroups (without that, droplets share one cgroup and
systemd-sysusers fails with 219/CGROUP) and then runs systemd-nspawn, again after each
reboot (nspawn exits 133 when the container reboots).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import config, network, shell, state

VOLUME_DIR_INSIDE = "/dev/disk/by-id"   # where DigitalOcean volumes appear
DROPLET_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# argv: CGROUP_DIR... -- NSPAWN_ARGV...
LAUNCHER_SCRIPT = f"""
while [ "$1" != "--" ]; do mkdir -p "$1" && echo $$ > "$1/cgroup.procs" || exit 90; shift; done
shift
while :; do
  "$@"; rc=$?
  [ "$rc" -eq {config.NSPAWN_REBOOT_EXIT} ] || exit "$rc"
  echo "localcloud: droplet rebooted, starting it again" >&2
done
"""


@dataclass(frozen=True)
class BootQuirks:
    """Delays a test gives one droplet's boot, beyond DigitalOcean-like (`boot_files`)."""
    sshd_late: int = 0             # seconds sshd starts late
    logins_refused: int = 0        # seconds /run/nologin outlives its usual removal


@dataclass(frozen=True)
class Paths:
    """Where one droplet's files live on the host."""
    name: str

    @property
    def base(self) -> Path:
        return config.DROPLETS_DIR / self.name

    @property
    def root(self) -> Path:        # the overlay mount: the droplet's /
        return self.base / "root"

    @property
    def upper(self) -> Path:
        return self.base / "upper"

    @property
    def work(self) -> Path:
        return self.base / "work"

    @property
    def by_id(self) -> Path:       # bound over the droplet's /dev/disk/by-id (volumes)
        return self.base / "by-id"

    @property
    def console_log(self) -> Path:
        return self.base / "console.log"

    @property
    def seed(self) -> Path:
        return self.root / "var/lib/cloud/seed/nocloud"


def cgroup_dirs(name: str) -> list[Path]:
    return [h / (config.PREFIX + name) for h in config.CGROUP_HIERARCHIES]


# --- command builders -------------------------------------------------------

def overlay_mount_command(image_rootfs: Path, p: Paths) -> shell.Command:
    return ["mount", "-t", "overlay", "overlay", "-o",
            f"lowerdir={image_rootfs},upperdir={p.upper},workdir={p.work}", str(p.root)]


# A droplet is a VM: its own network settings are its to change (the hardening's sysctls).
# nspawn leaves /proc/sys/net writable only with a network namespace of its own making,
# not one given by path, unless told; the rest of /proc/sys stays the host kernel's.
NSPAWN_ENV = {"SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"}


def nspawn_command(name: str, p: Paths) -> shell.Command:
    return ["systemd-nspawn", "-D", str(p.root), "-M", name, "-b",
            "--register=no", "--keep-unit",     # no host systemd: --register=no alone fails
            "--console=read-only",
            # A droplet is a VM that runs its own firewall (ufw); nspawn drops this by default.
            # The cloud firewall stays out of its reach, in the switch namespace.
            "--capability=CAP_NET_ADMIN",
            f"--network-namespace-path={network.netns_path(network.netns_name(name))}",
            f"--bind={p.by_id}:{VOLUME_DIR_INSIDE}"]


def launcher_command(name: str, nspawn: shell.Command) -> shell.Command:
    return ["sh", "-c", LAUNCHER_SCRIPT, "localcloud-launcher",
            *map(str, cgroup_dirs(name)), "--", *nspawn]


def exec_command(pid: int, argv: list[str]) -> shell.Command:
    # machinectl / systemd-run -M need a host systemd; nsenter does not.
    return ["nsenter", "-t", str(pid), "-a", "/usr/bin/env", "-i", f"PATH={DROPLET_PATH}",
            "HOME=/root", "LANG=C.UTF-8", *argv]


# Debian's cloud-init starts sshd only once it has written users and keys. On the cloud
# a push can still meet an sshd that answers and refuses the login (its user not there
# yet, or /run/nologin until boot finishes), so a local droplet's sshd answers from the
# start of boot, with host keys of its own, before cloud-init has run: the worst case.
EARLY_SSHD = """\
[Unit]
DefaultDependencies=no
After=systemd-tmpfiles-setup.service
[Service]
ExecStartPre=
{late}ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
TimeoutStartSec=infinity
"""
LATE_LOGINS = """\
[Service]
ExecStartPre=/bin/sleep {seconds}
TimeoutStartSec=infinity
"""
UNIT_DIR = "etc/systemd/system"


def boot_files(image_rootfs: Path, quirks: BootQuirks) -> dict[str, str]:
    """Files that make a droplet boot like the cloud's (see EARLY_SSHD), by path in it."""
    cloud_init = (image_rootfs / "lib/systemd/system/cloud-init.service").read_text()
    late = f"ExecStartPre=/bin/sleep {quirks.sshd_late}\n" if quirks.sshd_late else ""
    files = {
        f"{UNIT_DIR}/cloud-init.service": "".join(
            line for line in cloud_init.splitlines(keepends=True)
            if line.strip() not in ("Before=sshd.service", "Before=sshd-keygen.service")),
        f"{UNIT_DIR}/ssh.service.d/localcloud-boot.conf": EARLY_SSHD.format(late=late),
    }
    if quirks.logins_refused:
        files[f"{UNIT_DIR}/systemd-user-sessions.service.d/localcloud-late.conf"] = \
            LATE_LOGINS.format(seconds=quirks.logins_refused)
    return files


def meta_data(name: str) -> str:
    return f"instance-id: {name}\nlocal-hostname: {name}\n"


# --- processes --------------------------------------------------------------

def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def launcher_pid(name: str) -> int | None:
    """The launcher from the state file, if that process still is this droplet's."""
    pid = state.load()["droplets"].get(name, {}).get("launcher_pid")
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, TypeError):
        return None
    return pid if b"localcloud-launcher" in cmdline and name.encode() in cmdline else None


def nspawn_pid(name: str) -> int | None:
    lp = launcher_pid(name)
    for c in children(lp) if lp else []:
        try:
            comm = Path(f"/proc/{c}/comm").read_text().strip()
        except OSError:  # the child exited between the listing and the read (a reboot's exec)
            continue
        if comm == "systemd-nspawn":
            return c
    return None


def container_init_pid(name: str) -> int | None:
    """The container's PID 1 as the host sees it: the process whose inner pid is 1."""
    todo = [nspawn_pid(name)] if nspawn_pid(name) else []
    while todo:
        pid = todo.pop(0)
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        nspid = next((l.split()[1:] for l in status.splitlines() if l.startswith("NSpid:")), [])
        if len(nspid) > 1 and nspid[-1] == "1":
            return pid
        todo += children(pid)
    return None


def is_running(name: str) -> bool:
    return container_init_pid(name) is not None


# --- life cycle -------------------------------------------------------------

def prepare(name: str, image_rootfs: Path, user_data: str, quirks: BootQuirks = BootQuirks()) -> Paths:
    """The droplet's disk: an overlay over the image, holding its NoCloud seed and the
    files that make it boot like the cloud's."""
    p = Paths(name)
    for d in (p.root, p.upper, p.work):
        d.mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(p.root):
        shell.run(overlay_mount_command(image_rootfs, p))
    p.seed.mkdir(parents=True, exist_ok=True)
    (p.seed / "meta-data").write_text(meta_data(name))
    (p.seed / "user-data").write_text(user_data)
    for rel, text in boot_files(image_rootfs, quirks).items():
        (p.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (p.root / rel).write_text(text)
    return p


def start(name: str) -> int:
    """Boot the droplet in the background; returns the launcher's pid."""
    if launcher_pid(name):
        return launcher_pid(name)
    p = Paths(name)
    log = open(p.console_log, "ab")
    p.by_id.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(launcher_command(name, nspawn_command(name, p)),
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, **NSPAWN_ENV})
    with state.editing() as s:
        s["droplets"].setdefault(name, {})["launcher_pid"] = proc.pid
    shell.wait_until(lambda: container_init_pid(name), 30, f"{name}: container init")
    return proc.pid


def exec(name: str, argv: list[str], check: bool = True, timeout: float | None = 600,
         input: str | None = None) -> subprocess.CompletedProcess:
    """Run argv inside the running droplet (all its namespaces), output captured."""
    pid = container_init_pid(name)
    if not pid:
        raise RuntimeError(f"droplet {name} is not running")
    return shell.run(exec_command(pid, argv), check=check, timeout=timeout, input=input)


def bash_output(name: str, script: str, timeout: float = 60) -> str:
    """What bash printed running SCRIPT inside the droplet, stripped; its exit status is
    not checked (the tests' and benchmarks' way to read a droplet's state)."""
    return exec(name, ["bash", "-c", script], check=False, timeout=timeout).stdout.strip()


def cloud_init_status(name: str) -> str:
    out = exec(name, ["cloud-init", "status"], check=False, timeout=30).stdout
    for line in out.splitlines():
        if line.startswith("status:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def wait_cloud_init(name: str, timeout: float = 600) -> str:
    """Wait until cloud-init has finished ('done'), printing each status it passes; raise
    on 'error' or timeout."""
    start_t, last = time.monotonic(), "not asked"

    def done() -> bool:
        nonlocal last
        status = cloud_init_status(name) if is_running(name) else "not booted"
        if status != last:
            print(f"[localcloud] {name}: cloud-init {status} ({time.monotonic() - start_t:.1f}s)", flush=True)
            last = status
        if status in ("error", "degraded"):
            long = exec(name, ["cloud-init", "status", "--long"], check=False).stdout
            raise RuntimeError(f"{name}: cloud-init {status}\n{long}")
        return status == "done"

    shell.wait_until(done, timeout, lambda: f"{name}: cloud-init (last: {last})", every=1)
    return "done"


def power_off(name: str) -> None:
    """Ask the droplet to power off (SIGTERM to nspawn = clean shutdown), without waiting:
    several can then shut down at once, each `stop` waiting for its own."""
    np = nspawn_pid(name)
    if np:
        os.kill(np, signal.SIGTERM)


def stop(name: str, timeout: float = 30) -> None:
    """Power the droplet off, then its launcher ends (killed if it has not in `timeout`)."""
    lp = launcher_pid(name)
    if not lp:
        return
    power_off(name)
    try:
        shell.wait_until(lambda: not shell.alive(lp), timeout, f"{name}: shutdown")
    except TimeoutError:
        kill_cgroup(name)
    with state.editing() as s:
        s["droplets"].get(name, {}).pop("launcher_pid", None)


def reboot(name: str, timeout: float = 60) -> None:
    """`systemctl reboot` inside; the launcher starts nspawn again on the same disk."""
    old_init = container_init_pid(name)
    exec(name, ["systemctl", "reboot"], check=False)
    shell.wait_until(lambda: (pid := container_init_pid(name)) and pid != old_init, timeout,
               f"{name}: reboot")
    wait_booted(name, timeout)


def system_state(name: str) -> str:
    return exec(name, ["systemctl", "is-system-running"], check=False, timeout=30).stdout.strip()


def wait_booted(name: str, timeout: float = 60) -> str:
    """Wait until systemd inside has finished booting (running, or degraded)."""
    return shell.wait_until(lambda: (st := system_state(name)) in ("running", "degraded") and st,
                      timeout, f"{name}: boot", every=0.5)


def cgroup_pids(name: str) -> list[int]:
    pids = set()
    for top in cgroup_dirs(name):
        # os.walk, not rglob: a stopping container removes its cgroups while they are read.
        for directory, _, files in os.walk(top):
            if "cgroup.procs" not in files:
                continue
            try:
                pids.update(int(p) for p in Path(directory, "cgroup.procs").read_text().split())
            except OSError:
                pass
    return sorted(pids)


def kill_cgroup(name: str) -> None:
    """SIGKILL everything left in the droplet's cgroups (after a failed or killed run)."""
    for _ in range(50):
        pids = cgroup_pids(name)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def remove_cgroups(name: str) -> None:
    for top in cgroup_dirs(name):
        if not top.exists():
            continue
        # Children first: the container's systemd made its own sub-cgroups.
        for d in sorted((d for d in top.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
            d.rmdir()
        top.rmdir()
