"""Every fact of the local cloud has its home here: paths, names, address ranges."""

from __future__ import annotations

import ipaddress
from pathlib import Path

# Debian packages the host needs; the CI script installs exactly these.
HOST_PACKAGES: tuple[str, ...] = (
    "debootstrap",        # builds the droplet image
    "systemd-container",  # systemd-nspawn boots the droplets
    "iproute2",           # ip netns / veth / bridge
    "nftables",           # the cloud firewall, in the switch namespace
    "e2fsprogs",          # mkfs.ext4 for volumes
    "util-linux",         # losetup, nsenter, mount
    "pebble",             # the local ACME server (and pebble-challtestsrv for its DNS)
    "openssl",            # the ACME server's TLS certificate
    "curl",               # the stack's checks from the internet client
    "openssh-client",     # the plan's remote commands, through the LB as jump host
    "apt-cacher-ng",      # the droplets' apt cache (package_cache.py); verdaccio comes from npm
)

STATE_ROOT = Path("/var/lib/localcloud")
IMAGES_DIR = STATE_ROOT / "images"
DROPLETS_DIR = STATE_ROOT / "droplets"
VOLUMES_DIR = STATE_ROOT / "volumes"
STATE_FILE = STATE_ROOT / "state.json"
# Held by the test run that uses the local cloud (tenancy.held).
IN_USE_LOCK = STATE_ROOT / "in-use.lock"
PROXY_LOG = STATE_ROOT / "proxy.log"
# The local cloud's own operator: its public key joins the stack's sshPublicKeys (a local
# override), so `python -m deploy ... --local` logs in with it like any operator.
OPERATOR_KEY = STATE_ROOT / "operator" / "id_ed25519"
# CAs of local services (the ACME server's TLS) that every droplet image trusts.
TRUSTED_CAS_DIR = STATE_ROOT / "trusted-cas"

# Where `ip netns add` puts namespaces; nspawn joins them by this path.
NETNS_DIR = Path("/run/netns")
# Every namespace, cgroup and host link we make starts with this, so teardown can
# find leftovers of a killed run without a state file.
PREFIX = "lc-"
SWITCH_NETNS = "lc-switch"
INTERNET_NETNS = "lc-internet"
PUBLIC_BRIDGE = "br-public"   # lives inside SWITCH_NETNS only
VPC_BRIDGE = "br-vpc"         # lives inside SWITCH_NETNS only
HOST_LINK = "lc-host"         # host end of the host<->public-bridge veth

# The public side: a documentation range. The machine's own interface is on
# 192.0.2.0/24 and 203.0.113.0/24 holds the mirror, so both are avoided.
PUBLIC_NET = ipaddress.ip_network("198.51.100.0/24")
HOST_PUBLIC_IP = ipaddress.ip_address("198.51.100.1")        # the proxy listens here
INTERNET_CLIENT_IP = ipaddress.ip_address("198.51.100.200")
# The droplets' default gateway is an address of the switch, which does not
# forward: it exists only so droplets have a default route, and leads nowhere.
PUBLIC_GATEWAY_IP = ipaddress.ip_address("198.51.100.254")
FIRST_DROPLET_HOST = 10   # droplets get PUBLIC_NET[10], [11], ... and VPC[2], [3], ...
FIRST_VPC_HOST = 2

PROXY_PORT = 3128
PROXY_URL = f"http://{HOST_PUBLIC_IP}:{PROXY_PORT}"

# cgroup v1 hierarchies each droplet launcher moves itself into (see notes: without
# this, droplets share a cgroup and systemd-sysusers fails with 219/CGROUP).
CGROUP_HIERARCHIES = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))

NFT_TABLE = "localcloud_fw"   # bridge-family table in SWITCH_NETNS

DEBIAN_SUITE = "bookworm"
DEBOOTSTRAP_INCLUDE = (
    "systemd", "systemd-sysv", "dbus", "iproute2", "openssh-server",
    "python3", "ca-certificates", "sudo",
)
IMAGE_EXTRA_PACKAGES = ("cloud-init", "locales")
IMAGE_LOCALE = "en_US.UTF-8"

# systemd-nspawn exits with this when the container asked for a reboot.
NSPAWN_REBOOT_EXIT = 133
