"""Names made from the stack's name are ones DigitalOcean accepts; tags are the stack's own.

DigitalOcean's rules are written here from its documentation, not read from the program:
a droplet's name is a hostname (letters, digits, `.`, `-`; labels of at most 63); a
volume's is lowercase letters, digits and `-`, starting with a letter and ending with a
letter or digit, at most 64; a Spaces bucket's is 3-63 lowercase letters, digits and `-`,
starting and ending with a letter or digit; a tag's is letters, digits, `:`, `-`, `_`, at
most 255. Tags are account-wide, so every one the program makes or matches carries the
project and the stack. A stack without protectData goes in one `pulumi destroy`.
"""

from __future__ import annotations

import re

import pytest

import mockcloud
from model import conventions
from model.settings import Settings, SettingsError
from stack_graph import FIREWALL, droplets, of_type

TAG = "digitalocean:index/tag:Tag"
VOLUME = "digitalocean:index/volume:Volume"
BUCKET = "digitalocean:index/spacesBucket:SpacesBucket"
MONITOR_ALERT = "digitalocean:index/monitorAlert:MonitorAlert"

HOSTNAME_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
VOLUME_NAME = re.compile(r"^[a-z]([a-z0-9-]{0,62}[a-z0-9])?$")
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
TAG_NAME = re.compile(r"^[A-Za-z0-9:_-]{1,255}$")

STAGING = mockcloud.stack_file_config("staging")
ALLOWED = (
    "a stack name of lowercase letters, digits and '-', starting with a letter, not ending with '-', "
    f"at most {conventions.STACK_NAME_MAX} characters (the names of its droplets, volume, buckets "
    "and tags are made from it)"
)
LONGEST = ("max-" + "0123456789" * 10)[: conventions.STACK_NAME_MAX - 2] + "-z"  # exactly STACK_NAME_MAX


def settings_for(stack: str, **overrides) -> Settings:
    """The staging file's settings under another stack name."""
    return Settings.from_config(stack, {**STAGING, **overrides})


# --- The stack name is checked with the settings ------------------------------------------


@pytest.mark.parametrize("stack", ["Dev_1", "dev_1", "Staging", "1dev", "-dev", "dev-", "dev.1", "acme/staging",
                                   "", LONGEST + "x"])
def test_a_stack_name_digitalocean_would_refuse_is_a_problem_like_any_setting(stack):
    with pytest.raises(SettingsError) as raised:
        settings_for(stack)
    assert raised.value.problems == [f"stack: {stack!r} is not allowed: {ALLOWED}"]
    assert str(raised.value).splitlines()[0] == f"Pulumi.{stack}.yaml has 1 bad setting(s):"


def test_a_bad_stack_name_is_reported_with_every_other_problem():
    with pytest.raises(SettingsError) as raised:
        settings_for("Dev_1", appServerCount=0, region="mars1")
    keys = [p.split(":", 1)[0] for p in raised.value.problems]
    assert keys == ["stack", "region", "appServerCount"]


@pytest.mark.parametrize("stack", ["staging", "production", "d", "dev-1", "eu-west-2", "a--b", LONGEST])
def test_stack_names_that_make_valid_names_are_accepted(stack):
    assert len(LONGEST) == conventions.STACK_NAME_MAX
    assert settings_for(stack).stack == stack


# --- Every name in the graph is one DigitalOcean accepts ---------------------------------


def assert_digitalocean_accepts_every_name(deployment: mockcloud.Deployment) -> None:
    for d in droplets(deployment):
        name = d.state["name"]
        assert HOSTNAME_LABEL.match(name), f"droplet name {name!r}"
    for volume in of_type(deployment, VOLUME):
        assert VOLUME_NAME.match(volume.state["name"]), f"volume name {volume.state['name']!r}"
    for bucket in of_type(deployment, BUCKET):
        assert BUCKET_NAME.match(bucket.state["name"]), f"bucket name {bucket.state['name']!r}"
    for tag in tags_used(deployment):
        assert TAG_NAME.match(tag), f"tag {tag!r}"


def tags_used(deployment: mockcloud.Deployment) -> set[str]:
    """Every tag a droplet carries or a firewall or alert policy matches, and every Tag made."""
    used = {t.state["name"] for t in of_type(deployment, TAG)}
    for d in droplets(deployment):
        used |= set(d.state["tags"])
    for f in of_type(deployment, FIREWALL):
        used |= set(f.state.get("tags") or [])
        for rule in f.state.get("inboundRules") or []:
            used |= set(rule.get("sourceTags") or [])
    for policy in of_type(deployment, MONITOR_ALERT):
        used |= set(policy.state["tags"])
    return used


@pytest.fixture(scope="module")
def longest() -> mockcloud.Deployment:
    """A stack name at the limit, a domain long enough that the bucket's name is cut, alerts on."""
    domain = "a-rather-long-subdomain-for-the-platform." * 3 + "example.com"
    return mockcloud.deploy(settings_for(LONGEST, domain=domain, alertEmails=["ops@example.com"]))


def test_a_stack_name_at_the_limit_makes_names_digitalocean_accepts(longest):
    assert len(longest.settings.stack) == conventions.STACK_NAME_MAX
    assert_digitalocean_accepts_every_name(longest)
    names = sorted(b.state["name"] for b in of_type(longest, BUCKET))
    # Each was cut from the same `<stack>-<domain>`, so they differ by their ends alone.
    assert max(len(n) for n in names) == conventions.BUCKET_NAME_MAX  # the longest end's was cut to the limit
    stem = names[0].rsplit("-backups", 1)[0].removesuffix("-app")
    assert names == sorted(f"{stem}-{end}" for end in ("backups", "lb-backups", "app-backups", "releases"))
    assert max(len(d.state["name"]) for d in droplets(longest)) == len(LONGEST + "-datastore")


def test_the_stack_files_names_are_valid_and_unchanged(deployment):
    """A changed name replaces the resource: the stacks' droplets, volume and bucket keep theirs."""
    assert_digitalocean_accepts_every_name(deployment)
    stack = deployment.settings.stack
    members = ["lb", "datastore"] + [f"app-{n}" for n in range(1, deployment.settings.app_server_count + 1)]
    assert sorted(d.state["name"] for d in droplets(deployment)) == sorted(f"{stack}-{m}" for m in members)
    (volume,) = of_type(deployment, VOLUME)
    assert volume.state["name"] == f"{stack}-data"
    stem = {"staging": "staging-staging-example-com", "production": "production-app-example-com"}[stack]
    # The datastore's keeps the name the stack's one backup bucket had.
    assert {b.name: b.state["name"] for b in of_type(deployment, BUCKET)} == {
        "datastore-backups": f"{stem}-backups", "lb-backups": f"{stem}-lb-backups",
        "app-backups": f"{stem}-app-backups", "release-archive-bucket": f"{stem}-releases"}


def test_a_bucket_name_cut_at_a_dash_loses_the_dash():
    # `dev-` and a 46-letter label: the stem's cut (51 characters) falls on the dash after it.
    domain = "a" * 46 + ".example.com"
    stem_max = conventions.BUCKET_NAME_MAX - len("-app-backups")
    assert f"dev-{domain.replace('.', '-')}"[:stem_max].endswith("-")
    deployment = mockcloud.deploy(settings_for("dev", domain=domain))
    assert {b.state["name"] for b in of_type(deployment, BUCKET)} == {
        f"dev-{'a' * 46}-{end}" for end in ("backups", "lb-backups", "app-backups", "releases")}
    assert_digitalocean_accepts_every_name(deployment)


@pytest.mark.parametrize("stack_length", [1, 8, 23, conventions.STACK_NAME_MAX])
def test_every_cut_bucket_name_is_valid_and_the_four_differ(stack_length):
    """Wherever the limit falls (a dot made a dash, punycode's `--`, a letter), every name
    is valid, and no two purposes share one (a key granted on one bucket would reach two)."""
    stack = "s" * stack_length
    for k in range(1, 62):
        for domain in (f"{'a' * k}.{'b' * 61}.com", f"{'a' * k}.xn--{'c' * 57}.org", f"{'a' * k}.lb.{'d' * 50}.io"):
            names = {purpose: conventions.bucket_name(stack, domain, purpose) for purpose in conventions.BUCKET_SUFFIXES}
            assert len(set(names.values())) == len(names), names
            for name in names.values():
                assert BUCKET_NAME.match(name) and name.startswith(stack + "-"), name


def test_a_bucket_name_spaces_would_refuse_is_refused_naming_its_stack_and_domain():
    """The settings' checks keep every name valid; were one loosened, the rule that broke is named."""
    with pytest.raises(ValueError) as raised:
        conventions.bucket_name("dev", "Shop_1.example.com", conventions.LOAD_BALANCER)
    assert str(raised.value) == (
        "bucket name 'dev-Shop_1-example-com-lb-backups' (from stack 'dev' and domain 'Shop_1.example.com') is not "
        "one Spaces accepts: 3-63 lowercase letters, digits and '-', starting and ending with a letter or digit")
    with pytest.raises(ValueError, match="bucket purpose 'logs': one of datastore, lb, app, releases"):
        conventions.bucket_name("dev", "example.com", "logs")


# --- Tags carry the project and the stack -----------------------------------------------------


@pytest.fixture(scope="module")
def alerted() -> mockcloud.Deployment:
    return mockcloud.deploy(mockcloud.stack_settings("staging", alertEmails=["ops@example.com"]))


def test_every_tag_is_scoped_to_the_project_and_the_stack(deployment, alerted):
    for d in (deployment, alerted):
        stack = d.settings.stack
        made = {t.state["name"] for t in of_type(d, TAG)}
        assert made == {f"node-platform-{stack}", *(f"node-platform-{stack}-{role}" for role in conventions.ROLES)}
        used = tags_used(d)
        assert used == made  # every tag matched is one the stack made
        bare = {stack, "node-platform", *conventions.ROLES, *(f"{stack}-{role}" for role in conventions.ROLES)}
        assert not used & bare, used & bare
    assert of_type(alerted, MONITOR_ALERT)


def test_the_local_cloud_finds_each_roles_droplets_by_the_tag_suffix(deployment):
    """localcloud's Plan.with_tag(role) takes droplets carrying a tag ending in the role."""
    for role in conventions.ROLES:
        by_suffix = [d.name for d in droplets(deployment) if any(t.endswith(role) for t in d.state["tags"])]
        assert by_suffix == [d.name for d in droplets(deployment, role)], role


# --- An unprotected stack is destroyed in one command; a protected one keeps its data ---------


def test_staging_buckets_are_emptied_by_destroy_and_productions_are_protected(staging_deployment, production_deployment):
    for bucket in of_type(staging_deployment, BUCKET):
        assert bucket.state["forceDestroy"] is True and not bucket.protect, bucket.name
    for bucket in of_type(production_deployment, BUCKET):
        assert bucket.state["forceDestroy"] is False and bucket.protect, bucket.name


@pytest.mark.parametrize("protect", [True, False])
def test_force_destroy_follows_protect_data(protect):
    deployment = mockcloud.deploy(mockcloud.stack_settings("staging", protectData=protect))
    buckets = of_type(deployment, BUCKET)
    assert len(buckets) == 4
    for bucket in buckets:
        assert bucket.state["forceDestroy"] is (not protect)
        assert bucket.protect is protect
