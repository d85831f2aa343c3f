"""Changing the platform or a setting replaces no droplet: only the bundle push runs again.

DigitalOcean replaces a droplet whose user_data changes. So user_data holds only what
never changes (the login, the identity, the bundle's receiver); every file the droplets
receive and every setting but region, image and the VPC range (which a stack keeps from
its creation, refusing a new one) and sizes (which resize in place) arrive by the bundle
push, which runs again when its digest changes.
"""

from __future__ import annotations

import types

import pytest

import cloudinit
import mockcloud
from cloudinit import files
from model import conventions
from model.settings import SETTINGS
from stack_graph import COMMAND, backup_env, backup_pushes, droplets, of_type

# What a stack keeps from its creation (region, image, VPC range) or resizes droplets in place (sizes).
ON_THE_DROPLET = {"region", "image", "vpcIpRange", "lbSize", "appSize", "datastoreSize"}
# A valid value, different from staging's, for every other setting.
ANOTHER_VALUE = {
    "appServerCount": 3,
    "volumeSizeGb": 20,
    "domain": "next.example.com",
    "domainAliases": ["www.next.example.com", "next.example.org"],
    "redirectAliases": False,
    "dnsZone": "example.com",
    "acmeEmail": "platform@example.com",
    "acmeDirectory": "https://acme.example.com/directory",
    "adminCidrs": ["198.51.100.0/24"],
    "sshPublicKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx6sbRHMnRw4Q5l0x1d3tyiP7a0Y2cwFp1qVJbPHr6u other@example.com"],
    "deployKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm0y3kYc6c8XvVQ2v3h1p0W3bQWd7pQm1dV2o1kq9Zt ci@example.com"],
    "lbRequestsPerSecond": 10,
    "engines": ["postgresql", "redis"],
    "nodeMajor": 20,
    "backups": False,
    "backupHourUtc": 5,
    "backupKeepDaily": 3,
    "backupKeepWeekly": 2,
    "backupKeepMonthly": 1,
    "spacesRegion": "fra1",
    "spacesEndpoint": "https://fra1.digitaloceanspaces.com",
    "dropletBackups": True,
    "protectData": True,
    "alertEmails": ["alerts@example.com"],
    "alertLatencyMs": 3000,
    "alertWebhookUrl": "https://hooks.example.com/platform",
    "appEnv": {"LOG_LEVEL": "debug"},
    "appSecrets": {"STRIPE_KEY": "sk_test_platform"},
}


# Templates of pushes of their own (the app's environment, the backup push), not the bundle.
OWN_PUSHES = {"app_server/app.env", "common/backup.conf", "common/platform-backup.timer",
              "load_balancer/deploy-permitopen.conf"}


# The droplet's inputs that DigitalOcean's provider cannot change in place (ForceNew).
REPLACING = ("image", "region", "userData", "sshKeys", "vpcUuid")


def user_data(deployment) -> dict[str, str]:
    return {d.name: d.state["userData"] for d in droplets(deployment)}


def bundle_digests(deployment) -> dict[str, str]:
    return {r.name: r.state["triggers"][0] for r in of_type(deployment, COMMAND) if r.name.endswith("-bundle-push")}


def test_every_setting_that_may_change_in_place_has_another_value_here():
    assert set(ANOTHER_VALUE) == {s.key for s in SETTINGS} - ON_THE_DROPLET


@pytest.fixture(scope="module")
def everything_changed(staging_deployment):
    settings = mockcloud.stack_settings("staging", **ANOTHER_VALUE)
    return mockcloud.deploy(settings, previous=staging_deployment)


def test_changing_every_other_setting_leaves_every_droplets_user_data_byte_for_byte(staging_deployment,
                                                                                   everything_changed):
    before, after = user_data(staging_deployment), user_data(everything_changed)
    assert set(before) <= set(after)
    for name, text in before.items():
        assert after[name] == text, name


def test_and_no_other_input_that_replaces_a_droplet(staging_deployment, everything_changed):
    """The provider replaces a droplet when one of these changes (the others, such as
    `backups` or `tags`, it updates in place)."""
    old = {d.name: d.state for d in droplets(staging_deployment)}
    for d in droplets(everything_changed):
        if d.name in old:
            assert {k: d.state.get(k) for k in REPLACING} == {k: old[d.name].get(k) for k in REPLACING}, d.name


def test_and_every_droplets_platform_is_pushed_again(staging_deployment, everything_changed):
    before, after = bundle_digests(staging_deployment), bundle_digests(everything_changed)
    assert set(before) <= set(after)
    assert {name for name in before if after[name] != before[name]} == set(before)


def test_region_image_and_vpc_range_are_the_only_settings_on_the_droplet(staging_deployment):
    """The comparison above can fail: a droplet's own inputs do change with these (on a
    stack made with them: an existing stack refuses them, below)."""
    for change, field in (({"region": "fra1"}, "region"), ({"image": "ubuntu-24-04-x64"}, "image")):
        other = mockcloud.deploy(mockcloud.stack_settings("staging", **change))
        old = {d.name: d.state[field] for d in droplets(staging_deployment)}
        assert all(d.state[field] != old[d.name] for d in droplets(other)), change


def test_a_bigger_volume_is_a_new_datastore_bundle_pushed_after_the_volume(staging_deployment):
    """Its provisioning grows the filesystem into the grown volume (the step itself:
    tests/roles/test_datastore_volume.py), so the push must wait for the volume's
    attachment, which waits for the volume."""
    size = staging_deployment.settings.volume_size_gb + 5
    bigger = mockcloud.deploy(mockcloud.stack_settings("staging", volumeSizeGb=size), previous=staging_deployment)
    before, after = bundle_digests(staging_deployment), bundle_digests(bigger)
    assert {name for name in before if after[name] != before[name]} == {"datastore-bundle-push"}
    request = bigger.mocks.options[(COMMAND, "datastore-bundle-push")]
    assert "datastore-volume-attachment" in {urn.rsplit("::", 1)[-1] for urn in request.dependencies}
    env = cloudinit.placed_files(conventions.DATASTORE, bigger.settings)[cloudinit.ROLE_ENV][0]
    assert f"VOLUME_SIZE_GB={size}\n" in env


def template_files() -> list[str]:
    """Every template a droplet receives, as the loader names them: the role folders' files
    but their modules (the package's own top level is code only)."""
    return sorted(str(p.relative_to(files.HERE)) for p in files.HERE.rglob("*")
                  if p.is_file() and p.suffix not in (".pyc",) and "__pycache__" not in p.parts
                  and p.name != "__init__.py" and p.parent != files.HERE)


def test_a_one_line_change_to_any_file_the_droplets_receive_leaves_user_data_alone(monkeypatch, staging_settings):
    key = staging_settings.ssh_public_keys[0]
    roles = (conventions.LOAD_BALANCER, conventions.APP_SERVER, conventions.DATASTORE)
    first = {role: cloudinit.first_boot(role, staging_settings.stack, key) for role in roles}
    bundles = {role: cloudinit.bundle(role, staging_settings).digest for role in roles}
    changed_bundles = set()
    for template in template_files():
        if template == cloudinit.RECEIVER:
            continue  # the receiver itself: the one file first boot holds
        changed = with_one_more_line(template)
        monkeypatch.setattr(files, "_templates", changed)
        for role in roles:
            assert cloudinit.first_boot(role, staging_settings.stack, key) == first[role], (template, role)
        # Its own role's bundle first (a folder per role): one render answers, mostly.
        mine = sorted(roles, key=lambda role: cloudinit.role_module(role).__name__.rsplit(".", 1)[-1] != template.split("/")[0])
        if any(cloudinit.bundle(role, staging_settings).digest != bundles[role] for role in mine):
            changed_bundles.add(template)
        monkeypatch.undo()
    # The bundles do carry them: each file changed some role's bundle, or arrives by its own push.
    unused = set(template_files()) - changed_bundles - {cloudinit.RECEIVER} - OWN_PUSHES
    assert unused == set(), f"templates no bundle renders: {sorted(unused)}"


def with_one_more_line(template: str):
    """The template environment, with `template` one comment line longer."""
    import jinja2

    original = files._templates
    source = original.loader.get_source(original, template)[0]

    def load(name):
        if name == template:
            return source + "\n# one more line\n"
        return original.loader.get_source(original, name)[0]

    return original.overlay(loader=jinja2.FunctionLoader(load))


@pytest.fixture(scope="module")
def staging_settings():
    return mockcloud.stack_settings("staging")


def test_a_new_domain_or_region_keeps_every_bucket_where_it_was_made(staging_deployment):
    """A bucket's name comes from the domain (unique among every account's buckets), its
    region from spacesRegion or region; the provider replaces a bucket whose name or
    region changes, which would take the backups and releases with it."""
    buckets = [r for r in staging_deployment.resources if r.type.endswith(":SpacesBucket")]
    assert len(buckets) == 4
    for bucket in buckets:
        request = staging_deployment.mocks.options[(bucket.type, bucket.name)]
        assert list(request.ignoreChanges) == ["name", "region"], bucket.name


@pytest.mark.parametrize("change", [{"domain": "next.example.com"}, {"spacesRegion": "fra1"}])
def test_and_the_mock_engine_keeps_them_as_the_engine_does_and_the_droplets_reach_them_there(
        staging_deployment, change, caplog):
    other = mockcloud.deploy(mockcloud.stack_settings("staging", **change), previous=staging_deployment)
    before = {r.name: r for r in staging_deployment.resources if r.type.endswith(":SpacesBucket")}
    after = {r.name: r for r in other.resources if r.type.endswith(":SpacesBucket")}
    assert {n: (r.id, r.state["name"], r.state["region"], r.unchanged) for n, r in after.items()} == {
        n: (r.id, r.state["name"], "ams3", True) for n, r in before.items()}
    # The backups and the deploy are sent to the region the buckets are in, not the new one.
    ams3 = "https://ams3.digitaloceanspaces.com/"
    assert other.outputs["release_archive"]["endpoint"] + "/" == ams3
    repositories = {backup_env(push)["RESTIC_REPOSITORY"] for push in backup_pushes(other).values()}
    assert repositories and all(r.startswith(f"s3:{ams3}") for r in repositories), repositories
    # And the operator is told why the new region did not move them, once per bucket.
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "spacesRegion" in r.getMessage()]
    moved = "domain" not in change
    assert len(warnings) == (4 if moved else 0), warnings
    assert all(w.startswith("spacesRegion: the bucket stays in ams3, where it was made, not in fra1") for w in warnings)


# What a stack keeps from its creation, each with a new value and what the refusal names.
MADE_WITH = {
    "region": ("fra1", "region: 'fra1' is not allowed on this stack: its datastore's volume, with the engines' "
                       "data, is in 'ams3', and a volume cannot leave its region"),
    "image": ("ubuntu-24-04-x64", "image: 'ubuntu-24-04-x64' is not allowed on this stack: its droplets run "
                                  "'debian-12-x64', and a new one would replace every droplet"),
    "vpcIpRange": ("10.120.0.0/24", "vpcIpRange: '10.120.0.0/24' is not allowed on this stack: its VPC is "
                                    "'10.110.16.0/24', and a new one would replace every droplet"),
}


def test_a_new_region_image_or_vpc_range_is_refused_naming_what_the_stack_was_made_with(staging_deployment):
    """A volume cannot leave its region (the provider would give the new datastore an empty
    volume and delete the old one with the engines' data), and a new image or range would
    replace the datastore's droplet, whose volume cannot be attached to the new one while
    the old one holds it. Every such setting is named at once, before anything changes."""
    changed = mockcloud.stack_settings("staging", **{key: new for key, (new, _) in MADE_WITH.items()})
    with pytest.raises(mockcloud.ProgramFailed) as failed:
        mockcloud.deploy(changed, previous=staging_deployment)
    said = str(failed.value).replace("\\n", "\n")
    assert "Pulumi.staging.yaml has 3 bad setting(s):\n" in said, said
    for _, problem in MADE_WITH.values():
        assert f"\n  - {problem}" in said, problem
    for key, (new, problem) in MADE_WITH.items():
        with pytest.raises(mockcloud.ProgramFailed, match="has 1 bad setting") as failed:
            mockcloud.deploy(mockcloud.stack_settings("staging", **{key: new}), previous=staging_deployment)
        assert problem in str(failed.value), key


def test_and_the_state_keeps_what_the_stack_was_made_with_for_the_check_to_read(staging_deployment):
    """Each kept as made (the mock engine does as the engine does with ignore_changes), so
    the check above reads the stack's, not the new settings'; no droplet, volume, VPC or
    public address is planned for replacement meanwhile (`up --skip-preview` runs steps as
    the program registers them, before the check has stopped it)."""
    kept = (":Droplet", ":Volume", ":Vpc", ":ReservedIp")
    ignored = {(r.type.rsplit(":", 1)[-1], r.name): list(staging_deployment.mocks.options[(r.type, r.name)].ignoreChanges)
               for r in staging_deployment.resources if r.type.endswith(kept)}
    assert ignored == {**{("Droplet", d.name): ["image", "region"] for d in droplets(staging_deployment)},
                       ("Volume", "datastore-volume"): ["region"], ("Vpc", "network-vpc"): ["ipRange", "region"],
                       ("ReservedIp", "lb-ip"): ["region"]}


# The stack's one backup bucket as the program registered it before each role had its own:
# the same resource (type, name, parent) with the same inputs is no replacement, and the
# datastore's backups stay where they are.
DATASTORE_BUCKET_BEFORE = {
    "type": "digitalocean:index/spacesBucket:SpacesBucket",
    "name": "datastore-backups",
    "parent": "urn:pulumi:production::node-platform::pulumi:pulumi:Stack$node-platform:index:Datastore::datastore",
    "inputs": {
        "acl": "private", "forceDestroy": False, "name": "production-app-example-com-backups", "region": "ams3",
        "versioning": {"enabled": True},
        "lifecycleRules": [{"abortIncompleteMultipartUploadDays": 1.0, "enabled": True,
                            "noncurrentVersionExpiration": {"days": 30.0}}],
    },
}


def repository(deployment, member: str) -> str:
    """The restic repository a member's backup push names."""
    return backup_env(deployment.named(f"{member}-backup-push", ":Command"))["RESTIC_REPOSITORY"]


def test_the_datastore_keeps_the_stacks_bucket_and_its_repository_path(production_deployment):
    (bucket,) = [r for r in production_deployment.resources
                 if r.type == DATASTORE_BUCKET_BEFORE["type"] and r.name == DATASTORE_BUCKET_BEFORE["name"]]
    request = production_deployment.mocks.options[(bucket.type, bucket.name)]
    assert request.parent == DATASTORE_BUCKET_BEFORE["parent"]
    assert mockcloud.plain(bucket.inputs) == DATASTORE_BUCKET_BEFORE["inputs"]
    assert bucket.protect
    assert repository(production_deployment, "datastore") == \
        "s3:https://ams3.digitaloceanspaces.com/production-app-example-com-backups/restic/datastore"


def test_a_stack_whose_bucket_was_named_by_the_earlier_rule_keeps_it(monkeypatch):
    """A long domain was cut differently before: the datastore keeps the bucket it has (and
    its repository in it); only the new buckets take the new rule's names."""
    domain = "b" * 50 + ".example.com"
    earlier = f"staging-{domain.replace('.', '-')}-backups"[:63].rstrip("-")
    rule = conventions.bucket_name
    with monkeypatch.context() as m:
        m.setattr(conventions, "bucket_name", lambda stack, domain, purpose=conventions.DATASTORE:
                  earlier if purpose == conventions.DATASTORE else rule(stack, domain, purpose))
        before = mockcloud.deploy(mockcloud.stack_settings("staging", domain=domain))
    after = mockcloud.deploy(mockcloud.stack_settings("staging", domain=domain), previous=before)
    bucket = after.named("datastore-backups", ":SpacesBucket")
    assert (bucket.state["name"], bucket.unchanged) == (earlier, True)
    assert repository(after, "datastore").endswith(f"/{earlier}/restic/datastore")
    lb_bucket = conventions.bucket_name("staging", domain, conventions.LOAD_BALANCER)
    assert after.named("lb-backups", ":SpacesBucket").state["name"] == lb_bucket != earlier
    assert repository(after, "lb").endswith(f"/{lb_bucket}/restic/lb")


def state_after_a_failed_up(before: mockcloud.Deployment, planned: mockcloud.Deployment, ran: set[str]):
    """The stack's state after an `up` of `planned` that ran only the commands `ran` (the
    engine records nothing it did not run): `before`'s, but for those."""
    resources = [next(r for r in planned.mocks.resources if (r.type, r.name) == (b.type, b.name))
                 if b.type == COMMAND and b.name in ran else b for b in before.mocks.resources]
    raw_state = {**before.mocks._raw_state,
                 **{key: state for key, state in planned.mocks._raw_state.items() if key[1] in ran}}
    return state_of(before, resources, raw_state, last_id=planned.mocks.last_id)


def state_renewing(before: mockcloud.Deployment, certificate: str):
    """`before`'s state, but for one certificate that pulumi-tls replaces: one within its
    early-renewal window, which the next `up` issues anew."""
    return state_of(before, [r for r in before.mocks.resources if r.name != certificate], before.mocks._raw_state,
                    last_id=before.mocks.last_id)


def state_of(before: mockcloud.Deployment, resources: list, raw_state: dict, last_id: int):
    """A stack's state as mockcloud.deploy(previous=) reads it: these resources, `before`'s keys and addresses."""
    return types.SimpleNamespace(mocks=types.SimpleNamespace(
        resources=resources, _keys=before.mocks._keys, _raw_state=raw_state,
        retired_addresses=before.mocks.retired_addresses, last_id=last_id))


def changed_commands(deployment) -> set[str]:
    return {r.name for r in of_type(deployment, COMMAND) if not r.unchanged}


def test_a_new_bundle_drains_each_app_server_and_puts_it_back(staging_deployment):
    assert changed_commands(mockcloud.deploy(staging_deployment.settings, previous=staging_deployment)) == set()
    upgraded = mockcloud.deploy(mockcloud.stack_settings("staging", nodeMajor=20), previous=staging_deployment)
    apps = [f"app-{n}" for n in range(1, staging_deployment.settings.app_server_count + 1)]
    assert {f"{a}-{step}" for a in apps for step in ("drain", "undrain")} <= changed_commands(upgraded)


def test_a_server_left_drained_by_a_failed_push_goes_back_when_the_change_is_reverted(staging_deployment):
    """The failed `up` ran app-1's drain and failed at its bundle push. Reverted, the bundle
    push has nothing to do (app-1 went back to the bundle it had), but app-1 is out of the
    LB's pool: the drain runs again, and so does the step that puts app-1 back."""
    upgraded = mockcloud.deploy(mockcloud.stack_settings("staging", nodeMajor=20), previous=staging_deployment)
    failed = state_after_a_failed_up(staging_deployment, upgraded, ran={"app-1-drain"})
    reverted = mockcloud.deploy(staging_deployment.settings, previous=failed)
    assert changed_commands(reverted) == {"app-1-drain", "app-1-undrain"}


def test_a_renewed_certificate_drains_its_app_server_around_its_tls_push(staging_deployment):
    """The tls push reloads the server's nginx: like a new bundle, it runs with the server
    out of the LB's pool; no bundle is pushed, and the other servers are not touched."""
    renewed = mockcloud.deploy(staging_deployment.settings, previous=state_renewing(staging_deployment, "app-1-tls-cert"))
    assert changed_commands(renewed) == {"app-1-drain", "app-1-tls-push", "app-1-undrain"}
