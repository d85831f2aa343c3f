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
    "$@" 2>&1 | sed -u "s/^/[$name] /"
}
# The localcloud lane is the longer one, so the host lane yields the CPU to it: it runs in
# a cpu cgroup of low weight, it and the servers its tests start (a nice value would not
# reach those: each daemon's session is weighed on its own). Measured: the stack boots in
# ~140 s beside the host lane's tests this way, ~190 s without. Where the cgroup v1 cpu
# controller is not there (cgroup v2 only), the lanes share the CPU evenly.
host_lane_cgroup=/sys/fs/cgroup/cpu/platform-tests-host-lane
yielding() {
    if [ -f /sys/fs/cgroup/cpu/cpu.shares ] && mkdir -p "$host_lane_cgroup" &&
        echo 128 >"$host_lane_cgroup/cpu.shares"; then
        bash -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' yielding "$host_lane_cgroup" "$@"
    else
        "$@"
    fi
}
set +e
lane localcloud "${pytest[@]}" -v -m localcloud tests &
droplets=$!
lane host yielding "${pytest[@]}" -q -m "not localcloud" tests
host=$?
wait "$droplets"
localcloud=$?
rmdir "$host_lane_cgroup" 2>/dev/null
echo "lanes: host (fast and sandbox tiers) exit $host, localcloud exit $localcloud"
[ "$host" -eq 0 ] && [ "$localcloud" -eq 0 ]
