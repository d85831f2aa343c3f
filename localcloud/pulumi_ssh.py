"""pulumi-command's SSH connection, mirrored, so a push here meets what it meets on a real
`pulumi up`: the same tries per hop, the same waits, the same refused logins.

Mirrors `provider/pkg/provider/remote/connection.go` of pulumi-command (identical from
1.0 to 1.2.1) and `retry.Until` of the Pulumi SDK (`sdk/go/common/util/retry/until.go`),
with paramiko in place of Go's golang.org/x/crypto/ssh:

| pulumi-command                                                  | here                      |
|-----------------------------------------------------------------|---------------------------|
| `dialWithRetry`: try; on error wait 0.1 s, then x1.5 each time, | `with_retries`            |
| at most 5 s; give up once `try + 1 > dial_error_limit`          |                           |
| (-1: never); defaults: limit 10, per_dial_timeout 15 s          |                           |
| no proxy: `ssh.Dial` (TCP connect bounded by per_dial_timeout,  | `dial`, no proxy          |
| then the handshake) retried whole, so a refused login is tried  |                           |
| again on a new connection                                       |                           |
| proxy: `ssh.Dial` to the proxy, retried with the PROXY's limit  | `dial`, proxy             |
| `proxyClient.Dial("tcp", target)`, retried with the target's    | `open_channel`            |
| `ssh.NewClientConn` over that one connection, retried with the  | `OneHandshake`            |
| target's limit: a failed handshake closes it, so every later    |                           |
| try fails at once ("use of closed network connection")          |                           |
| `host_key` unset: the host key is not checked; set: only its    | `pin_host_key`,           |
| type is offered (HostKeyAlgorithms) and the server's key must   | `check_host_key`          |
| be it (`ssh.FixedHostKey`), else the handshake fails before the |                           |
| login: an error like any other, so retried as above (through a  |                           |
| proxy, every retry then fails at once on the closed connection) |                           |
| a `host_key` that does not parse fails before any dial          | `pinned_key`              |
| `session.Run(create)` with stdin, stdout and stderr logged      | `run`                     |
"""

from __future__ import annotations

import base64
import io
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

import paramiko

DEFAULT_DIAL_ERROR_LIMIT = 10
DEFAULT_PER_DIAL_TIMEOUT = 15
FIRST_DELAY, BACKOFF, MAX_DELAY = 0.1, 1.5, 5.0


@dataclass(frozen=True)
class Hop:
    """One connection's settings, as pulumi-command's ConnectionArgs hold them."""
    host: str
    user: str
    private_key: str = field(repr=False)
    port: int = 22
    dial_error_limit: int = DEFAULT_DIAL_ERROR_LIMIT
    per_dial_timeout: int = DEFAULT_PER_DIAL_TIMEOUT
    host_key: str | None = None

    @classmethod
    def from_state(cls, conn: dict) -> "Hop":
        """From a Command's `connection` (or its `proxy`) as the engine records it."""
        return cls(conn["host"], conn.get("user") or "root", conn.get("privateKey") or "",
                   int(conn.get("port") or 22),
                   int(conn["dialErrorLimit"]) if conn.get("dialErrorLimit") is not None else DEFAULT_DIAL_ERROR_LIMIT,
                   int(conn["perDialTimeout"]) if conn.get("perDialTimeout") is not None else DEFAULT_PER_DIAL_TIMEOUT,
                   conn.get("hostKey") or None)


class DialFailed(Exception):
    pass


def delays():
    """The waits between tries: 0.1 s, x1.5 each time, never more than 5 s."""
    delay = FIRST_DELAY
    while True:
        yield min(delay, MAX_DELAY)
        delay *= BACKOFF


def with_retries(what: str, limit: int, attempt: Callable, log: Callable[[str], None],
                 sleep: Callable[[float], None] = time.sleep):
    """Try `attempt` until it returns; give up once tries + 1 exceed `limit` (-1: never)."""
    waits = delays()
    tries = 0
    while True:
        try:
            return attempt()
        except Exception as error:   # noqa: BLE001 (every dial error counts, as in Go)
            dials = tries + 1
            if limit > -1 and dials > limit:
                raise DialFailed(f"{what}: after {tries} failed attempts: {error}") from None
            if dials == 1 or dials % 10 == 0:
                log(f"{what} {dials}/{limit if limit > -1 else 'inf'} failed: retrying ({error})")
            sleep(next(waits))
            tries += 1


def private_key(text: str) -> paramiko.PKey:
    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key(io.StringIO(text))
        except paramiko.SSHException:
            continue
    raise ValueError("the connection's private key is not an ed25519, ECDSA or RSA key")


def pinned_key(hop: Hop) -> tuple[str, str] | None:
    """`host_key` as Go's ssh.ParseAuthorizedKey reads it: type and base64 blob."""
    if hop.host_key is None:
        return None
    fields = hop.host_key.split()
    try:
        blob = base64.b64decode(fields[1], validate=True)
        named = blob[4:4 + int.from_bytes(blob[:4], "big")].decode()
    except (IndexError, ValueError):
        named = None
    if named is None or named != fields[0]:
        raise ValueError(f"failed to parse host key: {hop.host_key!r}")
    return fields[0], fields[1]


def pin_host_key(transport: paramiko.Transport, hop: Hop) -> None:
    """Offer the server only the pinned key's type, as Go's HostKeyAlgorithms does."""
    pinned = pinned_key(hop)
    if pinned:
        transport.get_security_options().key_types = [pinned[0]]


def check_host_key(transport: paramiko.Transport, hop: Hop) -> None:
    pinned = pinned_key(hop)
    if pinned is None:
        return
    key = transport.get_remote_server_key()
    if (key.get_name(), key.get_base64()) != pinned:
        raise paramiko.SSHException("ssh: handshake failed: ssh: host key mismatch")


def handshake(sock, hop: Hop) -> paramiko.Transport:
    """The SSH handshake and the key login over an open connection; closes it on failure."""
    transport = paramiko.Transport(sock)
    try:
        pin_host_key(transport, hop)
        transport.start_client(timeout=hop.per_dial_timeout or None)
        check_host_key(transport, hop)
        transport.auth_publickey(hop.user, private_key(hop.private_key))
        return transport
    except BaseException:
        transport.close()
        raise


def ssh_dial(hop: Hop) -> paramiko.Transport:
    """Go's ssh.Dial: a new TCP connection (bounded by per_dial_timeout), then the handshake."""
    sock = socket.create_connection((hop.host, hop.port), timeout=hop.per_dial_timeout or None)
    sock.settimeout(None)
    try:
        return handshake(sock, hop)
    except BaseException:
        sock.close()
        raise


class OneHandshake:
    """ssh.NewClientConn retried over ONE connection: once a handshake has failed, the
    connection is closed and every later try fails at once, as in pulumi-command."""

    def __init__(self, channel, hop: Hop):
        self.channel, self.hop, self.closed = channel, hop, False

    def __call__(self) -> paramiko.Transport:
        if self.closed:
            raise EOFError("use of closed network connection")
        try:
            return handshake(self.channel, self.hop)
        except BaseException:
            self.closed = True
            self.channel.close()
            raise


@dataclass
class Connection:
    transport: paramiko.Transport
    proxy: paramiko.Transport | None = None

    def close(self) -> None:
        self.transport.close()
        if self.proxy:
            self.proxy.close()


def dial(target: Hop, proxy: Hop | None, log: Callable[[str], None]) -> Connection:
    # As Go's SSHConfig: a host_key that does not parse fails before any dial.
    pinned_key(target)
    if proxy is not None:
        pinned_key(proxy)
    if proxy is None:
        return Connection(with_retries("Dial", target.dial_error_limit, lambda: ssh_dial(target), log))
    jump = with_retries("Dial proxy", proxy.dial_error_limit, lambda: ssh_dial(proxy), log)
    try:
        channel = with_retries(
            "Dial from proxy", target.dial_error_limit,
            lambda: jump.open_channel("direct-tcpip", (target.host, target.port), ("127.0.0.1", 0)), log)
        return Connection(with_retries("Dial", target.dial_error_limit, OneHandshake(channel, target), log), jump)
    except BaseException:
        jump.close()
        raise


def run(target: Hop, proxy: Hop | None, command: str, stdin: str = "",
        log: Callable[[str], None] = print) -> tuple[int, str]:
    """`command` on the target, as a remote Command's create: its exit code and its
    output (stdout and stderr together). A connection that cannot be made is exit 255."""
    try:
        connection = dial(target, proxy, log)
    except DialFailed as failure:
        return 255, f"{'proxy: ' if proxy else ''}{failure}\n"
    try:
        channel = connection.transport.open_session()
        channel.set_combine_stderr(True)
        channel.exec_command(command)
        if stdin:
            channel.sendall(stdin.encode())
        channel.shutdown_write()
        output = io.BytesIO()
        while chunk := channel.recv(65536):
            output.write(chunk)
        return channel.recv_exit_status(), output.getvalue().decode(errors="replace")
    finally:
        connection.close()
