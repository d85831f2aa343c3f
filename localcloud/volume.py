"""Block-storage volumes: a sparse file on the host, a loop device, and a device node
inside the droplet at the path DigitalOcean uses, /dev/disk/by-id/scsi-0DO_Volume_NAME.

How the node gets inside (measured here): every droplet boots with a host directory
of its own bound over /dev/disk/by-id (nspawn gives the container a fresh /dev at each
boot, so a node made inside would vanish at reboot). Attaching makes the block node in
that host directory with mknod: it shows inside at once (hot attach) and after every
reboot. The droplets' devices cgroup is the root one (the launcher moves only the
name=systemd and unified hierarchies), so the container may open and mount it. The
container has no udev: nothing else appears under /dev/disk, and systemd never sees a
.device unit for the node; its fstab generator even skips device entries in a
container. The image therefore carries a unit that runs `mount -a` before
local-fs.target (image.FSTAB_UNIT), so an fstab line for a volume is mounted at every
boot as on a real droplet; `nofail` in it is still wise, as DigitalOcean advises.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import config, droplet, shell, state

DEVICE_DIR = droplet.VOLUME_DIR_INSIDE


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


def mkfs_command(filesystem: str, target: str, volume: str, label: str | None = None) -> shell.Command:
    return [f"mkfs.{filesystem}", "-q", "-L", (label or volume)[:16], target]


def losetup_capacity_command(loop: str) -> shell.Command:
    """The loop device takes its file's new size, as a resized volume's device does on a
    droplet (the filesystem on it stays as it was)."""
    return ["losetup", "--set-capacity", loop]


def loop_of(path: Path) -> str | None:
    out = shell.run(losetup_find_command(path), check=False).stdout.split()
    return out[0] if out else None


def create(volume: str, size_mb: int, filesystem: str | None = "ext4", label: str | None = None) -> Path:
    """A volume, formatted like DigitalOcean's initial_filesystem_type; kept if it exists,
    and grown (its device too, while attached) when `size_mb` is more than it has. As the
    API, it never shrinks."""
    path = image_file(volume)
    size = size_mb * 1024 * 1024
    if not path.exists():
        config.VOLUMES_DIR.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(size)
        if filesystem:
            shell.run(mkfs_command(filesystem, str(path), volume, label))
        return path
    has = path.stat().st_size
    if size < has:
        raise ValueError(f"volume {volume}: {size_mb} MB is less than its {has >> 20} MB; a volume can only grow")
    if size > has:
        with open(path, "r+b") as f:
            f.truncate(size)
        loop = loop_of(path)
        if loop:
            shell.run(losetup_capacity_command(loop))
    return path


def ensure_loop(volume: str) -> str:
    path = image_file(volume)
    return loop_of(path) or shell.run(losetup_attach_command(path)).stdout.strip()


def major_minor(device: str) -> tuple[int, int]:
    st = os.stat(device)
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def node_name(volume: str) -> str:
    return device_path(volume).rsplit("/", 1)[1]


def mknod_command(node: Path, loop: str) -> shell.Command:
    major, minor = major_minor(loop)
    return ["mknod", "-m", "0660", str(node), "b", str(major), str(minor)]


def attach(name: str, volume: str) -> str:
    """Present the volume to droplet `name` (running or not); returns its path inside."""
    loop = ensure_loop(volume)
    node = droplet.Paths(name).by_id / node_name(volume)
    node.parent.mkdir(parents=True, exist_ok=True)
    node.unlink(missing_ok=True)
    shell.run(mknod_command(node, loop))
    with state.editing() as s:
        s["droplets"].setdefault(name, {}).setdefault("volumes", {})[volume] = loop
    return device_path(volume)


def detach(name: str, volume: str) -> None:
    (droplet.Paths(name).by_id / node_name(volume)).unlink(missing_ok=True)
    with state.editing() as s:
        s["droplets"].get(name, {}).get("volumes", {}).pop(volume, None)


def delete(volume: str) -> None:
    """The volume's loop device and file; its data is gone."""
    loop = loop_of(image_file(volume))
    if loop:
        shell.run(losetup_detach_command(loop), check=False)
    image_file(volume).unlink(missing_ok=True)


def refresh(name: str) -> None:
    """Before a boot: re-make the nodes, since loop numbers can change between runs."""
    for vol in state.load()["droplets"].get(name, {}).get("volumes", {}):
        attach(name, vol)


def our_loops() -> list[str]:
    """Loop devices backed by files of ours (also those left by a killed run)."""
    out = shell.run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"], check=False).stdout
    loops = []
    for line in out.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1].strip().startswith(str(config.VOLUMES_DIR)):
            loops.append(parts[0])
    return loops
