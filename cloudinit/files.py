"""What a role is made of, and the one template environment that renders it.

The role modules (common/, load_balancer/, app_server/, datastore/) list their parts with
these types; the package's facade composes them into a droplet's bundle. A leaf module, so
the roles and the facade import it and not each other in a circle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from model import conventions

HERE = Path(__file__).parent

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


def render(template: str, **context: Any) -> str:
    return _templates.get_template(template).render(c=conventions, **context)


@dataclass(frozen=True)
class ConfigFile:
    """A template rendered for a droplet: staged by the bundle, installed by provisioning."""

    template: str  # relative to this folder
    path: str  # where the service reads it on the droplet
    mode: str = "0644"
    owner: str = "root:root"


@dataclass(frozen=True)
class Program:
    """A script the bundle writes straight into place (it is what does the installing)."""

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
    and nothing is reloaded. `health`: a URL on the droplet that, if it answered before the
    push, must answer after it; if not, the old files go back and `then` runs again.
    """

    files: dict[str, Target]
    check: list[list[str]] = field(default_factory=list)
    then: list[list[str]] = field(default_factory=list)
    health: str | None = None
