"""The local stand-in for Spaces: moto's S3 server on the host, over TLS, that checks
each request's key as Spaces does (localcloud/spaces_server.py).

    datastore restic ──https──▶ moto 198.51.100.1:9000 (the host services' certificate,
                                signed by the CA every droplet image trusts)

`up` creates the plan's buckets in it, as DigitalOcean creates a `SpacesBucket`, and
registers the plan's keys with their grants, as DigitalOcean creates a `SpacesKey`: a
droplet's key reaches its own role's bucket and no other. The stack's `spacesEndpoint`
points at it (a local override). moto keeps objects in memory: they last as long as the
server, which `up` leaves running and `down` and `teardown` stop.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from . import acme, config, daemon, shell

# Not 443: tests of the LB role run nginx on the host's 443 while a local stack is up.
PORT = 9000
ENDPOINT = f"https://{config.HOST_PUBLIC_IP}:{PORT}"
SPACES_DIR = config.STATE_ROOT / "spaces"
LOG = SPACES_DIR / "moto.log"
# One file per stack: its SpacesKeys (secrets: root-only), read by the server.
KEYS_DIR = SPACES_DIR / "keys"
CA_CERT = acme.TLS_CA_CERT   # what a client of the stand-in verifies its certificate with
SERVER_MODULE = "localcloud.spaces_server"
DAEMON = daemon.Daemon(SPACES_DIR / "moto.pid", LOG,
                       f"{SERVER_MODULE}\x00--host\x00{config.HOST_PUBLIC_IP}\x00--port\x00{PORT}".encode())
# The server before it checked keys (`moto_server`, any key accepted): stopped by `up`.
UNCHECKED = daemon.Daemon(SPACES_DIR / "moto.pid", LOG,
                          f"moto_server\x00--host\x00{config.HOST_PUBLIC_IP}\x00--port\x00{PORT}".encode())
REGION = "us-east-1"
# The host's own client (buckets, tests): every bucket, as the account's own key would.
HOST_KEY = ("localcloud", "localcloud")
ROOT = Path(__file__).resolve().parent.parent


def server_command(host: str = str(config.HOST_PUBLIC_IP), port: int = PORT, keys: Path = KEYS_DIR,
                   cert: Path | None = None, key: Path | None = None) -> shell.Command:
    # The ACME server's TLS certificate names the host's public address: both are
    # services of the host at that address.
    cert, key = cert or acme.TLS_CERT, key or acme.TLS_KEY
    return [sys.executable, "-m", SERVER_MODULE, "--host", host, "--port", str(port), "--keys", str(keys),
            "--host-key", ":".join(HOST_KEY), "--ssl-cert", str(cert), "--ssl-key", str(key)]


def server_env() -> dict:
    return {"MOTO_ALLOW_NONEXISTENT_REGION": "true", "PYTHONPATH": str(ROOT)}


def client():
    """A boto3 S3 client of the stand-in (for the host: buckets, tests), verifying its certificate."""
    import boto3
    from botocore.config import Config
    return boto3.client("s3", endpoint_url=ENDPOINT, region_name=REGION, verify=str(CA_CERT),
                        aws_access_key_id=HOST_KEY[0], aws_secret_access_key=HOST_KEY[1],
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))


def ensure_running() -> None:
    """Needs the host's public link (the network is up)."""
    acme.ensure_tls_ca()
    with shell.Step("Spaces stand-in (moto S3, keys checked)"):
        if UNCHECKED.running_pid() or UNCHECKED.strays():
            # It would keep the port and let any key in; its objects (in memory) go with it.
            print("[localcloud] stopping the Spaces stand-in that accepted any key", flush=True)
            UNCHECKED.stop()
        if not DAEMON.running_pid():
            DAEMON.start(server_command(), server_env(), cwd=SPACES_DIR)
        # Any HTTP answer will do: an unsigned request is refused (403), as Spaces refuses it.
        DAEMON.wait_answering(["curl", "-s", "-o", "/dev/null", "--cacert", str(CA_CERT), ENDPOINT + "/"],
                              f"the Spaces stand-in at {ENDPOINT}")


def ensure_bucket(name: str, versioning: bool) -> None:
    s3 = client()
    if name not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=name)
        print(f"[localcloud] bucket {name} created in the Spaces stand-in", flush=True)
    if versioning:
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})


def register_keys(stack: str, keys) -> None:
    """The stack's SpacesKeys (plan.PlannedKey), as the server reads them: before the
    pushes that hand them to droplets. Written whole, then moved in place."""
    KEYS_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = KEYS_DIR / f"{stack}.json"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump([{"access_key_id": k.access_key, "secret_access_key": k.secret_key, "grants": list(k.grants)}
                   for k in keys], f)
    os.replace(tmp, path)


def forget_keys(stack: str) -> None:
    (KEYS_DIR / f"{stack}.json").unlink(missing_ok=True)


def stop() -> None:
    DAEMON.stop()
    UNCHECKED.stop()
