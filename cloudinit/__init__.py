"""What each droplet receives: a fixed first boot, then the platform as a pushed bundle.

Every file a droplet receives is a template in this folder, next to its role:
`common/` for every droplet, then `load_balancer/`, `app_server/` and `datastore/`.
Each role's module lists its programs and config files (they make up the role's
`bundle`, which platform-provision installs) and its pushes (what `platform-push` accepts
over SSH: certificates, secrets, upstreams). First boot (`first_boot/`, user_data) holds
only the login, the droplet's identity and the bundle's receiver: DigitalOcean replaces a
droplet whose user_data changes, and no change to the platform or a setting should.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import shlex
from dataclasses import dataclass, field
from typing import Any

import yaml

from model import conventions, firewalls
from model.settings import Settings

from . import app_server, common, datastore, load_balancer
from .files import ConfigFile, Program, Push, render

# Config files are staged here by the bundle; the provisioning script installs each one
# into place only when it differs, so a second run changes and restarts nothing.
STAGED_FILES = f"{conventions.PLATFORM_ETC}/files"
PUSH_TABLE = f"{conventions.PLATFORM_ETC}/pushes.json"
ROLE_ENV = f"{conventions.PLATFORM_ETC}/platform.env"


def role_module(role: str):
    return {
        conventions.LOAD_BALANCER: load_balancer,
        conventions.APP_SERVER: app_server,
        conventions.DATASTORE: datastore,
    }[role]


def template_context(role: str, settings: Settings) -> dict[str, Any]:
    """Everything a template may use: settings, the role, and the shared facts."""
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
        "log_paths": common.log_paths(role, settings),
        "dumped_engines": list(settings.engines) if role == conventions.DATASTORE else [],
    }


def pushes(role: str, settings: Settings) -> dict[str, Push]:
    own = role_module(role)
    return {**common.pushes(role, settings, after_tls=own.after_tls(settings),
                            after_backup_settings=own.after_backup_settings(settings)),
            **own.pushes(settings)}


def config_files(role: str, settings: Settings) -> list[ConfigFile]:
    return [*common.files(settings), *role_module(role).files(settings)]


def programs(role: str) -> list[Program]:
    return [*common.PROGRAMS, *role_module(role).PROGRAMS]


def rendered_files(role: str, settings: Settings) -> dict[str, str]:
    """Every file the role's first boot writes, by its final path on the droplet."""
    context = template_context(role, settings)
    files = {p.path: render(p.template, **context) for p in programs(role)}
    files.update({f.path: render(f.template, **context) for f in config_files(role, settings)})
    return files


def run_configuration(datastore_address: str, settings: Settings) -> dict[str, str]:
    """The files that say how a release runs, as archived with it: pm2's ecosystem file as
    provisioned, and the apps' environment without its secrets."""
    ecosystem = render("app_server/ecosystem.config.js", **template_context(conventions.APP_SERVER, settings))
    return {"ecosystem.config.js": ecosystem, "app.env.template": app_server.archived_env(datastore_address, settings)}


def first_boot(role: str, stack: str, automation_public_key: str) -> str:
    """The role's cloud-config (user_data): only what never changes, so no change to the
    platform or its settings replaces a droplet. The `ops` login with the program's key,
    the droplet's identity, and the receiver of the platform (platform-bundle); the rest
    arrives as a bundle, pushed once the droplet takes logins. No secret, no setting."""
    identity = json.dumps({"stack": stack, "role": role}, sort_keys=True) + "\n"
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
        # OS updates on first boot, before the droplet says it is ready (runcmd comes after).
        "package_update": True,
        "package_upgrade": True,
        "write_files": [
            {"path": conventions.BUNDLE_COMMAND, "permissions": "0755", "content": render(RECEIVER)},
            {"path": conventions.IDENTITY_FILE, "permissions": "0644", "content": identity},
        ],
        "runcmd": [["sh", "-c", f"date -u +%FT%TZ > {conventions.FIRST_BOOT_MARKER}"]],
    }
    return "#cloud-config\n" + yaml.safe_dump(config, sort_keys=False, width=1000)


RECEIVER = "first_boot/platform-bundle.py"


@dataclass(frozen=True)
class Bundle:
    """The role's platform as one content-addressed push: every script, unit and config
    file, the push table and the role's settings. `payload` is what platform-bundle reads
    (the JSON, gzip, base64), `digest` the JSON's sha256."""

    role: str
    digest: str
    payload: str = field(repr=False)


def bundle(role: str, settings: Settings, files: dict[str, tuple[str, str]] | None = None) -> Bundle:
    """`files`: what it puts in place (`placed_files`), when a test varies them."""
    files = placed_files(role, settings) if files is None else files
    document = {
        "stack": settings.stack,
        "role": role,
        "files": {path: {"content": text, "mode": mode} for path, (text, mode) in files.items()},
        # Installed by provisioning from their staged copies; a later bundle without one removes it.
        "installed": sorted(f.path for f in config_files(role, settings)),
        # A server that answered this before a new bundle must answer it after.
        "health": role_module(role).HEALTH_URL,
    }
    return encoded(document)


def encoded(document: dict[str, Any]) -> Bundle:
    """The bundle as platform-bundle reads it. mtime=0: the same bundle, the same bytes."""
    raw = json.dumps(document, sort_keys=True).encode()
    payload = base64.b64encode(gzip.compress(raw, mtime=0)).decode()
    return Bundle(document["role"], hashlib.sha256(raw).hexdigest(), payload)


def placed_files(role: str, settings: Settings) -> dict[str, tuple[str, str]]:
    """Every file the bundle puts in place, by path: (content, mode). The programs at their
    paths, the config files staged for provisioning, the push table, the role's settings."""
    context = template_context(role, settings)
    configs = config_files(role, settings)
    files = {p.path: (render(p.template, **context), p.mode) for p in programs(role)}
    files.update({STAGED_FILES + f.path: (render(f.template, **context), f.mode) for f in configs})
    files[PUSH_TABLE] = (push_table(role, settings), "0644")
    files[ROLE_ENV] = (role_env(role, settings, configs), "0644")
    return files


def push_table(role: str, settings: Settings) -> str:
    table = {
        kind: {
            "files": {name: vars(target) for name, target in push.files.items()},
            "check": push.check,
            "then": push.then,
            "health": push.health,
        }
        for kind, push in pushes(role, settings).items()
    }
    return json.dumps(table, indent=2, sort_keys=True) + "\n"


def role_env(role: str, settings: Settings, files: list[ConfigFile]) -> str:
    """The provisioning script's inputs, as shell variables."""
    values = {
        "PLATFORM_ROLE": role,
        "PLATFORM_STACK": settings.stack,
        "STAGED_FILES": STAGED_FILES,
        # path:mode:owner of every staged file, for the installer.
        "CONFIG_FILES": " ".join(f"{f.path}:{f.mode}:{f.owner}" for f in files),
        # The common steps install only these; a role installs its own after its packages.
        "COMMON_CONFIG_FILES": " ".join(f.path for f in common.files(settings)),
        # Only the settings this role uses: any other would push it a new bundle for nothing.
        **role_module(role).provisioning_inputs(settings),
    }
    return "".join(f"{key}={shlex.quote(value)}\n" for key, value in values.items())
