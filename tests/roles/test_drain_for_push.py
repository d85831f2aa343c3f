"""platform-drain around an app server's bundle push (`for-push`, `after-push`) and by
hand (`on`): the rendered LB programs at their real paths (the droplet lock and
platform-write too) in role_checks.sandboxed, over an upstreams file; nginx and systemctl
are stand-ins that record their calls. The local stack runs the same around every bundle push
(tests/localcloud/test_lc_upgrade.py)."""

from __future__ import annotations

import shlex
from pathlib import Path

import cloudinit
from cloudinit import load_balancer
from model import conventions as c

from render_helpers_lb_app import settings
from role_checks import sandboxed

A1, A2, GONE = "10.110.16.5", "10.110.16.6", "10.110.16.9"
# Calls of the stand-ins, one per line: `nginx -t -q`, `systemctl reload nginx`.
STAND_IN = '#!/bin/sh\necho "$(basename "$0") $*" >> "$T/calls"\n'


def drain_run(tmp_path: Path, pool: list[str], steps: list[str],
              old_worker: bool = False) -> list[tuple[str, str, str]]:
    """Runs `platform-drain STEP` for each step over a pool; returns per step what it
    printed, the stand-ins' calls, and the pool's lines marked down afterwards. With
    `old_worker`, nginx's master has one worker, which exits once the drain has said that
    it waits for it (no fixed time: on a busy machine the drain may take seconds to get
    there)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    context = cloudinit.template_context(c.LOAD_BALANCER, settings())
    lines = [f"export T={shlex.quote(str(tmp_path))} PATH=/usr/local/bin:$PATH"]
    files = {p.path: cloudinit.render(p.template, **context) for p in cloudinit.programs(c.LOAD_BALANCER)}
    files[c.LB_UPSTREAMS_FILE] = load_balancer.upstreams(pool)
    for i, (path, text) in enumerate(files.items()):
        (tmp_path / f"file{i}").write_text(text)
        lines.append(f'install -D -m 755 "$T/file{i}" {path}')
    for tool in ("nginx", "systemctl"):
        (tmp_path / tool).write_text(STAND_IN)
        lines.append(f'install -D -m 755 "$T/{tool}" /usr/local/bin/{tool}')
    # nginx's master, a process of the sandbox's own, without workers (none to wait for)
    # or with one still answering a request until the drain says it waits for it.
    (tmp_path / "old-worker").write_text('until grep -qs "waiting up to" "$T/said"; do sleep 0.1; done\n')
    master = """bash -c 'sh "$T/old-worker"; exec sleep 600'""" if old_worker else "sleep 600"
    lines += [f"mkdir -p {c.PLATFORM_STATE}", "mount -t tmpfs tmpfs /run && mkdir /run/lock",
              f"{master} & echo $! > /run/nginx.pid"]
    if old_worker:
        lines.append("until pgrep -P $(cat /run/nginx.pid) >/dev/null; do sleep 0.05; done")
    for n, step in enumerate(steps):
        lines += [f': > "$T/calls"; echo "== step {n}"; {c.DRAIN_COMMAND} {step} > "$T/said" 2>&1; rc=$?',
                  'cat "$T/said"; echo "== exit $rc"',
                  'sed "s/^/== call /" "$T/calls"',
                  f'grep " down;" {c.LB_UPSTREAMS_FILE} | sed "s/^/== down /" || true']
    result = sandboxed(tmp_path, "\n".join(lines))
    assert result.returncode == 0 and "== step" in result.stdout, result.stdout + result.stderr
    found = []
    for part in result.stdout.split("== step ")[1:]:
        said = "\n".join(line for line in part.splitlines()[1:] if not line.startswith("== "))
        calls = [line.removeprefix("== call ") for line in part.splitlines() if line.startswith("== call ")]
        down = [line for line in part.splitlines() if line.startswith("== down ")]
        exit_line = next(line for line in part.splitlines() if line.startswith("== exit "))
        found.append((exit_line.removeprefix("== exit ") + ": " + said, " | ".join(calls), " ".join(down)))
    return found


def test_a_push_takes_its_server_out_of_the_pool_and_puts_it_back(tmp_path):
    drained, back = drain_run(tmp_path, [A1, A2], [f"for-push {A1}", f"after-push {A1}"])
    assert drained[0].startswith(f"0: {A1}: drained in"), drained
    assert drained[1] == "nginx -t -q | systemctl reload nginx" and f"{A1}:{c.APP_TLS_PORT}" in drained[2], drained
    assert back == (f"0: {A1}: in the pool", "nginx -t -q | systemctl reload nginx", ""), back


def test_a_drain_that_waits_for_the_workers_from_before_says_so(tmp_path):
    (drained,) = drain_run(tmp_path, [A1, A2], [f"for-push {A1}"], old_worker=True)
    said = drained[0].splitlines()
    assert said[0] == (f"0: {A1}: marked down; waiting up to {c.DRAIN_WAIT_SECONDS}s for the LB's workers from "
                       "before the reload, which may still be answering its requests"), said
    assert said[1].startswith(f"{A1}: drained in "), said   # once the worker has gone: no more waiting


def test_nothing_to_drain_is_no_failure_and_changes_nothing(tmp_path):
    """Not in the pool yet (a new stack, a new member), or the only server the LB sends to."""
    alone = drain_run(tmp_path / "alone", [A1], [f"for-push {A1}", f"after-push {A1}"])
    new = drain_run(tmp_path / "new", [A1, A2], [f"for-push {GONE}", f"after-push {GONE}"])
    assert alone[0] == (f"0: {A1}: not drained for its push: the only app server the LB sends requests to", "", "")
    assert new[0] == (f"0: {GONE}: not in the LB's pool yet: nothing to drain for its push", "", "")
    assert alone[1] == (f"0: {A1}: not drained for its push: left as it is", "", ""), alone
    assert new[1] == (f"0: {GONE}: not drained for its push: left as it is", "", ""), new


def test_a_server_drained_by_hand_stays_out_after_its_push(tmp_path):
    by_hand, before, after = drain_run(tmp_path, [A1, A2], [f"on {A1}", f"for-push {A1}", f"after-push {A1}"])
    assert by_hand[0].startswith(f"0: {A1}: drained in"), by_hand
    assert before == (f"0: {A1}: already out of the LB's pool", "", by_hand[2]), before
    assert after == (f"0: {A1}: not drained for its push: left as it is", "", by_hand[2]), after


def test_draining_a_server_already_out_reloads_nothing(tmp_path):
    """`deploy restart` drains each server it restarts, one drained by hand too."""
    first, again = drain_run(tmp_path, [A1, A2], [f"on {A1}", f"on {A1}"])
    assert again == (f"0: {A1}: already out of the LB's pool", "", first[2]), again


def test_a_push_that_failed_after_its_drain_is_put_back_by_the_next_one(tmp_path):
    """The engine runs no step after a failed bundle push: the server stays out until the
    next `up` runs the push again, whose drain finds it out and whose undrain puts it back."""
    first, again, back = drain_run(tmp_path, [A1, A2], [f"for-push {A1}", f"for-push {A1}", f"after-push {A1}"])
    assert again == (f"0: {A1}: already out of the LB's pool", "", first[2]), again
    assert back == (f"0: {A1}: in the pool", "nginx -t -q | systemctl reload nginx", ""), back
