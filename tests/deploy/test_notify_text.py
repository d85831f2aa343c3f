"""The text the deploy tool posts to the stack's webhook for each event: what a person
reads in Slack or Mattermost. The POSTs themselves, from whole runs of the tool, are
test_notify's."""

from __future__ import annotations

import json

from deploy import notify
from deploy.roll import Outcome, Step

from fleet import NEW, OLD, SERVERS

A1, A2, A3 = SERVERS


def test_the_payload_is_slack_and_mattermosts_text_object():
    assert json.loads(notify.payload('a "quoted" line\nand another')) == {"text": 'a "quoted" line\nand another'}


def test_deploy_started_names_stack_release_and_who():
    holder = "alice@laptop since 2026-11-29T21:30:05Z (deploy, pid 4242)"
    assert notify.started_text("staging", NEW, holder) == (
        f"[staging] deploy of {NEW} started by alice@laptop since 2026-11-29T21:30:05Z (deploy, pid 4242)")


def test_deploy_done_names_each_server_and_its_release():
    outcome = Outcome("deploy", [Step(A1, OLD, NEW, ok=True, seconds=4.71), Step(A2, OLD, NEW, ok=True, seconds=5.0)])
    assert notify.outcome_text("staging", outcome, NEW) == (
        f"[staging] deploy of {NEW}: done\n"
        f"  app-1: {NEW} (healthy in 4.7s)\n"
        f"  app-2: {NEW} (healthy in 5.0s)")


def test_deploy_stopped_says_which_server_failed_whether_it_is_back_and_which_were_not_touched():
    outcome = Outcome("deploy", [Step(A1, OLD, NEW, ok=True, seconds=4.0),
                                 Step(A2, OLD, NEW, problem="app-2: health: exit 1: last: 502", switched_back=True)],
                      untouched=[A3])
    assert notify.outcome_text("staging", outcome, NEW) == (
        f"[staging] deploy of {NEW}: STOPPED\n"
        f"  app-1: {NEW} (healthy in 4.0s)\n"
        f"  app-2: {NEW} failed (app-2: health: exit 1: last: 502); switched back to {OLD}\n"
        f"  app-3: not touched (still on its release)")
    outcome.steps[1].switched_back = False
    assert f"  app-2: {NEW} failed (app-2: health: exit 1: last: 502); NOT switched back: check it" in \
        notify.outcome_text("staging", outcome, NEW)


def test_rollback_done_and_stopped_name_the_releases_switched_to():
    done = Outcome("rollback", [Step(A1, NEW, OLD, ok=True, seconds=3.0), Step(A2, NEW, OLD, ok=True, seconds=3.5)])
    assert notify.outcome_text("staging", done, "the previous release") == (
        f"[staging] rollback to {OLD}: done\n  app-1: {OLD} (healthy in 3.0s)\n  app-2: {OLD} (healthy in 3.5s)")
    stopped = Outcome("rollback", [Step(A1, NEW, OLD, problem="app-1: reload the apps: exit 1: no", switched_back=True)],
                      untouched=[A2])
    assert notify.outcome_text("staging", stopped, OLD) == (
        f"[staging] rollback to {OLD}: STOPPED\n"
        f"  app-1: {OLD} failed (app-1: reload the apps: exit 1: no); switched back to {NEW}\n"
        f"  app-2: not touched (still on its release)")


def test_a_run_ended_by_an_error_says_so():
    assert notify.stopped_text("staging", "deploy", NEW, "app-2: upload: exit 23: rsync error") == (
        f"[staging] deploy of {NEW}: STOPPED: app-2: upload: exit 23: rsync error "
        "(see the deploying console for each server)")
    assert notify.stopped_text("staging", "rollback", "the previous release", "cannot roll back: app-1: no release "
                               "before x").startswith("[staging] rollback to the previous release: STOPPED: cannot")
