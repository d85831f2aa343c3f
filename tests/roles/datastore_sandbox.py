"""Runs the datastore's real rendered files and provisioning functions in a throwaway namespace.

`unshare` gives a private mount, network and PID namespace: /etc, /usr/sbin, /usr/local,
/var/lib and /var/log are overlays (writes vanish with the namespace), /run and the volume's
mount point are tmpfs, loopback carries a VPC address, and every daemon dies with the
namespace. The rendered files are written at their real paths, the droplet's TLS files
are a throwaway CA and certificate, and `systemctl` is a small stand-in that starts
each engine the way its distribution unit does (no systemd on this machine).

A script reports checks as lines `CHECK <label> <exit status>`; `Run.status(label)`
reads them back, so a test asserts each outcome by name.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import secrets
import shlex
import shutil
import string
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import cloudinit
from model import conventions
from model.settings import Settings

PRELUDE = r"""
set -uo pipefail
T={tmp}
for dir in /etc /usr/sbin /usr/local /var/lib /var/log; do
    name=$(echo "$dir" | tr / _)
    mkdir -p "$T/ov/$name.up" "$T/ov/$name.work"
    mount -t overlay overlay -o "lowerdir=$dir,upperdir=$T/ov/$name.up,workdir=$T/ov/$name.work" "$dir"
done
mount -t tmpfs tmpfs /run
mkdir -p {data_mount_parent}
mount -t tmpfs tmpfs {data_mount_parent}
mkdir -p {data_mount}
ip link set lo up
ip addr add {address}/32 dev lo
# A fresh droplet: no cluster from the package (the host has one).
rm -rf /etc/postgresql/*/main
install -d -o postgres -g postgres -m 2775 /run/postgresql
mkdir -p {state}  # the provisioning driver makes it
cp -a "$T/root/." /
getent group {tls_group} >/dev/null || groupadd --system {tls_group}
chown root:{tls_group} {key}
chmod 0640 {key}

check() {{
    local label=$1
    shift
    "$@"
    local status=$?
    echo "CHECK $label $status"
}}

# Starts and stops engines as their distribution units would (there is no systemd here).
systemctl() {{
    local verb=$1
    shift
    [ "${{1:-}}" = --quiet ] && shift
    local unit=${{1:-}}
    case "$verb" in
        daemon-reload) return 0 ;;
        # Enabled units are files in $T/enabled, so a test sees what was disabled.
        is-enabled) [ -e "$T/enabled/$unit" ] ;;
        enable) mkdir -p "$T/enabled" && touch "$T/enabled/$unit" ;;
        disable) rm -f "$T/enabled/$unit" ;;
        is-active) unit_active "$unit" ;;
        start) unit_start "$unit" ;;
        stop) unit_stop "$unit" ;;
        restart) unit_stop "$unit"; unit_start "$unit" ;;
        *) echo "fake systemctl: $verb not handled" >&2; return 1 ;;
    esac
}}

unit_active() {{
    case "$1" in
        postgresql@*) pg_lsclusters -h | grep -q ' online ' ;;
        redis-server) pgrep -x redis-server >/dev/null ;;
        stunnel@*) pgrep -x stunnel4 >/dev/null ;;
        rabbitmq-server) pgrep -f 'rabbit boot' >/dev/null && rabbitmqctl --quiet await_startup --timeout 5 >/dev/null 2>&1 ;;
        *) return 1 ;;
    esac
}}

unit_start() {{
    case "$1" in
        postgresql@*) local vc=${{1#postgresql@}}; pg_ctlcluster "${{vc%%-*}}" "${{vc#*-}}" start ;;
        redis-server)
            mkdir -p /run/redis && chown redis:redis /run/redis
            runuser -u redis -- redis-server /etc/redis/redis.conf --supervised no --daemonize yes
            wait_for_port 127.0.0.1 6379 ;;
        stunnel@*)
            local name=${{1#stunnel@}}
            (stunnel4 "/etc/stunnel/${{name%.service}}.conf" >>"$T/stunnel.log" 2>&1 &)
            wait_for_port {address} {stunnel_port} ;;
        rabbitmq-server)
            (HOME=/var/lib/rabbitmq runuser -u rabbitmq -- /usr/lib/rabbitmq/bin/rabbitmq-server \
                >>"$T/rabbitmq.log" 2>&1 &)
            # The CLI reaches the node only once it has registered with epmd.
            for _ in $(seq 60); do rabbitmqctl --quiet ping >/dev/null 2>&1 && break; sleep 1; done
            rabbitmqctl --quiet await_startup --timeout 90 ;;
        *) echo "fake systemctl: no unit $1" >&2; return 1 ;;
    esac
}}

# A minute: a busy machine may take many seconds to start one (moto_server imports a lot).
wait_for_port() {{
    for _ in $(seq 600); do
        ss -Hltn "src $1:$2" | grep -q . && return 0
        sleep 0.1
    done
    echo "nothing listens on $1:$2" >&2
    return 1
}}

unit_stop() {{
    case "$1" in
        postgresql@*) local vc=${{1#postgresql@}}; pg_ctlcluster "${{vc%%-*}}" "${{vc#*-}}" stop ;;
        # Gone, not only told to go: Redis saves its data first, and a restart's new one
        # could not take the port the old one still holds.
        redis-server) pkill -x redis-server; while pgrep -x redis-server >/dev/null; do sleep 0.1; done ;;
        stunnel@*) pkill -x stunnel4; while pgrep -x stunnel4 >/dev/null; do sleep 0.1; done ;;
        rabbitmq-server) rabbitmqctl --quiet stop ;;
    esac
}}

set -a
. "$T/platform.env"
set +a
STAGED_FILES="$T/staged"
. "$T/root{library}"
. "$T/root{role_steps}"
# The provisioning driver's helper, for the engine steps called on their own here.
step() {{ log "step: $1"; }}

# Provisioning's inputs as another settings' bundle has them (Sandbox.variant): the role's
# steps, the library, the staged files and platform.env; the droplet stays as it is.
use_variant() {{
    local v="$T/variants/$1"
    set -a
    . "$v/platform.env"
    set +a
    STAGED_FILES="$v/staged"
    . "$v/root{library}"
    . "$v/root{role_steps}"
}}
"""


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: apt-get install {package}"
    return path


def password() -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))


@dataclass
class Run:
    completed: subprocess.CompletedProcess

    @property
    def output(self) -> str:
        return self.completed.stdout + self.completed.stderr

    def status(self, label: str) -> int:
        found = re.findall(rf"^CHECK {re.escape(label)} (\d+)$", self.completed.stdout, re.M)
        assert found, f"check {label!r} did not run:\n{self.output[-6000:]}"
        return int(found[-1])

    def changes(self, label: str) -> int:
        found = re.findall(rf"^CHANGES {re.escape(label)} (\d+)$", self.completed.stdout, re.M)
        assert found, f"no change count {label!r}:\n{self.output[-6000:]}"
        return int(found[-1])


def throwaway_pki(directory: Path, address: str, name: str) -> None:
    """A CA and a server certificate for `address` and the droplet's `name` (and localhost),
    as the TLS push delivers."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "throwaway test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "datastore")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(address))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    (directory / "ca.crt").write_bytes(ca.public_bytes(pem))
    (directory / "server.crt").write_bytes(cert.public_bytes(pem))
    (directory / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def vpc_address(settings: Settings) -> str:
    return str(next(ipaddress.ip_network(settings.vpc_ip_range).hosts()) + 4)


class Sandbox:
    def __init__(self, tmp: Path, settings: Settings, passwords: dict[str, str] | None):
        missing = [t for t in ("unshare", "ip", "mount") if shutil.which(t) is None]
        assert not missing, f"missing tools (util-linux, iproute2): {missing}"
        self.tmp = tmp
        self.settings = settings
        self.address = vpc_address(settings)
        from cloudinit import common, datastore

        files = cloudinit.config_files(conventions.DATASTORE, settings)
        context = cloudinit.template_context(conventions.DATASTORE, settings)
        root = tmp / "root"
        for program in cloudinit.programs(conventions.DATASTORE):
            self._write(root / program.path.lstrip("/"), cloudinit.render(program.template, **context))
            (root / program.path.lstrip("/")).chmod(int(program.mode, 8))
        for f in files:
            self._write(tmp / "staged" / f.path.lstrip("/"), cloudinit.render(f.template, **context))
        (tmp / "platform.env").write_text(cloudinit.role_env(conventions.DATASTORE, settings, files))
        throwaway_pki(root / conventions.TLS_DIR.lstrip("/"), self.address,
                      conventions.droplet_name(settings.stack, conventions.DATASTORE))
        self.ca_cert = conventions.CA_CERT_PATH
        if passwords is not None:
            self._write(root / conventions.DATASTORE_SECRETS_FILE.lstrip("/"), datastore.secrets_env(passwords))
        self.library = common.LIBRARY
        self.role_steps = common.ROLE_STEPS

    def variant(self, name: str, settings: Settings) -> None:
        """The datastore's provisioning files for other settings, which `use_variant NAME`
        puts in use inside the run: provisioning run again after a settings change."""
        base = self.tmp / "variants" / name
        files = cloudinit.config_files(conventions.DATASTORE, settings)
        context = cloudinit.template_context(conventions.DATASTORE, settings)
        for program in cloudinit.programs(conventions.DATASTORE):
            if program.path in (self.library, self.role_steps):
                self._write(base / "root" / program.path.lstrip("/"), cloudinit.render(program.template, **context))
        for f in files:
            self._write(base / "staged" / f.path.lstrip("/"), cloudinit.render(f.template, **context))
        (base / "platform.env").write_text(cloudinit.role_env(conventions.DATASTORE, settings, files))

    @staticmethod
    def _write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def run(self, script: str, timeout: float = 150) -> Run:
        data_mount = conventions.DATA_MOUNT
        prelude = PRELUDE.format(
            tmp=shlex.quote(str(self.tmp)),
            data_mount=data_mount,
            data_mount_parent=str(Path(data_mount).parent),
            address=self.address,
            tls_group=conventions.TLS_KEY_GROUP,
            key=conventions.SERVER_KEY_PATH,
            library=self.library,
            role_steps=self.role_steps,
            stunnel_port=conventions.ENGINES["redis"].tls_port,
            state=conventions.PLATFORM_STATE,
        )
        completed = subprocess.run(
            ["unshare", "--mount", "--net", "--pid", "--fork", "--mount-proc", "--propagation", "private",
             "bash", "-c", prelude + script],
            capture_output=True, text=True, timeout=timeout,
        )
        return Run(completed)


ROUND = """
# One provisioning run of an engine's steps, as role_steps runs them, counting changes.
round() {
    ( set -Eeu; trap 'echo "FAILED: $BASH_COMMAND" >&2' ERR; CHANGES=0; note_certificate_change; load_secrets; "$2"; echo "CHANGES $1 $CHANGES" )
    echo "CHECK round-$1 $?"
}
"""
