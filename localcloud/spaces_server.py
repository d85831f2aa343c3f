"""The Spaces stand-in's server: moto's S3, as `moto_server` serves it, refusing what
Spaces refuses. Every request must be signed with a key DigitalOcean would have made, and
a key reaches only the buckets it is granted, so on a local stack an app server's backup
key can neither list nor delete the datastore's backups.

    python -m localcloud.spaces_server --host H --port P --ssl-cert C --ssl-key K --keys DIR

Each *.json in DIR (written by `up`, one per stack, root-only) lists the stack's keys as
its SpacesKey resources hold them: access key, secret key, grants. They are read again
whenever a file changes, before the next request is answered. moto enforces them with
its IAM simulation: each key is an IAM user in this process with a policy made from its
grants. The host's own client (spaces.HOST_KEY) has every bucket.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from pathlib import Path

ACCOUNT = "123456789012"     # moto's default account: where requests from unknown keys land too
USER_PATH = "/localcloud/"   # the users this server made (and may delete)
POLICY = "grants"


def statements(grants: list[dict]) -> list[dict]:
    """A SpacesKey's grants as IAM statements. Spaces' permissions: `read` (get and list),
    `readwrite` (everything on the bucket and its objects), `fullaccess` (every bucket;
    its grant names none)."""
    out = []
    for grant in grants:
        bucket, permission = grant.get("bucket") or "", grant.get("permission")
        if permission == "fullaccess":
            out.append({"Effect": "Allow", "Action": "s3:*", "Resource": "*"})
            continue
        if not bucket:
            raise ValueError(f"a {permission!r} grant names no bucket")
        resources = [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
        if permission == "readwrite":
            out.append({"Effect": "Allow", "Action": "s3:*", "Resource": resources})
        elif permission == "read":
            out.append({"Effect": "Allow", "Action": ["s3:Get*", "s3:List*"], "Resource": resources})
        else:
            raise ValueError(f"grant permission {permission!r}: Spaces knows read, readwrite and fullaccess")
    return out


def policy_document(grants: list[dict]) -> str:
    # A key without grants may do nothing: a statement that allows nothing at all.
    found = statements(grants) or [{"Effect": "Allow", "Action": "s3:ListAllMyBuckets", "Resource": "arn:aws:s3:::none"}]
    return json.dumps({"Version": "2012-10-17", "Statement": found})


def read_keys(directory: Path, host_key: tuple[str, str]) -> dict[str, dict]:
    """access key -> {"secret_access_key", "grants"}: every stack's, and the host's."""
    keys = {host_key[0]: {"secret_access_key": host_key[1], "grants": [{"bucket": "", "permission": "fullaccess"}]}}
    for path in sorted(directory.glob("*.json")):
        for key in json.loads(path.read_text()):
            keys[key["access_key_id"]] = {"secret_access_key": key["secret_access_key"], "grants": key["grants"]}
    return keys


def install(keys: dict[str, dict]) -> None:
    """Make moto's IAM hold exactly these keys (one user each, USER_PATH), each with the
    policy of its grants. A key's id is DigitalOcean's (the stack's state), not moto's."""
    from moto.iam.models import iam_backends

    backend = iam_backends[ACCOUNT]["aws"]
    wanted = {f"key-{access_key}": access_key for access_key in keys}
    for user in list(backend.users.values()):
        if user.path == USER_PATH and user.name not in wanted:
            for key in list(user.access_keys):
                backend.access_keys.pop(key.access_key_id, None)
            user.access_keys.clear()
            user.policies.clear()
            backend.users.pop(user.name)
    for name, access_key in wanted.items():
        entry = keys[access_key]
        user = backend.users.get(name) or backend.create_user("us-east-1", name, path=USER_PATH)
        backend.put_user_policy(name, POLICY, policy_document(entry["grants"]))
        if [(k.access_key_id, k.secret_access_key) for k in user.access_keys] == [(access_key, entry["secret_access_key"])]:
            continue
        for key in list(user.access_keys):
            backend.access_keys.pop(key.access_key_id, None)
        user.access_keys.clear()
        made = backend.create_access_key(name)
        backend.access_keys.pop(made.access_key_id, None)
        made.access_key_id, made.secret_access_key = access_key, entry["secret_access_key"]
        backend.access_keys[access_key] = made


class KeysFollowed:
    """The WSGI app, with the keys brought up to date with DIR before each request."""

    def __init__(self, app, directory: Path, host_key: tuple[str, str]):
        self.app, self.directory, self.host_key = app, directory, host_key
        self.lock, self.seen = threading.Lock(), None

    def refresh(self) -> None:
        stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(self.directory.glob("*.json")))
        with self.lock:
            if stamp != self.seen:
                install(read_keys(self.directory, self.host_key))
                self.seen = stamp

    def __call__(self, environ, start_response):
        self.refresh()
        return self.app(environ, start_response)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m localcloud.spaces_server")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ssl-cert")
    parser.add_argument("--ssl-key")
    parser.add_argument("--keys", required=True, help="the directory of the stacks' key files")
    parser.add_argument("--host-key", default="localcloud:localcloud", help="ACCESS:SECRET of the host's own client")
    args = parser.parse_args(argv)

    from moto import settings
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    # IAM checks from the first request (moto_server's INITIAL_NO_AUTH_ACTION_COUNT=0).
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    os.environ.setdefault("MOTO_PORT", str(args.port))
    directory = Path(args.keys)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    access, secret = args.host_key.split(":", 1)
    app = KeysFollowed(DomainDispatcherApplication(create_backend_app), directory, (access, secret))
    app.refresh()   # a bad key file stops the server at once, not at the first request
    run_simple(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler,
               ssl_context=(args.ssl_cert, args.ssl_key) if args.ssl_cert else None)


if __name__ == "__main__":
    main()
