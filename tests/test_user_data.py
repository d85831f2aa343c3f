"""Each droplet's first-boot cloud-config: valid for Debian's cloud-init, small, and static.

cloud-init 22.4 (Debian 12) checks the keys inside the modules it knows strictly, but
does not flag an unknown top-level key: a typo'd module would be silently ignored on the
droplet. So the program's top-level keys are held to an explicit allow-list, and each
entry of the list is checked against cloud-init's own schema.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import mockcloud
from model import conventions
from stack_graph import droplets, load_yaml, readable_text

CLOUD_INIT = "/usr/bin/cloud-init"
# The cloud-init modules the program configures, and nothing else.
MODULE_KEYS = {"users", "disable_root", "ssh_pwauth", "package_update", "package_upgrade", "write_files", "runcmd"}


def require_cloud_init() -> str:
    if not Path(CLOUD_INIT).exists():
        pytest.fail("cloud-init is not installed: apt-get install cloud-init")  # never a silent skip
    return CLOUD_INIT


def schema_check(paths: list[Path]) -> dict[Path, subprocess.CompletedProcess]:
    """`cloud-init schema --config-file` on each file, side by side (each takes ~0.7 s)."""
    cloud_init = require_cloud_init()
    running = {
        p: subprocess.Popen(
            [cloud_init, "schema", "--config-file", str(p)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for p in paths
    }
    results = {}
    for p, proc in running.items():
        out, _ = proc.communicate(timeout=60)
        results[p] = subprocess.CompletedProcess(proc.args, proc.returncode, out)
    return results


@pytest.fixture(scope="module")
def user_data_by_droplet(staging_deployment, production_deployment) -> dict[str, str]:
    return {
        f"{d.state['name']}": d.state["userData"]
        for deployment in (staging_deployment, production_deployment)
        for d in droplets(deployment)
    }


@pytest.mark.sandbox  # runs cloud-init
def test_every_cloud_config_passes_cloud_init_schema(user_data_by_droplet, tmp_path):
    distinct = {}
    for name, text in user_data_by_droplet.items():
        distinct.setdefault(text, name)
    paths = []
    for text, name in distinct.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        paths.append(path)
    for path, result in schema_check(paths).items():
        assert result.returncode == 0, f"{path.name}:\n{result.stdout}"
        assert "Valid cloud-config" in result.stdout, result.stdout


@pytest.mark.sandbox  # runs cloud-init
def test_cloud_init_schema_rejects_a_broken_config(tmp_path):
    """The check above can fail: a misspelt key inside a module, a wrong type."""
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "#cloud-config\n"
        "users: 5\n"
        "write_files:\n"
        "  - path: /etc/example\n"
        "    permisions: '0644'\n"
        "    content: x\n"
    )
    (result,) = schema_check([broken]).values()
    assert result.returncode != 0
    assert "permisions" in result.stdout and "users" in result.stdout, result.stdout


def test_only_known_module_keys_at_the_top(user_data_by_droplet):
    for name, text in user_data_by_droplet.items():
        assert text.startswith("#cloud-config\n"), name
        assert set(load_yaml(text)) <= MODULE_KEYS, f"{name}: {set(load_yaml(text)) - MODULE_KEYS}"


@pytest.mark.sandbox  # reads the installed cloud-init
def test_the_allowed_module_keys_are_cloud_inits_own():
    """Each allowed key is a property of the installed cloud-init's cloud-config schema."""
    require_cloud_init()
    python = shutil.which("python3", path="/usr/bin")
    assert python, "Debian's python3 (which runs cloud-init) is missing"
    found = subprocess.run(
        [python, "-I", "-c", "import cloudinit, os; print(os.path.dirname(cloudinit.__file__))"],
        capture_output=True, text=True, check=True, cwd="/",
    ).stdout.strip()
    schema = json.loads((Path(found) / "config/schemas/schema-cloud-config-v1.json").read_text())
    known = set()
    for ref in schema["allOf"]:
        known |= set(schema["$defs"][ref["$ref"].rsplit("/", 1)[-1]].get("properties", {}))
    assert MODULE_KEYS <= known, MODULE_KEYS - known
    assert "write_file" not in known  # the list is not simply everything


def test_user_data_fits_digitaloceans_limit(user_data_by_droplet):
    for name, text in user_data_by_droplet.items():
        assert len(text.encode()) < conventions.USER_DATA_LIMIT_BYTES, f"{name}: {len(text.encode())} bytes"


def test_first_boot_data_names_no_address_and_no_pool_size(deployment):
    """First boot must not change in normal operation: no droplet's address in it."""
    addresses = {
        d.state[field] for d in droplets(deployment) for field in ("ipv4Address", "ipv4AddressPrivate")
    }
    for d in droplets(deployment):
        text = readable_text(d.state["userData"])
        for address in addresses:
            assert address not in text.replace(deployment.settings.vpc_ip_range, ""), (d.name, address)
    app_data = {d.state["userData"] for d in droplets(deployment, conventions.APP_SERVER)}
    assert len(app_data) == 1  # every app server boots the same


def test_first_boot_lets_in_the_automation_key_only(deployment):
    automation = deployment.named("automation-key", ":PrivateKey").state["publicKeyOpenssh"].strip()
    for d in droplets(deployment):
        (user,) = load_yaml(d.state["userData"])["users"]
        assert user["name"] == conventions.OPERATOR_USER
        assert user["ssh_authorized_keys"] == [automation]
        assert user["lock_passwd"] is True


def test_operators_keys_are_pushed_to_every_login_of_every_droplet(deployment):
    """sshd reads only these files: the operator login's keeps the program's own key too."""
    keys = "".join(k + "\n" for k in deployment.settings.ssh_public_keys)
    automation = deployment.named("automation-key", ":PrivateKey").state["publicKeyOpenssh"].strip()
    pushes = {r.name: r for r in deployment.of_type("remote:Command") if r.name.endswith("-operators-push")}
    assert set(pushes) == {f"{d.name}-operators-push" for d in droplets(deployment)}
    for name, push in pushes.items():
        files = json.loads(push.state["stdin"])
        assert files.pop(conventions.OPERATOR_USER) == automation + "\n" + keys, name
        assert set(files.values()) <= {keys}, name   # deployKeys unset: deploy takes the operators' keys
    # deploy logs in where it deploys (app servers) and where it passes (the LB), not on the datastore.
    for member, logins in (("app-1", {conventions.OPERATOR_USER, conventions.DEPLOY_USER}),
                           ("lb", {conventions.OPERATOR_USER, conventions.DEPLOY_USER}),
                           ("datastore", {conventions.OPERATOR_USER})):
        assert set(json.loads(pushes[f"{member}-operators-push"].state["stdin"])) == logins, member


CI_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm0y3kYc6c8XvVQ2v3h1p0W3bQWd7pQm1dV2o1kq9Zt ci@example.com"


def test_deploy_keys_go_to_the_deploy_login_only_by_push_and_replace_no_droplet(deployment):
    other = mockcloud.deploy(mockcloud.stack_settings(deployment.settings.stack, deployKeys=[CI_KEY]),
                             previous=deployment)
    automation = deployment.named("automation-key", ":PrivateKey").state["publicKeyOpenssh"].strip()
    operators = automation + "\n" + "".join(k + "\n" for k in deployment.settings.ssh_public_keys)
    for member in ("lb", "app-1", "app-2"):
        files = json.loads(other.named(f"{member}-operators-push", ":Command").state["stdin"])
        assert files[conventions.DEPLOY_USER] == CI_KEY + "\n", member
        assert files[conventions.OPERATOR_USER] == operators, "the CI key is never an operator's"
    datastore = json.loads(other.named("datastore-operators-push", ":Command").state["stdin"])
    assert CI_KEY not in "".join(datastore.values())
    for d in droplets(deployment):
        assert other.named(d.name, ":Droplet").state["userData"] == d.state["userData"], d.name
        assert CI_KEY not in d.state["userData"]


def test_adding_an_operator_key_replaces_no_droplet(deployment):
    more_keys = [*deployment.settings.ssh_public_keys, deployment.named("automation-key", ":PrivateKey").state["publicKeyOpenssh"].strip()]
    other = mockcloud.deploy(mockcloud.stack_settings(deployment.settings.stack, sshPublicKeys=more_keys), previous=deployment)
    for d in droplets(deployment):
        assert other.named(d.name, ":Droplet").state["userData"] == d.state["userData"], d.name
