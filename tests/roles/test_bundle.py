"""The platform bundle on a droplet: received, put in place, and taken back when it fails.

The rendered receiver (first boot's platform-bundle), platform-push (the installer) and
platform-lock run at their real paths in role_checks.sandboxed. The bundles are made
the way the program makes them (`cloudinit.encoded`), with a stand-in provisioning that
installs one config file, serves a health check and fails when its bundle says so: what
is tested is the installing, not the provisioning.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

import cloudinit
from model import conventions

from role_checks import sandboxed

ROLE = conventions.APP_SERVER
STACK = "staging"
TEST = "/etc/platform/test"
INSTALLED = "/etc/platform-test.conf"   # what the stand-in provisioning installs
HEALTH_PORT = 18080
# Installs the staged config file, keeps a health check served unless the bundle says
# stop-serving, and fails the way platform-provision does when the bundle says fail.
PROVISION = f"""#!/bin/bash
echo "provision $(cat {TEST}/version)" >> "$T/provisions.log"
install -m 0644 {cloudinit.STAGED_FILES}{INSTALLED} {INSTALLED}
if [ -e {TEST}/stop-serving ]; then
    kill "$(cat "$T/server.pid" 2>/dev/null)" 2>/dev/null; rm -f "$T/server.pid"
elif [ ! -e "$T/server.pid" ]; then
    (cd "$T" && exec python3 -m http.server {HEALTH_PORT} --bind 127.0.0.1 >/dev/null 2>&1) &
    echo $! > "$T/server.pid"
    for _ in $(seq 50); do python3 -c 'import socket; socket.create_connection(("127.0.0.1", {HEALTH_PORT}))' 2>/dev/null && break; sleep 0.1; done
fi
if [ -e {TEST}/fail ]; then
    printf 'step=test command=false\\n' > {conventions.PROVISION_FAILED_MARKER}
    rm -f {conventions.PROVISIONED_MARKER}
    exit 1
fi
rm -f {conventions.PROVISION_FAILED_MARKER}
date > {conventions.PROVISIONED_MARKER}
"""


def bundle(version: str, *, extra: dict[str, str] | None = None, health: bool = False, role: str = ROLE):
    """A bundle with the real programs, the stand-in provisioning and test files."""
    context = cloudinit.template_context(ROLE, settings())
    programs = {p.path: (cloudinit.render(p.template, **context), p.mode) for p in cloudinit.programs(ROLE)
                if p.path in (conventions.PUSH_COMMAND, conventions.LOCK_COMMAND, conventions.WRITE_COMMAND)}
    files = {
        **programs,
        conventions.PROVISION_COMMAND: (PROVISION, "0755"),
        f"{TEST}/version": (version + "\n", "0644"),
        cloudinit.STAGED_FILES + INSTALLED: (f"version {version}\n", "0644"),
        **{f"{TEST}/{name}": (text, "0644") for name, text in (extra or {}).items()},
    }
    return cloudinit.encoded({
        "stack": STACK, "role": role,
        "files": {path: {"content": text, "mode": mode} for path, (text, mode) in files.items()},
        "installed": [INSTALLED],
        "health": f"http://127.0.0.1:{HEALTH_PORT}/" if health else None,
    })


def settings():
    import mockcloud

    return mockcloud.stack_settings(STACK)


def run(tmp_path: Path, *installs) -> tuple[str, list[int]]:
    """Installs each bundle in turn on a fresh droplet (first boot's files in place);
    after each, prints what is in place. Returns the output and each install's status."""
    receiver = cloudinit.render(cloudinit.RECEIVER)
    (tmp_path / "receiver").write_text(receiver)
    (tmp_path / "identity").write_text(json.dumps({"stack": STACK, "role": ROLE}))
    lines = [
        f"export T={shlex.quote(str(tmp_path))}",
        "ip link set lo up",
        f'install -D -m 0755 "$T/receiver" {conventions.BUNDLE_COMMAND}',
        f'install -D -m 0644 "$T/identity" {conventions.IDENTITY_FILE}',
    ]
    for i, (b, digest) in enumerate(installs):
        (tmp_path / f"bundle{i}").write_text(b.payload)
        lines += [
            f'echo "== install {i}"',
            f'{conventions.BUNDLE_COMMAND} {digest or b.digest} < "$T/bundle{i}"; echo "== status $?"',
            f'echo "== current $(basename "$(readlink {conventions.CURRENT_BUNDLE})")"',
            f'echo "== version $(cat {TEST}/version) installed $(cat {INSTALLED})"',
            f'echo "== files $(ls {TEST} | tr "\\n" " ")"',
            f'echo "== bundles $(ls {conventions.BUNDLES_DIR} | grep -v current | tr "\\n" " ")"',
        ]
    result = sandboxed(tmp_path, "\n".join(lines), network=True)
    out = result.stdout + result.stderr
    statuses = [int(line.split()[-1]) for line in result.stdout.splitlines() if line.startswith("== status")]
    assert len(statuses) == len(installs), out
    return out, statuses


def facts(out: str, i: int) -> dict[str, str]:
    """What was in place after install i."""
    section = out.split(f"== install {i}\n", 1)[1].split("== install", 1)[0]
    return {line.split()[1]: " ".join(line.split()[2:]) for line in section.splitlines()
            if line.startswith("== ") and not line.startswith("== status")}


def test_a_new_bundle_replaces_the_files_of_the_old_and_removes_what_it_no_longer_has(tmp_path):
    one = bundle("1", extra={"only-in-one": "x\n"})
    two = bundle("2", extra={"only-in-two": "y\n"})
    out, statuses = run(tmp_path, (one, None), (two, None), (two, None))
    assert statuses == [0, 0, 0], out
    assert facts(out, 0)["current"] == one.digest and facts(out, 0)["files"].split() == ["only-in-one", "version"]
    after = facts(out, 1)
    assert after["current"] == two.digest, out
    assert after["version"] == "2 installed version 2", out
    assert after["files"].split() == ["only-in-two", "version"], out
    assert sorted(after["bundles"].split()) == sorted([one.digest, two.digest]), out   # side by side
    assert f"{two.digest[:12]} is in place already: no change" in out
    assert (tmp_path / "provisions.log").read_text().splitlines() == ["provision 1", "provision 2"]


def test_a_bundle_whose_provisioning_fails_goes_back_to_the_previous_one(tmp_path):
    good = bundle("good")
    bad = bundle("bad", extra={"fail": "", "only-in-bad": "z\n"})
    out, statuses = run(tmp_path, (good, None), (bad, None))
    assert statuses == [0, 1], out
    assert f"platform-bundle: {bad.digest[:12]} failed: provisioning failed: step=test command=false" in out
    assert f"previous bundle {good.digest[:12]} restored" in out
    after = facts(out, 1)
    assert after["current"] == good.digest, out
    assert after["version"] == "good installed version good", out   # its config file back too
    assert after["files"].split() == ["version"], out                # the bad bundle's file gone
    assert (tmp_path / "provisions.log").read_text().splitlines() == ["provision good", "provision bad",
                                                                      "provision good"]


def test_a_server_that_served_must_serve_again_or_its_bundle_goes_back(tmp_path):
    serving = bundle("serving", health=True)
    silent = bundle("silent", health=True, extra={"stop-serving": ""})
    out, statuses = run(tmp_path, (serving, None), (silent, None))
    assert statuses == [0, 1], out
    assert "did not answer within" in out, out
    assert facts(out, 1)["current"] == serving.digest, out


def test_the_receiver_refuses_a_damaged_bundle_and_another_roles(tmp_path):
    good = bundle("1")
    lb = bundle("1", role=conventions.LOAD_BALANCER)
    out, statuses = run(tmp_path, (good, "0" * 64), (lb, None))
    assert statuses == [1, 1], out
    assert f"what arrived is not bundle {'0' * 12}" in out
    assert f"bundle {lb.digest[:12]} is for {{'stack': 'staging', 'role': 'lb'}}, this droplet is" in out, out
    assert "provisions.log" not in {p.name for p in tmp_path.iterdir()}


@pytest.mark.parametrize("role", [conventions.LOAD_BALANCER, conventions.APP_SERVER, conventions.DATASTORE])
def test_every_roles_bundle_is_json_the_receiver_reads(role):
    import base64
    import gzip

    b = cloudinit.bundle(role, settings())
    document = json.loads(gzip.decompress(base64.b64decode(b.payload)))
    assert document["role"] == role and document["stack"] == STACK
    assert {conventions.PUSH_COMMAND, conventions.LOCK_COMMAND, conventions.WRITE_COMMAND} <= set(document["files"])
    assert set(document["installed"]) == {f.path for f in cloudinit.config_files(role, settings())}
