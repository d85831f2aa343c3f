"""The datastore's volume grown (volumeSizeGb): its provisioning step over a real loop
device and ext4 filesystem in role_checks.sandboxed, with the real blockdev and dumpe2fs
deciding. resize2fs itself is a stand-in that says how it was asked: growing a mounted
filesystem needs CAP_SYS_RESOURCE, which this machine takes from every process, root and
the local droplets too (the README says what that leaves unproven)."""

from __future__ import annotations

import shlex

import cloudinit
import mockcloud
from cloudinit import common
from model import conventions as c

from role_checks import sandboxed


def grown(tmp_path, sizes_mib: list[int]) -> list[str]:
    """An ext4 filesystem made on a device of sizes_mib[0] MiB, then the device at each next
    size and the volume's step run (it mounts the filesystem, then grows it): what each run
    asked of resize2fs and reported as changed."""
    rendered = cloudinit.rendered_files(c.DATASTORE, mockcloud.stack_settings("staging"))
    (tmp_path / "common.sh").write_text(rendered[common.LIBRARY])
    (tmp_path / "role.sh").write_text(rendered[common.ROLE_STEPS])
    t = shlex.quote(str(tmp_path))
    runs = "\n".join(f'truncate -s {size}M {t}/volume.img; losetup --set-capacity "$VOLUME_DEVICE"\n'
                     "echo '== run'; ensure_data_volume" for size in sizes_mib[1:])
    script = f"""
        . {t}/common.sh; . {t}/role.sh
        mount -t tmpfs tmpfs /mnt || exit 1   # the data mount's parent, private to the sandbox
        resize2fs() {{ echo "resize2fs $*"; }}
        truncate -s {sizes_mib[0]}M {t}/volume.img && mkfs.ext4 -q {t}/volume.img || exit 1
        VOLUME_DEVICE=$(losetup --find --show {t}/volume.img) VOLUME_SIZE_GB=7
        echo "== device $VOLUME_DEVICE"
        {runs}
        echo '== end'; losetup --detach "$VOLUME_DEVICE"
    """
    result = sandboxed(tmp_path, script)
    assert "== end" in result.stdout, result.stdout + result.stderr
    device = result.stdout.split("== device ", 1)[1].split("\n", 1)[0]
    runs_said = result.stdout.split("== end")[0].split("== run\n")[1:]
    return [" | ".join(line.split(" platform-provision: ")[-1] for line in said.strip().splitlines())
            .replace(device, "DEVICE") for said in runs_said]


def test_a_device_grown_by_more_than_rounding_has_its_filesystem_grown(tmp_path):
    # Past 2 GiB, as every volume is (sizes in whole GiB): a 32-bit sum would see a gap.
    assert grown(tmp_path, [4096, 4096, 4128, 4352]) == [
        f"changed: fstab: DEVICE on {c.DATA_MOUNT} | changed: mounted {c.DATA_MOUNT}",   # as made: no growth
        "",                                   # 32 MiB more: rounding, not a resize
        f"resize2fs: resize2fs DEVICE | changed: grew the filesystem on {c.DATA_MOUNT} to its volume's 7 GB",
    ]
