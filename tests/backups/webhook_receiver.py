"""A stand-in for a Slack/Mattermost incoming webhook, for the backup alert tests.

    python webhook_receiver.py PORT CERT KEY OUT [STATUS | hang]

HTTPS on loopback with the given certificate (the sandbox's throwaway CA signs it), so
platform-backup's curl verifies it as it would verify the real webhook's: the script
allows no plain http and no skipped verification, not even for tests. Every POST is
appended to OUT as one JSON line (path, content type, body) and answered with STATUS,
or never answered (`hang`: a webhook behind a firewall that drops, or one stuck).
"""

from __future__ import annotations

import json
import ssl
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main(port: int, cert: str, key: str, out: str, status: int | None) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            record = {"path": self.path, "content_type": self.headers.get("Content-Type"), "body": body}
            with open(out, "a") as f:
                f.write(json.dumps(record) + "\n")
            if status is None:
                time.sleep(3600)
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"ok" if status == 200 else b"failing on purpose")

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    port, cert, key, out = sys.argv[1:5]
    answer = sys.argv[5] if len(sys.argv) > 5 else "200"
    main(int(port), cert, key, out, None if answer == "hang" else int(answer))
