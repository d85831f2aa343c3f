"""deploy/remote.sh, the server half, run for real by bash against temporary directories.

The prelude is the one deploy/commands.py sends, with the paths moved under tmp_path;
the health check talks to a real HTTPS server with a certificate from a throwaway CA.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy import commands

from deploy_helpers import ONE_SERVER, require_tool, script_for


@pytest.fixture
def layout(tmp_path):
    root = tmp_path / "srv"
    (root / "releases").mkdir(parents=True)
    return root


def run(layout: Path, *args: str, **overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-s", "--", *args], input=script_for(layout, **overrides),
                          capture_output=True, text=True, timeout=120)


def add_release(layout: Path, name: str, age: int) -> None:
    """A release accepted `age` seconds ago (accept orders releases by mtime)."""
    partial = layout / "releases" / f"{name}.partial"
    partial.mkdir()
    (partial / "REVISION").write_text(name)
    assert run(layout, "accept", name).returncode == 0
    stamp = time.time() - age
    os.utime(layout / "releases" / name, (stamp, stamp))


@pytest.mark.sandbox  # runs shellcheck
def test_shellcheck_passes_on_the_script_as_sent(tmp_path):
    require_tool("shellcheck", "shellcheck")
    sent = tmp_path / "sent.sh"
    sent.write_text(commands.script(ONE_SERVER))
    result = subprocess.run(["shellcheck", "--shell=bash", str(sent)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_contract_prints_a_releases_platform_json_or_nothing_and_refuses_what_is_not_a_release(layout):
    add_release(layout, "r1", 30)
    add_release(layout, "r2", 20)
    (layout / "releases" / "r1" / "platform.json").write_text('{"processes": {}}\n')
    assert run(layout, "contract", "r1").stdout == '{"processes": {}}\n'
    assert (run(layout, "contract", "r2").returncode, run(layout, "contract", "r2").stdout) == (0, "")
    missing = run(layout, "contract", "r9")
    assert missing.returncode == 1 and "no release r9" in missing.stderr
    assert run(layout, "contract", "../r1").returncode == 2


def test_switch_replaces_current_by_rename_and_list_marks_it(layout):
    add_release(layout, "r1", 30)
    add_release(layout, "r2", 20)
    assert run(layout, "switch", "r1").returncode == 0
    assert os.readlink(layout / "releases" / "current") == str(layout / "releases" / "r1")
    assert run(layout, "switch", "r2").returncode == 0
    assert os.readlink(layout / "releases" / "current") == str(layout / "releases" / "r2")
    assert not (layout / "releases" / "current.new").exists()
    listed = run(layout, "list").stdout.splitlines()
    assert [line.split()[0] for line in listed] == ["r1", "r2"]
    assert listed[1].endswith(" current") and not listed[0].endswith("current")


def test_switch_refuses_a_release_it_does_not_hold_and_bad_ids(layout):
    add_release(layout, "r1", 10)
    run(layout, "switch", "r1")
    missing = run(layout, "switch", "r9")
    assert missing.returncode == 1 and "no release r9" in missing.stderr
    for bad in ("../etc", ".hidden", "a b", ""):
        assert run(layout, "switch", bad).returncode == 2
    assert os.readlink(layout / "releases" / "current").endswith("/r1")


def test_current_lives_among_the_releases_yet_is_never_one(layout):
    """`current` (and its `.new`) sit in releases/, deploy's: never listed, pruned or taken
    as a release id (switching to `current` would point it at itself)."""
    for name, age in (("r1", 30), ("r2", 20), ("r3", 10)):
        add_release(layout, name, age)
    assert run(layout, "switch", "r1").returncode == 0
    assert [line.split()[0] for line in run(layout, "list").stdout.splitlines()] == ["r1", "r2", "r3"]
    for name in ("current", "current.new"):
        refused = run(layout, "switch", name)
        assert refused.returncode == 2 and "not a release id" in refused.stderr, refused.stderr
        assert run(layout, "accept", name).returncode == 2
    assert os.readlink(layout / "releases" / "current").endswith("/r1")
    assert run(layout, "prune", "1").returncode == 0
    assert os.readlink(layout / "releases" / "current").endswith("/r1") and (layout / "releases" / "r1").is_dir()


def test_accept_of_a_release_already_there_leaves_its_files_alone(layout):
    add_release(layout, "r1", 10)
    (layout / "releases" / "r1.partial").mkdir()
    (layout / "releases" / "r1.partial" / "REVISION").write_text("overwritten")
    assert run(layout, "accept", "r1").returncode == 0
    assert (layout / "releases" / "r1" / "REVISION").read_text() == "r1"
    assert not (layout / "releases" / "r1.partial").exists()


def activate(layout: Path, name: str) -> None:
    assert run(layout, "switch", name).returncode == 0
    assert run(layout, "activated", name).returncode == 0


def test_previous_is_the_last_release_that_ran_healthy_not_the_newest_upload(layout):
    add_release(layout, "r0", 40)
    run(layout, "switch", "r0")           # the first release, there before any deploy
    add_release(layout, "r1", 30)
    activate(layout, "r1")                # the history starts with r0, then r1
    add_release(layout, "r2", 20)
    run(layout, "switch", "r2")           # a stopped deploy: never recorded as healthy
    activate(layout, "r1")
    listed = {line.split()[0]: line.split()[2:] for line in run(layout, "list").stdout.splitlines()}
    assert listed == {"r0": ["previous"], "r1": ["current"], "r2": []}


def test_prune_keeps_the_newest_and_never_current_or_previous(layout):
    for age, name in enumerate(["r7", "r6", "r5", "r4", "r3", "r2", "r1"]):
        add_release(layout, name, 100 + age * 10)   # r1 oldest ... r7 newest
    activate(layout, "r1")
    activate(layout, "r7")
    activate(layout, "r2")                            # rolled back far: current is old
    result = run(layout, "prune", "3")
    assert result.returncode == 0, result.stderr
    kept = sorted(p.name for p in (layout / "releases").iterdir() if not p.name.startswith(".") and not p.is_symlink())
    # The 3 newest (r7 is also previous), plus current (r2).
    assert kept == ["r2", "r5", "r6", "r7"]
    assert sorted(result.stdout.split()) == sorted(["removed", "r1", "removed", "r3", "removed", "r4"])


def test_the_lock_is_taken_once_names_its_holder_and_only_its_holder_releases_it(layout):
    first = run(layout, "lock", "alice@laptop since 2026-11-29T21:30:05Z (deploy, pid 1)")
    assert first.returncode == 0 and first.stdout.strip() == "locked"
    second = run(layout, "lock", "bob@desk since 2026-11-29T21:31:00Z (deploy, pid 2)")
    assert second.returncode == 3
    assert second.stdout.strip() == "held by alice@laptop since 2026-11-29T21:30:05Z (deploy, pid 1)"
    assert run(layout, "unlock", "bob@desk since 2026-11-29T21:31:00Z (deploy, pid 2)").returncode == 1
    assert (layout / "deploy.lock").is_dir()
    assert run(layout, "unlock", "alice@laptop since 2026-11-29T21:30:05Z (deploy, pid 1)").returncode == 0
    assert not (layout / "deploy.lock").exists()
    assert not list(layout.glob("deploy.lock.*")), "no half-taken lock left behind"


def test_concurrent_lock_attempts_give_the_lock_to_exactly_one(layout):
    procs = [subprocess.Popen(["bash", "-s", "--", "lock", f"user{n}"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for n in range(8)]
    for p in procs:
        p.stdin.write(script_for(layout))
        p.stdin.close()
    codes = [p.wait(timeout=60) for p in procs]
    assert sorted(codes) == [0] + [3] * 7


def test_break_lock_says_whose_lock_it_removed(layout):
    run(layout, "lock", "alice@laptop since 2026-11-29T21:30:05Z (deploy, pid 1)")
    broken = run(layout, "break-lock")
    assert broken.stdout.strip() == "removed the lock of alice@laptop since 2026-11-29T21:30:05Z (deploy, pid 1)"
    assert not (layout / "deploy.lock").exists()
    assert run(layout, "break-lock").stdout.strip() == "no lock was held"


# --- health against a real HTTPS server -------------------------------------------------

HEALTH_SERVER = """
import http.server, ssl, sys
status = {"code": int(sys.argv[2])}
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(status["code"] if self.path == "/healthz" else 404)
        self.end_headers()
    def log_message(self, *a): pass
httpd = http.server.HTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[1] + "/server.crt", sys.argv[1] + "/server.key")
httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
print(httpd.server_address[1], flush=True)
httpd.serve_forever()
"""


@pytest.fixture
def pki(tmp_path):
    """A CA and a server certificate for the pool's shared name, as the stack's CA issues."""
    require_tool("openssl", "openssl")
    name = commands.prelude(ONE_SERVER).split("HEALTH_NAME=")[1].split("\n")[0]
    run_ = lambda *argv: subprocess.run(argv, cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    run_("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-days", "1", "-subj", "/CN=test CA", "-keyout", "ca.key", "-out", "ca.crt")
    run_("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-subj", f"/CN={name}", "-keyout", "server.key", "-out", "server.csr")
    (tmp_path / "ext").write_text(f"subjectAltName=DNS:{name}\n")
    run_("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-CAcreateserial", "-days", "1", "-extfile", "ext", "-out", "server.crt")
    return tmp_path


def health_server(pki: Path, code: int):
    proc = subprocess.Popen([sys.executable, "-c", HEALTH_SERVER, str(pki), str(code)], stdout=subprocess.PIPE, text=True)
    port = proc.stdout.readline().strip()
    return proc, port


@pytest.mark.sandbox  # runs curl, its certificates openssl
# A healthy server's wait ends at its third good answer: the minute only bounds a busy
# machine's three curls; the unhealthy one's 6 s is what the test waits out.
@pytest.mark.parametrize("code,expected,seconds", [(200, 0, "60"), (503, 1, "6")])
def test_health_waits_for_three_good_answers_verifying_the_pool_certificate(layout, pki, code, expected, seconds):
    require_tool("curl", "curl")
    proc, port = health_server(pki, code)
    try:
        name = commands.prelude(ONE_SERVER).split("HEALTH_NAME=")[1].split("\n")[0]
        result = run(layout, "health", seconds, CA_FILE=str(pki / "ca.crt"), HEALTH_PORT=port,
                     HEALTH_URL=f"https://{name}:{port}/healthz")
    finally:
        proc.kill()
    assert result.returncode == expected, result.stdout + result.stderr
    if expected:
        assert "did not answer 200 three times in a row within 6s (last: 503)" in result.stderr
    else:
        assert result.stdout.strip() == "healthy"


@pytest.mark.sandbox  # runs curl and openssl
def test_health_fails_when_the_certificate_is_not_the_stack_cas(layout, pki, tmp_path_factory):
    """A server with a certificate from another CA never counts as healthy."""
    require_tool("curl", "curl")
    other = tmp_path_factory.mktemp("other")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "1", "-subj", "/CN=other", "-keyout", str(other / "k"), "-out", str(other / "ca.crt")],
                   check=True, capture_output=True)
    proc, port = health_server(pki, 200)
    try:
        name = commands.prelude(ONE_SERVER).split("HEALTH_NAME=")[1].split("\n")[0]
        result = run(layout, "health", "3", CA_FILE=str(other / "ca.crt"), HEALTH_PORT=port,
                     HEALTH_URL=f"https://{name}:{port}/healthz")
    finally:
        proc.kill()
    assert result.returncode == 1
