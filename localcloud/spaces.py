"""The local stand-in for Spaces: moto's S3 server on the host, over TLS.

    datastore restic ──https──▶ moto 198.51.100.1:9000 (the host services' certificate,
                                signed by the CA every droplet image trusts)

`up` creates the plan's buckets in it, as DigitalOcean creates a `SpacesBucket`, and
the stack's `spacesEndpoint` points at it (a local override). moto keeps objects in
memory: they last as long as the server, which `up` leaves running and `down` and
`teardown` stop.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from . import acme, config, daemon, shell

# Not 443: tests of the LB role run nginx on the host's 443 while a local stack is up.
PORT = 9000
ENDPOINT = f"https://{config.HOST_PUBLIC_IP}:{PORT}"
SPACES_DIR = config.STATE_ROOT / "spaces"
LOG = SPACES_DIR / "moto.log"
CA_CERT = acme.TLS_CA_CERT   # what a client of the stand-in verifies its certificate with
DAEMON = daemon.Daemon(SPACES_DIR / "moto.pid", LOG,
                       f"moto_server\x00--host\x00{config.HOST_PUBLIC_IP}\x00--port\x00{PORT}".encode())
REGION = "us-east-1"
# moto accepts any key pair (as it accepts the droplets' scoped keys): the host's own
# client needs no key of the stack.
HOST_KEY = ("localcloud", "localcloud")


def server_command() -> shell.Command:
    # The ACME server's TLS certificate names the host's public address: both are
    # services of the host at that address.
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    return [moto, "--host", str(config.HOST_PUBLIC_IP), "--port", str(PORT),
            "--ssl-cert", str(acme.TLS_CERT), "--ssl-key", str(acme.TLS_KEY)]


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
    with shell.Step("Spaces stand-in (moto S3)"):
        if not DAEMON.running_pid():
            DAEMON.start(server_command(), {"MOTO_ALLOW_NONEXISTENT_REGION": "true"}, cwd=SPACES_DIR)
        deadline = time.monotonic() + 30
        while not shell.succeeds(["curl", "-sf", "--cacert", str(CA_CERT), ENDPOINT + "/"], timeout=10):
            if time.monotonic() > deadline or not DAEMON.running_pid():
                raise RuntimeError(f"the Spaces stand-in does not answer at {ENDPOINT}; see {LOG}")
            time.sleep(0.5)


def ensure_bucket(name: str, versioning: bool) -> None:
    s3 = client()
    if name not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=name)
        print(f"[localcloud] bucket {name} created in the Spaces stand-in", flush=True)
    if versioning:
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})


def stop() -> None:
    DAEMON.stop()
