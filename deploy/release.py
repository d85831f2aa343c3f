"""Build a release once, on the operator's machine: sources, the app's build step when its
contract declares one (dev dependencies installed for it, then pruned), production
dependencies, and the contract itself, every default spelled out (platform.json)."""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from model import app_contract
from model.app_contract import Contract

from . import commands
from .executor import Executor

REVISION_FILE = "REVISION"


@dataclass(frozen=True)
class Build:
    release_id: str
    directory: str
    # What the archive's manifest says of it.
    commit: str = "nogit"
    dirty: bool = True
    built_at: str = ""          # UTC, ISO 8601
    node_version: str = ""      # the node that ran `npm ci`: native modules are built for it
    runtime: str = ""           # "v22.11.0 linux x64": that node, its OS and CPU
    contract: Contract = app_contract.DEFAULT
    # Compiled addons (*.node) under node_modules: built for this machine's Node.js major,
    # OS and CPU, they load only where those are the same.
    native_modules: tuple[str, ...] = field(default=())


def major(runtime: str) -> str:
    """"v22.11.0 linux x64" -> "22"."""
    return runtime.removeprefix("v").split(".", 1)[0]


def runtime_problem(build: Build, server_name: str, server_runtime: str) -> str | None:
    """Why this release cannot run on a server whose node says `server_runtime`, or None."""
    server_major = major(server_runtime)
    if build.contract.node and str(build.contract.node) != server_major:
        return (f"platform.json: node is {build.contract.node}, but {server_name} runs Node.js {server_runtime}: set "
                f"the stack's nodeMajor to {build.contract.node} (then `pulumi up`), or declare node {server_major}")
    here = build.runtime.split()
    there = server_runtime.split()
    if build.native_modules and (major(build.runtime), here[1:]) != (server_major, there[1:]):
        shown = ", ".join(build.native_modules[:3]) + (" ..." if len(build.native_modules) > 3 else "")
        return (f"the release holds compiled addons ({shown}), built here for Node.js {build.runtime}; {server_name} "
                f"runs Node.js {server_runtime}: they would not load there. Build with Node.js {server_major} on "
                f"{' '.join(there[1:])} (e.g. in CI on the droplets' image, or `nvm use {server_major}` on Linux x64)")
    return None


def release_id(commit: str, dirty: bool, now: dt.datetime) -> str:
    """UTC time first, so ids sort by age: 20261129T213005Z-abc1234[-dirty]."""
    stamp = now.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{commit}" + ("-dirty" if dirty else "")


def source_version(app_dir: str, executor: Executor) -> tuple[str, bool]:
    """(short commit, whether the tree has changes); ("nogit", True) outside a repository."""
    commit = executor.run(commands.git_commit(app_dir))
    if not commit.ok:
        return "nogit", True
    changes = executor.run(commands.git_changes(app_dir))
    return commit.output.strip(), bool(changes.output.strip()) or not changes.ok


def build(app_dir: str, work_dir: str, executor: Executor, now: dt.datetime | None = None) -> Build:
    app = Path(app_dir)
    if not (app / "package.json").is_file() or not (app / "package-lock.json").is_file():
        raise ValueError(f"{app_dir}: an app directory needs package.json and package-lock.json (npm ci)")
    contract = app_contract.load(app)        # every problem at once, before anything is built
    commit, dirty = source_version(app_dir, executor)
    now = now or dt.datetime.now(dt.timezone.utc)
    rid = release_id(commit, dirty, now)
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    directory = str(Path(work_dir) / rid)
    executor.check("copy the app's sources", commands.copy_sources(app_dir, directory))
    if contract.build:
        executor.check("npm ci (with dev dependencies, for the build)", commands.install_all_dependencies(directory))
        executor.say(f"build: {contract.build}")
        executor.check(f"the app's build ({contract.build})", commands.build_step(directory, contract.build))
        executor.check("npm prune --omit=dev", commands.prune_dev_dependencies(directory))
    else:
        executor.check("npm ci --omit=dev", commands.install_dependencies(directory))
    for path in app_contract.build_only_files(Path(directory)):   # npm read them above
        path.unlink()
    app_contract.check_scripts(contract, directory)
    (Path(directory) / app_contract.FILE).write_text(json.dumps(contract.as_json(), indent=2) + "\n")
    (Path(directory) / REVISION_FILE).write_text(rid + "\n")
    node = executor.run(commands.node_runtime())
    runtime = node.output.strip() if node.ok else "unknown"
    return Build(rid, directory, commit, dirty, now.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                 runtime.split()[0], runtime, contract, native_modules(directory))


def native_modules(directory: str) -> tuple[str, ...]:
    """The compiled addons a release carries, by their path in it."""
    found = []
    for root, _, files in os.walk(Path(directory) / "node_modules"):
        found += [os.path.relpath(os.path.join(root, name), directory) for name in files if name.endswith(".node")]
    return tuple(sorted(found))
