"""Bad settings stop the run before anything is registered, with one line per problem.

Each line names the setting, shows the value and says what is allowed. The stack files
themselves are read through `mockcloud.stack_settings`, as the graph tests read them.
"""

from __future__ import annotations

import json

import pytest

import mockcloud
from model import conventions, prices
from model.settings import REQUIRED, SETTINGS, Secret, Settings, SettingsError

from program_run import run_main

STACK_FILE = {"staging": mockcloud.stack_file_config("staging")}


def problems_with(**overrides) -> list[str]:
    with pytest.raises(SettingsError) as raised:
        mockcloud.stack_settings("staging", **overrides)
    return raised.value.problems


def the_problem(**overrides) -> str:
    (problem,) = problems_with(**overrides)
    return problem


def test_the_stack_files_are_valid():
    staging, production = mockcloud.stack_settings("staging"), mockcloud.stack_settings("production")
    assert staging.acme_directory.startswith("https://acme-staging-")
    assert not production.acme_directory.startswith("https://acme-staging-")
    assert (staging.protect_data, production.protect_data) == (False, True)
    assert staging.image == conventions.DEFAULT_IMAGE == "debian-12-x64"  # the default: the image the local cloud boots
    assert production.image == "ubuntu-24-04-x64"  # set in its file: its droplets run it


@pytest.mark.parametrize("count", [0, 200, -1, "two", 2.5, "1_0", "\u0663"])
def test_app_server_count_out_of_range(count):
    problem = the_problem(appServerCount=count)
    assert problem.startswith("appServerCount: ")
    assert repr(str(count)) in problem or repr(json.dumps(count)) in problem
    assert "a whole number from 1 to 50" in problem


def test_unknown_engine():
    problem = the_problem(engines=["postgresql", "mysql"])
    assert problem.startswith("engines: ")
    assert "mysql" in problem
    for engine in conventions.ENGINES:
        assert engine in problem  # what is allowed


@pytest.mark.parametrize("cidr", ["203.0.113.300/32", "203.0.113.7/33", "203.0.113.7/24", "example.com"])
def test_malformed_cidr(cidr):
    problem = the_problem(adminCidrs=[cidr])
    assert problem.startswith("adminCidrs: ")
    assert repr(cidr) in problem
    assert "list of distinct CIDRs such as" in problem


@pytest.mark.parametrize("domain", ["Example.COM", "app..example.com", "-app.example.com", "localhost", "app_1.example.com",
                                    "staging.example.com\n"])
def test_malformed_domain(domain):
    problem = the_problem(domain=domain)
    assert problem == f"domain: {domain!r} is not allowed: a lower-case DNS name such as app.example.com"


def test_missing_required_key():
    config = {k: v for k, v in STACK_FILE["staging"].items() if k != "acmeEmail"}
    with pytest.raises(SettingsError) as raised:
        Settings.from_config("staging", config)
    (problem,) = raised.value.problems
    assert problem.startswith("acmeEmail: missing; it must be set to an e-mail address such as ops@example.com")


def test_unknown_key_suggests_the_setting_meant():
    problem = the_problem(appServerCont=3)
    assert problem == "appServerCont: not a setting of this program (did you mean appServerCount?)"
    assert the_problem(colour="blue") == "colour: not a setting of this program"


@pytest.mark.parametrize("address", ["ops", "ops@", "ops@example", "ops at example.com"])
def test_bad_email(address):
    assert the_problem(acmeEmail=address) == (
        f"acmeEmail: {address!r} is not allowed: an e-mail address such as ops@example.com"
    )


def openssh_key(kind: str) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    private = {"ed25519": lambda: ed25519.Ed25519PrivateKey.generate(),
               "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
               "ecdsa": lambda: ec.generate_private_key(ec.SECP256R1())}[kind]()
    return private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                             serialization.PublicFormat.OpenSSH).decode()


@pytest.mark.parametrize("kind", ["ed25519", "rsa", "ecdsa"])
def test_an_openssh_public_key_of_each_type_sshd_takes_is_accepted(kind):
    key = f"{openssh_key(kind)} ops@example.com"
    assert mockcloud.stack_settings("staging", sshPublicKeys=[key]).ssh_public_keys == (key,)


ED25519_BODY = "AAAAC3NzaC1lZDI1NTE5AAAAIGm0y3kYc6c8XvVQ2v3h1p0W3bQWd7pQm1dV2o1kq9Zt"


# A key cut short or named by another type lets no one in (`ssh-keygen -l` refuses each).
@pytest.mark.parametrize("key", ["ssh-dss AAAAB3Nza ops@host", "AAAAC3NzaC1lZDI1NTE5AAAA ops@host", "not a key",
                                 "ssh-ed25519 A ops@host", f"ssh-rsa {ED25519_BODY} ops@host",
                                 f"ssh-ed25519 {ED25519_BODY[:-8]} ops@host", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 ops@host"])
def test_bad_ssh_key(key):
    problem = the_problem(sshPublicKeys=[key])
    assert problem.startswith("sshPublicKeys: ")
    assert key[:24] in problem
    assert "OpenSSH public keys" in problem


CI_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm0y3kYc6c8XvVQ2v3h1p0W3bQWd7pQm1dV2o1kq9Zt ci@example.com"


@pytest.mark.parametrize("keys", [["ssh-dss AAAAB3Nza ci@host"], [CI_KEY, "not a key"], ["command=\"sh\" " + CI_KEY],
                                  [CI_KEY + "\nssh-ed25519 AAAA other"], {"a": CI_KEY}])
def test_bad_deploy_key_is_named_with_what_is_allowed(keys):
    problem = the_problem(deployKeys=keys)
    assert problem.startswith("deployKeys: ")
    assert "a list of distinct OpenSSH public keys (ssh-ed25519 AAAA... ci@host), or empty" in problem
    bad = [k for k in (keys if isinstance(keys, list) else []) if k != CI_KEY]
    assert not bad or f"{bad[0][:24]!r}... is not one" in problem


def test_deploy_keys_default_to_none_and_the_deploy_login_then_takes_the_operators_keys():
    from cloudinit.common import deploy_login_keys
    settings = mockcloud.stack_settings("staging")
    assert settings.deploy_keys == ()
    assert deploy_login_keys(settings) == settings.ssh_public_keys
    own = mockcloud.stack_settings("staging", deployKeys=[CI_KEY])
    assert own.deploy_keys == (CI_KEY,) and deploy_login_keys(own) == (CI_KEY,)
    assert mockcloud.stack_settings("staging", deployKeys=CI_KEY + "\n").deploy_keys == (CI_KEY,)


def test_bad_size():
    problem = the_problem(appSize="s-1vcpu-3gb")
    assert problem.startswith("appSize: 's-1vcpu-3gb' is not allowed: one of ")
    for size in prices.DROPLET_MONTHLY:
        assert size in problem


def test_bad_region():
    problem = the_problem(region="mars1")
    assert problem.startswith("region: 'mars1' is not allowed: one of nyc1, ")
    assert "ams3" in problem


@pytest.mark.parametrize("endpoint", ["http://198.51.100.1", "fra1.digitaloceanspaces.com", "https://"])
def test_spaces_endpoint_must_be_https(endpoint):
    assert the_problem(spacesEndpoint=endpoint) == f"spacesEndpoint: {endpoint!r} is not allowed: an https:// URL"


def test_spaces_endpoint_defaults_to_each_buckets_regions():
    settings = mockcloud.stack_settings("staging", region="tor1", spacesRegion="fra1")
    assert settings.spaces_region == "fra1"
    assert settings.endpoint_of("ams3") == "https://ams3.digitaloceanspaces.com"
    assert mockcloud.stack_settings("staging", spacesEndpoint="https://198.51.100.1").endpoint_of("ams3") == \
        "https://198.51.100.1"


def test_backups_in_a_region_without_spaces_name_the_regions_that_have_them():
    assert the_problem(region="nyc1", backups=True) == (
        "spacesRegion: '' is not allowed when region is 'nyc1' (no Spaces there): one of nyc3, sfo2, sfo3, "
        "ams3, sgp1, lon1, fra1, tor1, blr1, syd1, atl1")
    for region in ("tor1", "atl1"):   # Spaces there too: buckets in the stack's own region
        assert mockcloud.stack_settings("staging", region=region, backups=True).spaces_region == region


def test_dns_zone_must_contain_the_domain():
    assert the_problem(dnsZone="example.org") == (
        "dnsZone: 'example.org' is not allowed: a zone that contains domain 'staging.example.com'"
    )
    # A zone that merely ends with the same letters is not the parent zone.
    assert the_problem(dnsZone="ple.com").startswith("dnsZone: 'ple.com' is not allowed")
    assert mockcloud.stack_settings("staging", dnsZone="example.com").dns_zone == "example.com"


# Private is not enough: DigitalOcean's VPCs take RFC 1918 ranges only.
@pytest.mark.parametrize("vpc", ["8.8.8.0/24", "10.0.0.0/8", "10.110.16.0/28", "10.110.16.1/24", "fd00::/64",
                                 "127.0.0.0/16", "169.254.0.0/16", "198.18.0.0/16", "100.64.0.0/16"])
def test_vpc_range_must_be_private_and_16_to_24(vpc):
    problem = the_problem(vpcIpRange=vpc)
    assert problem == (
        f"vpcIpRange: {vpc!r} is not allowed: a private (RFC 1918) IPv4 range from /16 to /24, such as 10.110.0.0/20"
    )


def test_a_value_ending_in_a_newline_is_refused_where_it_would_reach_a_file_or_a_name():
    problems = problems_with(acmeEmail="ops@example.com\n", acmeDirectory="https://acme.example.com/dir\n",
                             domainAliases=["www.staging.example.com\n"], alertEmails=["ops@example.com\n"])
    assert sorted(p.split(":", 1)[0] for p in problems) == ["acmeDirectory", "acmeEmail", "alertEmails", "domainAliases"]


def test_an_engine_that_is_a_list_or_a_map_is_named_with_the_other_problems():
    problems = problems_with(engines=["redis", ["postgresql"], {"a": 1}], appServerCount=0)
    assert [p.split(":", 1)[0] for p in problems] == ["appServerCount", "engines"]
    assert problems[1].endswith('; unknown: ["postgresql"], {"a": 1}'), problems[1]


def test_every_problem_is_reported_at_once():
    problems = problems_with(
        appServerCount=0, engines=["mysql"], adminCidrs=["nope"], domain="bad..name", regoin="ams3", dnsZone="other.org"
    )
    keys = [p.split(":", 1)[0] for p in problems]
    assert sorted(keys) == sorted(["regoin", "appServerCount", "engines", "adminCidrs", "domain"])
    with pytest.raises(SettingsError) as raised:
        mockcloud.stack_settings("staging", appServerCount=0, region="mars1")
    message = str(raised.value)
    assert message.splitlines()[0] == "Pulumi.staging.yaml has 2 bad setting(s):"
    assert len(message.splitlines()) == 3


def test_the_zone_check_runs_alongside_other_problems():
    keys = [p.split(":", 1)[0] for p in problems_with(appServerCount=0, dnsZone="example.org")]
    assert keys == ["appServerCount", "dnsZone"]


def test_alert_emails_default_to_none_and_take_a_list():
    assert mockcloud.stack_settings("staging").alert_emails == ()
    settings = mockcloud.stack_settings("staging", alertEmails=["ops@example.com", "oncall@example.org"])
    assert settings.alert_emails == ("ops@example.com", "oncall@example.org")
    # The CLI hands lists over as JSON text.
    assert mockcloud.stack_settings("staging", alertEmails='["ops@example.com"]').alert_emails == ("ops@example.com",)


@pytest.mark.parametrize("addresses, bad", [(["ops@example.com", "oncall"], "'oncall'"),
                                            (["ops at example.com"], "'ops at example.com'"),
                                            ({"to": "ops@example.com"}, None), (42, None)])
def test_bad_alert_emails(addresses, bad):
    problem = the_problem(alertEmails=addresses)
    assert problem.startswith(f"alertEmails: {repr(json.dumps(addresses))} is not allowed: "
                              "a list of distinct e-mail addresses such as [ops@example.com]"), problem
    if bad:
        assert problem.endswith(f"; {bad} is not one")


# An entry twice is a slip: named, with how often it is listed. The same address in
# another case, a CIDR written another way or a key with another comment is the same entry.
@pytest.mark.parametrize("key, value, named", [
    ("adminCidrs", ["203.0.113.7/32", "198.51.100.0/24", "203.0.113.7"], "'203.0.113.7/32' is listed 2 times"),
    ("alertEmails", ["ops@example.com", "Ops@Example.com"], "'ops@example.com' is listed 2 times"),
    ("sshPublicKeys", [CI_KEY, CI_KEY.replace("ci@example.com", "ops@laptop")],
     f"{CI_KEY[:24]!r}... is listed 2 times"),
    ("deployKeys", [CI_KEY, CI_KEY, CI_KEY], f"{CI_KEY[:24]!r}... is listed 3 times"),
    ("domainAliases", ["www.staging.example.com"] * 2, "'www.staging.example.com' is listed 2 times"),
])
def test_an_entry_listed_twice_is_named(key, value, named):
    problem = the_problem(**{key: value})
    assert problem.startswith(f"{key}: ") and " distinct " in problem and problem.endswith(named), problem


WEBHOOK = "https://hooks.example.com/services/T000/B000/XXXXSECRETPATH"


def test_the_webhook_is_a_secret_that_nothing_shows():
    assert mockcloud.stack_settings("staging").alert_webhook_url is None
    settings = mockcloud.stack_settings("staging", alertWebhookUrl=WEBHOOK)
    assert settings.alert_webhook_url == Secret(WEBHOOK)
    assert settings.alert_webhook_url.value == WEBHOOK
    for shown in (str(settings), repr(settings), str(settings.alert_webhook_url), f"{settings.alert_webhook_url}"):
        assert "SECRETPATH" not in shown and "hooks.example.com" not in shown


@pytest.mark.parametrize("url", ["http://hooks.example.com/services/XXXXSECRETPATH",
                                 "ftp://user:XXXXSECRETPATH@hooks.example.com/x", "hooks.example.com/XXXXSECRETPATH"])
def test_bad_webhook_names_the_setting_but_hides_the_secret_part(url):
    problem = the_problem(alertWebhookUrl=url)
    assert problem.startswith("alertWebhookUrl: ") and problem.endswith("is not allowed: an https:// URL")
    assert "SECRETPATH" not in problem
    if "://" in url:  # scheme and host say which value it is
        assert f"'{url.split('://')[0]}://hooks.example.com/...' (the rest hidden: a secret)" in problem


def test_a_webhook_set_in_plain_text_is_refused():
    config = {**STACK_FILE["staging"], "alertWebhookUrl": WEBHOOK}
    with pytest.raises(SettingsError) as raised:
        Settings.from_config("staging", config)
    (problem,) = raised.value.problems
    assert problem == (
        "alertWebhookUrl: 'https://hooks.example.com/...' (the rest hidden: a secret) is not allowed in plain text "
        "(Pulumi.staging.yaml would show it): set it with `pulumi config set --secret alertWebhookUrl ...`"
    )
    assert Settings.from_config("staging", config, secret_keys={"alertWebhookUrl"}).alert_webhook_url.value == WEBHOOK


def test_every_setting_has_a_default_or_is_required_and_a_meaning():
    for setting in SETTINGS:
        assert setting.meaning.endswith("."), setting.key
        if setting.default is not REQUIRED:
            setting.parse(setting.default)  # a default the parser refuses would be a trap


# --- The program's own path: __main__.py reads the config the Pulumi CLI hands it ------------


def test_bad_settings_register_nothing(monkeypatch):
    resources, stop = run_main(monkeypatch, {**STACK_FILE["staging"], "appServerCount": 0, "engines": ["mysql"]})
    assert stop is not None
    assert str(stop.code).startswith("Pulumi.staging.yaml has 2 bad setting(s):")
    assert "appServerCount: '0' is not allowed" in str(stop.code)
    assert resources == []


def test_a_bad_stack_name_registers_nothing(monkeypatch):
    """The program checks the name `pulumi.get_stack()` gives it (the stack alone, no organization)."""
    resources, stop = run_main(monkeypatch, STACK_FILE["staging"], stack="Dev_1")
    assert stop is not None
    assert str(stop.code).startswith("Pulumi.Dev_1.yaml has 1 bad setting(s):\n  - stack: 'Dev_1' is not allowed: ")
    assert resources == []


def test_good_settings_register_the_platform_through_the_same_path(monkeypatch):
    """The test above can fail: the same path with the stack file's settings registers everything."""
    resources, stop = run_main(monkeypatch, STACK_FILE["staging"])
    assert stop is None
    assert sum(r.type.endswith(":Droplet") for r in resources) == 4


def test_the_program_reads_the_webhook_only_when_the_cli_marks_it_secret(monkeypatch):
    config = {**STACK_FILE["staging"], "alertWebhookUrl": WEBHOOK}
    resources, stop = run_main(monkeypatch, config)
    assert stop is not None and "alertWebhookUrl: " in str(stop.code) and "--secret" in str(stop.code)
    assert "SECRETPATH" not in str(stop.code)
    assert resources == []
    resources, stop = run_main(monkeypatch, config, secret=("alertWebhookUrl",))
    assert stop is None
    (backup_push,) = [r for r in resources if r.name == "datastore-backup-push"]
    assert mockcloud.is_secret(backup_push.inputs["stdin"])
    assert WEBHOOK in mockcloud.plain(backup_push.inputs["stdin"])
