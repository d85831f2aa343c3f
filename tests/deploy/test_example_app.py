"""The example app's own tests (`node --test`, example-app/test/), run on this machine's
node after `npm ci` in a copy: what a new stack serves answers as its tests say."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.sandbox   # node and npm, the registry for `npm ci`

APP = Path(__file__).resolve().parents[2] / "example-app"


def test_the_example_apps_own_tests_pass(tmp_path):
    if not shutil.which("npm"):
        pytest.fail("npm is not installed: apt-get install npm")   # never a silent skip
    app = tmp_path / "app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("node_modules"))
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=app, check=True,
                   capture_output=True, timeout=600)
    result = subprocess.run(["node", "--test", "test/"], cwd=app, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout and "# pass 0" not in result.stdout, result.stdout[-1500:]
