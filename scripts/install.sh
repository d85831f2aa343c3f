#!/bin/bash
# Installs everything the program, its tests and the local cloud need on a fresh
# Debian 12 machine (as root). Safe to run again.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

apt_packages() {
    grep -v -e '^#' -e '^$' .ci/apt-packages.txt
    # The local cloud keeps its own list, next to the code that needs it.
    python3 -c 'from localcloud.config import HOST_PACKAGES; print("\n".join(HOST_PACKAGES))'
}

step "Debian packages"
missing=()
for pkg in $(apt_packages | sort -u); do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -q
    # These are tools for the tests: their services must not start on the host, where
    # the tests start them on their own configs and ports.
    policy=/usr/sbin/policy-rc.d
    created_policy=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    [ -z "$created_policy" ] || rm -f "$policy"
fi

step "Python environment (venv/)"
[ -x venv/bin/python ] || python3 -m venv venv
# The workflow's versions and files (requirements.lock: requirements.txt resolved, by hash),
# so the tests here run on what CI and `pulumi preview` run on.
venv/bin/pip install -q --require-hashes -r requirements.lock

step "Node.js tools"
# The workflow linter the tests run, pinned in tests/tools/package.json.
npm install --prefix tests/tools --no-package-lock --no-audit --no-fund --loglevel=error
if [ -f .ci/npm-packages.txt ]; then
    npm_missing=()
    while read -r pkg; do
        case "$pkg" in ''|'#'*) continue ;; esac
        npm ls -g --depth=0 "$pkg" >/dev/null 2>&1 || npm_missing+=("$pkg")
    done < .ci/npm-packages.txt
    [ "${#npm_missing[@]}" -eq 0 ] || npm install -g --no-fund --no-audit "${npm_missing[@]}"
fi
