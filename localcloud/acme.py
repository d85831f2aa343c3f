"""The local ACME server: Debian's pebble on the host, standing in for Let's Encrypt.

    droplet certbot ──https──▶ pebble 198.51.100.1:14000 (its TLS cert from our own CA,
                                which the droplet image trusts: config.TRUSTED_CAS_DIR)
    pebble's validator ──http──▶ DOMAIN:80, resolved by pebble-challtestsrv's DNS to the
                                 address given (the LB's reserved IP)

Pebble makes a fresh root for the certificates it issues at each start; GET
https://127.0.0.1:15000/roots/0 gives it, to verify a chain against.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import config, daemon, network, shell

ACME_DIR = config.STATE_ROOT / "acme"
PORT = 14000
MANAGEMENT = "127.0.0.1:15000"
DNS = "127.0.0.1:18053"                 # pebble-challtestsrv's DNS, for pebble only
CHALLTESTSRV_MANAGEMENT = "127.0.0.1:18055"
DIRECTORY_URL = f"https://{config.HOST_PUBLIC_IP}:{PORT}/dir"
ROOT_URL = f"https://{MANAGEMENT}/roots/0"

TLS_CA_KEY = ACME_DIR / "tls-ca.key"
TLS_CA_CERT = ACME_DIR / "tls-ca.pem"
TLS_KEY = ACME_DIR / "tls.key"
TLS_CERT = ACME_DIR / "tls.pem"
PEBBLE_CONFIG = ACME_DIR / "pebble-config.json"
LOG = ACME_DIR / "pebble.log"
TRUSTED_CA_NAME = "localcloud-acme-tls.pem"   # in config.TRUSTED_CAS_DIR


# --- command builders -------------------------------------------------------

def ca_command() -> shell.Command:
    return ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", str(TLS_CA_KEY), "-out", str(TLS_CA_CERT), "-days", "3650",
            "-subj", "/CN=localcloud ACME server TLS CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign"]


def server_csr_command(csr: Path) -> shell.Command:
    return ["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(TLS_KEY), "-out", str(csr), "-subj", "/CN=localcloud ACME server"]


def server_sign_command(csr: Path, ext: Path) -> shell.Command:
    return ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(TLS_CA_CERT), "-CAkey", str(TLS_CA_KEY),
            "-CAcreateserial", "-out", str(TLS_CERT), "-days", "3650", "-extfile", str(ext)]


SERVER_EXTENSIONS = (f"subjectAltName=IP:{config.HOST_PUBLIC_IP},IP:127.0.0.1,DNS:localhost\n"
                     "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")


def pebble_config() -> dict:
    return {"pebble": {
        "listenAddress": f"{config.HOST_PUBLIC_IP}:{PORT}",
        "managementListenAddress": MANAGEMENT,
        "certificate": str(TLS_CERT),
        "privateKey": str(TLS_KEY),
        "httpPort": 80,
        "tlsPort": 443,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
    }}


def challtestsrv_command(address: str) -> shell.Command:
    # Only its DNS: every name resolves to `address` (the LB), as the stack's DNS would.
    return ["pebble-challtestsrv", "-defaultIPv4", address, "-defaultIPv6", "",
            "-dns01", DNS, "-http01", "", "-https01", "", "-tlsalpn01", "",
            "-management", CHALLTESTSRV_MANAGEMENT]


def pebble_command() -> shell.Command:
    return ["pebble", "-config", str(PEBBLE_CONFIG), "-dnsserver", DNS]


PEBBLE_ENV = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}


# --- the TLS CA the droplets trust ------------------------------------------

def ensure_tls_ca() -> Path:
    """Pebble's own TLS certificate and its CA, made once; the CA goes into the image."""
    ACME_DIR.mkdir(parents=True, exist_ok=True)
    if not TLS_CA_CERT.exists():
        shell.run(ca_command())
    if not TLS_CERT.exists():
        csr, ext = ACME_DIR / "tls.csr", ACME_DIR / "tls.ext"
        ext.write_text(SERVER_EXTENSIONS)
        shell.run(server_csr_command(csr))
        shell.run(server_sign_command(csr, ext))
    config.TRUSTED_CAS_DIR.mkdir(parents=True, exist_ok=True)
    trusted = config.TRUSTED_CAS_DIR / TRUSTED_CA_NAME
    if not trusted.exists() or trusted.read_text() != TLS_CA_CERT.read_text():
        trusted.write_text(TLS_CA_CERT.read_text())
    return TLS_CA_CERT


# --- processes --------------------------------------------------------------

# Markers: arguments only our two processes are started with.
DAEMONS = {
    "pebble-challtestsrv": daemon.Daemon(ACME_DIR / "pebble-challtestsrv.pid", LOG,
                                         b"\x00-management\x00" + CHALLTESTSRV_MANAGEMENT.encode()),
    "pebble": daemon.Daemon(ACME_DIR / "pebble.pid", LOG, b"\x00-config\x00" + str(PEBBLE_CONFIG).encode()),
}


def ensure_running(domain_address: str) -> None:
    """pebble-challtestsrv answering every name with `domain_address`, and pebble.

    Needs the host's public link (the network is up)."""
    ensure_tls_ca()
    PEBBLE_CONFIG.write_text(json.dumps(pebble_config(), indent=1))
    marker = ACME_DIR / "dns-address"
    if DAEMONS["pebble-challtestsrv"].running_pid() and marker.exists() and marker.read_text() != domain_address:
        stop()
    marker.write_text(domain_address)
    with shell.Step("ACME server (pebble)"):
        for process, argv, env in (("pebble-challtestsrv", challtestsrv_command(domain_address), None),
                                   ("pebble", pebble_command(), PEBBLE_ENV)):
            if not DAEMONS[process].running_pid():
                DAEMONS[process].start(argv, env, cwd=ACME_DIR)
        DAEMONS["pebble"].wait_answering(["curl", "-sf", "--cacert", str(TLS_CA_CERT), DIRECTORY_URL],
                                         f"pebble at {DIRECTORY_URL}")


def stop() -> None:
    for d in DAEMONS.values():
        d.stop()


# --- checks -----------------------------------------------------------------

def root_pem() -> str:
    """The root pebble signs with now (a new one at each start of pebble)."""
    return shell.run(["curl", "-sf", "--cacert", str(TLS_CA_CERT), ROOT_URL], timeout=30).stdout


def root_file() -> Path:
    """pebble's current root in a file, as the internet client's browsers trust Let's
    Encrypt's: what its requests to the stack verify against."""
    root = ACME_DIR / "root.pem"
    root.write_text(root_pem())
    return root


def certificate_check(domain: str, address: str) -> dict:
    """From the internet client: does HTTPS to domain verify against pebble's root?"""
    try:
        root = root_file()
    except shell.CommandError as e:
        return {"verified": False, "error": f"pebble's root not available: {e}"}
    proc = shell.run(network.internet_client(
        "curl", "--silent", "--show-error", "--max-time", "15", "--cacert", str(root),
        "--resolve", f"{domain}:443:{address}", "-o", "/dev/null", "-w", "%{http_code}",
        f"https://{domain}/"), check=False, timeout=60)
    issuer = shell.run(network.internet_client(
        "sh", "-c", f"openssl s_client -connect {address}:443 -servername {domain} </dev/null 2>/dev/null"
        " | openssl x509 -noout -issuer"), check=False, timeout=60).stdout.strip()
    return {"verified": proc.returncode == 0, "http_code": proc.stdout.strip(), "issuer": issuer,
            "error": "" if proc.returncode == 0 else proc.stdout.strip()}
