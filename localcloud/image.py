"""The droplet image: a Debian rootfs with cloud-init, built once and cached.

The cache key is a hash of the recipe (everything that shapes the image), so a change
of packages, settings, mirror or host CAs builds a new image and nothing else does.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import shutil
from pathlib import Path

from . import config, package_cache, shell, sources

# Bump when the build steps change in a way the recipe fields do not show.
BUILD_STEPS_VERSION = 2

HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
IMAGE_CA_BUNDLE = "etc/ssl/certs/ca-certificates.crt"
IMAGE_EXTRA_CA_DIR = "usr/local/share/ca-certificates"

CLOUD_CFG = (
    "# localcloud: seed comes from /var/lib/cloud/seed/nocloud; the network is set\n"
    "# from outside the droplet, so cloud-init must leave it alone.\n"
    "datasource_list: [NoCloud, None]\n"
    "network: {config: disabled}\n"
    "# As DigitalOcean's images do: the hostname resolves (sudo waits on DNS otherwise).\n"
    "manage_etc_hosts: true\n"
)
CLOUD_CFG_PATH = "etc/cloud/cloud.cfg.d/99-localcloud.cfg"

# systemd's fstab generator ignores device entries inside a container ("Running in a
# container, ignoring fstab device entry"), so a volume listed in fstab would not be
# mounted again after a reboot. This unit does what the generator does on a real
# droplet: mount fstab entries before local-fs.target.
FSTAB_UNIT_NAME = "localcloud-fstab.service"
FSTAB_UNIT = """\
[Unit]
Description=Mount fstab devices (systemd skips them in containers)
DefaultDependencies=no
ConditionVirtualization=container
After=local-fs-pre.target
Before=local-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/mount -a

[Install]
WantedBy=local-fs.target
"""

APT_PROXY_PATH = "etc/apt/apt.conf.d/90localcloud-proxy"
# Debian's npm reads /etc/npmrc; Node.js builds with prefix /usr read /usr/etc/npmrc.
NPMRC_PATHS = ("etc/npmrc", "usr/etc/npmrc")


def apt_proxy_conf(http_proxy_url: str, https_proxy_url: str) -> str:
    """Plain-http repositories through the package cache, https ones through the egress
    proxy (a CONNECT tunnel: nothing between can cache them)."""
    return f'Acquire::http::Proxy "{http_proxy_url}";\nAcquire::https::Proxy "{https_proxy_url}";\n'


def npmrc(registry_url: str) -> str:
    # The package cache is the registry (package_cache.py); npm trusts only its built-in
    # CAs unless told: point it at the system bundle, which holds the host's extra CAs.
    return f"registry={registry_url}\ncafile=/{IMAGE_CA_BUNDLE}\n"


def pem_blocks(text: str) -> list[str]:
    return [b.strip() for b in
            re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)]


def _normal(block: str) -> str:
    return re.sub(r"\s+", "", block)


def extra_host_cas(host_bundle_text: str, image_bundle_text: str) -> list[str]:
    """CAs the host trusts that a stock Debian does not (e.g. a TLS-intercepting egress)."""
    stock = {_normal(b) for b in pem_blocks(image_bundle_text)}
    return [b for b in pem_blocks(host_bundle_text) if _normal(b) not in stock]


def host_ca_texts() -> str:
    paths = {HOST_CA_BUNDLE}
    cafile = sources.npm_registry_cafile()
    if cafile:
        paths.add(Path(cafile))
    return "\n".join(p.read_text() for p in sorted(paths) if p.is_file())


def local_service_cas() -> dict[str, str]:
    """CAs of the local cloud's own services (config.TRUSTED_CAS_DIR), by file name."""
    d = config.TRUSTED_CAS_DIR
    return {p.stem: p.read_text() for p in sorted(d.glob("*.pem"))} if d.is_dir() else {}


def host_apt_source_files() -> dict[str, str]:
    """The host's apt source files, copied verbatim so droplets use the same archive."""
    files = {}
    if sources.APT_SOURCES_LIST.is_file():
        files["etc/apt/sources.list"] = sources.APT_SOURCES_LIST.read_text()
    for path in sorted(sources.APT_SOURCES_DIR.glob("*.sources")) + sorted(sources.APT_SOURCES_DIR.glob("*.list")):
        files[f"etc/apt/sources.list.d/{path.name}"] = path.read_text()
    return files


def recipe() -> dict:
    """Everything that decides what the image holds."""
    return {
        "build_steps_version": BUILD_STEPS_VERSION,
        "suite": config.DEBIAN_SUITE,
        "include": list(config.DEBOOTSTRAP_INCLUDE),
        "extra_packages": list(config.IMAGE_EXTRA_PACKAGES),
        "locale": config.IMAGE_LOCALE,
        "mirror": sources.debian_mirror(config.DEBIAN_SUITE, sources.apt_sources()),
        "apt_sources": host_apt_source_files(),
        "cloud_cfg": CLOUD_CFG,
        "fstab_unit": FSTAB_UNIT,
        "apt_proxy": apt_proxy_conf(package_cache.APT_PROXY_URL, config.PROXY_URL),
        "npmrc": npmrc(package_cache.NPM_REGISTRY_URL),
        "host_cas": hashlib.sha256(host_ca_texts().encode()).hexdigest(),
        "local_service_cas": local_service_cas(),
    }


def recipe_hash(r: dict) -> str:
    return hashlib.sha256(json.dumps(r, sort_keys=True).encode()).hexdigest()[:16]


def debootstrap_command(rootfs: Path, mirror: str) -> shell.Command:
    return ["debootstrap", "--variant=minbase", "--include=" + ",".join(config.DEBOOTSTRAP_INCLUDE),
            config.DEBIAN_SUITE, str(rootfs), mirror]


def chroot_command(rootfs: Path, *argv: str) -> shell.Command:
    # A fixed PATH and no interactive prompts: the chroot must not inherit the host's.
    return ["chroot", str(rootfs), "/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C", *argv]


def image_dir(r: dict | None = None) -> Path:
    return config.IMAGES_DIR / recipe_hash(r or recipe())


def rootfs_path() -> Path:
    return image_dir() / "rootfs"


def _write(rootfs: Path, rel: str, text: str) -> None:
    path = rootfs / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def build(force: bool = False) -> Path:
    """Return the rootfs of the current recipe, building it first if not cached."""
    r = recipe()
    final = image_dir(r)
    if (final / "complete").exists() and not force:
        return final / "rootfs"
    config.IMAGES_DIR.mkdir(parents=True, exist_ok=True)
    # Two processes building the same recipe would delete each other's half-built tree.
    with open(config.IMAGES_DIR / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "complete").exists() and not force:
            return final / "rootfs"
        return _build(r, final)


def _build(r: dict, final: Path) -> Path:
    building = final.with_name(final.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    rootfs = building / "rootfs"
    rootfs.mkdir(parents=True)
    with shell.Step(f"build image {final.name}"):
        with shell.Step(f"debootstrap {config.DEBIAN_SUITE} from the host's mirror"):
            shell.run(debootstrap_command(rootfs, r["mirror"]), timeout=900)
        with shell.Step("apt sources and host CAs"):
            (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
            for rel, text in r["apt_sources"].items():
                _write(rootfs, rel, text)
            extra = extra_host_cas(host_ca_texts(), (rootfs / IMAGE_CA_BUNDLE).read_text())
            for i, pem in enumerate(extra):
                _write(rootfs, f"{IMAGE_EXTRA_CA_DIR}/localcloud-host-{i}.crt", pem + "\n")
            for name, pem in r["local_service_cas"].items():
                _write(rootfs, f"{IMAGE_EXTRA_CA_DIR}/{name}.crt", pem)
            shell.run(chroot_command(rootfs, "update-ca-certificates"))
            print(f"[localcloud]   {len(extra)} host CA(s) not in Debian's bundle copied in")
        with shell.Step("updates, then " + " ".join(config.IMAGE_EXTRA_PACKAGES)):
            shell.run(chroot_command(rootfs, "apt-get", "update"), timeout=600)
            # debootstrap takes the suite as released; the updates and security suites come
            # on top, as in DigitalOcean's images, which are rebuilt as Debian updates. Left
            # out, every droplet's first boot upgraded some 40 packages (44 s each, four
            # droplets at once on two cores) before anything of the platform could start.
            shell.run(chroot_command(rootfs, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "dist-upgrade",
                                     "-y", "-o", "Dpkg::Options::=--force-confold"), timeout=900)
            shell.run(chroot_command(rootfs, "apt-get", "install", "-y", "--no-install-recommends",
                                     *config.IMAGE_EXTRA_PACKAGES), timeout=900)
        with shell.Step(f"generate locale {config.IMAGE_LOCALE}"):
            # cloud-init fails (update-locale exits 255) without this locale.
            _write(rootfs, "etc/locale.gen", f"{config.IMAGE_LOCALE} {config.IMAGE_LOCALE.split('.')[1]}\n")
            shell.run(chroot_command(rootfs, "locale-gen"))
            shell.run(chroot_command(rootfs, "update-locale", f"LANG={config.IMAGE_LOCALE}"))
        with shell.Step("cloud-init, apt and npm settings"):
            _write(rootfs, CLOUD_CFG_PATH, CLOUD_CFG)
            _write(rootfs, APT_PROXY_PATH, r["apt_proxy"])
            for rel in NPMRC_PATHS:
                _write(rootfs, rel, r["npmrc"])
            _write(rootfs, f"etc/systemd/system/{FSTAB_UNIT_NAME}", FSTAB_UNIT)
            shell.run(chroot_command(rootfs, "systemctl", "enable", FSTAB_UNIT_NAME))
            shell.run(chroot_command(rootfs, "apt-get", "clean"))
            # Per-droplet identity comes at first boot: no shared machine-id or host keys.
            _write(rootfs, "etc/machine-id", "")
            (rootfs / "var/lib/dbus/machine-id").unlink(missing_ok=True)
            for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
                key.unlink()
        (building / "recipe.json").write_text(json.dumps(r, indent=1, sort_keys=True))
        (building / "complete").write_text("")
        shutil.rmtree(final, ignore_errors=True)
        building.rename(final)
    prune(keep=final)
    return final / "rootfs"


def prune(keep: Path) -> None:
    """Delete images of older recipes (about 480 MB each) unless a droplet still uses one."""
    mounts = Path("/proc/self/mountinfo").read_text()
    for old in config.IMAGES_DIR.iterdir():
        if old != keep and old.is_dir() and f"lowerdir={old}/" not in mounts:
            shutil.rmtree(old, ignore_errors=True)


if __name__ == "__main__":
    print(build())
