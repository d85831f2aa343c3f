"""The example app's job queue on the booted stack: a job posted through the LB is queued
on RabbitMQ (MongoDB is off here), taken by the worker process its platform.json
declares, recorded in PostgreSQL and shown by GET /api/jobs; the apps' logs hold no warning
of how they reached the datastore."""

from __future__ import annotations

import json
import uuid

import pytest

from localcloud import shell
from model import conventions

pytestmark = pytest.mark.localcloud


def answer(s, *curl: str) -> tuple[str, dict]:
    proc = s.https("/api/jobs", *curl, "-w", "\n%{http_code}")
    body, _, code = proc.stdout.rpartition("\n")
    return code, json.loads(body) if body.strip().startswith("{") else {"raw": body}


def test_a_job_goes_through_rabbitmq_to_the_worker_and_back_in_the_job_list(local_stack):
    text = f"job-{uuid.uuid4()}"
    code, queued = answer(local_stack, "-X", "POST", "-H", "content-type: application/json",
                          "--data", json.dumps({"text": text}))
    assert code == "202", queued
    assert queued["engines"]["rabbitmq"]["status"] == "ok", queued

    def listed() -> dict | None:
        code, seen = answer(local_stack)
        return seen if code == "200" and any(job.get("text") == text for job in seen.get("jobs", [])) else None
    seen = shell.wait_until(listed, 60, lambda: f"job {text} not in the list: {answer(local_stack)}", every=1)
    assert seen.get("store") == "postgresql", seen
    done = [job for job in seen["jobs"] if job.get("text") == text]
    assert [job["engine"] for job in done] == ["rabbitmq"], seen
    assert done[0]["processedAt"] >= done[0]["queuedAt"]
    # They sent the certificate's name as the server's name, not the address (DEP0123).
    for server in local_stack.app_servers():
        logged = local_stack.run(server, ["journalctl", "--no-pager", "-u", f"{conventions.APPS_UNIT}.service"])
        assert logged.returncode == 0 and "worker: ready" in logged.stdout, logged.stdout + (logged.stderr or "")
        assert "DeprecationWarning" not in logged.stdout, server
