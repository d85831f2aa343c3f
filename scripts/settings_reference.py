"""Prints the README's settings reference: a markdown table generated from SETTINGS.

    venv/bin/python scripts/settings_reference.py

model/settings.py is the one home of every setting's default and meaning; the
README's table is this script's output, and a test keeps the two equal.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.settings import REQUIRED, SETTINGS, Setting  # noqa: E402

# What each parser accepts, in a word, for the table's "type" column.
TYPES = {
    "whole_number": "integer",
    "one_of": "choice",
    "boolean": "boolean",
    "domain_name": "DNS name",
    "optional_domain_name": "DNS name or empty",
    "domain_list": "list of DNS names",
    "email": "e-mail",
    "https_url": "https URL",
    "optional_https_url": "https URL or empty",
    "email_list": "list of e-mails",
    "cidr_list": "list of CIDRs",
    "vpc_range": "IPv4 CIDR",
    "ssh_public_keys": "list of SSH public keys",
    "deploy_keys": "list of SSH public keys, may be empty",
    "engine_set": "list of engines",
    "env_map": "map of names to strings",
}


def type_of(setting: Setting) -> str:
    parser = setting.parse
    # Parsers made by a factory (one_of, whole_number) are closures named `parse`.
    name = parser.__qualname__.split(".")[0]
    kind = TYPES[name]
    if name == "one_of":
        choices = [str(c) if c != "" else "(empty)" for c in parser.__closure__[0].cell_contents]
        kind = "one of " + ", ".join(f"`{c}`" for c in choices)
    if name == "whole_number":
        low, high = sorted(cell.cell_contents for cell in parser.__closure__)
        kind = f"integer {low}–{high}"
    if name == "domain_list":
        kind = f"list of at most {parser.__closure__[0].cell_contents} DNS names"
    if setting.secret:
        kind += ", **secret**"
    return kind


def default_of(setting: Setting) -> str:
    if setting.default is REQUIRED:
        return "**required**"
    if isinstance(setting.default, bool):
        return f"`{str(setting.default).lower()}`"
    if setting.default in ([], {}):
        return "(none)"
    if isinstance(setting.default, list):
        return "`[" + ", ".join(setting.default) + "]`"
    if setting.default == "":
        return "(empty)"
    return f"`{setting.default}`"


def table() -> str:
    lines = ["| Key | Type | Default | Meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        meaning = s.meaning.replace("|", r"\|")
        lines.append(f"| `{s.key}` | {type_of(s)} | {default_of(s)} | {meaning} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(table())
