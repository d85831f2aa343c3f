"""Real droplets on this machine: boot, network, proxy, firewall, volume, reboot, teardown.

Run as root:  python3 -m pytest -m localcloud tests/localcloud -v
The tests share two droplets and run in file order; the last one tears down.
"""

import json
import subprocess
import time
from pathlib import Path

import pytest

from localcloud import cloud, config, droplet, firewall, network, package_cache, shell, sources, state, teardown, volume

pytestmark = pytest.mark.localcloud

VPC = "10.20.0.0/24"
USER_DATA = """\
#cloud-config
packages: [nginx]
write_files:
  - path: /var/www/html/index.html
    content: "hello from {name}\\n"
runcmd:
  - [sh, -c, "echo runcmd-ok > /root/runcmd-ran"]
"""

# A TCP connect (then an HTTP GET) with the droplet's or client's own python3.
HTTP_GET = ("import sys, urllib.request as u\n"
            "try:\n"
            "    print(u.urlopen(sys.argv[1], timeout=3).read().decode().strip())\n"
            "except Exception as e:\n"
            "    print('FAILED', type(e).__name__)\n")

PROXY_GET = ("import sys, urllib.request as u, urllib.error as e\n"
             "o = u.build_opener(u.ProxyHandler({'http': sys.argv[2], 'https': sys.argv[2]}))\n"
             "try:\n"
             "    print(o.open(sys.argv[1], timeout=10).status)\n"
             "except e.HTTPError as err:\n"
             "    print(err.code)\n"
             "except Exception as err:\n"
             "    print('FAILED', err)\n")


def get_from_droplet(name: str, url: str) -> str:
    return droplet.exec(name, ["python3", "-c", HTTP_GET, url]).stdout.strip()


def get_from_internet(url: str) -> str:
    cmd = cloud.internet_client(["/usr/bin/python3", "-c", HTTP_GET, url])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()


@pytest.fixture(scope="module")
def only_ours(needs_root, local_cloud_to_ourselves):
    """The teardown tests remove every droplet: never someone else's (your `localcloud up`)."""
    others = [n for n in state.load()["droplets"] if not n.startswith("lc-test-") and droplet.is_running(n)]
    if others:
        pytest.fail(f"droplets of others are running ({', '.join(sorted(others))}): these tests tear down "
                    "the whole local cloud; run them first (the suite orders them so) or on an idle machine")


@pytest.fixture(scope="module")
def pair(only_ours):
    t0 = time.monotonic()
    specs = [cloud.DropletSpec("lc-test-a", USER_DATA.format(name="a"), tags=("client",)),
             cloud.DropletSpec("lc-test-b", USER_DATA.format(name="b"), tags=("web",))]
    infos = cloud.up(specs, vpc_cidr=VPC, timeout=600)
    print(f"\n[timing] up of 2 droplets (image cached or built): {time.monotonic() - t0:.1f}s")
    yield infos
    for name in set(infos) & set(cloud.status()):   # test_teardown_leaves_nothing may have removed them
        cloud.destroy(name)


def test_cloud_init_done_without_errors(pair):
    for name in pair:
        long = droplet.exec(name, ["cloud-init", "status", "--long"], check=False).stdout
        assert "status: done" in long, long
        result = json.loads(droplet.exec(name, ["cat", "/run/cloud-init/result.json"]).stdout)
        assert result["v1"]["errors"] == [], result
        assert droplet.exec(name, ["cat", "/root/runcmd-ran"]).stdout.strip() == "runcmd-ok"
        assert droplet.exec(name, ["hostname"]).stdout.strip() == name
        assert droplet.system_state(name) == "running"


def test_nginx_came_through_the_package_cache_and_serves(pair):
    assert droplet.exec("lc-test-b", ["dpkg-query", "-W", "-f=${Status}", "nginx"]).stdout == \
        "install ok installed"
    # apt-cacher-ng's transfer log: time|I (fetched) or O (served)|bytes|client|path.
    served = [line.split("|") for line in (package_cache.APT_DIR / "log" / "apt-cacher.log").read_text().splitlines()]
    assert any(kind == "O" and client == pair["lc-test-b"].public_ip and "/nginx_" in path and path.endswith(".deb")
               for _, kind, _, client, path in (row for row in served if len(row) == 5)), served[-20:]
    assert get_from_droplet("lc-test-b", "http://127.0.0.1/") == "hello from b"


def test_droplet_reaches_other_over_vpc(pair):
    b = pair["lc-test-b"]
    assert b.vpc_ip.startswith("10.20.0.")
    assert get_from_droplet("lc-test-a", f"http://{b.vpc_ip}/") == "hello from b"


def test_droplets_cannot_route_anywhere_but_the_bridges(pair):
    # the gateway is the switch, which must not forward (no way out but the proxy)
    fwd = subprocess.run(network.sysctl(config.SWITCH_NETNS, "net.ipv4.ip_forward", "0")[:-1] +
                         ["net.ipv4.ip_forward"], capture_output=True, text=True)
    out = subprocess.run(network.in_netns(config.SWITCH_NETNS, "sysctl", "-n", "net.ipv4.ip_forward"),
                         capture_output=True, text=True).stdout.strip()
    assert out == "0", fwd
    route = droplet.exec("lc-test-a", ["ip", "route", "show", "default"]).stdout
    assert f"via {config.PUBLIC_GATEWAY_IP}" in route


def test_proxy_refuses_hosts_not_in_the_hosts_sources(pair):
    url = config.PROXY_URL
    assert droplet.exec("lc-test-a", ["python3", "-c", PROXY_GET, "http://not-a-source.invalid/", url]
                        ).stdout.strip() == "403"
    assert droplet.exec("lc-test-a", ["python3", "-c", PROXY_GET, "https://not-a-source.invalid/", url]
                        ).stdout.strip().startswith("FAILED")   # CONNECT answered 403
    assert "DENY not-a-source.invalid:443" in config.PROXY_LOG.read_text()


def test_npm_fetches_through_the_registry_cache_and_keeps_what_it_fetched(pair):
    if not sources.npm_registry():
        pytest.skip("the host has no npm registry configured")
    npmrc = droplet.exec("lc-test-a", ["cat", "/etc/npmrc"]).stdout
    assert f"registry={package_cache.NPM_REGISTRY_URL}" in npmrc.splitlines()
    # What npm does for a package (the bare image has no npm): its metadata, then its tarball.
    direct = "import sys, urllib.request as u\nprint(u.build_opener(u.ProxyHandler({})).open(sys.argv[1], timeout=60).status)"
    for url in (f"{package_cache.NPM_REGISTRY_URL}ms", f"{package_cache.NPM_REGISTRY_URL}ms/-/ms-2.1.3.tgz"):
        assert droplet.exec("lc-test-a", ["python3", "-c", direct, url]).stdout.strip() == "200", url
    assert (package_cache.NPM_DIR / "storage" / "ms" / "ms-2.1.3.tgz").is_file()


def test_apt_fetches_through_the_package_cache_only_from_the_hosts_repositories(pair):
    conf = droplet.exec("lc-test-a", ["cat", "/etc/apt/apt.conf.d/90localcloud-proxy"]).stdout
    assert f'Acquire::http::Proxy "{package_cache.APT_PROXY_URL}";' in conf
    repository = package_cache.http_apt_sources()[0]
    release = f"{repository}/dists/{config.DEBIAN_SUITE}/Release"
    assert droplet.exec("lc-test-a", ["python3", "-c", PROXY_GET, release, package_cache.APT_PROXY_URL]
                        ).stdout.strip() == "200"
    cached = [p for p in (package_cache.APT_DIR / "cache").rglob("Release") if config.DEBIAN_SUITE in p.parts]
    assert cached, "the Release file is not in the cache"
    # A repository the host does not use is refused (ForceManaged), as the egress proxy refuses it.
    refused = droplet.exec("lc-test-a", ["python3", "-c", PROXY_GET, "http://not-a-source.invalid/debian/dists/x/Release",
                                         package_cache.APT_PROXY_URL]).stdout.strip()
    assert refused == "403", refused


def test_firewall_allows_port_80_only_from_the_tag(pair):
    a, b = pair["lc-test-a"], pair["lc-test-b"]
    # without a firewall, the internet reaches b: so a block below is the firewall's doing
    assert get_from_internet(f"http://{b.public_ip}/") == "hello from b"
    rules = firewall.Firewall("web", tags=("web",),
                              inbound=(firewall.Rule("tcp", "80", tags=("client",)),))
    cloud.apply_firewalls([rules])
    try:
        assert get_from_internet(f"http://{b.public_ip}/").startswith("FAILED")
        assert get_from_droplet("lc-test-a", f"http://{b.vpc_ip}/") == "hello from b"
        assert get_from_droplet("lc-test-a", f"http://{b.public_ip}/") == "hello from b"
        # outbound is denied too: b (no outbound rule) cannot open a connection to a
        assert get_from_droplet("lc-test-b", f"http://{a.vpc_ip}/").startswith("FAILED")
        # ...and root in the droplet cannot remove the rules: they are not in its netns
        subprocess.run(network.in_netns(network.netns_name("lc-test-b"), "nft", "flush", "ruleset"),
                       check=True)
        assert get_from_internet(f"http://{b.public_ip}/").startswith("FAILED")
    finally:
        firewall.clear()
    assert get_from_internet(f"http://{b.public_ip}/") == "hello from b"


def test_volume_appears_at_the_digitalocean_path(pair):
    volume.create("lc-test-data", 64, "ext4")
    path = volume.attach("lc-test-a", "lc-test-data")
    assert path == "/dev/disk/by-id/scsi-0DO_Volume_lc-test-data"
    out = droplet.exec("lc-test-a", ["sh", "-c",
                       f"mkdir -p /mnt/data && mount {path} /mnt/data && echo kept > /mnt/data/f"
                       f" && findmnt -n -o FSTYPE /mnt/data && umount /mnt/data"]).stdout
    assert out.strip() == "ext4"
    # an fstab line for it, as a role would write, to be mounted again at boot
    droplet.exec("lc-test-a", ["sh", "-c", f"echo '{path} /mnt/data ext4 defaults,nofail 0 2' >> /etc/fstab"])


def test_reboot_keeps_disk_and_volume(pair):
    old = droplet.container_init_pid("lc-test-a")
    t0 = time.monotonic()
    droplet.reboot("lc-test-a", timeout=180)   # the stack's reboots are given as long: a busy machine
    print(f"\n[timing] reboot: {time.monotonic() - t0:.1f}s")
    assert droplet.container_init_pid("lc-test-a") != old
    assert droplet.exec("lc-test-a", ["cat", "/root/runcmd-ran"]).stdout.strip() == "runcmd-ok"
    assert get_from_droplet("lc-test-a", f"http://{pair['lc-test-b'].vpc_ip}/") == "hello from b"
    # the volume came back at boot (its node lives in the bound host dir) and its fstab
    # line was mounted during boot, with its data
    assert droplet.exec("lc-test-a", ["findmnt", "-n", "-o", "SOURCE", "/mnt/data"]).stdout.strip() == \
        volume.device_path("lc-test-data")
    assert droplet.exec("lc-test-a", ["cat", "/mnt/data/f"]).stdout.strip() == "kept"
    droplet.wait_cloud_init("lc-test-a", 120)


def test_second_up_reuses_running_droplets(pair):
    before = {n: droplet.container_init_pid(n) for n in pair}
    specs = [cloud.DropletSpec("lc-test-a", USER_DATA.format(name="a"), tags=("client",)),
             cloud.DropletSpec("lc-test-b", USER_DATA.format(name="b"), tags=("web",))]
    cloud.up(specs, vpc_cidr=VPC)
    assert {n: droplet.container_init_pid(n) for n in pair} == before   # none started again
    assert set(cloud.status()) == set(pair) and all(i.running for i in cloud.status().values())


def test_teardown_leaves_nothing(pair):
    t0 = time.monotonic()
    teardown.teardown()
    print(f"\n[timing] teardown: {time.monotonic() - t0:.1f}s")
    left = teardown.leftovers()
    assert left == {k: [] for k in left}, left
    # Nor any droplet or host service, whatever its command line says now (verdaccio
    # writes its title over it, where leftovers could not see it).
    assert programs_running({"systemd-nspawn", "apt-cacher-ng", "verdaccio", "pebble", "pebble-challtestsrv"}) == []
    assert not config.DROPLETS_DIR.exists()
    teardown.teardown()          # idempotent


def programs_running(names: set[str]) -> list[str]:
    """`pid name` of each live process whose program (comm, or first argument) is named."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            words = {(proc / "comm").read_text().strip(), Path((proc / "cmdline").read_bytes().split(b"\0")[0].decode()).name}
        except OSError:
            continue
        if words & names and shell.alive(int(proc.name)):
            found.append(f"{proc.name} {' '.join(sorted(words))}")
    return found


def test_teardown_cleans_a_run_whose_state_was_lost(only_ours):
    """As after a killed run: droplet running, state file gone."""
    cloud.up([cloud.DropletSpec("lc-test-c", "#cloud-config\n{}\n")], vpc_cidr=VPC, wait=False)
    assert droplet.is_running("lc-test-c")
    state.clear()
    teardown.teardown()
    left = teardown.leftovers()
    assert left == {k: [] for k in left}, left
