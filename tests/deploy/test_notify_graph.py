"""The stack output the deploy tool posts its outcomes to: `alert_webhook_url`, the setting
alertWebhookUrl, secret whether set or not, and empty without it. Setting it replaces no
droplet (tests/test_upgrade_in_place.py changes every setting at once; this checks it alone)."""

from __future__ import annotations

import json

import pytest

import mockcloud
from deploy import notify

WEBHOOK = "https://hooks.example.com/services/T000/B000/deploys"


@pytest.fixture(scope="module")
def with_webhook():
    before = mockcloud.deploy(mockcloud.stack_settings("staging"))
    return before, mockcloud.deploy(mockcloud.stack_settings("staging", alertWebhookUrl=WEBHOOK), previous=before)


def test_the_output_is_the_setting_and_secret(with_webhook):
    _, deployment = with_webhook
    assert deployment.outputs[notify.OUTPUT] == WEBHOOK
    assert deployment.secret_outputs[notify.OUTPUT] is True
    public = json.dumps({k: v for k, v in deployment.outputs.items() if not deployment.secret_outputs[k]})
    assert "T000/B000" not in public
    assert notify.webhook_from_outputs("stack staging", deployment.outputs) == WEBHOOK


def test_without_the_setting_the_output_is_empty_and_still_secret(staging_deployment):
    assert staging_deployment.outputs[notify.OUTPUT] == ""
    assert staging_deployment.secret_outputs[notify.OUTPUT] is True
    with pytest.raises(notify.NoWebhook, match="stack staging's alert_webhook_url output is empty"):
        notify.webhook_from_outputs("stack staging", staging_deployment.outputs)


def test_an_older_programs_outputs_say_so():
    with pytest.raises(notify.NoWebhook, match="stack staging has no alert_webhook_url output; `pulumi up` with"):
        notify.webhook_from_outputs("stack staging", {"public_ip": "198.51.100.2"})


def test_setting_it_replaces_no_droplet(with_webhook):
    before, after = with_webhook
    droplets = {d.name: d.state for d in before.of_type(":Droplet")}
    assert droplets and {d.name: d.state for d in after.of_type(":Droplet")} == droplets
    assert all(d.unchanged for d in after.of_type(":Droplet"))
