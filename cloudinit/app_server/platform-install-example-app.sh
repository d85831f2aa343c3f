#!/bin/bash
# Makes the example app (pushed by the program) the first release, so a new stack serves
# something real. Does nothing once any release is current: deploys own the app then.
set -euo pipefail

archive={{ c.EXAMPLE_APP_ARCHIVE }}
current={{ c.CURRENT_RELEASE_LINK }}

if [ -L "$current" ]; then
    echo "platform-install-example-app: a release is current; leaving it"
    exit 0
fi
release={{ c.RELEASES_DIR }}/example-$(sha256sum "$archive" | cut -c1-12)
staging="${release}.partial"
as_deploy() { runuser -u {{ c.DEPLOY_USER }} -- "$@"; }

# In deploy's directory, everything is done as deploy: root follows nothing deploy placed.
as_deploy rm -rf "$staging"
as_deploy mkdir "$staging"
base64 -d "$archive" | as_deploy tar -xz -C "$staging"
# Dependencies come from the lockfile only; the npm cache lives in deploy's home.
as_deploy env HOME=/home/{{ c.DEPLOY_USER }} npm ci --omit=dev --no-fund --no-audit --prefix "$staging"
as_deploy rm -rf "$release"
as_deploy mv "$staging" "$release"
as_deploy ln -sfn "$release" "${current}.new"
as_deploy mv -T "${current}.new" "$current"
systemctl start {{ c.APPS_UNIT }}
echo "platform-install-example-app: $(basename "$release") is current"
