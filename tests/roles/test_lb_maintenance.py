"""Maintenance mode on the LB's real nginx: platform-maintenance, run where nginx runs,
turns every answer but the health check into the maintenance page, and back."""

from __future__ import annotations

import subprocess

import pytest

from model import conventions as c

from render_helpers_lb_app import require
from lb_sandbox import APP_IPS, Backend, LoadBalancerUnderTest, app_server_cert, lb_cert, lb_files

pytestmark = pytest.mark.sandbox   # nginx, root for its mount namespace, host ports 80 and 443


def maintenance(lb: LoadBalancerUnderTest, tmp_path, *args: str) -> subprocess.CompletedProcess:
    """The LB's own platform-maintenance, in nginx's mount namespace (its /var), under the
    strictest umask a caller may have: nginx's workers must still see the flag."""
    script = tmp_path / "platform-maintenance"
    script.write_text(lb_files()[c.MAINTENANCE_COMMAND])
    return subprocess.run([require("nsenter"), "--mount", "--target", str(lb.process.pid),
                           "bash", "-c", 'umask 077 && exec bash "$@"', "-", str(script), *args],
                          capture_output=True, text=True, timeout=30)


def test_maintenance_serves_the_page_with_retry_after_to_all_but_the_health_check(
        tmp_path, ports_free, internal_ca, started):
    (tmp_path / "certs").mkdir()
    started.append(Backend(tmp_path, "app-1", APP_IPS[0], app_server_cert(internal_ca, tmp_path, 1, APP_IPS[0]),
                           client_ca=internal_ca.cert))
    lb = LoadBalancerUnderTest(tmp_path, internal_ca.cert, APP_IPS[:1], identity=lb_cert(internal_ca, tmp_path))
    started.append(lb)
    assert lb.get("/")[0] == 200
    assert maintenance(lb, tmp_path, "status").stdout == "maintenance off\n"

    switched = maintenance(lb, tmp_path, "on", "alice@laptop")
    assert switched.returncode == 0, switched.stderr
    assert switched.stdout.startswith("maintenance on: alice@laptop since 20"), switched.stdout
    for path, method in (("/", "GET"), ("/api/notes", "POST"), ("/anything?x=1", "HEAD")):
        status, headers, body = lb.get(path, method=method)
        assert status == 503, (path, status)
        assert headers["Retry-After"] == str(c.MAINTENANCE_RETRY_AFTER_SECONDS) and headers["Cache-Control"] == "no-store"
        assert method == "HEAD" or "right back" in body
        assert "X-Backend" not in headers, "no app server was asked"
    assert lb.get(c.HEALTH_PATH)[:3:2] == (200, "ok\n"), "the health check still asks the app servers"
    assert maintenance(lb, tmp_path, "status").stdout.startswith("maintenance on: alice@laptop")

    assert maintenance(lb, tmp_path, "off").stdout == "maintenance off\n"
    status, headers, _ = lb.get("/")
    assert status == 200 and headers["X-Backend"] == "app-1"
    assert maintenance(lb, tmp_path, "sideways").returncode == 2
