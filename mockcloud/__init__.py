"""The program under the Pulumi SDK's mock engine, with providers that behave like the real ones.

Droplets get addresses from the VPC range and from an emulated public range; pulumi-tls
resources produce real keys and certificates; passwords are real random strings. The
tests assert on the recorded graph, and the local cloud boots it.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import gc
import hashlib
import ipaddress
import itertools
import runpy
import secrets
import string
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from model import conventions
from model.settings import SETTINGS, Settings, stack_config

ROOT = Path(__file__).resolve().parent.parent
# Documentation range (RFC 5737): never a real host's address.
PUBLIC_RANGE = ipaddress.ip_network("198.51.100.0/24")


def stack_file_config(stack: str) -> dict[str, Any]:
    """The `config:` block of Pulumi.<stack>.yaml, without the project prefix."""
    document = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())
    return stack_config(conventions.PROJECT, document.get("config") or {})


def stack_settings(stack: str, **overrides: Any) -> Settings:
    """The stack file's settings with `overrides` set as `pulumi config set` would set them
    (with --secret for a secret setting)."""
    secret = [s.key for s in SETTINGS if s.secret and s.key in overrides]
    return Settings.from_config(stack, {**stack_file_config(stack), **overrides}, secret_keys=secret)


# How the engine marks a secret value in the inputs it hands to mocks.
SECRET_SIGNATURE = "4dabf18193072939515e22adb298388d"
SECRET_VALUE_SIGNATURE = "1b47061264138c4ac30d75fd1eb44270"


def secret(value: Any) -> dict:
    """A value wrapped the way the engine marks a secret."""
    return {SECRET_SIGNATURE: SECRET_VALUE_SIGNATURE, "value": value}


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and SECRET_SIGNATURE in value


def plain(value: Any) -> Any:
    """The value with every secret wrapper removed."""
    if is_secret(value):
        return plain(value["value"])
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def unknown_stdout(command: str) -> str:
    """A command's stdout before it has run, as the mock engine answers it: a placeholder
    naming the command. The local cloud's engine puts what the command printed in its place
    (localcloud/engine.py), in the commands that read it and in the stack's state."""
    return f"<stdout of {command}, once it has run>"


@dataclass
class Resource:
    type: str
    name: str
    id: str
    inputs: dict[str, Any]  # as the engine sent them: secrets still wrapped
    state: dict[str, Any]  # plain values
    # Resource options as the SDK sent them to the engine (the mock engine drops them).
    protect: bool = False
    parent: str = ""
    additional_secret_outputs: tuple[str, ...] = ()
    # True when a previous deployment held this resource with the same inputs: a real
    # `pulumi up` would leave it alone.
    unchanged: bool = False


class RecordingMonitor(pulumi.runtime.mocks.MockMonitor):
    """The SDK's mock monitor, keeping the options of each registration for the mocks."""

    def RegisterResource(self, request):
        self.mocks.options[(request.type, request.name)] = request
        return super().RegisterResource(request)


class ProviderMocks(pulumi.runtime.Mocks):
    """Answers the engine the way DigitalOcean, tls, random and command would."""

    def __init__(self, vpc_range: str, previous: "ProviderMocks | None" = None):
        self.resources: list[Resource] = []
        self.options: dict[tuple[str, str], Any] = {}  # (type, name) -> RegisterResourceRequest
        # The previous deployment's resources, like a stack's state: unchanged inputs keep
        # their id and outputs (addresses, keys, passwords), as they would for real.
        self._state = {(r.type, r.name): r for r in previous.resources} if previous else {}
        self._raw_state = dict(previous._raw_state) if previous else {}
        # Ids are never reused either, also those of resources deleted since (last_id).
        self.last_id = max([getattr(previous, "last_id", 0), 100000,
                            *(int(r.id) for r in (previous.resources if previous else []) if r.id.isdigit())])
        self._ids = itertools.count(self.last_id + 1)
        # Addresses in use, and those of droplets deleted since: DigitalOcean does not hand a
        # deleted droplet's address to the next one at once, so a replacement is reached anew.
        self.retired_addresses: set[str] = set(getattr(previous, "retired_addresses", ()))
        taken = self.retired_addresses | {
            r.state.get(field)
            for r in (previous.resources if previous else [])
            for field in ("ipv4Address", "ipv4AddressPrivate", "ipAddress")
        }
        self._private = (str(ip) for ip in ipaddress.ip_network(vpc_range).hosts() if str(ip) not in taken)
        hosts = PUBLIC_RANGE.hosts()
        next(hosts)  # the first address is the emulated gateway
        self._public = (str(ip) for ip in hosts if str(ip) not in taken)
        self._keys: dict[str, Any] = dict(previous._keys) if previous else {}  # private key PEM -> key object

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        request = self.options.get((args.typ, args.name))
        before = self._state.get((args.typ, args.name))
        given = dict(args.inputs)
        # ignore_changes: the engine keeps the state's value of these inputs.
        for key in (request.ignoreChanges if request and before else ()):
            if key in before.inputs:
                given[key] = before.inputs[key]
        inputs = plain(given)
        unchanged = before is not None and plain(before.inputs) == inputs
        if unchanged:
            resource_id, state = before.id, self._raw_state[(args.typ, args.name)]
        else:
            state = dict(given)
            make = getattr(self, "_" + args.typ.split(":")[-1].replace("/", "_"), None)
            if make:
                state.update(make(inputs))
            if args.typ.startswith("command:"):
                state["stdout"] = unknown_stdout(args.name)
            # The engine keeps outputs that the provider's schema calls secret as secrets.
            for name in request.additionalSecretOutputs if request else ():
                if name in state and not is_secret(state[name]):
                    state[name] = secret(state[name])
            # pulumi-command replaces a Command whose triggers changed, and its Create makes a new id.
            replaced = args.typ.startswith("command:") and before is not None \
                and plain(before.inputs.get("triggers")) != inputs.get("triggers")
            resource_id = before.id if before and not replaced else str(next(self._ids))
            self.last_id = max(self.last_id, int(resource_id))
        self._raw_state[(args.typ, args.name)] = state
        self.resources.append(
            Resource(
                args.typ,
                args.name,
                resource_id,
                given,
                plain(state),
                protect=bool(request and request.protect),
                parent=request.parent if request else "",
                additional_secret_outputs=tuple(request.additionalSecretOutputs) if request else (),
                unchanged=unchanged,
            )
        )
        return resource_id, state

    # --- DigitalOcean ------------------------------------------------------------------
    def _Droplet(self, inputs):
        return {"ipv4Address": next(self._public), "ipv4AddressPrivate": next(self._private), "status": "active"}

    def _ReservedIp(self, inputs):
        return {"ipAddress": next(self._public)}

    def _SshKey(self, inputs):
        blob = base64.b64decode(inputs["publicKey"].split()[1])
        return {"fingerprint": ":".join(f"{b:02x}" for b in hashlib.md5(blob).digest())}

    def _Vpc(self, inputs):
        return {"urn": "do:vpc"}

    def _Volume(self, inputs):
        return {"dropletIds": []}

    def _SpacesBucket(self, inputs):
        return {"bucketDomainName": f"{inputs['name']}.{inputs['region']}.digitaloceanspaces.com"}

    def _SpacesKey(self, inputs):
        # DigitalOcean's shapes: a 20-character id starting DO00, a 43-character secret.
        upper = string.ascii_uppercase + string.digits
        return {
            "accessKey": "DO00" + "".join(secrets.choice(upper) for _ in range(16)),
            "secretKey": "".join(secrets.choice(string.ascii_letters + string.digits + "+/") for _ in range(43)),
        }

    # --- random --------------------------------------------------------------------------
    def _RandomPassword(self, inputs):
        alphabet = string.ascii_letters + string.digits
        return {"result": "".join(secrets.choice(alphabet) for _ in range(int(inputs["length"])))}

    # --- tls: real keys and certificates --------------------------------------------------
    def _PrivateKey(self, inputs):
        if inputs.get("algorithm") == "ED25519":
            key = ed25519.Ed25519PrivateKey.generate()
            openssh = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            ).decode()
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            openssh = ""
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        self._keys[pem] = key
        public = key.public_key()
        return {
            "privateKeyPem": pem,
            "privateKeyOpenssh": openssh or pem,
            "publicKeyPem": public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode(),
            "publicKeyOpenssh": public.public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            ).decode()
            + "\n",
        }

    def _SelfSignedCert(self, inputs):
        key = self._keys[inputs["privateKeyPem"]]
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, inputs["subject"]["commonName"])])
        cert = (
            _builder(name, name, key.public_key(), int(inputs["validityPeriodHours"]))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(key, hashes.SHA256())
        )
        return {"certPem": cert.public_bytes(serialization.Encoding.PEM).decode()}

    def _CertRequest(self, inputs):
        key = self._keys[inputs["privateKeyPem"]]
        names = [x509.DNSName(n) for n in inputs.get("dnsNames", [])]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in inputs.get("ipAddresses", [])]
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, inputs["subject"]["commonName"])]))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(key, hashes.SHA256())
        )
        return {"certRequestPem": csr.public_bytes(serialization.Encoding.PEM).decode()}

    def _LocallySignedCert(self, inputs):
        csr = x509.load_pem_x509_csr(inputs["certRequestPem"].encode())
        ca_cert = x509.load_pem_x509_certificate(inputs["caCertPem"].encode())
        ca_key = self._keys[inputs["caPrivateKeyPem"]]
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        cert = (
            _builder(csr.subject, ca_cert.subject, csr.public_key(), int(inputs["validityPeriodHours"]))
            .add_extension(san, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        return {"certPem": cert.public_bytes(serialization.Encoding.PEM).decode()}


def _builder(subject, issuer, public_key, hours: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=hours))
    )


@dataclass
class Deployment:
    """What one run of the program registered, and its resolved outputs."""

    settings: Settings
    resources: list[Resource]
    outputs: dict[str, Any]
    secret_outputs: dict[str, bool] = field(default_factory=dict)
    mocks: ProviderMocks | None = field(default=None, repr=False)

    def of_type(self, suffix: str) -> list[Resource]:
        return [r for r in self.resources if r.type.endswith(suffix)]

    def named(self, name: str, type_suffix: str = "") -> Resource:
        (found,) = [r for r in self.resources if r.name == name and r.type.endswith(type_suffix)]
        return found


def build_program():
    """The program's `build` function, loaded the way Pulumi loads __main__.py."""
    return runpy.run_path(str(ROOT / "__main__.py"), run_name="platform_program")["build"]


def deploy(settings: Settings, previous: Deployment | None = None) -> Deployment:
    """Run the program once under the mock engine and resolve its outputs.

    With `previous`, the run starts from that deployment's state, the way `pulumi up`
    on an existing stack does: resources whose inputs did not change keep their outputs.
    """
    mocks = ProviderMocks(settings.vpc_ip_range, previous.mocks if previous else None)
    pulumi.runtime.set_mocks(
        mocks, project=conventions.PROJECT, stack=settings.stack, preview=False, monitor=RecordingMonitor(mocks)
    )
    build = build_program()
    result: dict[str, Any] = {}
    secret_outputs: dict[str, bool] = {}

    @pulumi.runtime.test
    def run():
        outputs = {name: pulumi.Output.from_input(value) for name, value in build(settings).items()}

        async def secrecy():
            # What `pulumi stack output` would show as [secret].
            secret_outputs.update({name: await output.is_secret() for name, output in outputs.items()})

        return pulumi.Output.all(pulumi.Output.all(**outputs).apply(result.update), secrecy())

    try:
        with collector_paused():
            run()
    except Exception as failure:
        # The engine's chain of awaits is too deep for pytest to print; keep the program's part.
        where = "".join(traceback.format_exception(failure)[-12:])
        raise ProgramFailed(f"the program failed under the mock engine: {failure!r}\n{where}") from None
    return Deployment(settings=settings, resources=mocks.resources, outputs=result, secret_outputs=secret_outputs,
                      mocks=mocks)


@contextlib.contextmanager
def collector_paused():
    """Python's cycle collector off for one run, then one pass over what the run made.

    The SDK makes thousands of objects per resource that live until the run ends; each full
    pass of the collector went over all of them, and over every deployment a test process
    still holds, again and again: about half the CPU of a 50-server run."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
            gc.collect(0)  # the run's objects are all still in the youngest generation


class ProgramFailed(RuntimeError):
    """The Pulumi program raised while registering its resources."""
