#!/bin/bash
# Managed by platform-provision. needrestart runs this instead of `systemctl restart
# {{ c.APPS_UNIT }}` when the apps run a replaced node or library (a Node.js security
# update): pm2's graceful reload (the unit's ExecReload) starts each worker anew on the new
# files and stops the old one once the new one is ready, so no request fails. pm2's own
# daemon, which serves no request, keeps the old node until the unit next restarts.
set -eu
systemctl is-active --quiet {{ c.APPS_UNIT }}.service || exit 0
exec systemctl reload {{ c.APPS_UNIT }}.service
