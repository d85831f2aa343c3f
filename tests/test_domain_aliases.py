"""domainAliases and redirectAliases: what the settings allow, the LB's nginx site and
certificate command rendered from them, and the DNS records made for them."""

from __future__ import annotations

import re

import pytest

import cloudinit
import mockcloud
from cloudinit import common
from model import conventions as c
from model.settings import SettingsError
from stack_graph import of_type

SITE = common.NGINX_SITE
ALIASES = ["www.staging.example.com", "staging.example.org"]
DNS_RECORD = "digitalocean:index/dnsRecord:DnsRecord"


def problems_with(**overrides) -> list[str]:
    with pytest.raises(SettingsError) as raised:
        mockcloud.stack_settings("staging", **overrides)
    return raised.value.problems


def test_aliases_default_to_none_and_redirect():
    s = mockcloud.stack_settings("staging")
    assert (s.domain_aliases, s.redirect_aliases) == ((), True)
    s = mockcloud.stack_settings("staging", domainAliases='["www.staging.example.com"]', redirectAliases="false")
    assert (s.domain_aliases, s.redirect_aliases) == (("www.staging.example.com",), False)


ALLOWED = "a list of at most 99 distinct lower-case DNS names such as [www.example.com] (may be empty)"


@pytest.mark.parametrize("value, problem", [
    (["www.staging.example.com", "Bad_Name"],
     f"""domainAliases: '["www.staging.example.com", "Bad_Name"]' is not allowed: {ALLOWED}; 'Bad_Name' is not one"""),
    (["www.staging.example.com"] * 2,
     f"""domainAliases: '["www.staging.example.com", "www.staging.example.com"]' is not allowed: {ALLOWED}; """
     f"'www.staging.example.com' is listed 2 times"),
    ({"www": "x"}, f"""domainAliases: '{{"www": "x"}}' is not allowed: {ALLOWED}"""),
    (["staging.example.com"],
     "domainAliases: 'staging.example.com' is not allowed: names other than domain 'staging.example.com' (the "
     "certificate names domain already)"),
], ids=["not-a-name", "twice", "not-a-list", "the-domain"])
def test_bad_aliases_are_named_with_what_is_allowed(value, problem):
    assert problems_with(domainAliases=value) == [problem]


def test_at_most_99_aliases_one_certificate_of_100_names():
    names = [f"n{i}.example.com" for i in range(100)]
    (problem,) = problems_with(domainAliases=names)
    assert problem.endswith(f"is not allowed: {ALLOWED}; 100 are listed"), problem
    assert mockcloud.stack_settings("staging", domainAliases=names[:99]).domain_aliases == tuple(names[:99])


def test_redirect_aliases_is_true_or_false():
    assert problems_with(redirectAliases="sometimes") == [
        "redirectAliases: 'sometimes' is not allowed: true or false"]


def lb_files(**overrides) -> dict[str, str]:
    return cloudinit.rendered_files(c.LOAD_BALANCER, mockcloud.stack_settings("staging", **overrides))


def server_blocks(site: str) -> list[str]:
    """Each top-level `server { ... }` block of the site, in order."""
    return re.findall(r"^server \{\n.*?^\}", site, re.S | re.M)


def block_for(site: str, port: int, name: str) -> str:
    serves = re.compile(rf"^    server_name (?:[^;]* )?{re.escape(name)}[ ;]", re.M)
    (found,) = [b for b in server_blocks(site) if re.search(rf"^    listen {port}\b", b, re.M) and serves.search(b)]
    return found


def test_every_alias_answers_its_acme_challenge_on_port_80():
    site = lb_files(domainAliases=ALIASES)[SITE]
    http = block_for(site, c.HTTP_PORT, ALIASES[0])
    assert re.search(r"^    server_name staging\.example\.com www\.staging\.example\.com staging\.example\.org;$",
                     http, re.M), http
    assert "location /.well-known/acme-challenge/" in http


def test_aliases_redirect_to_the_domain_keeping_path_and_query():
    site = lb_files(domainAliases=ALIASES)[SITE]
    redirect = block_for(site, c.HTTPS_PORT, ALIASES[1])
    assert "server_name www.staging.example.com staging.example.org;" in redirect
    assert "location / { return 301 https://staging.example.com$request_uri; }" in redirect
    assert f"ssl_certificate {c.LB_PUBLIC_CERT_PATH};" in redirect and "proxy_pass" not in redirect
    served = block_for(site, c.HTTPS_PORT, "staging.example.com")
    assert re.search(r"^    server_name staging\.example\.com;$", served, re.M) and "proxy_pass" in served


def test_aliases_serve_the_app_when_redirect_aliases_is_false():
    site = lb_files(domainAliases=ALIASES, redirectAliases=False)[SITE]
    served = block_for(site, c.HTTPS_PORT, ALIASES[0])
    assert re.search(r"^    server_name staging\.example\.com www\.staging\.example\.com staging\.example\.org;$",
                     served, re.M), served
    assert "proxy_pass https://app_servers;" in served and "return 301" not in served
    assert len([b for b in server_blocks(site) if f"listen {c.HTTPS_PORT} ssl http2" in b]) == 1


def test_without_aliases_only_the_domain_is_served_and_unknown_names_are_dropped():
    site = lb_files()[SITE]
    names = re.findall(r"^    server_name (.*);$", site, re.M)
    assert names == ["_", "_", "staging.example.com", "staging.example.com"], names
    assert "return 444;" in site and "ssl_reject_handshake on;" in site


def test_the_certificate_is_asked_for_the_domain_and_every_alias_in_one_lineage():
    files = lb_files(domainAliases=ALIASES)
    env = cloudinit.role_env(c.LOAD_BALANCER, mockcloud.stack_settings("staging", domainAliases=ALIASES),
                             cloudinit.config_files(c.LOAD_BALANCER, mockcloud.stack_settings("staging")))
    assert "DOMAIN_ALIASES='www.staging.example.com staging.example.org'\n" in env
    command = files[c.CERTIFICATE_COMMAND]
    assert f"--cert-name {c.LB_CERT_NAME} \"${{domains[@]}}\"" in command
    assert 'for name in "${names[@]}"; do domains+=(--domain "$name"); done' in command
    assert 'names=("$DOMAIN" "${aliases[@]}")' in command


def test_dns_records_for_the_aliases_inside_the_zone_only(production_deployment):
    s = mockcloud.stack_settings("production", domainAliases=["www.example.com", "example.com", "app.example.org"])
    deployment = mockcloud.deploy(s, previous=production_deployment)
    records = {r.name: r.state for r in of_type(deployment, DNS_RECORD)}
    assert {name: (state["domain"], state["name"], state["type"]) for name, state in records.items()} == {
        "lb-dns": ("example.com", "app", "A"),
        "lb-dns-www.example.com": ("example.com", "www", "A"),
        "lb-dns-example.com": ("example.com", "@", "A"),
    }
    assert {state["value"] for state in records.values()} == {deployment.outputs["public_ip"]}
