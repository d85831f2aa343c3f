"""The program's graph under the SDK's mock engine, built once per stack for the session.

`mockcloud.deploy` runs `__main__.build` with the real Pulumi.<stack>.yaml settings;
the mock providers hand out real addresses, keys, certificates and passwords, so the
tests check what a real `pulumi up` would register.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import mockcloud  # noqa: E402

STACKS = ("staging", "production")


@pytest.fixture(scope="session")
def staging_deployment() -> mockcloud.Deployment:
    return mockcloud.deploy(mockcloud.stack_settings("staging"))


@pytest.fixture(scope="session")
def production_deployment() -> mockcloud.Deployment:
    return mockcloud.deploy(mockcloud.stack_settings("production"))


@pytest.fixture(scope="session", params=STACKS)
def deployment(request, staging_deployment, production_deployment) -> mockcloud.Deployment:
    """Each stack's deployment in turn."""
    return {"staging": staging_deployment, "production": production_deployment}[request.param]


# --- the test tiers (markers registered in pytest.ini) --------------------------------

TIERS = ("fast", "sandbox", "localcloud")
TESTS = Path(__file__).resolve().parent
# Folders whose tests run real programs and engines on this machine (root, Debian packages).
SANDBOX_FOLDERS = ("roles", "backups")
# Every fixture that boots or tears down droplets asks for this one: a test that uses it
# is in the local-cloud tier, wherever it is.
DROPLET_FIXTURES = ("local_cloud_to_ourselves",)


def tier_of(item) -> str:
    """A test's tier: its own or its module's tier marker (for the odd test whose tier is
    not its folder's), else `localcloud` if it uses a droplet fixture, else `sandbox` in
    the sandbox folders, else `fast`. A test in two tiers is a collection error."""
    marked = {m.name for m in item.iter_markers() if m.name in TIERS}
    boots = [name for name in DROPLET_FIXTURES if name in getattr(item, "fixturenames", ())]
    if len(marked) > 1 or (boots and marked - {"localcloud"}):
        raise pytest.UsageError(f"{item.nodeid} is in more than one tier: marked {sorted(marked)}"
                                + (f", uses {boots} (localcloud)" if boots else ""))
    if marked:
        return marked.pop()
    if boots:
        return "localcloud"
    folder = item.path.relative_to(TESTS).parts[0] if item.path.is_relative_to(TESTS) else None
    return "sandbox" if folder in SANDBOX_FOLDERS else "fast"


# --- the staging stack on the local cloud, booted once per session ------------------

LOCAL_STACK = "staging"


def pytest_collection_modifyitems(session, config, items):
    """Every test gets its tier's marker (tier_of), then tests on the shared local stack
    run last: the local cloud's low-layer tests remove every droplet (global teardown) and
    must be done before the stack comes up. Among them, a module with
    RUNS_LAST_ON_THE_STACK (it replaces droplets) goes last."""
    for item in items:
        tier = tier_of(item)
        if item.get_closest_marker(tier) is None:
            item.add_marker(tier)
    items.sort(key=lambda item: ("local_stack" in getattr(item, "fixturenames", ()),
                                 getattr(item.module, "RUNS_LAST_ON_THE_STACK", False)))


def first_boot_quirks():
    """A fresh stack boots slower than the cloud's worst case, so the session's first `up`
    proves the program copes (tests/localcloud/test_engine_order.py): the LB, the jump host
    of every other push, answers SSH 30 s late and then refuses logins (/run/nologin) until
    a minute into its boot."""
    from localcloud.droplet import BootQuirks
    return {"lb": BootQuirks(sshd_late=30, logins_refused=60)}


class LocalStack:
    """The booted stack: its plan, the last `up`, and ways to reach its droplets."""

    def __init__(self, plan, result):
        self.plan, self.result = plan, result
        self.first_boot = None   # the session's first `up`, when it booted the droplets with first_boot_quirks

    @property
    def domain(self) -> str:
        return self.plan.domain

    @property
    def address(self) -> str:
        return self.plan.lb.reserved_ips[0]

    def name(self, key: str) -> str:
        return self.plan.droplet(key).name

    def app_servers(self) -> list[str]:
        from model import conventions
        return sorted(d.name for d in self.plan.with_tag(conventions.APP_SERVER))

    @property
    def datastore(self):
        from model import conventions
        (store,) = self.plan.with_tag(conventions.DATASTORE)
        return store

    def run(self, key: str, argv: list[str], timeout: float = 120, check: bool = False, input=None):
        """A command as root on a droplet (key or name)."""
        from localcloud import droplet
        return droplet.exec(self.name(key), argv, check=check, timeout=timeout, input=input)

    def internet(self, argv: list[str], timeout: float = 120):
        """A command from the internet client."""
        from localcloud import cloud, shell
        return shell.run(cloud.internet_client(argv), check=False, timeout=timeout)

    def curl_argv(self, path: str, *extra: str) -> list[str]:
        """curl to the domain through the LB, verifying against the ACME server's root."""
        return ["curl", "--silent", "--show-error", "--max-time", "15", "--cacert", self.cafile(),
                "--resolve", f"{self.domain}:443:{self.address}", *extra, f"https://{self.domain}{path}"]

    def cafile(self) -> str:
        """The ACME server's root, as the internet client's browsers would trust Let's Encrypt's."""
        from localcloud import acme
        return str(acme.root_file())

    def stream(self, paths: str | list[str], rate: float = 20, seconds: float | None = 20):
        """Start a steady stream of requests through the LB (localcloud.traffic: GETs, and
        "POST /api/notes" posts); .result() it (seconds None: it runs until then)."""
        from localcloud import traffic
        return traffic.start(self.domain, self.address, self.cafile(), paths, rate, seconds)

    def https(self, path: str, *extra: str):
        return self.internet(self.curl_argv(path, *extra))

    def boot_ids(self) -> dict[str, tuple[str, int]]:
        """Each running droplet's kernel-independent identity: systemd's boot id and nspawn's init PID."""
        from localcloud import droplet
        return {d.name: (self.run(d.name, ["cat", "/proc/sys/kernel/random/boot_id"]).stdout.strip(),
                         droplet.container_init_pid(d.name))
                for d in self.plan.droplets if droplet.is_running(d.name)}

    def wait_healthy(self, timeout: float = 180) -> dict:
        """Until /healthz through the LB is 200 and every app server's full answer is too
        (every enabled engine ok): the first server's full answer then. The public answer
        is kept a few seconds, so it alone may still say ok for apps just restarted."""
        import json
        from localcloud import shell
        from model import conventions
        url = f"https://127.0.0.1:{conventions.APP_LOCAL_TLS_PORT}{conventions.HEALTH_PATH}"
        last = None

        def healthy() -> dict | None:
            nonlocal last
            public = self.https("/healthz", "-w", "\n%{http_code}").stdout.rpartition("\n")[2]
            answers = {server: self.run(server, ["curl", "--silent", "--insecure", "--max-time", "15",
                                                 "-w", "\n%{http_code}", url]).stdout.rpartition("\n")
                       for server in self.app_servers()}
            last = (public, {server: (code, body[-300:]) for server, (body, _, code) in answers.items()})
            if public == "200" and all(code == "200" for _, _, code in answers.values()):
                return json.loads(answers[self.app_servers()[0]][0])
            return None
        return shell.wait_until(healthy, timeout, lambda: f"not healthy: {last}", every=2)

    def full_health(self, server: str) -> dict:
        """An app server's full /healthz, asked on the server itself (its loopback listener)."""
        import json
        from model import conventions
        url = f"https://127.0.0.1:{conventions.APP_LOCAL_TLS_PORT}{conventions.HEALTH_PATH}"
        proc = self.run(server, ["curl", "--silent", "--show-error", "--insecure", "--max-time", "15", url], check=True)
        return json.loads(proc.stdout)

    def up(self, plan, **options):
        """Apply a (changed) plan, as `pulumi up` does; the handle follows it."""
        from localcloud import stack
        result = stack.up(plan, **options)
        assert stack.healthy(result), "up did not finish cleanly (see the [localcloud] lines)"
        self.plan, self.result = plan, result
        return result

    def up_under_load(self, plan, **options):
        """`up` of a (changed) plan with a stream of requests through the LB, 20 a second,
        GETs of the API and POSTs of notes in turn (the LB retries a GET a server fails on
        another, never a POST), from its start to its end: its result, checked by the
        caller, and what the requests saw. The handle follows a healthy one."""
        from localcloud import stack, traffic
        load = self.stream(traffic.WRITES_AND_READS, seconds=None)
        try:
            result = stack.up(plan, **options)
        finally:
            seen = traffic.result(load)
        if stack.healthy(result):
            self.plan, self.result = plan, result
        return result, seen


@pytest.fixture(scope="session")
def local_cloud_to_ourselves():
    """This run has the local cloud to itself until it ends: every fixture that boots or
    tears down droplets asks for it first. Another run (of any checkout) holding it fails
    this one at once: the droplets that run has booted are not a killed run's leftovers.
    Its value: whether the local stack was up when the run began (tenancy.a_test_run: then
    it is used and left up; otherwise the run starts from nothing and leaves nothing)."""
    import os
    from localcloud import tenancy
    if os.geteuid() != 0:
        pytest.fail("the local cloud needs root (and the Debian packages in localcloud.config.HOST_PACKAGES)")
    try:
        with tenancy.a_test_run(f"pytest in {Path.cwd()}", LOCAL_STACK) as stack_was_up:
            yield stack_was_up
    except tenancy.InUse as busy:
        pytest.fail(f"{busy}: wait for it to end, or stop it and run `python -m localcloud teardown`")


@pytest.fixture(scope="session")
def local_stack(local_cloud_to_ourselves):
    """The staging stack booted ONCE per session from the program's plan (droplets already
    up with the same user_data are reused by `up`); the session's lock removes it at the
    end, with everything else of the local cloud, unless it was up when the session began."""
    from localcloud import stack
    handle = LocalStack(None, None)
    plan = stack.plan(LOCAL_STACK)
    if local_cloud_to_ourselves:
        handle.up(plan)
    else:
        handle.first_boot = handle.up(plan, quirks=first_boot_quirks())
    return handle
