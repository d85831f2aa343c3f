#!/bin/bash
# The main job on this machine: install what is needed, boot the staging stack on the
# local cloud from the program's own plan, and check it end to end. Root only.
#   scripts/local-cloud.sh            up + check
#   venv/bin/python -m localcloud {status|shell lb|down}   afterwards
set -Eeuo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
venv/bin/python -m localcloud up "$@"
venv/bin/python -m localcloud check "$@"
