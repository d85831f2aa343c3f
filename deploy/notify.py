"""Deploy outcomes to the stack's webhook (the setting alertWebhookUrl), so the team's
channel hears of every deploy, rollback and restart, whoever ran it and from where.

One POST of `{"text": ...}` per event, as Slack and Mattermost incoming webhooks take it
and as the droplets' backup alerts send it (cloudinit/common/platform-backup.sh): a deploy
started, then done or STOPPED; a rollback, or a restart that restarted anything, done or
STOPPED. https only (the setting allows
nothing else), the certificate checked against the system's CAs (`SSL_CERT_FILE` replaces
them: OpenSSL reads it), no redirect followed.

The URL is a secret: it comes from the stack's secret output `alert_webhook_url`, read
when the first notification is sent (not before: `status` or a refused deploy never reads
it), and joins the executor's secrets, so no printed line shows it. A notification that
cannot be delivered is said on the console and changes nothing else: not the deploy's
course, not its exit code, not how long it holds the deploy locks (the start is posted
beside the deploy, the end once the locks are released).
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Protocol

from .executor import Executor
from .roll import Outcome, summary

OUTPUT = "alert_webhook_url"   # the secret stack output the URL comes from
ATTEMPTS = 3
ATTEMPT_SECONDS = 10           # each try's connect and answer
RETRY_PAUSE_SECONDS = 2


class NoWebhook(Exception):
    """Why this stack's deploys are not notified: said once, and the deploy goes on."""


class NotDelivered(Exception):
    """Why a notification did not arrive (never naming the URL)."""


class WebhookSource(Protocol):
    def alert_webhook_url(self) -> str:
        """The URL; raises NoWebhook saying why there is none."""


def webhook_from_outputs(stack: str, outputs: dict) -> str:
    """The URL from the outputs (secrets shown) of `stack` ("stack staging", "local stack
    staging"); NoWebhook when it has none."""
    if OUTPUT not in outputs:
        raise NoWebhook(f"{stack} has no {OUTPUT} output; `pulumi up` with this version of the program "
                        "adds it")
    url = outputs[OUTPUT]
    if not url:
        raise NoWebhook(f"{stack}'s {OUTPUT} output is empty")
    if not isinstance(url, str):
        raise NoWebhook(f"{stack}'s {OUTPUT} output is not a URL")
    return url


# --- what is said ---------------------------------------------------------------------

def payload(text: str) -> bytes:
    return json.dumps({"text": text}).encode()


def started_text(stack: str, release_id: str, holder: str) -> str:
    return f"[{stack}] deploy of {release_id} started by {holder}"


def outcome_text(stack: str, outcome: Outcome, release: str) -> str:
    """`release`: the deploy's release id, or what a rollback was asked for; a rollback's
    text names the releases it switched to instead, once it has."""
    targets = list(dict.fromkeys(step.to_release for step in outcome.steps))
    what = f"deploy of {release}" if outcome.action == "deploy" else f"rollback to {', '.join(targets) or release}"
    return "\n".join([f"[{stack}] {what}: {'done' if outcome.ok else 'STOPPED'}", *summary(outcome)[1:]])


def restarted_text(stack: str, servers: list[str]) -> str:
    return f"[{stack}] restart of the apps: done ({', '.join(servers)})"


def stopped_text(stack: str, action: str, release: str, problem: str) -> str:
    """A deploy, rollback or restart ended by an error rather than an outcome (an upload,
    the archive, a server that did not answer or come back): what the console said."""
    what = {"deploy": f"deploy of {release}", "rollback": f"rollback to {release}"}.get(action, "restart of the apps")
    return f"[{stack}] {what}: STOPPED: {problem} (see the deploying console for each server)"


# --- sending ------------------------------------------------------------------------------

class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A webhook answers where it is; a redirect (to plain http, say) is an answer refused."""

    def redirect_request(self, *args, **kwargs):
        return None


def post(url: str, body: bytes) -> None:
    """POST body to url, ATTEMPTS times at most, retrying what may pass (no answer, 5xx,
    429); raises NotDelivered."""
    attempts, timeout, pause = ATTEMPTS, ATTEMPT_SECONDS, RETRY_PAUSE_SECONDS   # read here: tests shorten them
    if not url.startswith("https://"):
        raise NotDelivered("the webhook URL is not https:// (refused)")
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ssl.create_default_context()),
                                         _NoRedirects())
    problem = ""
    for attempt in range(1, attempts + 1):
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with opener.open(request, timeout=timeout) as answer:
                answer.read()
            return
        except urllib.error.HTTPError as error:
            problem = f"the webhook answered HTTP {error.code}"
            if error.code < 500 and error.code != 429:
                break   # the request itself is refused: another try gets the same answer
        except urllib.error.URLError as error:
            problem = f"no answer: {error.reason}"
        except (OSError, ValueError, http.client.HTTPException) as error:   # a timeout while reading, a bad answer
            problem = f"no answer: {type(error).__name__}: {error}"
        if attempt < attempts:
            time.sleep(pause)
    raise NotDelivered(f"{problem} ({attempt} of {attempts} attempts)")


@dataclass
class Notifier:
    """The events of one run of the tool. A webhook that does not answer takes up to
    ATTEMPTS tries of ATTEMPT_SECONDS (about 34 s), and neither this deploy nor the next
    must wait on it while the locks are held: the start is posted beside the deploy, the
    end is kept until send_end(), which the tool calls once the locks are released and
    which posts it after the start."""

    stack: str
    source: WebhookSource
    executor: Executor
    action: str | None = None      # the deploy or rollback under way, until its end is known
    release: str = ""
    end: str | None = None         # what send_end() sends
    _url: str | None = field(default=None, repr=False)
    _looked_up: bool = False
    _start: threading.Thread | None = None   # the start's post, under way beside the deploy

    def webhook(self) -> str | None:
        """The URL, looked up once; None (said once) when notifications are off."""
        if not self._looked_up:
            self._looked_up = True
            try:
                self._url = self.source.alert_webhook_url()
            except NoWebhook as why:
                self.executor.say(f"notifications are off (no alertWebhookUrl): {why}")
            except (RuntimeError, OSError, ValueError) as problem:   # the outputs unreadable: not the deploy's end
                self.executor.say(f"notification NOT delivered (nor any this run): the webhook could not be looked "
                                  f"up: {problem}")
            if self._url:
                self.executor.secrets.append(self._url)   # redacted from every line printed from here on
        return self._url

    def send(self, text: str) -> None:
        url = self.webhook()
        if url is None:
            return
        try:
            post(url, payload(self.executor.redact(text)))
        except NotDelivered as problem:
            self.executor.say(f"notification NOT delivered: {problem}")

    def deploy_started(self, release_id: str, holder: str) -> None:
        self.action, self.release = "deploy", release_id
        text = started_text(self.stack, release_id, holder)
        # Looked up here, not beside the deploy: the lookup may print, and the URL's
        # redaction must be in place before either thread prints a line.
        if self.webhook() is not None:
            self._start = threading.Thread(target=self.send, args=(text,), name="notify-start", daemon=True)
            self._start.start()

    def rollback_started(self, to: str | None) -> None:
        """Nothing is sent: a rollback is announced by its end."""
        self.action, self.release = "rollback", to or "the previous release"

    def restart_started(self) -> None:
        """Nothing is sent: a restart is announced by its end, if it restarted anything."""
        self.action = "restart"

    def restart_finished(self, servers: list[str]) -> None:
        self.action = None
        self.end = restarted_text(self.stack, servers) if servers else None

    def finished(self, outcome: Outcome) -> None:
        self.action = None
        self.end = outcome_text(self.stack, outcome, self.release)

    def stopped(self, problem: str) -> None:
        """The run under way ended by an error; nothing is kept when none is under way
        (refused by the lock, or before the build) or its end is already known."""
        if self.action is None:
            return
        action, self.action = self.action, None
        self.end = stopped_text(self.stack, action, self.release, problem)

    def send_end(self) -> None:
        """The run's end, once, after its start."""
        if self._start is not None:
            self._start.join()
        end, self.end = self.end, None
        if end is not None:
            self.send(end)
