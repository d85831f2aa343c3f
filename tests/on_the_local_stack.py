"""What the tests that run the deploy tool on the session's local stack share (tests/deploy's
*_localcloud modules, tests/localcloud/test_lc_upgrade): the CLI as an operator runs it,
the app servers' releases as the droplets hold them, and a deploy under a steady stream of
requests. The deploy tests' fixtures, `plan` and `operator_key`, are in deploy/conftest.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from model import conventions

ROOT = Path(__file__).resolve().parents[1]
STACK = "staging"
HEALTH_TIMEOUT = "25"
# What an app without the example app's notes answers: its page and the API's GET.
READS = ("/", "/api/hello")


def deploy_cli(verb: str, *args: str, key: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`python -m deploy VERB STACK --local -i KEY ARGS...` (exec's command after `--` in ARGS)."""
    return subprocess.run([sys.executable, "-m", "deploy", verb, STACK, "--local", "-i", key, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def app_servers(plan):
    """The app pool's droplets (their `name` for the droplet, `key` for the deploy's app-N),
    in the order of LocalStack.app_servers()."""
    return sorted(plan.with_tag(conventions.APP_SERVER), key=lambda d: d.name)


def on(name: str, script: str) -> str:
    from localcloud import droplet
    return droplet.bash_output(name, script)


def current_of(name: str) -> str:
    return os.path.basename(on(name, f"readlink {conventions.CURRENT_RELEASE_LINK}"))


def running_releases(name: str) -> set[str]:
    """The release every pm2 worker of the apps runs from (their working directories)."""
    dirs = on(name, "for p in $(pgrep -u app -f 'node '); do readlink /proc/$p/cwd; done")
    return {os.path.basename(d) for d in dirs.splitlines() if d.startswith(conventions.RELEASES_DIR)}


def under_load(local_stack, *args: str, key: str, paths: tuple[str, ...] | None = None
               ) -> tuple[subprocess.CompletedProcess, dict]:
    """`deploy_cli(*args)` with requests from the internet client through the LB
    (localcloud.traffic), from 2 s before it to 2 s after: `paths` in turn, by default the
    example app's page, the API's GET and a note POSTed (a POST the LB does not send again,
    so one a reload cuts shows). What it printed, and what the requests saw (printed too,
    with how long it took)."""
    from localcloud import traffic
    load = local_stack.stream(list(paths or ("/", *traffic.WRITES_AND_READS)), seconds=None)
    time.sleep(2)
    start = time.monotonic()
    try:
        result = deploy_cli(*args, key=key)
    finally:
        took = time.monotonic() - start
        time.sleep(2)
        seen = traffic.result(load)
    print(result.stdout, f"\n[{args[0]} took {took:.1f}s] load: {seen}")
    return result, seen


def assert_none_lost(plan, seen: dict) -> None:
    """The example app's load: steady, every request answered, and every app server seen
    (its API names the server that answered)."""
    assert seen["requests"] > 100 and seen["failed"] == 0, seen
    assert set(seen["hosts"]) >= {d.name for d in app_servers(plan)}, seen


def release_id_from(output: str) -> str:
    match = re.search(r"^built (\S+)", output, re.M)
    assert match, output
    return match.group(1)
