"""Every role's cloud-config, checked by cloud-init itself (strict), for both stacks.

cloud-init 22.4 does not flag unknown top-level keys, so a misspelt module key would
be ignored silently on the droplet: every key must be on ALLOWED_KEYS, and every key
there must be one that cloud-init's own schema defines.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

import cloudinit
from model import conventions

from role_checks import ROLES, require_tool

# The top-level keys this program's cloud-configs may use, each a cloud-init module's.
ALLOWED_KEYS = {
    "users", "disable_root", "ssh_pwauth", "package_update", "package_upgrade",
    "write_files", "runcmd",
}


# A few KiB: the login, the identity and the receiver.
FIRST_BOOT_BYTES = 4096


def cloud_init_schema_keys() -> set[str]:
    """The top-level keys cloud-init's installed schema defines."""
    require_tool("cloud-init", "cloud-init")
    import_path = subprocess.run(
        ["/usr/bin/python3", "-c", "import cloudinit.config.schema as s, os; print(os.path.dirname(s.__file__))"],
        capture_output=True, text=True, check=True, cwd="/").stdout.strip()  # not this repo's cloudinit
    schema = json.loads((Path(import_path) / "schemas/schema-cloud-config-v1.json").read_text())
    keys = set()
    for definition in schema["$defs"].values():
        keys |= set(definition.get("properties", {}))
    return keys


def schema_check(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    cloud_init = require_tool("cloud-init", "cloud-init")
    path = tmp_path / "user-data"
    path.write_text(text)
    return subprocess.run([cloud_init, "schema", "--config-file", path], capture_output=True, text=True)


def unknown_keys(text: str) -> set[str]:
    return set(yaml.safe_load(text)) - ALLOWED_KEYS


def first_boot(role, settings) -> str:
    return cloudinit.first_boot(role, settings.stack, settings.ssh_public_keys[0])


def test_the_allowed_keys_are_cloud_init_module_keys():
    assert ALLOWED_KEYS <= cloud_init_schema_keys()
    assert "package_upgrades" not in cloud_init_schema_keys()


@pytest.mark.parametrize("role", ROLES)
def test_cloud_config_is_valid_for_cloud_init(tmp_path, role, stack_settings):
    text = first_boot(role, stack_settings)
    result = schema_check(tmp_path, text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout
    assert unknown_keys(text) == set()


@pytest.mark.parametrize("role", ROLES)
def test_cloud_config_is_small_and_holds_no_secret(role, stack_settings):
    text = first_boot(role, stack_settings)
    assert len(text.encode()) < FIRST_BOOT_BYTES < conventions.USER_DATA_LIMIT_BYTES
    # Key material, or a password given a literal value (scripts may read $..._PASSWORD).
    assert not re.search(r"PRIVATE KEY-----(\\n|\n)\s*[A-Za-z0-9+/]{20}", text)
    assert not re.search(r"PASSWORD=[^$\s\\\"']", text)
    config = yaml.safe_load(text)
    # First boot only says it is done; the platform comes by the bundle push.
    assert config["runcmd"] == [["sh", "-c", f"date -u +%FT%TZ > {conventions.FIRST_BOOT_MARKER}"]]
    assert config["package_update"] is True and config["package_upgrade"] is True
    (operator,) = config["users"]
    assert operator["name"] == conventions.OPERATOR_USER and operator["lock_passwd"] is True
    assert operator["ssh_authorized_keys"] == [stack_settings.ssh_public_keys[0]]  # the key first_boot was given
    paths = [f["path"] for f in config["write_files"]]
    assert len(paths) == len(set(paths))
    assert paths == [conventions.BUNDLE_COMMAND, conventions.IDENTITY_FILE]
    assert json.loads(config["write_files"][1]["content"]) == {"stack": stack_settings.stack, "role": role}


def test_schema_check_rejects_a_bad_config(tmp_path):
    bad = "#cloud-config\nusers: 5\npackage_update: yes-please\nwrite_files: [{content: x}]\n"
    result = schema_check(tmp_path, bad)
    assert result.returncode != 0
    assert "package_update: 'yes-please' is not of type 'boolean'" in result.stdout + result.stderr


def test_a_misspelt_module_key_is_caught_though_cloud_init_accepts_it(tmp_path, staging_settings):
    text = first_boot(conventions.LOAD_BALANCER, staging_settings) + "package_upgrades: true\n"
    assert schema_check(tmp_path, text).returncode == 0  # 22.4 lets it through...
    assert unknown_keys(text) == {"package_upgrades"}  # ...the allow-list does not
