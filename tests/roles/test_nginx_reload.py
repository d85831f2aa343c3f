"""platform-nginx-reload, rendered, over a real nginx in role_checks.sandboxed (its own
network and processes): the request sent right after it returns meets the new files, and a
reload nginx does not take fails. systemctl is a stand-in that signals nginx's master the
way a busy droplet may, a second later: `systemctl reload nginx` returns before the master
has read anything (what failed the LB's first certificate for a name just added)."""

from __future__ import annotations

import shlex
from pathlib import Path

import cloudinit
from model import conventions as c

from render_helpers_lb_app import settings
from role_checks import sandboxed

NGINX_CONF = """pid /run/nginx.pid;
error_log {t}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {t}/tmp; proxy_temp_path {t}/tmp; fastcgi_temp_path {t}/tmp;
    uwsgi_temp_path {t}/tmp; scgi_temp_path {t}/tmp;
    server {{ listen 127.0.0.1:8080; return 200 "old\\n"; }}
}}
"""
LATE_RELOAD = '#!/bin/sh\n[ "$*" = "reload nginx" ] || exit 1\n(sleep 1; kill -HUP "$(cat /run/nginx.pid)") >/dev/null 2>&1 &\n'
NO_RELOAD = '#!/bin/sh\n[ "$*" = "reload nginx" ]\n'


def reload_then_get(tmp_path: Path, systemctl: str, *args: str) -> tuple[str, str]:
    """nginx answering "old", its file changed to answer "new", then platform-nginx-reload
    ARGS and at once a GET: (the program's exit code and what it printed, the answer)."""
    (tmp_path / "tmp").mkdir(parents=True)
    (tmp_path / "nginx.conf").write_text(NGINX_CONF.format(t=tmp_path))
    (tmp_path / "program").write_text(cloudinit.rendered_files(c.LOAD_BALANCER, settings())[c.NGINX_RELOAD_COMMAND])
    (tmp_path / "systemctl").write_text(systemctl)
    t = shlex.quote(str(tmp_path))
    get = "curl -s --max-time 5 http://127.0.0.1:8080/"
    script = f"""
        mount -t tmpfs tmpfs /run && mkdir /run/lock && ip link set lo up
        install -D -m 755 {t}/program {c.NGINX_RELOAD_COMMAND}
        install -D -m 755 {t}/systemctl /usr/local/bin/systemctl
        export PATH=/usr/local/bin:$PATH
        nginx -c {t}/nginx.conf -p {t}/ || exit 1
        until {get} >/dev/null; do sleep 0.05; done
        sed -i 's/"old/"new/' {t}/nginx.conf
        {c.NGINX_RELOAD_COMMAND} {' '.join(args)} 2>&1; echo "== exit $?"
        {get}
    """
    result = sandboxed(tmp_path, script, network=True)
    said, _, answer = result.stdout.partition("== exit ")
    assert answer, result.stdout + result.stderr
    code, _, answer = answer.partition("\n")
    return f"{code}: {said.strip()}", answer.strip()


def test_the_request_after_a_reload_meets_the_new_files(tmp_path):
    assert reload_then_get(tmp_path, LATE_RELOAD) == ("0: ", "new")


def test_a_reload_nginx_does_not_take_fails_naming_the_workers_still_listening(tmp_path):
    said, answer = reload_then_get(tmp_path, NO_RELOAD, "1")
    assert said.startswith("1: platform-nginx-reload: nginx has not taken its new files after 1s: workers "), said
    assert said.endswith(f" from before the reload still listen (see {c.NGINX_ERROR_LOG})"), said
    assert answer == "old"
