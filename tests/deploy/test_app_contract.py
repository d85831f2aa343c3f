"""The app contract (platform.json): checked before anything is built, every problem at
once; what a release carries; the Node.js check against the servers before any upload;
the release command, once, before any server switches. The servers are test_roll's fleet."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from deploy import __main__ as cli
from deploy import release, roll
from deploy.executor import Executor
from model import app_contract
from model.app_contract import Contract, ContractError, Process

from fleet import BUILD, NEW, OLD, SERVERS, STACK, FakeTarget, Fleet

WORKER_CONTRACT = {
    "node": 22,
    "release": "node migrate.js",
    "processes": {
        "web": {"script": "web/server.js", "serves": "/"},
        "api": {"script": "api/server.js", "serves": "/api/", "instances": 2},
        "worker": {"script": "worker/index.js"},
    },
}


def app(tmp_path: Path, contract: dict | None) -> Path:
    root = tmp_path / "app"
    for script in ("web/server.js", "api/server.js", "worker/index.js"):
        (root / script).parent.mkdir(parents=True, exist_ok=True)
        (root / script).write_text("'use strict';\n")
    if contract is not None:
        (root / app_contract.FILE).write_text(json.dumps(contract))
    return root


# --- the file --------------------------------------------------------------------------

def test_a_contract_is_read_with_its_defaults_filled_and_without_one_the_default_runs(tmp_path):
    contract = app_contract.load(app(tmp_path, WORKER_CONTRACT))
    assert contract.node == 22 and contract.release == "node migrate.js" and contract.build is None
    assert contract.processes == (Process("web", "web/server.js", "/", "max"), Process("api", "api/server.js", "/api/", 2),
                                  Process("worker", "worker/index.js", None, 1))
    assert [p.port for p in contract.processes] == [3000, 3001, None]
    assert contract.as_json()["processes"]["worker"] == {"script": "worker/index.js", "instances": 1}
    assert contract.health == "/healthz" and contract.as_json()["health"] == "/healthz"
    assert app_contract.load(app(tmp_path / "plain", None)) == app_contract.DEFAULT


@pytest.mark.parametrize("path, allowed", [
    ("/ready", True), ("/api/health-check.v2", True), ("/", True),
    ("ready", False), ("/a b", False), ("/a;b", False), ("/a//b", False), ("/a/../b", False), ("/$x", False),
    ("/" + "a" * 128, False), (7, False),
])
def test_a_health_path_is_a_plain_path_nginx_takes_as_it_is(tmp_path, path, allowed):
    """It ends up in nginx's config (written by root on the app servers): nothing but a path."""
    declared = {**WORKER_CONTRACT, "health": path}
    if allowed:
        assert app_contract.load(app(tmp_path, declared)).health == path
    else:
        with pytest.raises(ContractError, match=r"^.*\n  - health: "):
            app_contract.load(app(tmp_path, declared))


def test_every_problem_is_named_at_once_with_the_field_the_value_and_what_is_allowed(tmp_path):
    bad = {"nodes": 1, "node": 19, "build": "a\nb", "health": "/ok/../x", "processes": {
        "Web": {"script": "../web.js", "serves": "/x", "instances": 0, "port": 80},
        "api": {"script": "api/server.js", "serves": "/api/"},
        "other": {"script": "api/server.js", "serves": "/api/", "instances": "all"}}}
    with pytest.raises(ContractError) as raised:
        app_contract.load(app(tmp_path, bad))
    problems = raised.value.problems
    assert problems == [
        "'nodes' is not a field (fields: node, build, release, health, processes)",
        "node: 19 is not allowed: one of 18, 20, 22, 24 (a Node.js major)",
        "build: 'a\\nb'... is not allowed: one line of at most 1000 characters",
        "health: '/ok/../x' is not allowed: a path the `/api/` process answers 200 at when it is healthy: '/', "
        "then up to 127 of A-Z a-z 0-9 . _ ~ / - (no '..', no '//')",
        "processes.Web: the name 'Web' is not allowed: a lower-case letter, then up to 29 of a-z, 0-9, _ and -",
        "processes.Web: 'port' is not a field (fields: script, serves, instances)",
        "processes.Web.script: '../web.js' is not allowed: a .js, .cjs or .mjs file's path inside the app "
        "(relative, no '..')",
        "processes.Web.serves: '/x' is not allowed: \"/\" or \"/api/\", or no serves (a worker)",
        "processes.Web.instances: 0 is not allowed: a whole number from 1 to 64, or \"max\" (one per CPU)",
        "processes.other.instances: 'all' is not allowed: a whole number from 1 to 64, or \"max\" (one per CPU)",
        "processes: exactly one must serve '/' (the app servers' nginx sends it there), not 0",
        "processes: exactly one must serve '/api/' (the app servers' nginx sends it there; the health check is "
        "asked of it), not 2: api, other",
    ]
    assert str(raised.value).startswith(f"{tmp_path / 'app' / 'platform.json'}: 12 problem(s):\n  - 'nodes'")


def test_a_script_the_built_release_lacks_and_a_file_that_is_not_json_are_refused(tmp_path):
    missing = {"processes": {**WORKER_CONTRACT["processes"], "cron": {"script": "cron/run.js"}}}
    root = app(tmp_path, missing)
    (root / "package.json").write_text("{}")
    (root / "package-lock.json").write_text("{}")
    with pytest.raises(ContractError, match=r"processes.cron.script: 'cron/run.js' is not a file in the release as "
                                            "built"):
        release.build(str(root), str(tmp_path / "work"), Recorder())
    broken = app(tmp_path / "b", None)
    (broken / app_contract.FILE).write_text('{"processes": ')
    with pytest.raises(ContractError, match="not JSON: Expecting value: line 1 column 15"):
        app_contract.load(broken)


def test_a_bad_contract_stops_the_deploy_before_anything_is_built_or_sent(tmp_path, monkeypatch):
    fleet = Fleet()
    monkeypatch.setattr(cli, "target_of", lambda args, executor: FakeTarget())
    root = app(tmp_path, {"processes": {"web": {"script": "web/server.js"}}})
    (root / "package.json").write_text("{}")
    (root / "package-lock.json").write_text("{}")
    assert cli.main(["deploy", "staging", "--app", str(root)], executor=fleet) == cli.EXIT_STOPPED
    assert "processes: exactly one must serve '/'" in fleet.printed()
    assert [a for h, a in fleet.log if h != "lock"] == [], "nothing listed, sent or switched"


# --- the build -------------------------------------------------------------------------

class Recorder(Executor):
    def __init__(self):
        super().__init__(out=__import__("io").StringIO())
        self.ran: list[list[str]] = []

    def run(self, argv, **kwargs):
        from deploy.executor import Result
        self.ran.append(argv)
        if argv[:2] == ["rsync", "--recursive"]:   # copy the sources as the real one would
            import shutil
            shutil.copytree(argv[-2], argv[-1], dirs_exist_ok=True)
        return Result(argv, 0, "v22.11.0 linux x64\n" if argv[0] == "node" else "")


def test_a_declared_build_runs_with_dev_dependencies_which_are_pruned_after(tmp_path):
    root = app(tmp_path, {**WORKER_CONTRACT, "build": "npm run build"})
    (root / "package.json").write_text("{}")
    (root / "package-lock.json").write_text("{}")
    executor = Recorder()
    built = release.build(str(root), str(tmp_path / "work"), executor)
    steps = [argv[:3] for argv in executor.ran if argv[0] in ("npm", "sh")]
    assert steps == [["npm", "ci", "--include=dev"], ["sh", "-c", f"cd {built.directory} && npm run build"],
                     ["npm", "prune", "--omit=dev"]]
    carried = json.loads((Path(built.directory) / app_contract.FILE).read_text())
    assert carried == {**WORKER_CONTRACT, "build": "npm run build", "health": "/healthz",
                       "processes": {**WORKER_CONTRACT["processes"], "web": {"script": "web/server.js", "serves": "/",
                                                                             "instances": "max"},
                                     "worker": {"script": "worker/index.js", "instances": 1}}}
    assert (built.node_version, built.runtime) == ("v22.11.0", "v22.11.0 linux x64")
    plain_app = app(tmp_path / "plain", None)
    (plain_app / "package.json").write_text("{}")
    (plain_app / "package-lock.json").write_text("{}")
    executor = Recorder()
    plain = release.build(str(plain_app), str(tmp_path / "w2"), executor)
    assert [argv[:3] for argv in executor.ran if argv[0] in ("npm", "sh")] == [["npm", "ci", "--omit=dev"]]
    assert json.loads((Path(plain.directory) / app_contract.FILE).read_text()) == app_contract.DEFAULT.as_json()


def test_compiled_addons_are_found_by_their_path(tmp_path):
    (tmp_path / "node_modules" / "bcrypt" / "build").mkdir(parents=True)
    (tmp_path / "node_modules" / "bcrypt" / "build" / "bcrypt.node").write_bytes(b"\x7fELF")
    (tmp_path / "node_modules" / "pg").mkdir()
    (tmp_path / "node_modules" / "pg" / "index.js").write_text("")
    assert release.native_modules(str(tmp_path)) == ("node_modules/bcrypt/build/bcrypt.node",)


# --- against the servers ---------------------------------------------------------------

def test_a_declared_node_major_the_servers_do_not_run_is_refused_before_any_upload():
    fleet = Fleet()
    build = replace(BUILD, contract=replace(app_contract.DEFAULT, node=20))
    with pytest.raises(roll.DeployError) as refused:
        roll.Deployer(STACK, fleet).check_runtime(build)
    assert str(refused.value) == (
        "platform.json: node is 20, but app-1 runs Node.js v22.11.0 linux x64: set the stack's nodeMajor to 20 (then "
        "`pulumi up`), or declare node 22; platform.json: node is 20, but app-2 runs Node.js v22.11.0 linux x64: set "
        "the stack's nodeMajor to 20 (then `pulumi up`), or declare node 22; platform.json: node is 20, but app-3 "
        "runs Node.js v22.11.0 linux x64: set the stack's nodeMajor to 20 (then `pulumi up`), or declare node 22. "
        "Nothing was uploaded")
    assert not [a for h, a in fleet.log if a.startswith("rsync")]


@pytest.mark.parametrize("here, refused", [("v22.3.0 linux x64", False), ("v20.11.0 linux x64", True),
                                           ("v22.11.0 darwin arm64", True)])
def test_compiled_addons_must_be_built_for_the_servers_node_os_and_cpu(here, refused):
    build = replace(BUILD, runtime=here, native_modules=("node_modules/bcrypt/build/bcrypt.node",))
    problem = release.runtime_problem(build, "app-1", "v22.11.0 linux x64")
    assert (problem is not None) == refused
    if refused:
        assert problem.startswith("the release holds compiled addons (node_modules/bcrypt/build/bcrypt.node), built "
                                  f"here for Node.js {here}; app-1 runs Node.js v22.11.0 linux x64")
    assert release.runtime_problem(replace(build, native_modules=()), "app-1", "v22.11.0 linux x64") is None, \
        "plain JavaScript runs anywhere"


def test_the_release_command_runs_once_on_the_first_server_after_every_upload_before_any_switch():
    fleet = Fleet()
    build = replace(BUILD, contract=Contract(app_contract.DEFAULT.processes, release="node migrate.js"))
    assert roll.Deployer(STACK, fleet).deploy(build, keep=5).ok
    actions = [(h, a) for h, a in fleet.log if h != "lock"]
    commanded = [i for i, (_, a) in enumerate(actions) if a.startswith("release-command")]
    assert [actions[i] for i in commanded] == [(SERVERS[0].address, f"release-command {NEW}: node migrate.js")]
    assert commanded[0] > max(i for i, (_, a) in enumerate(actions) if a.startswith("accept"))
    assert commanded[0] < min(i for i, (_, a) in enumerate(actions) if a.startswith("switch"))


def test_a_failed_release_command_switches_no_server():
    fleet = Fleet(release_command_exit=3)
    build = replace(BUILD, contract=Contract(app_contract.DEFAULT.processes, release="node migrate.js"))
    with pytest.raises(roll.DeployError, match=r"the release command failed on app-1 \(exit 3: boom\); no server was "
                                               "switched, every one still runs its release"):
        roll.Deployer(STACK, fleet).deploy(build, keep=5)
    assert not [a for h, a in fleet.log if a.startswith(("switch", "reload"))]
    assert all((s.current, s.running) == (OLD, OLD) for s in fleet.servers.values())
