"""The images a stack may boot: every difference between them is one table
(conventions.IMAGES), the files that name a difference follow it, and both images boot
the same first-boot data (provisioning finds the rest on the droplet)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

import cloudinit
import mockcloud
from model import conventions, settings as settings_module
from model.settings import SETTINGS
from stack_graph import droplets

ROOT = Path(__file__).resolve().parents[1]
IMAGES = list(conventions.IMAGES.values())


def rendered(role: str, holding: str) -> str:
    """The one file of the role's first boot holding `holding`."""
    files = cloudinit.rendered_files(role, mockcloud.stack_settings("staging"))
    (text,) = [text for text in files.values() if holding in text]
    return text


def bash(script: str) -> str:
    return subprocess.run(["bash", "-euc", script], capture_output=True, text=True, check=True).stdout


def test_the_image_setting_offers_the_tables_images_and_defaults_to_the_local_clouds():
    from localcloud import config as local_cloud  # constants only: what the local cloud's image is built from

    (image_setting,) = [s for s in SETTINGS if s.key == "image"]
    assert settings_module.IMAGES == tuple(conventions.IMAGES)
    assert all(slug == image.slug for slug, image in conventions.IMAGES.items())
    assert image_setting.default == conventions.DEFAULT_IMAGE == "debian-12-x64"
    assert conventions.IMAGES[conventions.DEFAULT_IMAGE].codename == local_cloud.DEBIAN_SUITE
    assert mockcloud.stack_settings("staging", image="ubuntu-24-04-x64").image == "ubuntu-24-04-x64"


def test_both_images_boot_the_same_first_boot_data(staging_deployment):
    """Only `image` differs between them: what else differs, provisioning finds on the droplet.
    (Two stacks, as an existing one keeps its image: each has its own automation key.)"""
    assert staging_deployment.settings.image == "debian-12-x64"
    ubuntu = mockcloud.deploy(mockcloud.stack_settings("staging", image="ubuntu-24-04-x64"))

    def user_data(deployment) -> dict[str, str]:
        key = deployment.named("automation-key", ":PrivateKey").state["publicKeyOpenssh"].strip()
        return {d.name: d.state["userData"].replace(key, "AUTOMATION KEY") for d in droplets(deployment)}
    assert {d.state["image"] for d in droplets(ubuntu)} == {"ubuntu-24-04-x64"}
    assert user_data(ubuntu) == user_data(staging_deployment)


# The vendors' repositories as their Release files name them (sources in the template).
VENDOR_ORIGINS = {
    "NODESOURCE_URL": "origin=. nodistro,label=. nodistro,codename=nodistro,site={host}",
    "MONGODB_REPOSITORY": "origin=mongodb,label=mongodb,codename=${{distro_codename}}/mongodb-org,site={host}",
}


def test_security_updates_come_from_each_images_own_security_archive_and_the_vendors_repositories():
    text = rendered(conventions.LOAD_BALANCER, "Unattended-Upgrade::Origins-Pattern {")
    block = re.search(r"Unattended-Upgrade::Origins-Pattern \{\n(.*?)\};", text, re.S).group(1)
    patterns = re.findall(r'^    "(.*)";$', block, re.M)
    assert patterns[:len(IMAGES)] == [i.security_origin for i in IMAGES]
    assert "".join(f'    // {i.name}\n    "{i.security_origin}";\n' for i in IMAGES) in block
    # Each at the host provisioning adds the repository from: the same for every role.
    scripts = rendered(conventions.APP_SERVER, "NODESOURCE_URL=") + rendered(conventions.DATASTORE, "MONGODB_REPOSITORY=")
    vendors = [pattern.format(host=re.search(rf"^{variable}=https://([^/\s]+)$", scripts, re.M).group(1))
               for variable, pattern in VENDOR_ORIGINS.items()]
    assert patterns[len(IMAGES):] == vendors
    for role in (conventions.APP_SERVER, conventions.DATASTORE):
        assert rendered(role, "Unattended-Upgrade::Origins-Pattern {") == text


@pytest.mark.parametrize("image", IMAGES, ids=lambda i: i.slug)
def test_mongodb_comes_from_its_repository_for_the_images_release(image, tmp_path):
    script = rendered(conventions.DATASTORE, "ensure_mongodb_repository() {")
    variables = re.search(r"^MONGODB_SERIES=.*?^MONGODB_PIN=.*?$", script, re.M | re.S).group(0)
    function = re.search(r"^ensure_mongodb_repository\(\) \{.*?^\}$", script, re.M | re.S).group(0)
    os_release = tmp_path / "os-release"
    os_release.write_text(f'PRETTY_NAME="{image.name}"\nID={image.os_id}\nVERSION_CODENAME={image.codename}\n')
    stubs = ("ensure_apt_repository() { echo \"key $2 $3\"; printf '%s\\n' \"$4\"; }\n"
             "write_file() { echo \"$1 $2 $3\"; cat; }\n")
    sources = bash(stubs + variables + "\n" + function.replace("/etc/os-release", str(os_release))
                   + "\nensure_mongodb_repository\n")
    # Its key by fingerprint (MongoDB's 8.0 signing key), and its series pinned.
    assert sources.splitlines() == [
        "key https://pgp.mongodb.com/server-8.0.asc 4B0752C1BCA238C0B4EE14DC41DE058A4E7DCA05",
        "Types: deb",
        f"URIs: https://repo.mongodb.org/apt/{image.os_id}",
        f"Suites: {image.codename}/mongodb-org/8.0",
        f"Components: {image.mongodb_component}",
        "/etc/apt/preferences.d/mongodb-org 0644 root:root",
        "Package: mongodb-org*", "Pin: version 8.0.*", "Pin-Priority: 500", "",
        "Package: mongodb-org*", "Pin: release o=mongodb", "Pin-Priority: -1",
    ]


def shell_functions(script: str, *names: str) -> str:
    return "\n".join(re.search(rf"^{name}\(\) \{{.*?^\}}$", script, re.M | re.S).group(0) for name in names)


NODE_FUNCTIONS = ("ensure_node", "node_major", "candidate_major", "remove_other_nodesource_repository",
                  "install_node", "ensure_nodesource_repository")


@pytest.mark.parametrize("image", IMAGES, ids=lambda i: i.slug)
@pytest.mark.parametrize("was", (None,) + settings_module.NODE_MAJORS, ids=lambda m: f"was-{m}")
@pytest.mark.parametrize("asked", settings_module.NODE_MAJORS, ids=lambda m: f"asked-{m}")
def test_node_is_the_images_own_when_the_major_matches_else_nodesources(image, was, asked, tmp_path):
    """First boot (nothing installed) and a changed nodeMajor on a running server (the `was`
    major installed from where provisioning got it): the asked major is installed over it,
    up or down, and NodeSource's repository of another major goes. apt and NodeSource are
    stubs: which package apt picks from which repository is the stubs' say, not apt's."""
    script = rendered(conventions.APP_SERVER, "ensure_node() {")
    url = re.search(r"^NODESOURCE_URL=(.*)$", script, re.M).group(1)
    sources, pin = tmp_path / "nodesource.sources", tmp_path / "nodesource-pin"
    was_nodesources = was is not None and was != image.nodejs_major
    if was_nodesources:  # as a run that asked for `was` left them
        sources.write_text(f"Types: deb\nURIs: {url}/node_{was}.x\n")
        pin.write_text("Package: nodejs\n")
    stubs = f"""
NODE_MAJOR={asked}; INSTALLED={was or ''}; NODE_REPLACED=
NODESOURCE_URL={url}; NODESOURCE_SOURCES={sources}; NODESOURCE_PIN={pin}; NODESOURCE_KEY_FINGERPRINT=F
node() {{ [ -n "$INSTALLED" ] && echo "v$INSTALLED.1.0" || return 1; }}
apt_lists_ready() {{ :; }}
# NodeSource's nodejs when its repository is there (pinned), else the image's own.
candidate() {{ if [ -e {sources} ]; then sed -nE 's|^URIs: .*/node_([0-9]+)\\.x$|\\1|p' {sources}; else echo {image.nodejs_major}; fi; }}
apt-cache() {{ printf '  Installed: (none)\n  Candidate: %s.19.0+dfsg-6\n' "$(candidate)"; }}
apt_get() {{
    local packages=() downgrades=
    for a in "$@"; do case $a in --allow-downgrades) downgrades=" (downgrades allowed)" ;; -*|Dpkg::*|install) ;; *) packages+=("$a") ;; esac; done
    echo "apt-get install ${{packages[*]}}$downgrades"; INSTALLED=$(candidate)
}}
ensure_apt_repository() {{ printf '%s\n' "$4" > {sources}; echo "repository $1 $(grep URIs {sources})"; }}
write_file() {{ cat > "$1"; }}
changed() {{ case $* in installed*) ;; *) echo "changed: $*" ;; esac; }}
log() {{ echo "$*"; }}
"""
    report = 'echo "replaced=$NODE_REPLACED node=$(node_major) pin=$([ -e ' + str(pin) + ' ] && echo yes || echo no)"'
    steps = bash(stubs + shell_functions(script, *NODE_FUNCTIONS) + "\nensure_node\n" + report + "\n").splitlines()
    assert image.nodejs_major in settings_module.NODE_MAJORS
    if was == asked:
        assert steps == [f"replaced= node={asked} pin={'yes' if was_nodesources else 'no'}"]
        return
    expected = ["changed: removed NodeSource's repository of another Node.js major"] if was_nodesources else []
    if asked == image.nodejs_major:
        expected += ["apt-get install nodejs npm (downgrades allowed)"]
    else:
        expected += [f"repository nodesource URIs: {url}/node_{asked}.x", "apt-get install nodejs (downgrades allowed)"]
    expected += [f"replaced={was or ''} node={asked} pin={'no' if asked == image.nodejs_major else 'yes'}"]
    assert steps == expected
    assert sources.exists() == (asked != image.nodejs_major)


def test_sshd_and_fail2ban_work_on_every_image():
    common = rendered(conventions.LOAD_BALANCER, 'step "sshd"')
    if any(i.sshd_socket for i in IMAGES):  # sshd may not be running: reload only a running one
        assert "systemctl try-reload-or-restart ssh\n" in common and "systemctl reload ssh" not in common
    jail = rendered(conventions.LOAD_BALANCER, "[sshd]")
    if not all(i.auth_log for i in IMAGES):  # no auth.log to read: the journal
        assert "\nbackend = systemd\n" in jail


def image_facts(image: conventions.Image) -> list[str]:
    """What only one image has, as a file outside the table would spell it (patterns)."""
    literals = [image.slug, image.name, image.security_origin, f"postgresql@{image.postgresql_major}",
                f"PostgreSQL {image.postgresql_major}", f"restic {image.restic}", f"python{image.python}"]
    words = [image.os_id, image.codename] + ([image.mongodb_component] if image.mongodb_component != "main" else [])
    return [re.escape(fact) for fact in literals] + [rf"\b{word}\b" for word in words]


def test_no_file_but_the_table_names_a_difference_between_the_images():
    sources = [p for folder in ("cloudinit", "components") for p in (ROOT / folder).rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p != ROOT / "components" / "conventions.py"]
    assert len(sources) > 40
    for image in IMAGES:
        for fact in image_facts(image):
            found = [str(p.relative_to(ROOT)) for p in sources if re.search(fact, p.read_text())]
            assert not found, f"{fact!r} ({image.name}) is written in {found}: it belongs in conventions.IMAGES"


def test_the_readme_says_what_each_image_has_and_what_has_run_on_it():
    readme = (ROOT / "README.md").read_text()
    for image in IMAGES:
        row = (f"| `{image.slug}` | {image.postgresql_major} | {image.restic} | {image.nodejs_major} | "
               f"{image.python} | {'yes' if image.sshd_socket else 'no'} | {image.proven} |")
        assert row in readme, row
