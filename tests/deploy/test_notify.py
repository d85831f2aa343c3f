"""Deploy outcomes posted to the stack's webhook: the POSTs a webhook receives from whole
runs of the tool (the fake fleet of test_roll), and where its URL comes from. The text of
each event is test_notify_text's.

The receiver is HTTPS on loopback, its certificate signed by a CA made here and trusted
through SSL_CERT_FILE (OpenSSL's own variable): the tool's https-only, verifying sender
runs as it does for the real webhook, with nothing in it made for tests.
"""

from __future__ import annotations

import datetime as dt
import io
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy import __main__ as cli
from deploy import notify
from deploy.archive import NotArchived
from deploy.executor import CommandFailed, Executor, Result
from deploy.records import Server
from deploy.roll import Outcome, Step
from deploy.targets import PulumiStack

from fleet import BUILD, NEW, OLD, SERVERS, FakeTarget, Fleet

TOKEN = "T000/B000/s3cr3tT0ken"   # the part of a webhook URL that is its key
A1, A2 = SERVERS[:2]


# --- a webhook on loopback --------------------------------------------------------------

def certificate_files(where: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signs for 127.0.0.1: (ca.pem, cert.pem, key.pem)."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webhook test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = where / "ca.pem", where / "cert.pem", where / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@dataclass
class Webhook:
    url: str
    received: list[dict] = field(default_factory=list)   # each POST: path, content type, body
    statuses: list[int] = field(default_factory=list)    # answers to give, in turn (then 200)
    fleet: Fleet | None = None                           # when set, each POST notes the locks it holds
    silent_while_locked: bool = False                    # the first POST is answered only once no lock is held

    def texts(self) -> list[str]:
        return [json.loads(post["body"])["text"] for post in self.received]


@pytest.fixture
def webhook(tmp_path, monkeypatch):
    ca, cert, key = certificate_files(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    monkeypatch.setattr(notify, "RETRY_PAUSE_SECONDS", 0)
    hook: Webhook

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            hook.received.append({"path": self.path, "content_type": self.headers.get("Content-Type"), "body": body,
                                  "locks": dict(hook.fleet.locks) if hook.fleet else None})
            if hook.silent_while_locked and len(hook.received) == 1:
                deadline = time.monotonic() + 5
                while hook.fleet.locks and time.monotonic() < deadline:
                    time.sleep(0.02)
                hook.received[0]["answered_unlocked"] = not hook.fleet.locks
            self.send_response(hook.statuses.pop(0) if hook.statuses else 200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    hook = Webhook(f"https://127.0.0.1:{server.server_address[1]}/hooks/{TOKEN}")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield hook
    server.shutdown()
    server.server_close()


def run_tool(monkeypatch, fleet: Fleet, target: FakeTarget, *argv: str) -> int:
    monkeypatch.setattr(cli, "target_of", lambda args, executor: target)
    monkeypatch.setattr(cli.release, "build", lambda app, work, executor: BUILD)
    return cli.main(list(argv), executor=fleet)


def timeless(text: str) -> str:
    return re.sub(r"\(healthy in \d+\.\ds\)", "(healthy in Ns)", text)


HOLDER = r"\S+@\S+ since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(deploy, pid \d+\)"


def test_a_deploy_that_succeeds_posts_started_then_done(monkeypatch, webhook):
    fleet = Fleet()
    assert run_tool(monkeypatch, fleet, FakeTarget(webhook=webhook.url), "deploy", "staging") == 0
    assert len(webhook.received) == 2
    assert {(p["path"], p["content_type"]) for p in webhook.received} == {(f"/hooks/{TOKEN}", "application/json")}
    started, done = webhook.texts()
    assert re.fullmatch(rf"\[staging\] deploy of {NEW} started by {HOLDER}", started), started
    assert timeless(done) == (f"[staging] deploy of {NEW}: done\n" + "\n".join(
        f"  {s.name}: {NEW} (healthy in Ns)" for s in SERVERS))
    assert "notification" not in fleet.printed()


def test_a_deploy_that_fails_posts_started_then_stopped_with_each_servers_end(monkeypatch, webhook):
    fleet = Fleet(unhealthy={(A2.address, NEW)})
    assert run_tool(monkeypatch, fleet, FakeTarget(webhook=webhook.url), "deploy", "staging") == cli.EXIT_STOPPED
    started, stopped = webhook.texts()
    assert started.startswith(f"[staging] deploy of {NEW} started by ")
    assert timeless(stopped) == (
        f"[staging] deploy of {NEW}: STOPPED\n"
        f"  app-1: {NEW} (healthy in Ns)\n"
        f"  app-2: {NEW} failed (app-2: health: exit 1: deploy: https://staging-app:8443/healthz did not answer 200 "
        f"... (last: 502)); switched back to {OLD}\n"
        f"  app-3: not touched (still on its release)")


def test_an_upload_that_fails_posts_stopped_with_the_error_its_secrets_redacted(monkeypatch, webhook):
    class UploadFails(Fleet):
        def run(self, argv, *, input=None, timeout=900):
            if argv[0] == "rsync" and argv[-1].startswith(A2.address):
                return Result(argv, 23, "rsync error: token npm_s3cr3t rejected (code 23)\n")
            return super().run(argv, input=input, timeout=timeout)

    fleet = UploadFails(secrets=["npm_s3cr3t"])
    assert run_tool(monkeypatch, fleet, FakeTarget(webhook=webhook.url), "deploy", "staging") == cli.EXIT_STOPPED
    assert webhook.texts()[1:] == [
        f"[staging] deploy of {NEW}: STOPPED: app-2: upload {NEW}: exit 23: rsync error: token [REDACTED] rejected "
        "(code 23) (see the deploying console for each server)"]


@pytest.mark.parametrize("ending", ["done", "stopped by an error"])
def test_the_end_is_posted_once_the_locks_are_released(monkeypatch, webhook, ending):
    """A webhook that does not answer takes its tries' time: the next deploy must not wait on it."""
    class UploadFails(Fleet):
        def run(self, argv, *, input=None, timeout=900):
            if ending != "done" and argv[0] == "rsync" and argv[-1].startswith(A2.address):
                return Result(argv, 23, "rsync error (code 23)\n")
            return super().run(argv, input=input, timeout=timeout)

    fleet = UploadFails()
    webhook.fleet = fleet
    run_tool(monkeypatch, fleet, FakeTarget(webhook=webhook.url), "deploy", "staging")
    started, end = webhook.received
    assert " started by " in json.loads(started["body"])["text"]
    assert end["locks"] == {}, end
    assert (": done" in json.loads(end["body"])["text"]) == (ending == "done")


def test_a_webhook_slow_to_answer_the_start_holds_no_lock(monkeypatch, webhook):
    """The start is posted beside the deploy: a webhook that answers it only once the locks
    are released (one that never answers takes about 34 s) still sees the deploy end."""
    fleet = Fleet()
    webhook.fleet, webhook.silent_while_locked = fleet, True
    assert run_tool(monkeypatch, fleet, FakeTarget(webhook=webhook.url), "deploy", "staging") == 0
    started, end = webhook.received
    assert started["answered_unlocked"], "the deploy waited on the webhook's answer with its locks held"
    assert " started by " in json.loads(started["body"])["text"] and ": done" in json.loads(end["body"])["text"]
    assert "notification" not in fleet.printed()


def test_a_deploy_interrupted_posts_stopped_once_its_locks_are_released(monkeypatch, webhook):
    class Interrupted(Fleet):
        def on_server(self, address, remote, script):
            if remote[3:4] == ["health"] and address == A2.address:
                raise KeyboardInterrupt
            return super().on_server(address, remote, script)

    fleet = Interrupted()
    with pytest.raises(KeyboardInterrupt):
        run_tool(monkeypatch, fleet, FakeTarget(webhook=webhook.url), "deploy", "staging")
    assert fleet.locks == {}
    assert webhook.texts()[1:] == [f"[staging] deploy of {NEW}: STOPPED: interrupted before its end (see the "
                                   "deploying console for each server)"]


def test_a_rollback_posts_its_end_only(monkeypatch, webhook):
    fleet = Fleet()
    assert run_tool(monkeypatch, fleet, FakeTarget(), "deploy", "staging") == 0   # no webhook: nothing posted
    assert webhook.received == []
    assert run_tool(monkeypatch, fleet, FakeTarget(webhook=webhook.url), "rollback", "staging") == 0
    assert [timeless(t) for t in webhook.texts()] == [f"[staging] rollback to {OLD}: done\n" + "\n".join(
        f"  {s.name}: {OLD} (healthy in Ns)" for s in SERVERS)]
    never = "20200101T000000Z-0000000"
    assert run_tool(monkeypatch, fleet, FakeTarget(webhook=webhook.url), "rollback", "staging", "--to", never) == 1
    assert webhook.texts()[1].startswith(f"[staging] rollback to {never}: STOPPED: cannot roll back: app-1: does not "
                                         f"hold {never}")


def test_a_restart_posts_its_end_only_when_it_restarted_something(monkeypatch, webhook):
    fleet = Fleet()
    hooked = FakeTarget(webhook=webhook.url)
    assert run_tool(monkeypatch, fleet, hooked, "restart", "staging") == 0
    assert webhook.received == [], "nothing had changed: nothing restarted, nothing said"
    fleet.servers[SERVERS[1].address].unit_changed = True
    assert run_tool(monkeypatch, fleet, hooked, "restart", "staging") == 0
    assert webhook.texts() == ["[staging] restart of the apps: done (app-2)"]
    fleet.servers[SERVERS[0].address].unit_changed = True
    fleet.restart_breaks.add(SERVERS[0].address)
    assert run_tool(monkeypatch, fleet, hooked, "restart", "staging") == 1
    assert webhook.texts()[1] == ("[staging] restart of the apps: STOPPED: app-1: its apps did not come back healthy; "
                                  "it stays out of the LB's pool until a restart brings it back healthy (see the "
                                  "deploying console for each server)")


def test_a_refused_deploy_a_failed_build_and_the_read_only_verbs_never_look_the_webhook_up(monkeypatch, webhook):
    looked_up = []

    class Counting(FakeTarget):
        def alert_webhook_url(self):
            looked_up.append(1)
            return super().alert_webhook_url()

    locked = Fleet(lock_holder="bob@ci since 2026-11-29T21:30:05Z (deploy, pid 7)")
    assert run_tool(monkeypatch, locked, Counting(webhook=webhook.url), "deploy", "staging") == cli.EXIT_LOCKED
    assert run_tool(monkeypatch, Fleet(), Counting(webhook=webhook.url), "releases", "staging") == 0

    def build_fails(app, work, executor):
        raise CommandFailed("npm ci", Result(["npm", "ci"], 1, "npm error\n"))

    monkeypatch.setattr(cli.release, "build", build_fails)   # no release id: nothing was started
    assert cli.main(["deploy", "staging"], executor=Fleet()) == cli.EXIT_STOPPED
    assert looked_up == [] and webhook.received == []


def test_without_a_webhook_one_line_says_notifications_are_off(monkeypatch, webhook):
    fleet = Fleet()
    assert run_tool(monkeypatch, fleet, FakeTarget(), "deploy", "staging") == 0
    said = [line for line in fleet.printed().splitlines() if "notification" in line]
    assert said == ["notifications are off (no alertWebhookUrl): this test stack has no webhook"]
    assert webhook.received == []


# --- a webhook that does not take them --------------------------------------------------

def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("unhealthy", [False, True], ids=["succeeds", "fails"])
def test_an_unreachable_webhook_changes_no_exit_code_and_its_url_is_never_printed(monkeypatch, webhook, unhealthy):
    url = f"https://127.0.0.1:{closed_port()}/hooks/{TOKEN}"
    fleet = Fleet(unhealthy={(A1.address, NEW)} if unhealthy else set(), verbose=True)
    code = run_tool(monkeypatch, fleet, FakeTarget(webhook=url), "deploy", "staging")
    assert code == (cli.EXIT_STOPPED if unhealthy else 0)
    printed = fleet.printed()
    not_delivered = [line for line in printed.splitlines() if line.startswith("notification NOT delivered: ")]
    assert len(not_delivered) == 2, printed   # started, and the end
    assert all("Connection refused" in line and f"({notify.ATTEMPTS} of {notify.ATTEMPTS} attempts)" in line
               for line in not_delivered), not_delivered
    assert TOKEN not in printed and url not in printed
    assert all(s.running == (OLD if unhealthy else NEW) for s in fleet.servers.values())
    assert fleet.locks == {}


def test_a_failing_webhook_is_tried_again_a_refusing_one_is_not(webhook):
    webhook.statuses = [500] * notify.ATTEMPTS
    with pytest.raises(notify.NotDelivered, match=rf"HTTP 500 \({notify.ATTEMPTS} of {notify.ATTEMPTS} attempts\)"):
        notify.post(webhook.url, notify.payload("x"))
    assert len(webhook.received) == notify.ATTEMPTS
    webhook.statuses = [503]
    notify.post(webhook.url, notify.payload("then it works"))
    assert webhook.texts()[-1] == "then it works" and len(webhook.received) == notify.ATTEMPTS + 2
    webhook.statuses = [404]
    with pytest.raises(notify.NotDelivered, match=rf"HTTP 404 \(1 of {notify.ATTEMPTS} attempts\)"):
        notify.post(webhook.url, notify.payload("x"))


def test_an_untrusted_certificate_or_plain_http_is_refused(webhook, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE")
    with pytest.raises(notify.NotDelivered, match="CERTIFICATE_VERIFY_FAILED"):
        notify.post(webhook.url, notify.payload("x"))
    with pytest.raises(notify.NotDelivered, match="not https"):
        notify.post(webhook.url.replace("https://", "http://"), notify.payload("x"))
    assert webhook.received == []


def test_a_webhook_that_never_answers_is_given_up_on_in_bounded_time(monkeypatch):
    monkeypatch.setattr(notify, "ATTEMPT_SECONDS", 0.3)
    monkeypatch.setattr(notify, "RETRY_PAUSE_SECONDS", 0)
    with socket.socket() as silent:   # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        start = time.monotonic()
        with pytest.raises(notify.NotDelivered, match="timed out"):
            notify.post(f"https://127.0.0.1:{silent.getsockname()[1]}/hook", notify.payload("x"))
    # Far below the 3 x 10 s the tries would take with their default bound.
    assert time.monotonic() - start < notify.ATTEMPTS * 0.3 + 10


# --- where the URL comes from ---------------------------------------------------------------

def test_a_real_stacks_url_comes_from_its_secret_outputs_read_once_and_never_shown(webhook):
    url = webhook.url

    @dataclass
    class Pulumi(Executor):
        runs: list = field(default_factory=list)

        def run(self, argv, *, input=None, timeout=900, secret_output=False):
            self.runs.append((argv, secret_output))
            outputs = {"alert_webhook_url": url, "public_ip": "198.51.100.2"}
            result = Result(argv, 0, json.dumps(outputs))
            if self.verbose:
                for line in self.printable(result, secret_output):
                    self.say("  | " + line)
            return result

    out = io.StringIO()
    executor = Pulumi(verbose=True, out=out)
    target = PulumiStack("staging", executor)
    notifier = notify.Notifier("staging", target, executor)
    notifier.deploy_started(NEW, "alice@laptop since 2026-11-29T21:30:05Z (deploy, pid 1)")
    notifier.finished(Outcome("deploy", [Step(Server("app-1", "10.0.0.2"), OLD, NEW, ok=True)]))
    notifier.send_end()
    with pytest.raises(NotArchived):   # the archive's output is read from the same, once
        target.archive_store()
    assert len(webhook.received) == 2
    assert executor.runs == [(["pulumi", "stack", "output", "--json", "--show-secrets", "--stack", "staging"], True)]
    executor.say(f"a line naming {url}")
    assert TOKEN not in out.getvalue() and "a line naming [REDACTED]" in out.getvalue()


def test_a_local_stacks_url_comes_from_its_recorded_outputs(monkeypatch):
    from localcloud import records
    from deploy.targets import LocalStack

    recorded = {"outputs": {"alert_webhook_url": f"https://hooks.example.com/{TOKEN}"}}
    monkeypatch.setattr(records, "load", lambda stack: recorded if stack == "staging" else None)
    assert LocalStack("staging").alert_webhook_url() == f"https://hooks.example.com/{TOKEN}"
    with pytest.raises(notify.NoWebhook, match="local stack other has no alert_webhook_url output"):
        LocalStack("other").alert_webhook_url()
    recorded["outputs"]["alert_webhook_url"] = ""
    with pytest.raises(notify.NoWebhook, match="local stack staging's alert_webhook_url output is empty"):
        LocalStack("staging").alert_webhook_url()
