"""The app contract's health path on a real nginx: the app server's site asks the `/api/`
process for the path the apps' unit wrote (platform-app-health), and for /healthz before
any release has declared one. The script itself runs on the local stack
(tests/deploy/test_second_app_localcloud.py deploys an app that declares one)."""

from __future__ import annotations

from cloudinit import app_server
from model import conventions as c

from render_helpers_lb_app import app_server_nginx, app_site_tree, run


def loopback_health(tmp_path, snippet: str | None) -> str:
    """The loopback listener's answer to the health check, with the API stand-in answering
    200 at /ready only."""
    stack = "staging"
    root, ca = app_site_tree(tmp_path, {} if snippet is None else {app_server.HEALTH_SNIPPET: snippet})
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "ready").write_text("ready\n")
    with app_server_nginx(root, tmp_path / "api", (c.APP_LOCAL_TLS_PORT,)):
        result = run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", "--cacert",
                      str(ca.cert), "--resolve", f"{stack}-app-1:{c.APP_LOCAL_TLS_PORT}:127.0.0.1",
                      f"https://{stack}-app-1:{c.APP_LOCAL_TLS_PORT}{c.HEALTH_PATH}"])
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_health_check_asks_the_path_the_release_declared(tmp_path):
    assert loopback_health(tmp_path, "set $platform_health_path /ready;\n") == "200"


def test_before_a_release_declares_one_the_health_check_asks_healthz(tmp_path):
    assert loopback_health(tmp_path, None) == "404"   # the stand-in has no /healthz
