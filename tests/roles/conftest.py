"""Shared fixtures for the role tests: the stacks' settings and rendered role files.

A check whose tool is missing fails (it never skips): a skipped check would read as
a pass. `require_tool` names the Debian package to install.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import cloudinit  # noqa: E402
import mockcloud  # noqa: E402

STACKS = ("staging", "production")


@pytest.fixture(scope="session")
def staging_settings():
    return mockcloud.stack_settings("staging")


@pytest.fixture(scope="session")
def production_settings():
    return mockcloud.stack_settings("production")


@pytest.fixture(scope="session", params=STACKS)
def stack_settings(request):
    """Each stack's settings in turn (the test runs once per stack)."""
    return mockcloud.stack_settings(request.param)


def render_role_into(role: str, settings, root: Path) -> dict[str, Path]:
    """Writes every first-boot file of `role` under `root` at its droplet path.

    Returns {droplet path: file under root}. Modes follow the role's declarations.
    """
    written = {}
    modes = {p.path: p.mode for p in cloudinit.programs(role)}
    modes.update({f.path: f.mode for f in cloudinit.config_files(role, settings)})
    for path, content in cloudinit.rendered_files(role, settings).items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        target.chmod(int(modes[path], 8))
        written[path] = target
    return written


@pytest.fixture
def render_role(tmp_path):
    """render_role(role, settings) -> {droplet path: rendered file in a temp root}."""
    roots = iter(range(1000))

    def render(role: str, settings) -> dict[str, Path]:
        return render_role_into(role, settings, tmp_path / f"{role}-{settings.stack}-{next(roots)}")

    return render


# pm2 for real (tests/roles/pm2_sandbox.py): installed once per session, as provisioning does.

@pytest.fixture(scope="session")
def pm2_bin(tmp_path_factory) -> Path:
    from pm2_sandbox import install_pm2
    return install_pm2(tmp_path_factory.mktemp("pm2"))


@pytest.fixture(scope="session")
def example_app_modules(tmp_path_factory) -> Path:
    from pm2_sandbox import install_example_app_modules
    return install_example_app_modules(tmp_path_factory.mktemp("example-app"))


# The LB for real (tests/roles/lb_sandbox.py).

@pytest.fixture
def ports_free():
    import socket
    from model import conventions as c
    for port in (c.HTTP_PORT, c.HTTPS_PORT):
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} is taken on this host"


@pytest.fixture
def internal_ca(tmp_path):
    from render_helpers_lb_app import make_ca
    return make_ca(tmp_path / "ca", "internal-ca")


@pytest.fixture
def started(tmp_path):
    """What a test starts (a Backend, the LB): stopped at its end, last first."""
    running = []
    yield running
    for thing in reversed(running):
        thing.stop()
