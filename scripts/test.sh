#!/bin/bash
# The test command: installs what the tests need (a no-op when it is there), then runs
# the whole suite. Needs root: the tests start real servers and boot local droplets.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# --durations: the slowest tests, so the time the suite takes has names beside it.
exec venv/bin/python -m pytest -q -ra --durations=25 tests "$@"
