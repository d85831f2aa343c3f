"""ssh-audit, as the sandbox and the local-cloud tests run it, and what they accept of it.

ssh-audit comes with the venv (requirements.txt). Its exit status says only the worst
level found, so the tests read its JSON report (`-j`) instead.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

# What ssh-audit may still warn about, each for a reason the README's Security section
# gives: no post-quantum key exchange is shared by OpenSSH 9.2/9.6 and Go's x/crypto.
ACCEPTED_WARNINGS = {
    ("kex", "curve25519-sha256"): "does not provide protection against post-quantum attacks",
    ("kex", "curve25519-sha256@libssh.org"): "does not provide protection against post-quantum attacks",
}


def command(address: str, port: int = 22) -> list[str]:
    """ssh-audit's argv for one server. --skip-rate-test: its flood of connections measures
    sshd's throttling (the README says why that is not sshd's job here), not its crypto."""
    beside = Path(sys.executable).with_name("ssh-audit")
    found = str(beside) if beside.exists() else shutil.which("ssh-audit")
    if not found:
        pytest.fail("ssh-audit is not installed: pip install -r requirements.txt")
    return [found, "--skip-rate-test", "-j", "-p", str(port), address]


def findings(report: dict) -> tuple[dict, dict]:
    """ssh-audit's failures and warnings, each {(kind, algorithm): note}."""
    found: dict[str, dict] = {"fail": {}, "warn": {}}
    for kind in ("kex", "key", "enc", "mac"):
        for algorithm in report.get(kind, []):
            for level, notes in found.items():
                for note in algorithm.get("notes", {}).get(level, []):
                    notes[(kind, algorithm["algorithm"])] = note
    return found["fail"], found["warn"]


def problems(report: dict) -> list[str]:
    """What is wrong with a report: failures, CVEs, warnings not accepted, host keys but ed25519."""
    failures, warnings = findings(report)
    said = [f"fail: {kind} {name}: {note}" for (kind, name), note in failures.items()]
    said += [f"CVE: {cve}" for cve in report.get("cves", [])]
    said += [f"warn: {kind} {name}: {note}" for (kind, name), note in warnings.items()
             if ACCEPTED_WARNINGS.get((kind, name)) != note]
    said += [f"missing accepted warning (update ACCEPTED_WARNINGS): {kind} {name}"
             for (kind, name) in ACCEPTED_WARNINGS if (kind, name) not in warnings]
    keys = [key["algorithm"] for key in report.get("key", [])]
    if keys != ["ssh-ed25519"]:
        said.append(f"host keys offered: {keys}, only ssh-ed25519 expected")
    return said
