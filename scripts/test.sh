#!/bin/bash
# The test command: installs what the tests need (a no-op when it is there), then runs
# the whole suite. Needs root: the tests start real servers and boot local droplets.
#   bash scripts/test.sh            every tier, in two lanes at once (below)
#   bash scripts/test.sh ARGS...    one pytest run with ARGS (e.g. `-m fast`, a file)
set -Eeuo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh

# --durations: the slowest tests, so the time the suite takes has names beside it.
pytest=(venv/bin/python -m pytest -ra --durations=20)
if [ $# -gt 0 ]; then
    exec "${pytest[@]}" -q "$@"
fi

# Two lanes: the localcloud tier spends most of its time waiting on droplets, and the
# other tiers' real engines and renderers use the machine meanwhile. Each lane runs its
# tests in order; the lanes share nothing (the sandbox tier works in private namespaces,
# the droplets have their own). Each line says its lane; the localcloud lane's tests take
# minutes each, so it names each test as it ends (-v).
lane() {
    local name=$1
    shift
    "${pytest[@]}" "$@" tests 2>&1 | sed -u "s/^/[$name] /"
}
set +e
lane localcloud -m localcloud -v &
droplets=$!
lane host -q -m "not localcloud"
host=$?
wait "$droplets"
localcloud=$?
echo "lanes: host (fast and sandbox tiers) exit $host, localcloud exit $localcloud"
[ "$host" -eq 0 ] && [ "$localcloud" -eq 0 ]
