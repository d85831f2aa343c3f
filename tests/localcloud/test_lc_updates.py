"""Updates on the booted stack's droplets: unattended-upgrades allows the image's security
archive and the vendors' repositories; needrestart reads the platform's configuration
and would restart, not ask; the app servers reload their apps through needrestart's
restart.d, gracefully.

Neither vendor repository is on the local stack (localcloud/plan.py: Debian's own nodejs,
no MongoDB): their patterns are checked against their Release files' fields by
tests/test_images.py and tests/roles/test_common.py.
"""

from __future__ import annotations

import re

import pytest

from cloudinit import app_server, common
from model import conventions

pytestmark = pytest.mark.localcloud

NODESOURCE_PATTERN = "origin=. nodistro,label=. nodistro,codename=nodistro,site=deb.nodesource.com"
MONGODB_PATTERN = "origin=mongodb,label=mongodb,codename={codename}/mongodb-org,site=repo.mongodb.org"


def droplets(local_stack) -> list[str]:
    return sorted(d.name for d in local_stack.plan.droplets)


def test_unattended_upgrades_allows_the_security_archive_and_the_vendors_repositories(local_stack):
    for name in droplets(local_stack):
        # --dry-run: nothing is installed; -d prints the patterns it expanded.
        result = local_stack.run(name, ["unattended-upgrade", "--dry-run", "-d"], timeout=600)
        assert result.returncode == 0, (name, result.stdout[-2000:] + result.stderr[-2000:])
        allowed = re.search(r"^Allowed origins are: (.*)$", result.stdout + result.stderr, re.M)
        assert allowed, (name, result.stdout[-2000:])
        image = conventions.IMAGES[conventions.DEFAULT_IMAGE]
        security = image.security_origin.replace("${distro_codename}", image.codename)
        assert security in allowed.group(1), name
        assert NODESOURCE_PATTERN in allowed.group(1), name
        assert MONGODB_PATTERN.format(codename=image.codename) in allowed.group(1), name


def test_needrestart_reads_the_platforms_configuration(local_stack):
    for name in droplets(local_stack):
        conf = local_stack.run(name, ["cat", common.NEEDRESTART_CONF], check=True).stdout
        assert "$nrconf{restart} = 'a';" in conf, name
        # -b: batch mode lists what it would restart, restarting nothing; a conf.d file that
        # does not compile fails it.
        result = local_stack.run(name, ["needrestart", "-b"], timeout=300)
        assert result.returncode == 0 and "NEEDRESTART-VER:" in result.stdout, (name, result.stderr[-2000:])


def test_needrestart_reloads_the_apps_instead_of_restarting_them(local_stack):
    for name in local_stack.app_servers():
        mode = local_stack.run(name, ["stat", "-c", "%a %U", app_server.NEEDRESTART_APPS_RELOAD], check=True)
        assert mode.stdout.split() == ["755", "root"], name
        before = local_stack.run(name, ["systemctl", "show", "-p", "MainPID", f"{conventions.APPS_UNIT}.service"],
                                 check=True).stdout
        result = local_stack.run(name, [app_server.NEEDRESTART_APPS_RELOAD], timeout=120)
        assert result.returncode == 0, (name, result.stderr)
        after = local_stack.run(name, ["systemctl", "show", "-p", "MainPID", f"{conventions.APPS_UNIT}.service"],
                                check=True).stdout
        assert before == after, f"{name}: the apps' unit restarted instead of reloading"
    assert local_stack.wait_healthy()
