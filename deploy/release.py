"""Build a release once, on the operator's machine: sources plus production dependencies."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

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
    commit, dirty = source_version(app_dir, executor)
    now = now or dt.datetime.now(dt.timezone.utc)
    rid = release_id(commit, dirty, now)
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    directory = str(Path(work_dir) / rid)
    executor.check("copy the app's sources", commands.copy_sources(app_dir, directory))
    executor.check("npm ci --omit=dev", commands.install_dependencies(directory))
    (Path(directory) / REVISION_FILE).write_text(rid + "\n")
    node = executor.run(commands.node_version())
    return Build(rid, directory, commit, dirty, now.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                 node.output.strip() if node.ok else "unknown")
