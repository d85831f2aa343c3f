"""requirements.lock: what the workflow and scripts/install.sh install, by hash. It pins
every requirement of requirements.txt to a version that requirements.txt allows, and
every dependency of those (for the workflow's Python), each with sha256 hashes; both
install it with --require-hashes. scripts/lock_requirements.py writes it."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
REQUIREMENTS = ROOT / "requirements.txt"
PREVIEW = ROOT / ".github" / "workflows" / "preview.yml"
INSTALL_SCRIPT = ROOT / "scripts" / "install.sh"
ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})+)\s*$")


def lock_entries(text: str) -> dict[str, tuple[str, list[str]]]:
    """{name: (version, hashes)}; any other line than a comment or an entry fails."""
    entries = {}
    logical = re.sub(r"\\\n", " ", text)  # pip's line continuations
    for line in logical.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = ENTRY.match(line)
        assert match, f"not `name==version --hash=sha256:...`: {line[:120]}"
        name = canonicalize_name(match.group(1))
        assert name not in entries, f"{name} is pinned twice"
        entries[name] = (match.group(2), re.findall(r"[0-9a-f]{64}", match.group(3)))
    return entries


def requirements(text: str) -> list[Requirement]:
    return [Requirement(line.split("#")[0].strip()) for line in text.splitlines() if line.split("#")[0].strip()]


def uncovered(entries: dict, wanted: list[Requirement]) -> list[str]:
    """What the lock misses or pins outside requirements.txt's ranges."""
    problems = []
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        if name not in entries:
            problems.append(f"{name} is not in the lock")
        elif not requirement.specifier.contains(entries[name][0], prereleases=True):
            problems.append(f"{name}=={entries[name][0]} is outside {requirement.specifier}")
    return problems


def missing_dependencies(entries: dict, wanted: list[Requirement]) -> list[str]:
    """Each dependency, on this Python, of each locked package (with the extras
    requirements.txt asks for), that the lock lacks or pins outside its range: read from
    the installed packages' metadata (the venv is installed from the lock)."""
    extras = {canonicalize_name(r.name): r.extras for r in wanted}
    problems, seen, todo = [], set(), [(name, extras.get(name, set())) for name in entries]
    while todo:
        name, asked = todo.pop()
        if (name, frozenset(asked)) in seen:
            continue
        seen.add((name, frozenset(asked)))
        for text in metadata.requires(name) or []:
            dependency = Requirement(text)
            if dependency.marker and not any(dependency.marker.evaluate({"extra": e}) for e in asked or {""}):
                continue
            dep = canonicalize_name(dependency.name)
            problems += uncovered(entries, [dependency])
            if dep in entries:
                todo.append((dep, set(dependency.extras)))
    return sorted(set(problems))


@pytest.fixture(scope="module")
def entries():
    return lock_entries(LOCK.read_text())


def test_the_lock_pins_every_requirement_within_its_range_with_hashes(entries):
    assert len(entries) > 20
    assert uncovered(entries, requirements(REQUIREMENTS.read_text())) == []
    for name, (_, hashes) in entries.items():
        assert hashes and len(set(hashes)) == len(hashes), name


def test_the_check_finds_a_missing_or_out_of_range_requirement(entries):
    wanted = requirements(REQUIREMENTS.read_text())
    fewer = {k: v for k, v in entries.items() if k != "jinja2"}
    assert uncovered(fewer, wanted) == ["jinja2 is not in the lock"]
    older = {**entries, "pyyaml": ("5.4.1", entries["pyyaml"][1])}
    assert uncovered(older, wanted) == ["pyyaml==5.4.1 is outside <7,>=6"]
    with pytest.raises(AssertionError, match="not `name==version"):
        lock_entries("jinja2==3.1.6\n")  # no hash


def test_the_lock_holds_every_dependency_and_this_venv_is_the_lock(entries):
    """The workflow's `pip install --require-hashes` fails on a dependency the lock lacks."""
    wanted = requirements(REQUIREMENTS.read_text())
    stale = {name: (version, metadata.version(name)) for name, (version, _) in entries.items()
             if metadata.version(name) != version}
    assert not stale, f"this venv is not the lock's (locked, installed): {stale}; run scripts/install.sh"
    assert missing_dependencies(entries, wanted) == []
    # The check can fail: without urllib3, botocore's dependency is missing.
    fewer = {k: v for k, v in entries.items() if k != "urllib3"}
    assert any(p.startswith("urllib3 is not in the lock") for p in missing_dependencies(fewer, wanted))


def install_commands(text: str) -> list[str]:
    return re.findall(r"pip install[^\n]*", text)


def test_the_workflow_and_the_install_script_install_the_lock_by_hash():
    jobs = yaml.safe_load(PREVIEW.read_text())["jobs"]
    # Resolved for the Python the workflow sets up (dependencies differ between versions).
    pythons = {str(s["with"]["python-version"]) for job in jobs.values() for s in job.get("steps", [])
               if "setup-python" in s.get("uses", "")}
    assert [f"CPython {p} (the workflow's)" in LOCK.read_text() for p in pythons] == [True], pythons
    runs = [step["run"] for job in jobs.values() for step in job.get("steps", []) if "run" in step]
    commands = [c for run in runs for c in install_commands(run)]
    assert len(commands) == 2, commands  # the test job and the preview job
    commands += install_commands(INSTALL_SCRIPT.read_text())
    for command in commands:
        assert "--require-hashes" in command.split() and command.endswith("-r requirements.lock"), command
