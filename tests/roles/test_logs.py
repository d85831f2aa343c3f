"""Every droplet's logs are rotated: the platform's own, and nginx's also within the day
once one passes its size. logrotate reads the rendered files in role_checks.sandboxed (the
real paths, nothing kept); on the booted stack tests/localcloud/test_lc_logs.py runs the
real timer's service, scripts included.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cloudinit import common
from model import conventions

from role_checks import require_tool, sandboxed

NGINX_LOGS = "/var/log/nginx"
LIMIT = conventions.NGINX_LOG_MAX_MIB * 1024 * 1024   # logrotate's M


def test_logrotate_rotates_every_platform_log(tmp_path, render_role, staging_settings):
    require_tool("logrotate", "logrotate")
    files = render_role(conventions.LOAD_BALANCER, staging_settings)
    config = files[common.LOGROTATE]
    log = conventions.PROVISION_LOG
    result = sandboxed(tmp_path, textwrap.dedent(f"""\
        mkdir -p {conventions.PLATFORM_LOG_DIR}
        echo first-run > {log}; echo other > {conventions.PLATFORM_LOG_DIR}/other.log
        logrotate -d {config} 2>&1 | grep -i error && exit 3
        logrotate -f -s {tmp_path}/state {config} || exit 4
        ls {conventions.PLATFORM_LOG_DIR}; echo "size=$(stat -c %s {log})"; cat {log}.1
    """))
    assert result.returncode == 0, result.stdout + result.stderr
    listing = result.stdout.split()
    assert {"provision.log", "provision.log.1", "other.log", "other.log.1"} <= set(listing)
    assert "size=0" in result.stdout and "first-run" in result.stdout


def test_an_nginx_log_past_its_size_is_rotated_within_the_day_a_smaller_one_is_not(tmp_path, render_role,
                                                                                     staging_settings):
    """Both logs were rotated this hour, so only the size can make one due (logrotate -d:
    its decisions, no scripts run)."""
    require_tool("logrotate", "logrotate")
    for role in (conventions.LOAD_BALANCER, conventions.APP_SERVER):
        config = render_role(role, staging_settings)[common.NGINX_LOGROTATE]
        result = sandboxed(tmp_path / role, textwrap.dedent(f"""\
            mkdir -p {NGINX_LOGS}
            truncate -s {LIMIT + 1} {NGINX_LOGS}/access.log
            truncate -s {LIMIT - 1} {NGINX_LOGS}/error.log
            this_hour=$(date +%Y-%-m-%-d-%-H:0:0)
            printf 'logrotate state -- version 2\\n"%s" %s\\n"%s" %s\\n' \\
                {NGINX_LOGS}/access.log "$this_hour" {NGINX_LOGS}/error.log "$this_hour" > {tmp_path}/{role}.state
            logrotate -d -s {tmp_path}/{role}.state {config}
        """))
        assert result.returncode == 0, result.stdout + result.stderr
        said = result.stdout + result.stderr
        decisions = {part.split()[0]: part for part in said.split("considering log ")[1:]}
        assert "log needs rotating" in decisions[f"{NGINX_LOGS}/access.log"], said
        assert "log does not need rotating" in decisions[f"{NGINX_LOGS}/error.log"], said


def test_the_nginx_logrotate_file_is_the_distributions_with_a_size_limit(render_role, staging_settings):
    shipped = Path("/etc/logrotate.d/nginx")   # nginx-common's, on this host as on a droplet
    if not shipped.exists():
        pytest.fail(f"{shipped} is missing: apt-get install nginx-common")
    ours = render_role(conventions.APP_SERVER, staging_settings)[common.NGINX_LOGROTATE].read_text()

    def lines(text: str) -> list[str]:
        return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]

    maxsize = f"maxsize {conventions.NGINX_LOG_MAX_MIB}M"
    assert maxsize in lines(ours)
    assert [line for line in lines(ours) if line != maxsize] == lines(shipped.read_text())


def test_provisioning_checks_every_staged_logrotate_file_before_installing_one(tmp_path, render_role,
                                                                               staging_settings):
    require_tool("logrotate", "logrotate")
    files = render_role(conventions.APP_SERVER, staging_settings)
    staged = str(files[common.LOGROTATE]).removesuffix(common.LOGROTATE)
    script = textwrap.dedent(f"""\
        useradd --system --no-create-home {conventions.APP_USER}   # as provisioning's first steps do
        source {files[common.LIBRARY]}
        STAGED_FILES={staged}
        check_staged_logrotate_files && echo "== passed"
        printf '/var/log/x.log {{\\n    daily\\n    rotate fourteen\\n}}\\n' > {staged}/etc/logrotate.d/broken
        check_staged_logrotate_files || echo "== refused"
    """)
    result = sandboxed(tmp_path, script)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "== passed" in result.stdout and "== refused" in result.stdout, result.stdout
    assert f"{staged}/etc/logrotate.d/broken: error: {staged}/etc/logrotate.d/broken:3 bad rotation count" \
        in result.stdout, result.stdout
