"""Block-storage volumes: a sparse file on the host, a loop device, and a device node
inside the droplet at the path DigitalOcean uses, /dev/disk/by-id/scsi-0DO_Volume_NAME.

Measured here: the droplets' devices cgroup is the root one (the launcher moves only
the name=systemd and unified hierarchies), so a block node made in the container's
/dev works. A running droplet gets the node by `mknod` inside it (hot attach); a
droplet that boots with the volume gets it by `--bind=/dev/loopN:PATH` of nspawn,
because nspawn gives the container a fresh /dev at every boot. The container has no
udev: nothing else appears under /dev/disk, and systemd never sees a .device unit for
the node, so an fstab line for it should carry `nofail` (DigitalOcean's own docs
add it too) or use `mount` directly.
"""

from __future__ import annotations

from pathlib import Path

from . import config, droplet, shell, state

DEVICE_DIR = "/dev/disk/by-id"


def device_path(volume: str) -> str:
    return f"{DEVICE_DIR}/scsi-0DO_Volume_{volume}"


def image_file(volume: str) -> Path:
    return config.VOLUMES_DIR / f"{volume}.img"


def losetup_attach_command(path: Path) -> shell.Command:
    return ["losetup", "--find", "--show", str(path)]


def losetup_find_command(path: Path) -> shell.Command:
    return ["losetup", "--associated", str(path), "--noheadings", "--output", "NAME"]


def losetup_detach_command(loop: str) -> shell.Command:
    return ["losetup", "--detach", loop]


def mkfs_command(filesystem: str, target: str, volume: str) -> shell.Command:
    return [f"mkfs.{filesystem}", "-q", "-L", volume[:16], target]


def loop_of(path: Path) -> str | None:
    out = shell.run(losetup_find_command(path), check=False).stdout.split()
    return out[0] if out else None


def create(volume: str, size_mb: int, filesystem: str | None = "ext4") -> Path:
    """A volume, formatted like DigitalOcean's initial_filesystem_type; kept if it exists."""
    path = image_file(volume)
    if not path.exists():
        config.VOLUMES_DIR.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(size_mb * 1024 * 1024)
        if filesystem:
            shell.run(mkfs_command(filesystem, str(path), volume))
    return path


def ensure_loop(volume: str) -> str:
    path = image_file(volume)
    return loop_of(path) or shell.run(losetup_attach_command(path)).stdout.strip()


def major_minor(device: str) -> tuple[int, int]:
    import os
    st = os.stat(device)
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def attach(name: str, volume: str) -> str:
    """Present the volume to droplet `name`; returns the path it has inside."""
    loop = ensure_loop(volume)
    with state.editing() as s:
        s["droplets"].setdefault(name, {}).setdefault("volumes", {})[volume] = loop
    if droplet.is_running(name):
        major, minor = major_minor(loop)
        droplet.exec(name, ["mkdir", "-p", DEVICE_DIR])
        droplet.exec(name, ["rm", "-f", device_path(volume)])
        droplet.exec(name, ["mknod", "-m", "0660", device_path(volume), "b", str(major), str(minor)])
    return device_path(volume)


def detach(name: str, volume: str) -> None:
    with state.editing() as s:
        s["droplets"].get(name, {}).get("volumes", {}).pop(volume, None)
    if droplet.is_running(name):
        droplet.exec(name, ["rm", "-f", device_path(volume)])


def boot_binds(name: str) -> list[tuple[str, str]]:
    """nspawn binds for the volumes recorded for `name`, re-attaching loops if needed."""
    vols = state.load()["droplets"].get(name, {}).get("volumes", {})
    return [(ensure_loop(v), device_path(v)) for v in sorted(vols)]


def our_loops() -> list[str]:
    """Loop devices backed by files of ours (also those left by a killed run)."""
    out = shell.run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"], check=False).stdout
    loops = []
    for line in out.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1].strip().startswith(str(config.VOLUMES_DIR)):
            loops.append(parts[0])
    return loops
