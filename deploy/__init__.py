"""Deploy the app to a stack's servers, roll back, list releases, restart the apps, and
the operators' status, logs, exec and maintenance: `python -m deploy`.

Builds a release once on the operator's machine, uploads it to every app server through
the load balancer (the jump host) as the deploy user, and switches the servers one at a
time, each only after the one before it is healthy. See deploy/roll.py for the order.
"""

from pathlib import Path

from model import conventions

# Every default of the deploy command, in one place (the CLI's --help shows them).
DEFAULT_APP_DIR = str(Path(__file__).resolve().parents[1] / "example-app")
KEEP_RELEASES = 5            # releases kept on each server (current and previous always stay)
# Releases kept in the bucket's archive; each deploy deletes older ones (the bucket's
# versioning keeps a deleted object BUCKET_NONCURRENT_DAYS more days). Each holds its
# node_modules.
ARCHIVED_RELEASES_KEPT = 30
HEALTH_TIMEOUT_SECONDS = conventions.APP_HEALTH_TIMEOUT_SECONDS  # a server answering /healthz after a reload
LOG_LINES = 50             # `logs`: the last lines of each log it shows (then --follow's new ones)
