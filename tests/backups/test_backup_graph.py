"""The backups in the Pulumi graph: per role, a bucket of its own, a key granted on that
bucket alone and a generated repository password, and on each droplet the `backup` push that carries them
(secret) with the schedule and retention from the settings; nothing of it in first-boot
data.
"""

from __future__ import annotations

import json
import re
import shlex

import pytest

import cloudinit
import mockcloud
from cloudinit import common, load_balancer
from model import conventions

# The graph under the mock engine, nothing run on this machine: tier `fast`, not its folder's.
pytestmark = pytest.mark.fast

KEY_ID = "DO00TESTACCESSKEYID"
SECRET_KEY = "TestSecretKeyValue/with+characters="


@pytest.fixture
def key_mock(monkeypatch):
    """The mock engine gives a SpacesKey the two values DigitalOcean returns for one."""
    monkeypatch.setattr(
        mockcloud.ProviderMocks, "_SpacesKey",
        lambda self, inputs: {"accessKey": KEY_ID, "secretKey": SECRET_KEY}, raising=False,
    )


# Each droplet of the staging stack (two app servers) by its name in the stack, and its role.
MEMBERS = {"lb": conventions.LOAD_BALANCER, "app-1": conventions.APP_SERVER, "app-2": conventions.APP_SERVER,
           "datastore": conventions.DATASTORE}
BACKUP_PUSHES = sorted(f"{member}-backup-push" for member in MEMBERS)


def push_files(deployment, member="datastore"):
    push = deployment.named(f"{member}-backup-push", ":Command")
    assert push.state["create"].split()[-1] == "backup"
    assert mockcloud.is_secret(push.inputs["stdin"])
    return json.loads(mockcloud.plain(push.inputs["stdin"]))


def env_values(text: str) -> dict[str, str]:
    return {k: shlex.split(v)[0] if v else "" for k, v in (line.split("=", 1) for line in text.splitlines())}


def test_each_role_has_a_bucket_of_its_own_and_a_key_granted_on_it_alone():
    """Root on an app server or the LB holds its role's key: it must reach no other role's
    bucket (the datastore's dumps) nor the release archive's."""
    deployment = mockcloud.deploy(mockcloud.stack_settings("staging"))
    buckets = {r.name: r.state["name"] for r in deployment.of_type(":SpacesBucket")}
    assert buckets == {
        "datastore-backups": "staging-staging-example-com-backups",   # the stack's one bucket before
        "lb-backups": "staging-staging-example-com-lb-backups",
        "app-backups": "staging-staging-example-com-app-backups",
        "release-archive-bucket": "staging-staging-example-com-releases",
    }
    grants = {r.name: r.state["grants"] for r in deployment.of_type(":SpacesKey")}
    assert grants == {
        f"{component}-backup-key": [{"bucket": buckets[f"{component}-backups"], "permission": "readwrite"}]
        for component in ("lb", "app", "datastore")
    } | {"release-archive-key": [{"bucket": buckets["release-archive-bucket"], "permission": "readwrite"}]}


def test_backup_key_is_scoped_to_the_bucket_and_reaches_only_the_push(key_mock):
    settings = mockcloud.stack_settings(
        "staging", backupHourUtc=5, backupKeepDaily=10, backupKeepWeekly=3, backupKeepMonthly=12
    )
    deployment = mockcloud.deploy(settings)
    passwords = {}
    for member, role in MEMBERS.items():
        component = "app" if role == conventions.APP_SERVER else member
        bucket = deployment.named(f"{component}-backups", ":SpacesBucket")
        assert bucket.state["name"] == conventions.bucket_name("staging", settings.domain, role)
        key = deployment.named(f"{component}-backup-key", ":SpacesKey")
        assert key.state["name"] == f"staging-{role}-backups"
        assert key.state["grants"] == [{"bucket": bucket.state["name"], "permission": "readwrite"}]
        assert "secretKey" in key.additional_secret_outputs
        password = deployment.named(f"{component}-backup-repository-password", ":RandomPassword")
        passwords[role] = password.state["result"]
        files = push_files(deployment, member)
        assert set(files) == {"backup.env", "alert.env", "backup.conf", f"{conventions.BACKUP_UNIT}.timer"}
        assert env_values(files["alert.env"]) == {"ALERT_WEBHOOK_URL": ""}  # no alertWebhookUrl in the file
        # One repository per role, a series of snapshots per droplet.
        assert env_values(files["backup.env"]) == {
            "RESTIC_REPOSITORY": f"s3:https://{settings.spaces_region}.digitaloceanspaces.com/"
                                 f"{bucket.state['name']}/restic/{role}",
            "RESTIC_PASSWORD": password.state["result"],
            "AWS_ACCESS_KEY_ID": KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "BACKUP_HOST": f"staging-{member}",
            # Each role's first droplet creates its repository; app-2 only checks it.
            "BACKUP_CREATES_REPOSITORY": "no" if member == "app-2" else "yes",
        }
        assert re.findall(r"^KEEP_(\w+)=(\d+)$", files["backup.conf"], re.M) == [
            ("DAILY", "10"), ("WEEKLY", "3"), ("MONTHLY", "12")
        ]
        assert "OnCalendar=*-*-* 05:00:00 UTC" in files[f"{conventions.BACKUP_UNIT}.timer"]
        # On the droplet: root-only, checked by reaching the repository before anything else.
        table = json.loads(cloudinit.push_table(role, settings))["backup"]
        assert table["files"]["backup.env"] == {"path": conventions.BACKUP_SECRETS_FILE, "mode": "0600", "owner": "root:root"}
        assert table["check"] == [[conventions.BACKUP_COMMAND, "init"]]
    # A role's files open no other role's repository.
    assert len(set(passwords.values())) == 3
    # Never in first-boot data, which DigitalOcean shows in its control panel.
    for droplet in deployment.of_type(":Droplet"):
        for secret in (*passwords.values(), SECRET_KEY, KEY_ID):
            assert secret not in droplet.state["userData"]
        assert "KEEP_DAILY=" not in droplet.state["userData"]  # retention changes replace no droplet
        assert "OnCalendar=*-*-* 05:" not in droplet.state["userData"]  # the hour neither


def test_the_load_balancer_asks_for_its_certificate_once_its_backups_are_reachable():
    settings = mockcloud.stack_settings("staging")
    backup = json.loads(cloudinit.push_table(conventions.LOAD_BALANCER, settings))["backup"]
    assert backup["then"][-1] == ["systemctl", "start", "--no-block", f"{load_balancer.CERTIFICATE_UNIT}.service"]
    files = cloudinit.rendered_files(conventions.LOAD_BALANCER, settings)
    assert "/etc/letsencrypt" in files[conventions.BACKUP_LIBRARY]
    assert f"{conventions.RESTORE_COMMAND} certificates" in files[conventions.CERTIFICATE_COMMAND]
    without = cloudinit.rendered_files(conventions.LOAD_BALANCER, mockcloud.stack_settings("staging", backups=False))
    assert conventions.RESTORE_COMMAND not in without[conventions.CERTIFICATE_COMMAND]


def test_schedule_and_retention_changes_touch_only_the_backup_push(key_mock):
    before = mockcloud.deploy(mockcloud.stack_settings("staging"))
    after = mockcloud.deploy(
        mockcloud.stack_settings("staging", backupHourUtc=1, backupKeepMonthly=24), previous=before
    )
    changed = sorted(r.name for r in after.resources if not r.unchanged and not r.type.startswith("pulumi:"))
    assert changed == BACKUP_PUSHES


def test_no_backups_means_no_key_push_unit_or_restic():
    settings = mockcloud.stack_settings("staging", backups=False)
    deployment = mockcloud.deploy(settings)
    kinds = {r.state["create"].split()[-1] for r in deployment.of_type(":Command")}
    assert "backup" not in kinds
    assert not deployment.of_type(":SpacesKey") and not deployment.of_type(":SpacesBucket")
    for role in conventions.ROLES:
        files = cloudinit.rendered_files(role, settings)
        assert common.BACKUP_SERVICE not in files
        assert "restic" not in files[common.LIBRARY] + files[common.ROLE_STEPS]
        assert "backup" not in json.loads(cloudinit.push_table(role, settings))


WEBHOOK = "https://hooks.example.com/services/T000/B000/Xy'z\"$(reboot)"


def test_the_webhook_reaches_only_the_backup_push_root_only(key_mock):
    settings = mockcloud.stack_settings("staging", alertWebhookUrl=WEBHOOK)
    deployment = mockcloud.deploy(settings)
    files = push_files(deployment)  # the push's stdin is a secret
    # Quoted for the shell that sources it: the value comes back exactly, never run.
    assert env_values(files["alert.env"]) == {"ALERT_WEBHOOK_URL": WEBHOOK}
    table = json.loads(cloudinit.push_table(conventions.DATASTORE, settings))["backup"]
    assert table["files"]["alert.env"] == {"path": conventions.ALERT_SETTINGS_FILE, "mode": "0600", "owner": "root:root"}
    for resource in deployment.resources:
        if resource.name not in BACKUP_PUSHES:
            assert "T000/B000" not in json.dumps(resource.inputs), resource.name
    assert all("T000/B000" not in d.state["userData"] for d in deployment.of_type(":Droplet"))


def test_setting_or_unsetting_the_webhook_touches_only_the_backup_push(key_mock):
    before = mockcloud.deploy(mockcloud.stack_settings("staging"))
    with_webhook = mockcloud.deploy(mockcloud.stack_settings("staging", alertWebhookUrl=WEBHOOK), previous=before)
    without = mockcloud.deploy(mockcloud.stack_settings("staging"), previous=with_webhook)
    for deployment in (with_webhook, without):
        changed = sorted(r.name for r in deployment.resources if not r.unchanged and not r.type.startswith("pulumi:"))
        assert changed == BACKUP_PUSHES
    assert env_values(push_files(without)["alert.env"]) == {"ALERT_WEBHOOK_URL": ""}
