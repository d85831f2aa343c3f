"""Provisioning's `apt-get update` waits for apt's lists lock, and only for it.

apt takes /var/lib/apt/lists/lock with fcntl and gives up at once when another apt (the
distribution's apt-daily) holds it. The real apt-get runs offline, in role_checks.sandboxed
with no network, against an empty local `file:` repository and lists, cache and state
directories of its own (an APT_CONFIG file): the host's apt state is never touched. A
Python process holds the lists lock as apt would.
"""

from __future__ import annotations

import re
import shlex
import shutil
import textwrap
from pathlib import Path

import pytest

import cloudinit
from cloudinit import common
from model import conventions

from role_checks import ROLES, require_tool, sandboxed

# Holds the lock file given as apt does (fcntl), says so, and lets it go once told to
# (LOCK.release appears) or after the seconds given.
HOLD = textwrap.dedent("""\
    import fcntl, pathlib, sys, time
    with open(sys.argv[1], "w") as f:
        fcntl.lockf(f, fcntl.LOCK_EX)
        pathlib.Path(sys.argv[1] + ".held").touch()
        deadline = time.monotonic() + float(sys.argv[2])
        while time.monotonic() < deadline and not pathlib.Path(sys.argv[1] + ".release").exists():
            time.sleep(0.05)
""")


def apt_root(tmp_path: Path, repository: str = "repo") -> Path:
    """An APT_CONFIG that keeps apt to tmp_path: a local repository, its own state."""
    for sub in ("repo", "lists/partial", "cache/archives/partial", "state", "log", "parts", "sources.d"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "repo/Packages").write_text("")
    (tmp_path / "sources.list").write_text(f"deb [trusted=yes] file:{tmp_path / repository} ./\n")
    config = tmp_path / "apt.conf"
    config.write_text(textwrap.dedent(f"""\
        Dir::Etc::Parts "{tmp_path}/parts";
        Dir::Etc::main "/dev/null";
        Dir::Etc::SourceList "{tmp_path}/sources.list";
        Dir::Etc::SourceParts "{tmp_path}/sources.d";
        Dir::State "{tmp_path}/state";
        Dir::State::Lists "{tmp_path}/lists";
        Dir::State::status "/var/lib/dpkg/status";
        Dir::Cache "{tmp_path}/cache";
        Dir::Log "{tmp_path}/log";
        APT::Sandbox::User "root";
    """))
    return config


def update(tmp_path: Path, settings, *, hold_seconds: float | None, released_once_it_waited: bool = False,
           repository: str = "repo") -> str:
    """Runs common.sh's apt_update, the lists lock held for `hold_seconds` (None: free), or
    until apt_update has slept once (a `sleep` of its own tells)."""
    require_tool("apt-get", "apt")
    config = apt_root(tmp_path, repository)
    library = tmp_path / "common.sh"
    library.write_text(cloudinit.rendered_files(conventions.APP_SERVER, settings)[common.LIBRARY])
    (tmp_path / "hold.py").write_text(HOLD)
    lock = tmp_path / "lists/lock"
    script = [f"export APT_CONFIG={shlex.quote(str(config))} T={shlex.quote(str(tmp_path))}", f"source {library}"]
    if hold_seconds is not None:
        script += [f"python3 {tmp_path}/hold.py {lock} {hold_seconds} &",
                   f"until [ -e {lock}.held ]; do sleep 0.05; done"]
    if released_once_it_waited:
        (tmp_path / "bin").mkdir()
        (tmp_path / "bin/sleep").write_text(f'#!/bin/sh\ntouch "$T/slept"\nexec {shutil.which("sleep")} "$@"\n')
        (tmp_path / "bin/sleep").chmod(0o755)
        script += [f'(until [ -e "$T/slept" ]; do sleep 0.05; done; touch {lock}.release) &']
    script += ["started=$(date +%s.%N)",
               'PATH="$T/bin:$PATH" apt_update; status=$?',
               'echo "== update $status after $(awk "BEGIN { print $(date +%s.%N) - $started }")s"',
               f"ls {tmp_path}/lists"]
    result = sandboxed(tmp_path, "\n".join(script), network=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def outcome(out: str) -> tuple[int, float]:
    status, seconds = re.search(r"^== update (\d+) after ([\d.]+)s$", out, re.M).groups()
    return int(status), float(seconds)


def test_update_waits_for_the_lists_lock_then_succeeds(tmp_path, staging_settings):
    # Held until it has waited: it succeeds only if it did (apt alone gives up at once).
    out = update(tmp_path, staging_settings, hold_seconds=30, released_once_it_waited=True)
    status, _ = outcome(out)
    assert status == 0, out
    assert re.search(rf"apt-get update waits \(up to {conventions.APT_LOCK_WAIT_SECONDS}s\) for apt's lists lock, "
                     r"held by pid \d+ \(python3\)", out), out
    assert "_Packages" in out  # the repository's index is in the lists


def test_update_fails_with_a_message_when_the_lock_stays_held(tmp_path, staging_settings, monkeypatch):
    monkeypatch.setattr(conventions, "APT_LOCK_WAIT_SECONDS", 2)
    out = update(tmp_path, staging_settings, hold_seconds=30)
    status, seconds = outcome(out)
    assert status == 1 and seconds < 30, out   # it gave up while the lock was still held
    assert re.search(r"apt-get update gave up: apt's lists lock is still held by pid \d+ \(python3\) after 2s", out), out


def test_update_with_the_lock_free_runs_at_once_and_any_other_failure_fails_at_once(tmp_path, staging_settings):
    free = update(tmp_path / "free", staging_settings, hold_seconds=None)
    assert outcome(free)[0] == 0 and "waits" not in free, free
    broken = update(tmp_path / "broken", staging_settings, hold_seconds=None, repository="no-such-repository")
    status, seconds = outcome(broken)
    assert status == 1 and seconds < 10, broken
    assert "no-such-repository" in broken and "waits" not in broken, broken


@pytest.mark.parametrize("role", ROLES)
def test_every_apt_get_update_of_provisioning_waits_for_the_lists_lock(role, stack_settings):
    """Only apt_update runs `apt-get update`; ensure_packages, ensure_apt_repository and the
    role scripts go through it."""
    scripts = "\n".join(text for path, text in cloudinit.rendered_files(role, stack_settings).items()
                        if text.startswith("#!/bin/") or "shellcheck shell=bash" in text)
    updates = [line.strip() for line in scripts.splitlines()
               # A call, not a comment or a message ("apt-get update ..." in quotes).
               if re.search(r"(?<![\w\"'])apt(-get|_get)\s+(-\S+\s+)*update\b", line)
               and not line.strip().startswith("#")]
    assert updates == ["if apt_get update -q; then"]
    library = cloudinit.rendered_files(role, stack_settings)[common.LIBRARY]
    for caller in ("apt_lists_ready() {", "ensure_apt_repository() {"):
        body = library.split(caller, 1)[1].split("\n}\n", 1)[0]
        assert "apt_update" in body, caller
    assert "apt_lists_ready\n" in library.split("ensure_packages() {", 1)[1].split("\n}\n", 1)[0]


# --- the lists' age: refreshed before an install when older than a day -------------------

@pytest.mark.parametrize("last_refresh, refreshed", [
    (None, True), ("2 days ago", True), ("25 hours ago", True), ("23 hours ago", False), ("now", False),
], ids=["never", "2-days", "25-hours", "23-hours", "just-now"])
def test_lists_are_refreshed_before_an_install_only_when_older_than_a_day(tmp_path, staging_settings,
                                                                         last_refresh, refreshed):
    """apt_lists_ready (what ensure_packages runs before an install), run twice: the first
    run refreshes stale lists, and its refresh makes the second run a no-op."""
    require_tool("apt-get", "apt")
    assert conventions.APT_LISTS_MAX_AGE_MINUTES == 24 * 60
    config = apt_root(tmp_path)
    library = tmp_path / "common.sh"
    library.write_text(cloudinit.rendered_files(conventions.APP_SERVER, staging_settings)[common.LIBRARY])
    marker = f"{conventions.PLATFORM_STATE}/apt-updated"
    script = [f"export APT_CONFIG={shlex.quote(str(config))}", f"source {library}",
              f"rm -f {marker}"]
    if last_refresh is not None:
        script += [f"mkdir -p {conventions.PLATFORM_STATE}", f"touch -d {shlex.quote(last_refresh)} {marker}"]
    script += [
        # apt-get is the real one; the function around it only says when it runs.
        'apt_get() { [ "${*: -1}" = update ] || [ "${*: -2:1}" = update ] && echo "== apt-get update"; '
        'command apt-get -o DPkg::Lock::Timeout=1 "$@"; }',
        "echo '== first'; apt_lists_ready || echo '== failed'",
        "echo '== second'; apt_lists_ready || echo '== failed'",
        f"echo \"== marker age $(( $(date +%s) - $(stat -c %Y {marker}) ))s\"",
    ]
    result = sandboxed(tmp_path, "\n".join(script), network=True, timeout=60)
    out = result.stdout + result.stderr
    assert result.returncode == 0 and "== failed" not in out, out
    first, second = out.split("== first", 1)[1].split("== second", 1)
    assert ("== apt-get update" in first) == refreshed, out
    assert "== apt-get update" not in second, out
    age = int(re.search(r"== marker age (-?\d+)s", out).group(1))
    if refreshed:
        assert age < 60 and "_Packages" in " ".join(p.name for p in (tmp_path / "lists").iterdir()), out
