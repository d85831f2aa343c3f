"""First-boot cloud-init for each role, and the files the program pushes later.

Every file a droplet receives is a template in this folder, next to its role:
`common/` for every droplet, then `load_balancer/`, `app_server/` and `datastore/`.
Each role's module lists its files (`FILES`: rendered into the cloud-config, installed
by the provisioning script) and its pushes (`PUSHES`: what `platform-push` accepts over
SSH after boot). First-boot data depends only on settings that do not change in normal
operation, so a droplet is never replaced by scaling, a new certificate or a password.
"""

from __future__ import annotations

import base64
import gzip
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from model import conventions, firewalls
from model.settings import Settings

HERE = Path(__file__).parent
# Config files are staged here at first boot; the provisioning script installs each one
# into place only when it differs, so a second run changes and restarts nothing.
STAGED_FILES = f"{conventions.PLATFORM_ETC}/files"
PUSH_TABLE = f"{conventions.PLATFORM_ETC}/pushes.json"
ROLE_ENV = f"{conventions.PLATFORM_ETC}/platform.env"

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    # Shell's ${#array[@]} would otherwise open a Jinja comment.
    comment_start_string="{#-#",
    comment_end_string="#-#}",
)


@dataclass(frozen=True)
class ConfigFile:
    """A template rendered for a droplet: staged at first boot, installed by provisioning."""

    template: str  # relative to this folder
    path: str  # where the service reads it on the droplet
    mode: str = "0644"
    owner: str = "root:root"


@dataclass(frozen=True)
class Program:
    """A script written straight into place at first boot (it is what does the installing)."""

    template: str
    path: str
    mode: str = "0755"


@dataclass(frozen=True)
class Target:
    """Where one file of a push goes."""

    path: str
    mode: str = "0644"
    owner: str = "root:root"


@dataclass(frozen=True)
class Push:
    """What `platform-push <kind>` accepts: named files, a check, and what to reload.

    The check runs with the new files in place; if it fails, the old files are put back
    and nothing is reloaded.
    """

    files: dict[str, Target]
    check: list[list[str]] = field(default_factory=list)
    then: list[list[str]] = field(default_factory=list)


def render(template: str, **context: Any) -> str:
    return _templates.get_template(template).render(c=conventions, **context)


def role_module(role: str):
    from . import app_server, datastore, load_balancer

    return {
        conventions.LOAD_BALANCER: load_balancer,
        conventions.APP_SERVER: app_server,
        conventions.DATASTORE: datastore,
    }[role]


def template_context(role: str, settings: Settings) -> dict[str, Any]:
    """Everything a template may use: settings, the role, and the shared facts."""
    from . import common

    return {
        "role": role,
        "settings": settings,
        "inbound": firewalls.inbound_rules(
            role, stack=settings.stack, admin_cidrs=settings.admin_cidrs, engines=settings.engines
        ),
        "engines": [conventions.ENGINES[name] for name in settings.engines],
        # The role module's own facts (its file paths, units), so its scripts name them once.
        "facts": role_module(role),
        "ssh_logins": common.ssh_logins(role),
        # What the role's backups carry: its configuration, and the datastore's engines' dumps.
        "backup_paths": role_module(role).backup_paths(settings),
        "dumped_engines": list(settings.engines) if role == conventions.DATASTORE else [],
    }


def pushes(role: str, settings: Settings) -> dict[str, Push]:
    from . import common

    return {**common.pushes(role, settings), **role_module(role).pushes(settings)}


def config_files(role: str, settings: Settings) -> list[ConfigFile]:
    from . import common

    return [*common.files(settings), *role_module(role).files(settings)]


def programs(role: str) -> list[Program]:
    from . import common

    return [*common.PROGRAMS, *role_module(role).PROGRAMS]


def rendered_files(role: str, settings: Settings) -> dict[str, str]:
    """Every file the role's first boot writes, by its final path on the droplet."""
    context = template_context(role, settings)
    files = {p.path: render(p.template, **context) for p in programs(role)}
    files.update({f.path: render(f.template, **context) for f in config_files(role, settings)})
    return files


def first_boot(role: str, settings: Settings, automation_public_key: str) -> str:
    """The role's cloud-config (user_data). Holds no secret: only public keys and settings."""
    context = template_context(role, settings)
    write_files = [
        {"path": p.path, "permissions": p.mode, **compressed(render(p.template, **context))}
        for p in programs(role)
    ]
    write_files += [
        {
            "path": STAGED_FILES + f.path,
            "permissions": f.mode,
            "content": render(f.template, **context),
        }
        for f in config_files(role, settings)
    ]
    write_files.append({"path": PUSH_TABLE, "permissions": "0644", "content": push_table(role, settings)})
    write_files.append({"path": ROLE_ENV, "permissions": "0644", "content": role_env(role, settings, config_files(role, settings))})
    config = {
        "users": [
            {
                "name": conventions.OPERATOR_USER,
                "shell": "/bin/bash",
                "groups": ["sudo"],
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "lock_passwd": True,
                # Only the program's own key: operators' keys are pushed, so adding one
                # replaces no droplet.
                "ssh_authorized_keys": [automation_public_key],
            }
        ],
        "disable_root": True,
        "ssh_pwauth": False,
        # OS updates on first boot, before provisioning runs (runcmd comes after).
        "package_update": True,
        "package_upgrade": True,
        "write_files": write_files,
        "runcmd": [[conventions.PROVISION_COMMAND]],
    }
    return "#cloud-config\n" + yaml.safe_dump(config, sort_keys=False, width=1000)


def compressed(text: str) -> dict[str, str]:
    """A write_files body as gzip+base64, which cloud-init decodes: the scripts are most of a
    role's first boot, and DigitalOcean takes at most 64 KiB of user_data. mtime=0 keeps the
    bytes, and so the droplet, the same from run to run."""
    return {"encoding": "gz+b64", "content": base64.b64encode(gzip.compress(text.encode(), mtime=0)).decode()}


def decoded(entry: dict[str, str]) -> str:
    """A write_files entry's text, as cloud-init writes it."""
    if entry.get("encoding") == "gz+b64":
        return gzip.decompress(base64.b64decode(entry["content"])).decode()
    return entry["content"]


def push_table(role: str, settings: Settings) -> str:
    table = {
        kind: {
            "files": {name: vars(target) for name, target in push.files.items()},
            "check": push.check,
            "then": push.then,
        }
        for kind, push in pushes(role, settings).items()
    }
    return json.dumps(table, indent=2, sort_keys=True) + "\n"


def role_env(role: str, settings: Settings, files: list[ConfigFile]) -> str:
    """The provisioning script's inputs, as shell variables."""
    from . import common

    values = {
        "PLATFORM_ROLE": role,
        "PLATFORM_STACK": settings.stack,
        "STAGED_FILES": STAGED_FILES,
        # path:mode:owner of every staged file, for the installer.
        "CONFIG_FILES": " ".join(f"{f.path}:{f.mode}:{f.owner}" for f in files),
        # The common steps install only these; a role installs its own after its packages.
        "COMMON_CONFIG_FILES": " ".join(f.path for f in common.files(settings)),
        # Only the settings this role uses: any other would replace its droplets for nothing.
        **role_module(role).provisioning_inputs(settings),
    }
    return "".join(f"{key}={shlex.quote(value)}\n" for key, value in values.items())
