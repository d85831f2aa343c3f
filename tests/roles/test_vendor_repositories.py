"""The vendors' apt repositories (NodeSource's, MongoDB's): their signing key is trusted
only when the key file holds exactly the pinned key, checked again on every run; and
MongoDB's packages stay on the series provisioning asked for, as apt itself resolves the
pin.

gpg makes real keys; the library's ensure_apt_repository fetches them from file:// URLs
(curl) into /etc/apt/keyrings inside role_checks.sandboxed (a throwaway overlay of /etc).
apt reads the pin against a local repository whose Release file names MongoDB's origin,
under its own APT_CONFIG: the host's apt state is not touched.
"""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

import cloudinit
from cloudinit import common
from model import conventions

from role_checks import require_tool, sandboxed

KEYRING = "/etc/apt/keyrings/vendor.gpg"


def make_key(home: Path, name: str) -> tuple[str, Path]:
    """A fresh signing key: (fingerprint, armored public key file)."""
    gpg = require_tool("gpg", "gnupg")
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    run = dict(env={**os.environ, "GNUPGHOME": str(home)}, capture_output=True, text=True, check=True)
    subprocess.run([gpg, "--batch", "--passphrase", "", "--quick-gen-key", f"{name} <{name}@example.org>",
                    "ed25519", "sign", "never"], **run)
    listing = subprocess.run([gpg, "--with-colons", "--list-keys", name], **run).stdout
    fingerprint = re.search(r"^fpr:+([0-9A-F]{40}):", listing, re.M).group(1)
    path = home / f"{name}.asc"
    path.write_text(subprocess.run([gpg, "--armor", "--export", name], **run).stdout)
    return fingerprint, path


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    home = tmp_path_factory.mktemp("gnupg")
    pinned, pinned_file = make_key(home, "vendor")
    other, other_file = make_key(home, "intruder")
    both = home / "both.asc"
    both.write_text(pinned_file.read_text() + other_file.read_text())
    yield {"pinned": pinned, "other": other, "vendor": pinned_file, "intruder": other_file, "both": both}
    # Making the keys started a gpg-agent for this home, which would outlive the tests.
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env={**os.environ, "GNUPGHOME": str(home)}, check=True)


def add_repository(tmp_path: Path, render_role, settings, key_file: Path, fingerprint: str,
                   existing: Path | None = None) -> tuple[int, str]:
    """Runs ensure_apt_repository once: (its status, its output then the keyring's keys)."""
    require_tool("curl", "curl")
    library = render_role(conventions.LOAD_BALANCER, settings)[common.LIBRARY]
    script = textwrap.dedent(f"""\
        source {library}
        ensure_packages() {{ :; }}
        apt_update() {{ echo "apt update"; }}
        write_file() {{ cat > "$1"; }}
        log() {{ echo "log: $*"; }}
        changed() {{ echo "changed: $*"; }}
        export GNUPGHOME={tmp_path}/gnupg-run; mkdir -m 0700 -p "$GNUPGHOME"
        {f"install -D -m 0644 <(gpg --dearmor < {existing}) {KEYRING}" if existing else f"rm -f {KEYRING}"}
        ensure_apt_repository vendor file://{key_file} {fingerprint} "Types: deb"
        status=$?
        echo "keyring: $(primary_fingerprints {KEYRING} | tr '\\n' ' ')"
        exit $status
    """)
    result = sandboxed(tmp_path, script)
    return result.returncode, result.stdout + result.stderr


def test_the_pinned_key_alone_is_trusted(tmp_path, render_role, staging_settings, keys):
    status, out = add_repository(tmp_path, render_role, staging_settings, keys["vendor"], keys["pinned"])
    assert status == 0, out
    assert f"changed: {KEYRING} (key fingerprint {keys['pinned']})" in out
    assert f"keyring: {keys['pinned']} " in out


@pytest.mark.parametrize("served", ["intruder", "both"])
def test_a_key_file_with_another_key_is_refused(tmp_path, render_role, staging_settings, keys, served):
    """Another key, or the pinned key with another one appended (apt would trust both)."""
    status, out = add_repository(tmp_path, render_role, staging_settings, keys[served], keys["pinned"])
    assert status == 1, out
    assert f"expected {keys['pinned']}" in out and keys["other"] in out
    assert "keyring: \n" in out or out.rstrip().endswith("keyring:")


def test_a_keyring_holding_another_key_is_replaced_by_the_pinned_one(tmp_path, render_role, staging_settings, keys):
    status, out = add_repository(tmp_path, render_role, staging_settings, keys["vendor"], keys["pinned"],
                                 existing=keys["intruder"])
    assert status == 0, out
    assert f"keyring: {keys['pinned']} " in out


def test_a_keyring_holding_the_pinned_key_is_kept_without_fetching(tmp_path, render_role, staging_settings, keys):
    status, out = add_repository(tmp_path, render_role, staging_settings, tmp_path / "unreachable.asc",
                                 keys["pinned"], existing=keys["vendor"])
    assert status == 0, out
    assert "changed:" not in out and f"keyring: {keys['pinned']} " in out


# --- MongoDB's series ------------------------------------------------------------------

RELEASE = ("Origin: mongodb\nLabel: mongodb\nSuite: bookworm\nCodename: bookworm/mongodb-org\n"
           "Architectures: amd64\nComponents: main\nDescription: MongoDB packages\n")


def package(name: str, version: str) -> str:
    return (f"Package: {name}\nVersion: {version}\nArchitecture: amd64\nFilename: pool/{name}_{version}.deb\n"
            f"Size: 1\nSHA256: {'0' * 64}\nDescription: stand-in\n\n")


def mongodb_pin(staging_settings, root: Path) -> Path:
    """The pin as ensure_mongodb_repository writes it, under root."""
    script = cloudinit.rendered_files(conventions.DATASTORE, staging_settings)[common.ROLE_STEPS]
    variables = re.search(r"^MONGODB_SERIES=.*?^MONGODB_PIN=.*?$", script, re.M | re.S).group(0)
    function = re.search(r"^ensure_mongodb_repository\(\) \{.*?^\}$", script, re.M | re.S).group(0)
    stubs = 'ensure_apt_repository() { :; }\nwrite_file() { mkdir -p "$(dirname "$1")"; cat > "$1"; }\n'
    subprocess.run(["bash", "-euc", stubs + variables + f"\nMONGODB_PIN={root}/preferences.d/mongodb-org\n"
                    + function + "\nensure_mongodb_repository\n"], check=True, capture_output=True, text=True)
    return root / "preferences.d" / "mongodb-org"


@pytest.mark.parametrize("installed", [None, "8.0.4"])
def test_mongodb_stays_on_its_series_as_apt_resolves_the_pin(tmp_path, staging_settings, installed):
    require_tool("apt-cache", "apt")
    etc = tmp_path / "etc"
    pin = mongodb_pin(staging_settings, etc)
    assert pin.exists()
    dists = tmp_path / "repo" / "dists" / "bookworm" / "mongodb-org" / "8.0"
    (dists / "main" / "binary-amd64").mkdir(parents=True)
    (dists / "Release").write_text(RELEASE)
    (dists / "main" / "binary-amd64" / "Packages").write_text(
        "".join(package("mongodb-org-server", v) for v in ("8.0.4", "8.0.12", "8.2.1", "9.0.0"))
        + package("mongodb-mongosh", "2.5.0"))
    (etc / "sources.list.d").mkdir()
    (etc / "sources.list.d" / "mongodb-org.sources").write_text(
        f"Types: deb\nURIs: file://{tmp_path}/repo\nSuites: bookworm/mongodb-org/8.0\nComponents: main\nTrusted: yes\n")
    status = tmp_path / "status"
    status.write_text(f"Package: mongodb-org-server\nStatus: install ok installed\nVersion: {installed}\n"
                      "Architecture: amd64\nMaintainer: x\nDescription: x\n\n" if installed else "")
    for d in ("state/lists/partial", "cache/archives/partial", "etc/apt.conf.d"):
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    (tmp_path / "apt.conf").write_text(
        f'Dir::Etc "{etc}";\nDir::Etc::Parts "{tmp_path}/etc/apt.conf.d";\nDir::State "{tmp_path}/state";\n'
        f'Dir::State::status "{status}";\nDir::Cache "{tmp_path}/cache";\nAPT::Architecture "amd64";\n'
        'APT::Architectures { "amd64"; };\nDebug::NoLocking "true";\n')
    env = {**os.environ, "APT_CONFIG": str(tmp_path / "apt.conf")}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
    policy = subprocess.run(["apt-cache", "policy", "mongodb-org-server", "mongodb-mongosh"], env=env,
                            capture_output=True, text=True, check=True).stdout
    candidates = re.findall(r"^  Candidate: (.*)$", policy, re.M)
    # The newest 8.0 fix, never 8.2 or 9.0; other packages of the repository are not held.
    assert candidates == ["8.0.12", "2.5.0"], policy
    assert re.search(r"^     9\.0\.0 -1$", policy, re.M) and re.search(r"^     8\.2\.1 -1$", policy, re.M), policy
