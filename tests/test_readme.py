"""The README's settings reference is the generator's output, so it lists every setting."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from model.settings import SETTINGS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def readme_table() -> str:
    text = README.read_text()
    found = re.search(r"<!-- settings-reference:start -->\n(.*?)<!-- settings-reference:end -->", text, re.S)
    assert found, "README.md lacks the settings-reference markers"
    return found.group(1)


def generated_table() -> str:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "settings_reference.py")], capture_output=True, text=True, check=True
    ).stdout


def test_readme_settings_table_is_the_generated_one():
    assert readme_table() == generated_table(), "run: venv/bin/python scripts/settings_reference.py"


def test_the_table_has_a_row_per_setting_with_type_default_and_meaning():
    rows = [line for line in generated_table().splitlines()[2:]]
    assert len(rows) == len(SETTINGS)
    for setting, row in zip(SETTINGS, rows):
        key, kind, default, meaning = [cell.strip() for cell in row.strip("|").split(" | ")]
        assert key == f"`{setting.key}`" and kind and default and meaning == setting.meaning


def test_readme_names_the_commands_that_ci_and_a_user_run_and_renders_a_diagram():
    text = README.read_text()
    assert "```sh\nbash scripts/test.sh\n```" in text
    assert "exec bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    assert "```sh\nbash scripts/local-cloud.sh\n```" in text
    assert (ROOT / "scripts" / "local-cloud.sh").exists()
    assert "```mermaid\nflowchart" in text
