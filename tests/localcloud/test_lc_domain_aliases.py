"""domainAliases on the booted stack: `www.<domain>` added with `up`, as `pulumi config
set` adds it. The LB's bundle push brings it: the local ACME server (pebble, whose DNS
stand-in answers every name with the LB's address) issues a certificate naming both;
the alias answers 301 to the same path and query at the domain, or serves the app once
redirectAliases is false; no droplet is replaced or rebooted. Then the stack goes back
to its committed settings, and the certificate to the domain alone.
"""

from __future__ import annotations

import pytest

from cloudinit import load_balancer
from localcloud import shell, stack


def served_names(local_stack, name: str) -> set[str]:
    """The DNS names of the certificate the LB shows to a client asking for `name`."""
    shown = (f"openssl s_client -connect {local_stack.address}:443 -servername {name} </dev/null 2>/dev/null"
             " | openssl x509 -noout -ext subjectAltName 2>/dev/null")
    proc = local_stack.internet(["sh", "-c", shown], timeout=60)
    lines = proc.stdout.strip().splitlines()     # "X509v3 Subject Alternative Name:", then the names
    if not lines:
        return set()
    return {part.strip().removeprefix("DNS:") for part in lines[-1].split(",") if part.strip().startswith("DNS:")}


def get(local_stack, name: str, path: str) -> tuple[int, str, str]:
    """GET https://name/path from the internet client, verified against the ACME server's root:
    (status, Location, body); status 0 when the certificate did not verify for `name`."""
    proc = local_stack.internet([
        "curl", "--silent", "--show-error", "--max-time", "15", "--cacert", local_stack.cafile(),
        "--resolve", f"{name}:443:{local_stack.address}", "-w", "\n%{http_code} %{redirect_url}",
        f"https://{name}{path}"])
    if proc.returncode != 0:
        return 0, "", proc.stdout.strip()     # curl's error (shell.run merges stderr)
    body, _, tail = proc.stdout.rpartition("\n")
    code, _, location = tail.partition(" ")
    return int(code), location.strip(), body


def certbot_said(local_stack) -> str:
    """The LB's last certificate runs, for a certificate that did not come."""
    return local_stack.run("lb", ["journalctl", "--no-pager", "-n", "15", "-o", "cat",
                                  "-u", f"{load_balancer.CERTIFICATE_UNIT}.service"]).stdout


@pytest.fixture
def committed_after(local_stack):
    """The stack back on its committed settings, however the test ended."""
    yield
    local_stack.up(stack.plan(local_stack.plan.stack))


def test_an_alias_on_the_certificate_redirected_then_served_in_place(local_stack, committed_after):
    name, domain = local_stack.plan.stack, local_stack.domain
    alias = f"www.{domain}"
    boots = local_stack.boot_ids()
    ids = {d.name: d.id for d in local_stack.plan.droplets}

    local_stack.up(stack.plan(name, {"domainAliases": [alias]}))
    # A new certificate in the same lineage names both; the one in place served until then.
    # certbot runs from a timer on the LB.
    shell.wait_until(lambda: served_names(local_stack, alias) == {domain, alias}, 300,
                     lambda: f"a certificate for {domain} and {alias}: {served_names(local_stack, alias)}"
                     f"\n{certbot_said(local_stack)}", every=5)
    assert served_names(local_stack, domain) == {domain, alias}
    assert get(local_stack, alias, "/x?y=1")[:2] == (301, f"https://{domain}/x?y=1")
    assert local_stack.wait_healthy(timeout=120)                      # the domain serves as before

    local_stack.up(stack.plan(name, {"domainAliases": [alias], "redirectAliases": False}))
    status, location, body = get(local_stack, alias, "/healthz")
    assert (status, location, body) == (200, "", "ok\n")
    assert get(local_stack, alias, "/api/hello")[0] == 200            # the app itself, by the alias

    assert {d.name: d.id for d in local_stack.plan.droplets} == ids
    assert local_stack.boot_ids() == boots

    # The alias removed: a certificate for the domain alone, and the alias no longer served.
    local_stack.up(stack.plan(name))
    shell.wait_until(lambda: served_names(local_stack, domain) == {domain}, 300,
                     lambda: f"a certificate for {domain} alone: {served_names(local_stack, domain)}"
                     f"\n{certbot_said(local_stack)}", every=5)
    assert get(local_stack, alias, "/healthz")[0] == 0                # the LB shows no certificate for it
    assert local_stack.boot_ids() == boots
