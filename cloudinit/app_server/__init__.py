"""An app server: the web and API Node.js apps under pm2, behind a local TLS nginx."""

from __future__ import annotations

import base64
import gzip
import io
import json
import tarfile
from pathlib import Path, PurePosixPath

from model import app_contract, conventions
from model.settings import Settings

from ..files import ConfigFile, Program, Push, Target, render
from ..common import (NGINX_CHECK, NGINX_LOGROTATE_FILE, NGINX_MAIN_FILE, NGINX_RELOAD, NGINX_RELOAD_PROGRAM,
                      NGINX_SITE, ROLE_STEPS)

EXAMPLE_APP = Path(__file__).resolve().parents[2] / "example-app"
INSTALL_EXAMPLE_APP = "/usr/local/sbin/platform-install-example-app"
# A one-off command in the apps' release and environment, as the app user.
APP_EXEC_COMMAND = "/usr/local/sbin/platform-app-exec"
SUDOERS_FILE = "/etc/sudoers.d/platform-deploy"
# The apps' unit's journal, for the deploy user as root: why a release did not come up.
APPS_JOURNAL_COMMAND = "/usr/local/sbin/platform-apps-journal"
APPS_JOURNAL_MAX_LINES = 9999   # the most entries it gives at once (its argument check)
# The apps' unit's ExecReload: pm2 follows the current release's declared processes.
APPS_RELOAD_COMMAND = "/usr/local/sbin/platform-apps-reload"
# The unit's last step at each start and reload, as root: nginx asks the current release's
# health path; the snippet it writes is included by the site (a glob: none before a release).
APP_HEALTH_COMMAND = "/usr/local/sbin/platform-app-health"
# The start check (start-check.js, also a deploy's), and the env push's check that runs it
# on the current release with the new .env before the apps reload.
START_CHECK_SCRIPT = "/usr/local/lib/platform/start-check.js"
APPS_START_CHECK_COMMAND = "/usr/local/sbin/platform-apps-start-check"
START_CHECK_LOG_TAG = "platform-apps-start-check"   # the journal's identifier for what failing processes wrote
HEALTH_SNIPPET_DIR = "/etc/nginx/platform-health"
HEALTH_SNIPPET = f"{HEALTH_SNIPPET_DIR}/release.conf"
HEALTH_PATH_PATTERN = app_contract.HEALTH_PATH.pattern
# What pm2's ecosystem file reads of the current release (model/app_contract.py).
CONTRACT_FILE = app_contract.FILE
DEFAULT_CONTRACT_JSON = json.dumps(app_contract.DEFAULT.as_json())
ROUTE_PORTS_JSON = json.dumps(app_contract.ROUTES)

# Rolling through the pool: a member that served this before a new bundle or a new .env
# must serve it again before the next member gets it.
# The loopback listener: the LB's port asks for the LB's client certificate.
HEALTH_URL = f"https://127.0.0.1:{conventions.APP_LOCAL_TLS_PORT}{conventions.HEALTH_PATH}"

PROGRAMS = [
    Program("app_server/provision.sh", ROLE_STEPS, mode="0644"),
    Program("app_server/platform-install-example-app.sh", INSTALL_EXAMPLE_APP),
    Program("app_server/platform-app-exec.sh", APP_EXEC_COMMAND),
    Program("app_server/platform-apps-journal.sh", APPS_JOURNAL_COMMAND),
    Program("app_server/platform-apps-reload.sh", APPS_RELOAD_COMMAND),
    Program("app_server/platform-app-health.sh", APP_HEALTH_COMMAND),
    Program("app_server/start-check.js", START_CHECK_SCRIPT, mode="0644"),
    Program("app_server/platform-apps-start-check.sh", APPS_START_CHECK_COMMAND),
    NGINX_RELOAD_PROGRAM,
]

# A graceful pm2 reload (the unit's ExecReload); the deploy user's first sudo command.
APPS_RELOAD = ["systemctl", "reload", conventions.APPS_UNIT]
# The deploy user's other sudo commands: the exec wrapper as the app user (never root),
# any arguments; the apps' journal as root, the wrapper checking its two numbers.
APP_EXEC = [APP_EXEC_COMMAND]
APPS_JOURNAL = [APPS_JOURNAL_COMMAND]
# Stops every app on the server, then starts them under the unit's current file: an
# operator's command (deploy restart drains the server at the LB first), not deploy's.
APPS_RESTART = ["systemctl", "restart", conventions.APPS_UNIT]


APPS_UNIT_FILE = f"/etc/systemd/system/{conventions.APPS_UNIT}.service"

# needrestart runs restart.d/<unit> instead of restarting the unit.
NEEDRESTART_APPS_RELOAD = f"/etc/needrestart/restart.d/{conventions.APPS_UNIT}.service"


def files(settings: Settings) -> list[ConfigFile]:
    return [
        NGINX_MAIN_FILE,
        NGINX_LOGROTATE_FILE,
        ConfigFile("app_server/site.conf", NGINX_SITE),
        ConfigFile("app_server/ecosystem.config.js", conventions.ECOSYSTEM_FILE),
        ConfigFile("app_server/platform-apps.service", APPS_UNIT_FILE),
        ConfigFile("app_server/logrotate.conf", "/etc/logrotate.d/platform-pm2"),
        ConfigFile("app_server/sudoers", SUDOERS_FILE, mode="0440"),
        ConfigFile("app_server/needrestart-apps.sh", NEEDRESTART_APPS_RELOAD, mode="0755"),
    ]


def pushes(settings: Settings) -> dict[str, Push]:
    return {
        # New datastore addresses or passwords, appEnv, appSecrets: the apps re-read .env as
        # they restart. Their processes must start with it before they reload; a server that
        # served must serve with it, or gets the old back.
        "env": Push(
            files={".env": Target(conventions.APP_ENV_FILE, mode="0640", owner=f"root:{conventions.APP_USER}")},
            check=[[APPS_START_CHECK_COMMAND]],
            then=[["sh", "-c", f"! systemctl is-active --quiet {conventions.APPS_UNIT} || systemctl reload {conventions.APPS_UNIT}"]],
            health=HEALTH_URL,
        ),
        "example-app": Push(
            files={"example-app.tar.gz.b64": Target(conventions.EXAMPLE_APP_ARCHIVE)},
            check=[["sh", "-c", f"base64 -d {conventions.EXAMPLE_APP_ARCHIVE} | tar -tz >/dev/null"]],
            then=[[INSTALL_EXAMPLE_APP]],
        ),
    }


def after_tls(settings: Settings) -> list[list[str]]:
    return [NGINX_CHECK, NGINX_RELOAD]


def backup_paths(settings: Settings) -> list[str]:
    """An app server's configuration, and the apps' environment and pm2 file. The releases
    are not here: each deploy archives its own (deploy/archive.py)."""
    return [conventions.PLATFORM_ETC, "/etc/nginx", "/etc/systemd/system", "/etc/sudoers.d",
            conventions.APP_ENV_FILE, conventions.ECOSYSTEM_FILE]


def after_backup_settings(settings: Settings) -> list[list[str]]:
    return []


def app_env(datastore_address: str, credentials: dict[str, str], settings: Settings,
            app_secrets: dict[str, str] | None = None) -> str:
    """The apps' environment: where each enabled engine is and how to log in to it, then
    appEnv and `app_secrets` (appSecrets' values), by name. Each line NAME=value, the value
    as is to the end of the line, as example-app/lib/env.js reads it."""
    app = dict(sorted({**settings.app_env, **(app_secrets or {})}.items()))
    return render("app_server/app.env", datastore=datastore_address, credentials=credentials, settings=settings,
                  app=app)


# What a password reads as in the app's environment kept with a release (the real
# values live in the stack's state and in .env on the servers only).
SECRET_PLACEHOLDER = "<secret: in the stack's state>"


def archived_env(datastore_address: str, settings: Settings) -> str:
    """The apps' environment as archived with a release: every password and appSecrets'
    value left out (cloudinit.run_configuration)."""
    return app_env(datastore_address, {engine: SECRET_PLACEHOLDER for engine in settings.engines}, settings,
                   dict.fromkeys(settings.app_secrets, SECRET_PLACEHOLDER))


def example_app_archive() -> str:
    """The example app's sources, as a release holds them (app_contract.released: no
    node_modules, no tests, no local .env), as a base64 .tar.gz.

    Byte-for-byte the same for the same sources, so the push re-runs only when they change.
    """
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path in sorted(EXAMPLE_APP.rglob("*")):
            relative = path.relative_to(EXAMPLE_APP)
            if not path.is_file() or not app_contract.released(PurePosixPath(relative)):
                continue
            info = tarfile.TarInfo(str(relative))
            info.size = path.stat().st_size
            info.mode = 0o644
            info.mtime = 0
            with path.open("rb") as f:
                archive.addfile(info, f)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as zipped:
        zipped.write(raw.getvalue())
    return base64.b64encode(buffer.getvalue()).decode()


def provisioning_inputs(settings: Settings) -> dict[str, str]:
    """Shell variables of /etc/platform/platform.env that this role's scripts read."""
    return {"NODE_MAJOR": str(settings.node_major)}
