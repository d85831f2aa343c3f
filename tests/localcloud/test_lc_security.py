"""What an attacker on the internet meets at the booted stack's load balancer: no answer for
a name that is not the platform's, and no way to choose the client address the apps see.
"""

import uuid

import pytest

pytestmark = pytest.mark.localcloud


def test_an_unknown_host_name_gets_no_certificate_and_no_page(local_stack):
    other = "not-ours.example"
    https = local_stack.internet(["curl", "--silent", "--show-error", "--max-time", "10", "--insecure",
                                  "--resolve", f"{other}:443:{local_stack.address}", f"https://{other}/"])
    # ssl_reject_handshake: the TLS handshake fails with an alert, no certificate is sent.
    assert https.returncode == 35, (https.returncode, https.stdout, https.stderr)
    http = local_stack.internet(["curl", "--silent", "--show-error", "--max-time", "10",
                                 "-H", f"Host: {other}", f"http://{local_stack.address}/"])
    # 444: nginx closes the connection without a reply (no redirect to the platform's name).
    assert http.returncode == 52, (http.returncode, http.stdout, http.stderr)
    # The platform's own name is still served.
    assert local_stack.https("/", "-o", "/dev/null", "-w", "%{http_code}").stdout == "200"
