"""The example app's job queue on real engines: the datastore's RabbitMQ and PostgreSQL,
provisioned from the rendered files in a throwaway namespace (`datastore_sandbox`), and
the API and the worker started with the .env an app server gets. A job queued through
the API is taken from RabbitMQ by the worker and shown by the API as processed; notes
still go through RabbitMQ beside it; the worker stops on SIGINT with exit 0; neither warns."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import mockcloud
from cloudinit import app_server, datastore
from datastore_sandbox import ROUND, Sandbox, password, tool

pytestmark = pytest.mark.sandbox

APP = Path(__file__).resolve().parents[2] / "example-app"


def test_a_job_queued_on_rabbitmq_is_processed_by_the_worker_and_shown_by_the_api(tmp_path):
    tool("rabbitmq-server", "rabbitmq-server")
    tool("npm", "npm")
    settings = mockcloud.stack_settings("staging", engines=["postgresql", "rabbitmq"])
    passwords = {name: password() for name in datastore.password_names()}
    app = tmp_path / "app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("node_modules"))
    subprocess.run(["npm", "ci", "--omit=dev", "--no-audit", "--no-fund", "--loglevel=error"], cwd=app,
                   check=True, capture_output=True, timeout=600)
    box = Sandbox(tmp_path / "box", settings, passwords)
    env_file = tmp_path / "app.env"
    env_file.write_text(app_server.app_env(box.address, passwords, settings))
    run = box.run(ROUND + f"""
round pg postgresql_steps
round mq rabbitmq_steps
export PLATFORM_ENV_FILE={env_file}
cd {app}
PORT=3999 node api/server.js >{tmp_path}/api.log 2>&1 &
node worker/index.js >{tmp_path}/worker.log 2>&1 &
worker=$!
for _ in $(seq 150); do curl -fsS http://127.0.0.1:3999/api/hello >/dev/null 2>&1 && break; sleep 0.2; done
curl -sS -o {tmp_path}/queued.json -w '%{{http_code}}' >{tmp_path}/queued.status -X POST -d '{{"text": "a real job"}}' http://127.0.0.1:3999/api/jobs
for _ in $(seq 150); do curl -fsS http://127.0.0.1:3999/api/jobs >{tmp_path}/jobs.json && grep -q 'a real job' {tmp_path}/jobs.json && break; sleep 0.2; done
check processed grep -q '"engine":"rabbitmq"' {tmp_path}/jobs.json
# The notes share the API's RabbitMQ connection with the jobs' publishing.
check note-written test "$(curl -sS -o /dev/null -w '%{{http_code}}' -X POST -d '{{"text": "a note"}}' http://127.0.0.1:3999/api/notes)" = 201
check note-read bash -c "curl -fsS http://127.0.0.1:3999/api/notes | grep -q 'a note'"
kill -INT $worker
wait $worker
echo "CHECK worker-exit $?"
""", timeout=280)
    logs = "\n".join(f"{name}: {(tmp_path / name).read_text()}"
                     for name in ("api.log", "worker.log", "queued.status", "queued.json", "jobs.json")
                     if (tmp_path / name).exists())
    out = run.output + logs
    assert run.status("round-pg") == 0 and run.status("round-mq") == 0, out
    assert (tmp_path / "queued.status").read_text() == "202", out
    queued = json.loads((tmp_path / "queued.json").read_text())
    assert queued["engines"] == {"rabbitmq": {"status": "ok", "result": None}, "mongodb": {"status": "disabled"}}, out
    assert run.status("processed") == 0, out
    shown = json.loads((tmp_path / "jobs.json").read_text())
    assert shown["store"] == "postgresql", out
    [job] = shown["jobs"]
    assert (job["id"], job["engine"], job["text"]) == (queued["job"]["id"], "rabbitmq", "a real job"), out
    assert job["processedAt"] >= job["queuedAt"], out
    assert run.status("note-written") == 0 and run.status("note-read") == 0, out
    assert run.status("worker-exit") == 0, out
    assert "worker: ready" in (tmp_path / "worker.log").read_text(), out
    # Both sent the certificate's name, not the address, as the server's name (Node warns
    # of an address there: DEP0123), and verified the certificate by it.
    for log in ("api.log", "worker.log"):
        assert "DeprecationWarning" not in (tmp_path / log).read_text(), out
