"""Steady request streams from the internet client: each request a new HTTPS connection
to the LB's address, the certificate verified for the domain; counts by outcome. Given
several paths, the requests take them in turn (each twice in a row). A path is a GET; "POST
/api/notes" posts a note (the LB retries no POST on another server: it proves a change
cut no request in flight).

    proc = traffic.start(domain, address, cafile, "/api/hello", rate=20, seconds=20)
    ... change the stack ...
    counts = traffic.result(proc)     # {"requests": 400, "failed": 0, "failed_by_method": {}, "by_status": {...}, "hosts": {...}}

start() returns once the first request has had its answer: what follows it is done with
the stream running, however long a busy machine took to start it. Without `seconds` the
stream runs until result() ends it: it covers a change of unknown length (an `up`) without
a fixed wait after it. It ends by itself after OPEN_ENDED_LIMIT
seconds, so a test that failed before its result() leaves no stream behind for long. A
stream falls behind its rate while the machine is busy (one request at a time), so a fixed
one can last far longer than asked.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import cloud, shell

OPEN_ENDED_LIMIT = 900   # seconds: longer than any change a test streams through
FIRST_ANSWER_SECONDS = 60
# The example app's paths for a stream through a planned change: the LB retries on another
# server a GET that a server fails, never a POST, so only the POSTs show a request it cut.
WRITES_AND_READS = ["/api/hello", "POST /api/notes"]

# Runs in the internet client's namespace with the host's python3; stdout: one JSON line.
STREAM = r'''
import collections, http.client, json, os, socket, ssl, sys, time
domain, address, cafile, paths, rate, seconds, stop_file, answered_file, limit = sys.argv[1:10]
paths, rate, seconds, limit = json.loads(paths), float(rate), float(seconds), float(limit)
ctx = ssl.create_default_context(cafile=cafile)
# A request waits as a browser would: the LB may try 3 app servers, 5 s to connect to each
# one that is gone, before it answers.
WAIT = 30

class Conn(http.client.HTTPSConnection):
    def connect(self):
        self.sock = ctx.wrap_socket(socket.create_connection((address, 443), timeout=WAIT),
                                    server_hostname=domain)

statuses, hosts, errors = collections.Counter(), collections.Counter(), collections.Counter()
failed_by_method = collections.Counter()
failures = []   # the first few, with when and where: what a test prints when one fails
start = time.monotonic()
n = 0
def going():
    if seconds:
        return n < rate * seconds
    return not os.path.exists(stop_file) and time.monotonic() - start < limit

while going():
    due = start + n / rate
    time.sleep(max(0, due - time.monotonic()))
    # Each path twice in a row: taken in strict turn, the LB's round robin over two app
    # servers would send each path to the same server every time.
    method, _, path = paths[(n // 2) % len(paths)].rpartition(" ")
    method = method or "GET"
    n += 1
    try:
        c = Conn(domain, 443, timeout=WAIT)
        if method == "POST":
            c.request(method, path, body=json.dumps({"text": f"stream {n}"}),
                      headers={"Connection": "close", "Content-Type": "application/json"})
        else:
            c.request(method, path, headers={"Connection": "close"})
        r = c.getresponse()
        body = r.read()
        statuses[r.status] += 1
        if r.status >= 400:
            failed_by_method[method] += 1
            failures.append(f"{time.time():.1f} {method} {path} {r.status}")
        try:
            hosts[json.loads(body).get("host", "?")] += 1
        except ValueError:
            hosts["?"] += 1
        c.close()
    except Exception as e:
        errors[type(e).__name__ + ": " + str(e)[:80]] += 1
        failed_by_method[method] += 1
        failures.append(f"{time.time():.1f} {method} {path} {type(e).__name__}: {str(e)[:80]}")
    if n == 1:
        open(answered_file, "w").close()
failed = sum(v for k, v in statuses.items() if k >= 400) + sum(errors.values())
print(json.dumps({"requests": n, "failed": failed, "failed_by_method": failed_by_method,
                  "by_status": statuses, "errors": errors,
                  "hosts": hosts, "seconds": round(time.monotonic() - start, 1), "failures": failures[:20]}))
'''


def answered_file(stop_file: Path) -> Path:
    """Written once the stream's first request has had its answer."""
    return stop_file.with_name("answered")


def argv(domain: str, address: str, cafile: str, paths: list[str], rate: float, seconds: float | None,
         stop_file: Path, limit: float = OPEN_ENDED_LIMIT) -> list[str]:
    return ["python3", "-c", STREAM, domain, address, cafile, json.dumps(paths), str(rate), str(seconds or 0),
            str(stop_file), str(answered_file(stop_file)), str(limit)]


def start(domain: str, address: str, cafile: str, paths: str | list[str], rate: float = 20,
          seconds: float | None = 20):
    """A stream of `rate` requests a second: `rate * seconds` of them, or until result()."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    stop_file = Path(tempfile.mkdtemp(prefix="traffic-")) / "stop"
    proc = subprocess.Popen(cloud.internet_client(argv(domain, address, cafile, paths, rate, seconds, stop_file)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stop_file = stop_file

    def answered() -> bool:
        if answered_file(stop_file).exists():
            return True
        if proc.poll() is not None:
            raise RuntimeError(f"request stream failed (exit {proc.returncode}): {proc.stderr.read()[-800:]}")
        return False
    try:
        shell.wait_until(answered, FIRST_ANSWER_SECONDS, "request stream: its first request's answer", every=0.05)
    except TimeoutError:
        proc.kill()
        raise
    return proc


def result(proc, timeout: float = 300) -> dict:
    """The stream's counts once it has ended (an open-ended one is ended now)."""
    proc.stop_file.touch()
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        shutil.rmtree(proc.stop_file.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"request stream failed (exit {proc.returncode}): {err[-800:]}")
    return json.loads(out.strip().splitlines()[-1])
