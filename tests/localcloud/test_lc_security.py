"""What an attacker on the internet meets at the booted stack's load balancer: no answer for
a name that is not the platform's, and no way to choose the client address the apps see.
"""

import uuid

import pytest

from localcloud import config

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


def test_a_forged_forwarded_for_reaches_the_apps_as_the_real_client_address(local_stack):
    probe = f"/?probe={uuid.uuid4().hex}"
    got = local_stack.https(probe, "-o", "/dev/null", "-w", "%{http_code}",
                            "-H", "X-Forwarded-For: 6.6.6.6", "-H", "X-Real-IP: 6.6.6.6")
    assert got.stdout == "200", got
    # What the app servers' nginx received is what it passes to the apps unchanged.
    lines = [line for name in local_stack.app_servers()
             for line in local_stack.run(name, ["grep", "-h", probe, "/var/log/nginx/access.log"]).stdout.splitlines()]
    (line,) = lines
    assert f"for={config.INTERNET_CLIENT_IP} " in line and "6.6.6.6" not in line, line
