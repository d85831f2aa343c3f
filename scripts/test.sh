#!/bin/bash
# The test command: installs what the tests need (a no-op when it is there), then runs
# the whole suite. Needs root: the tests start real servers and boot local droplets.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# Two lanes (tests/conftest.py, SERIAL_TIERS): the localcloud tier in one worker, the
# sandbox tier in the other, each in its order; the fast tests fill whichever is free.
# --durations: the slowest tests, so the time the suite takes has names beside it.
exec venv/bin/python -m pytest -q -ra --durations=25 -n 2 --dist loadgroup tests "$@"
