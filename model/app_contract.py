"""The app contract: `platform.json` at the root of an app says what the platform runs.

    {
      "node": 22,                               the Node.js major it needs (optional)
      "build": "npm run build",                 run before packaging, dev dependencies installed (optional)
      "release": "node scripts/migrate.js",     run once per deploy, before any server switches (optional)
      "health": "/healthz",                     the `/api/` process's health path (default /healthz)
      "processes": {
        "web":    {"script": "web/server.js", "serves": "/"},
        "api":    {"script": "api/server.js", "serves": "/api/", "instances": 2},
        "worker": {"script": "worker/index.js", "instances": 1}
      }
    }

The deploy tool reads it before anything is uploaded (every problem at once, each naming
the field, the value and what is allowed); pm2's ecosystem file on the app servers reads
the current release's copy at each start and reload, so a process added or removed is a
deploy. The platform gives the process that serves `/` port WEB_APP_PORT and the one that
serves `/api/` port API_APP_PORT (in PORT): the app servers' nginx routes by those. The
platform's health check (HEALTH_PATH on every app server, which the LB, the deploy and
`status` ask) is answered by the `/api/` process at `health`: the apps' unit points nginx
at the current release's path at each start and reload. An app without the file runs as
DEFAULT says (web/ and api/, as the example app is laid out).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from . import conventions
from .settings import NODE_MAJORS

FILE = "platform.json"
ROUTES = {"/": conventions.WEB_APP_PORT, "/api/": conventions.API_APP_PORT}
HEALTH_ROUTE = conventions.API_PATH_PREFIX   # its process answers the contract's health path
MAX_PROCESSES = 10
MAX_INSTANCES = 64
MAX_COMMAND_CHARS = 1000
# pm2's process names, and the names of the log files: short, lower case, no dots.
PROCESS_NAME = re.compile(r"[a-z][a-z0-9_-]{0,29}")
PROCESS_NAME_RULE = "a lower-case letter, then up to 29 of a-z, 0-9, _ and -"
FIELDS = ("node", "build", "release", "health", "processes")

# What a release leaves out of the app's directory: at its root, what each deploy builds
# fresh (node_modules) or the servers do not run (test, .git); in any folder, what the
# build alone reads (.npmrc: npm's registry, often with its token, at the root or beside a
# package the build installs with `cd api && npm ci`) and a developer's own settings
# (.env, .env.production, api/.env, direnv's .envrc): the apps read the platform's .env
# alone, and a release is readable by the deploy login and archived in Spaces. The
# template stays (dotenv-safe reads .env.example as the apps start).
NOT_RELEASED_AT_ROOT = ("node_modules", "test", ".git")
BUILD_ONLY = (".npmrc",)
NOT_RELEASED_ANYWHERE = (".env", ".env.*", ".envrc")
RELEASED_TEMPLATE = ".env.example"


def released(relative: PurePosixPath) -> bool:
    """Whether the file at `relative` (a path in the app's directory) goes into a release."""
    if relative.parts[0] in NOT_RELEASED_AT_ROOT:
        return False

    def left_out(part: str) -> bool:
        return part in BUILD_ONLY or (part != RELEASED_TEMPLATE and any(
            fnmatch.fnmatchcase(part, name) for name in NOT_RELEASED_ANYWHERE))
    return not any(left_out(part) for part in relative.parts)


def build_only_files(directory: Path) -> list[Path]:
    """The files in a build's directory that the build read and its release leaves out
    (BUILD_ONLY, in any folder). node_modules is not searched: npm never packs an .npmrc."""
    found = []
    for root, folders, files in os.walk(directory):
        folders[:] = [name for name in folders if name != "node_modules"]
        found += [Path(root, name) for name in files if name in BUILD_ONLY]
    return sorted(found)


# A health path nginx can take as it is: the root-owned step that writes it checks the same.
HEALTH_PATH = re.compile(r"/[A-Za-z0-9._~/-]{0,127}")
PROCESS_FIELDS = ("script", "serves", "instances")


@dataclass(frozen=True)
class Process:
    name: str
    script: str                      # relative to the release
    serves: str | None = None        # "/" or "/api/"; None: no port (a worker)
    instances: int | str = 1         # a count, or "max": one per CPU

    @property
    def port(self) -> int | None:
        return ROUTES.get(self.serves) if self.serves else None

    @property
    def answers_health(self) -> bool:
        return self.serves == HEALTH_ROUTE


@dataclass(frozen=True)
class Contract:
    processes: tuple[Process, ...]
    node: int | None = None
    build: str | None = None
    release: str | None = None
    health: str = conventions.HEALTH_PATH

    def as_json(self) -> dict:
        """Every field spelled out, defaults filled: what the release carries as platform.json."""
        return {
            **({"node": self.node} if self.node else {}),
            **({"build": self.build} if self.build else {}),
            **({"release": self.release} if self.release else {}),
            "health": self.health,
            "processes": {p.name: {"script": p.script, **({"serves": p.serves} if p.serves else {}),
                                   "instances": p.instances} for p in self.processes},
        }


DEFAULT = Contract((Process("web", "web/server.js", "/", "max"), Process("api", "api/server.js", "/api/", "max")))


class ContractError(ValueError):
    def __init__(self, where: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{where}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))


def load(app_dir: str | Path) -> Contract:
    """The app's contract (DEFAULT without the file); ContractError naming every problem."""
    path = Path(app_dir) / FILE
    if not path.exists():
        return DEFAULT
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as bad:
        raise ContractError(str(path), [f"not JSON: {bad}"]) from None
    return parse(data, str(path))


def check_scripts(contract: Contract, release_dir: str | Path, where: str = FILE) -> None:
    """Each declared script is a file of the release as built (a build step may make them)."""
    missing = [f"processes.{p.name}.script: {p.script!r} is not a file in the release as built ({release_dir})"
               for p in contract.processes if not (Path(release_dir) / p.script).is_file()]
    if missing:
        raise ContractError(where, missing)


def parse(data, where: str = FILE) -> Contract:
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ContractError(where, [f"an object of {', '.join(FIELDS)} is needed, not {type(data).__name__}"])
    problems += [f"{key!r} is not a field (fields: {', '.join(FIELDS)})" for key in data if key not in FIELDS]
    node = data.get("node")
    if node is not None and (type(node) is not int or node not in NODE_MAJORS):
        problems.append(f"node: {node!r} is not allowed: one of {', '.join(map(str, NODE_MAJORS))} (a Node.js major)")
    commands = {name: command_problem(name, data.get(name)) for name in ("build", "release")}
    problems += [p for p in commands.values() if p]
    health = data.get("health", conventions.HEALTH_PATH)
    if not isinstance(health, str) or not health_path_ok(health):
        problems.append(f"health: {health!r} is not allowed: a path the `/api/` process answers 200 at when it is "
                        "healthy: '/', then up to 127 of A-Z a-z 0-9 . _ ~ / - (no '..', no '//')")
    processes = parse_processes(data.get("processes"), problems)
    if problems:
        raise ContractError(where, problems)
    return Contract(processes, node, data.get("build") or None, data.get("release") or None, health)


def health_path_ok(path: str) -> bool:
    return HEALTH_PATH.fullmatch(path) is not None and "//" not in path and ".." not in path.split("/")


def command_problem(name: str, value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        return f"{name}: {value!r} is not allowed: a shell command (a non-empty string)"
    if "\n" in value or "\r" in value or len(value) > MAX_COMMAND_CHARS:
        return f"{name}: {value[:40]!r}... is not allowed: one line of at most {MAX_COMMAND_CHARS} characters"
    return None


def parse_processes(value, problems: list[str]) -> tuple[Process, ...]:
    if not isinstance(value, dict) or not value:
        problems.append(f"processes: {value!r} is not allowed: an object of process names to "
                        '{"script": ..., "serves": "/" or "/api/", "instances": N}, at least one')
        return ()
    if len(value) > MAX_PROCESSES:
        problems.append(f"processes: {len(value)} declared, at most {MAX_PROCESSES}")
    processes = []
    for name, spec in value.items():
        where = f"processes.{name}"
        if not PROCESS_NAME.fullmatch(name):
            problems.append(f"{where}: the name {name!r} is not allowed: {PROCESS_NAME_RULE}")
        if not isinstance(spec, dict):
            problems.append(f"{where}: {spec!r} is not allowed: an object with script, serves, instances")
            continue
        problems += [f"{where}: {key!r} is not a field (fields: {', '.join(PROCESS_FIELDS)})"
                     for key in spec if key not in PROCESS_FIELDS]
        script = spec.get("script")
        if not isinstance(script, str) or not script_ok(script):
            problems.append(f"{where}.script: {script!r} is not allowed: a .js, .cjs or .mjs file's path inside the "
                            "app (relative, no '..')")
        serves = spec.get("serves")
        if serves is not None and serves not in ROUTES:
            problems.append(f"{where}.serves: {serves!r} is not allowed: \"/\" or \"/api/\", or no serves (a worker)")
        instances = spec.get("instances", "max" if serves else 1)
        if instances != "max" and (type(instances) is not int or not 1 <= instances <= MAX_INSTANCES):
            problems.append(f"{where}.instances: {instances!r} is not allowed: a whole number from 1 to "
                            f"{MAX_INSTANCES}, or \"max\" (one per CPU)")
        processes.append(Process(name, script if isinstance(script, str) else "", serves, instances))
    for route in ROUTES:
        serving = [p.name for p in processes if p.serves == route]
        if len(serving) != 1:
            problems.append(f"processes: exactly one must serve {route!r} (the app servers' nginx sends it there"
                            f"{'; the health check is asked of it' if route == '/api/' else ''}), "
                            f"not {len(serving)}{': ' + ', '.join(serving) if serving else ''}")
    return tuple(processes)


def script_ok(script: str) -> bool:
    parts = script.split("/")
    return (bool(script) and not script.startswith("/") and ".." not in parts and "" not in parts
            and script.endswith((".js", ".cjs", ".mjs")) and re.fullmatch(r"[A-Za-z0-9._/-]+", script) is not None)
