"""The stack's settings: every key, its default and its meaning in one table.

`Settings.from_config` reads the keys of `Pulumi.<stack>.yaml` (without the project
prefix), checks every one of them and raises one `SettingsError` that lists all the
problems found, each naming the setting, the value and what is allowed. Nothing is
registered with Pulumi before the settings are valid.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Collection

from . import conventions, prices
from .parsers import (
    ENV_VALUE_MAX_BYTES, NAME_AT_FAULT, Invalid, InvalidEntries, boolean, cidr_list, deploy_keys, domain_list,
    domain_name, email, email_list, engine_set, env_map, https_url, one_of, optional_domain_name, optional_https_url,
    ssh_public_keys, stack_name, vpc_range, whole_number,
)

REQUIRED = object()

# Let's Encrypt issues a certificate for at most 100 names: domain and its aliases.
MAX_CERTIFICATE_NAMES = 100

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETS_ENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"

REGIONS = (
    "nyc1", "nyc3", "sfo2", "sfo3", "ams3", "sgp1", "lon1", "fra1", "tor1", "blr1",
    "syd1", "atl1",
)
# Where Spaces (standard storage) is offered, as DigitalOcean's availability matrix lists it
# (docs.digitalocean.com/products/spaces/details/availability, March 2026). The provider
# checks a bucket's region against its own list, which has atl1 since its v2.61 (July 2025).
SPACES_REGIONS = ("nyc3", "sfo2", "sfo3", "ams3", "sgp1", "lon1", "fra1", "tor1", "blr1", "syd1", "atl1")
# Every difference between them: conventions.IMAGES.
IMAGES = tuple(conventions.IMAGES)
NODE_MAJORS = (18, 20, 22, 24)
MAX_APP_SERVERS = 50


class SettingsError(ValueError):
    """All the problems found in a stack's settings, one per line."""

    def __init__(self, stack: str, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"Pulumi.{stack}.yaml has {len(problems)} bad setting(s):\n{lines}")


droplet_size = one_of(tuple(prices.DROPLET_MONTHLY))


@dataclass(frozen=True)
class Setting:
    key: str
    default: Any
    parse: Callable[[Any], Any]
    meaning: str
    # Set with `pulumi config set --secret`; never shown, reaches the graph as a secret Output.
    secret: bool = False


@dataclass(frozen=True)
class Secret:
    """A secret setting's value: `str` and `repr` hide it, so no log or message shows it."""

    value: str = field(repr=False)

    def __str__(self) -> str:
        return "[secret]"

    def output(self):
        """The value for the graph, as `pulumi.Config.get_secret` hands it out: a secret Output."""
        import pulumi  # here, not above: reading and checking settings needs no Pulumi SDK

        return pulumi.Output.secret(self.value)


# The one table of settings: the README's settings reference is checked against it.
SETTINGS = (
    Setting("region", "nyc3", one_of(REGIONS),
            "DigitalOcean region of every resource, for the stack's life: the preview of a stack that exists "
            "refuses another (its datastore's volume cannot leave its region)."),
    Setting("image", conventions.DEFAULT_IMAGE, one_of(IMAGES),
            "Droplet image of every role (see Images below: what has run on which), for the stack's life: the "
            "preview of a stack that exists refuses another (it would replace every droplet)."),
    Setting("lbSize", "s-1vcpu-1gb", droplet_size, "Droplet size of the load balancer."),
    Setting("appSize", "s-1vcpu-2gb", droplet_size, "Droplet size of each app server."),
    Setting("datastoreSize", "s-2vcpu-4gb", droplet_size, "Droplet size of the datastore."),
    Setting("appServerCount", 2, whole_number(1, MAX_APP_SERVERS),
            "How many app servers; change it to scale."),
    Setting("volumeSizeGb", 20, whole_number(1, 16384),
            "Size in GiB of the datastore's block volume. It can only grow; the datastore's provisioning then "
            "grows the filesystem while the engines run."),
    Setting("domain", REQUIRED, domain_name, "Public name of the platform; the TLS certificate's name."),
    Setting("domainAliases", [], domain_list(MAX_CERTIFICATE_NAMES - 1),
            "More names of the platform, such as www.example.com, on the same certificate as `domain` (Let's "
            f"Encrypt allows {MAX_CERTIFICATE_NAMES} names with `domain`); changing them asks for a new "
            "certificate, the one in place serving until it is issued. Each must point at the LB's address: "
            "with dnsZone, the names inside that zone get an A record; any other name, its own DNS must point."),
    Setting("redirectAliases", True, boolean,
            "true: a request for any of domainAliases is answered 301 to the same path and query at `domain` "
            "(one address for search engines and cookies); false: the aliases serve the app as `domain` does."),
    Setting("dnsZone", "", optional_domain_name,
            "A DigitalOcean-hosted DNS zone holding `domain`; when set, its A record is managed (and those "
            "of the domainAliases inside it)."),
    Setting("acmeEmail", REQUIRED, email, "Contact address for the ACME (Let's Encrypt) account."),
    Setting("acmeDirectory", LETS_ENCRYPT, https_url,
            "ACME directory URL; staging stacks use Let's Encrypt's staging directory."),
    Setting("adminCidrs", REQUIRED, cidr_list,
            "Addresses allowed to SSH to the load balancer (the jump host)."),
    Setting("sshPublicKeys", REQUIRED, ssh_public_keys,
            f"Operators' public keys, for the `{conventions.OPERATOR_USER}` user on every droplet."),
    Setting("deployKeys", [], deploy_keys,
            f"Public keys of the `{conventions.DEPLOY_USER}` login, which `python -m deploy` uses: it may pass "
            f"the load balancer to the app servers' SSH and, there, write releases and reload the apps, "
            f"nothing else (a CI key belongs here, not in sshPublicKeys). Empty means the operators' "
            f"sshPublicKeys; once set, only these keys (list an operator's too for them to deploy)."),
    Setting("lbRequestsPerSecond", 50, whole_number(1, 100000),
            "Requests per second one client address may make through the load balancer (bursts of up to "
            "twice that are let through); beyond it the LB answers 429."),
    Setting("engines", list(conventions.ENGINES), engine_set,
            "Datastore engines to install and open; any subset."),
    Setting("vpcIpRange", "10.110.0.0/20", vpc_range,
            "Private range of the stack's VPC, for the stack's life (another would replace every droplet). Give "
            "each stack its own: DigitalOcean refuses a VPC whose range overlaps another in the account."),
    Setting("nodeMajor", 22, one_of(NODE_MAJORS), "Node.js major version on the app servers."),
    Setting("backups", True, boolean,
            "Back every droplet up to Spaces, each role to a bucket of its own (created in the stack): the "
            "datastore's data, the LB's certificates, every role's configuration; and archive each release "
            "to a bucket of the deploys' own."),
    Setting("backupHourUtc", 3, whole_number(0, 23), "Hour (UTC) of the daily backup."),
    Setting("backupKeepDaily", 7, whole_number(1, 366), "Daily backups kept."),
    Setting("backupKeepWeekly", 4, whole_number(0, 104), "Weekly backups kept."),
    Setting("backupKeepMonthly", 6, whole_number(0, 120), "Monthly backups kept."),
    Setting("spacesRegion", "", one_of(("",) + SPACES_REGIONS),
            "Region the stack's buckets are made in; empty means the stack's region. A bucket stays where it "
            "was made: a later spacesRegion leaves it (and its backups and releases) in place, "
            "with a warning, as moving it would delete it."),
    Setting("spacesEndpoint", "", optional_https_url,
            "S3 endpoint backups and releases are sent to; empty means the Spaces endpoint of each bucket's "
            "region. Only a stand-in for Spaces (the local cloud's) needs another."),
    Setting("dropletBackups", False, boolean, "DigitalOcean's weekly droplet backups too."),
    Setting("protectData", False, boolean,
            "Protect the datastore droplet, its volume and the stack's buckets from deletion (production). "
            "When false, `pulumi destroy` also empties and deletes the buckets: the stack goes in one "
            "command."),
    Setting("alertEmails", [], email_list,
            "Who gets DigitalOcean Monitoring's alerts (disk, memory, CPU, load) and the uptime check's (the "
            "site down, slow, its certificate near expiry); none, and no uptime check, when empty. Each must be "
            "verified on the DigitalOcean account, or the alerts' creation fails."),
    Setting("alertLatencyMs", 2000, whole_number(100, 30000),
            "The uptime check's slow-site alert: the site's `url` taking longer than this (milliseconds) to "
            "answer, for 5 minutes; set it from what the app normally takes, seen from DigitalOcean's regions."),
    Setting("alertWebhookUrl", "", optional_https_url,
            "A Slack/Mattermost-compatible incoming webhook for every droplet's backup alerts and the deploy "
            "tool's outcomes (each deploy started, done or stopped; each rollback, and each restart that "
            "restarted a server, done or stopped); empty means "
            "backup alerts are only logged and deploys notify no one. Set it with `pulumi config set --secret`.",
            secret=True),
    Setting("appEnv", {}, env_map,
            "The apps' own environment variables (name: value), added to their `.env` on every app server; a "
            "change reloads the apps gracefully, one app server at a time (a value they cannot run with goes "
            "back on the first server and fails `pulumi up`). Names are A-Z, 0-9 and _, none the platform sets ("
            f"{', '.join(conventions.PLATFORM_APP_ENV)}, the engines' POSTGRESQL_HOST ..., "
            f"{', '.join(prefix + '*' for prefix in conventions.PLATFORM_ENV_PREFIXES)}); "
            f"values are single lines of at most {ENV_VALUE_MAX_BYTES // 1024} KiB. "
            "Set one with `pulumi config set --path 'appEnv.LOG_LEVEL' info`."),
    Setting("appSecrets", {}, env_map,
            "Like appEnv, for values no one may read: API keys, tokens. Each is set with `pulumi config set "
            "--secret --path 'appSecrets.STRIPE_KEY' ...`; never shown, in the stack's state only encrypted, on "
            "the app servers only in `.env` (readable by the app user). A name is in appEnv or here, not both.",
            secret=True),
)

_BY_KEY = {s.key: s for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    """A stack's checked settings. Build with `from_config`; field names are snake_case."""

    stack: str
    region: str
    image: str
    lb_size: str
    app_size: str
    datastore_size: str
    app_server_count: int
    volume_size_gb: int
    domain: str
    domain_aliases: tuple[str, ...]
    redirect_aliases: bool
    dns_zone: str
    acme_email: str
    acme_directory: str
    admin_cidrs: tuple[str, ...]
    ssh_public_keys: tuple[str, ...]
    deploy_keys: tuple[str, ...]
    lb_requests_per_second: int
    engines: tuple[str, ...]
    vpc_ip_range: str
    node_major: int
    backups: bool
    backup_hour_utc: int
    backup_keep_daily: int
    backup_keep_weekly: int
    backup_keep_monthly: int
    spaces_region: str
    spaces_endpoint: str
    droplet_backups: bool
    protect_data: bool
    alert_emails: tuple[str, ...]
    alert_latency_ms: int
    alert_webhook_url: Secret | None
    app_env: dict[str, str]
    app_secrets: dict[str, Secret]

    @classmethod
    def from_config(cls, stack: str, raw: dict[str, Any], secret_keys: Collection[str] = (),
                    plain_entries: Collection[str] = ()) -> "Settings":
        """`secret_keys`: the keys of `raw` that the config holds encrypted (`--secret`);
        `plain_entries`: the entries of secret maps it holds in plain text (see `plain_entries`)."""
        problems: list[str] = []
        try:
            stack_name(stack)  # first: every name DigitalOcean sees is made from it
        except Invalid as allowed:
            problems.append(f"stack: {_shown(stack)} is not allowed: {allowed}")
        for key in raw:
            if key not in _BY_KEY:
                close = difflib.get_close_matches(key, _BY_KEY, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                problems.append(f"{key}: not a setting of this program{hint}")
        values: dict[str, Any] = {}
        for setting in SETTINGS:
            value = raw.get(setting.key, setting.default)
            if value is REQUIRED:
                problems.append(
                    f"{setting.key}: missing; it must be set to {_allowed(setting)} ({setting.meaning})"
                )
                continue
            encrypted = setting.secret or setting.key in secret_keys   # either way, never shown
            shown = _hidden(value) if encrypted else _shown(value)
            if encrypted and not setting.secret:
                problems.append(_plain_setting_encrypted(setting.key))
            try:
                parsed = setting.parse(value)
            except InvalidEntries as bad:
                problems += [_entry_problem(setting, *entry, hidden=encrypted) for entry in bad.entries]
                continue
            except Invalid as allowed:
                problems.append(f"{setting.key}: {shown} is not allowed: {allowed}")
                continue
            if setting.secret:
                if parsed and setting.key not in secret_keys:
                    # A map is secret as a whole once any of its entries is (`--secret --path`).
                    how = f"--secret {setting.key}"
                    if isinstance(parsed, dict):
                        how = f"--secret --path '{setting.key}.NAME'"
                    problems.append(
                        f"{setting.key}: {shown} is not allowed in plain text (Pulumi.{stack}.yaml would "
                        f"show it): set it with `pulumi config set {how} ...`"
                    )
                for name in parsed if isinstance(parsed, dict) else ():
                    if f"{setting.key}.{name}" in plain_entries:
                        problems.append(
                            f"{setting.key}.{name}: (the value hidden: a secret) is not allowed in plain text "
                            f"(Pulumi.{stack}.yaml shows it): set it with `pulumi config set --secret --path "
                            f"'{setting.key}.{name}' ...`"
                        )
                parsed = _secret(parsed)
            values[_snake(setting.key)] = parsed
        problems += _cross_checks(values)
        if problems:
            raise SettingsError(stack, problems)
        if not values["spaces_region"]:
            values["spaces_region"] = values["region"]
        return cls(stack=stack, **values)

    def endpoint_of(self, bucket_region: str) -> str:
        """The S3 endpoint of a bucket in `bucket_region`: spacesEndpoint when set, else
        that region's Spaces endpoint (a bucket stays where it was made, see buckets.py)."""
        return self.spaces_endpoint or conventions.spaces_endpoint(bucket_region)


def _secret(parsed: Any) -> Any:
    """A secret setting's value: each value of a map hidden (its names are not secret)."""
    if isinstance(parsed, dict):
        return {name: Secret(value) for name, value in parsed.items()}
    return Secret(parsed) if parsed else None


def _plain_setting_encrypted(key: str) -> str:
    """A setting the program writes in plain text, set with --secret: its author meant it
    hidden, and it would not be."""
    shown = f"{key}: (the value hidden: set as a secret) is not allowed as a secret"
    if key == "appEnv":
        return (f"{shown}: its values are written in plain text (in the stack's state, on the app servers, in "
                "every release's archive); a secret the apps read goes in appSecrets (`pulumi config set --secret "
                "--path 'appSecrets.NAME' ...`)")
    return (f"{shown}: the program writes it in plain text (on the droplets, in the stack's state); set it "
            f"without --secret (`pulumi config set {key} ...`)")


def _entry_problem(setting: Setting, name: str, value: Any, allowed: str, hidden: bool) -> str:
    """One entry of a map setting, named as `pulumi config set --path` names it."""
    if value is NAME_AT_FAULT:
        return f"{setting.key}: the name {_shown(name)} is not allowed: {allowed}"
    shown = "(the value hidden: a secret)" if hidden else _shown(value)
    return f"{setting.key}.{name}: {shown} is not allowed: {allowed}"


def _cross_checks(values: dict[str, Any]) -> list[str]:
    """Checks between settings; each runs only when the settings it compares are valid."""
    problems = []
    for name in sorted(set(values.get("app_env") or ()) & set(values.get("app_secrets") or ())):
        problems.append(f"appSecrets: the name {name!r} is not allowed: a name appEnv does not set too (each "
                        f"variable is set once)")
    zone, domain = values.get("dns_zone"), values.get("domain")
    if domain in (values.get("domain_aliases") or ()):
        problems.append(f"domainAliases: {domain!r} is not allowed: names other than domain {domain!r} (the "
                        f"certificate names domain already)")
    if zone and domain and not (domain == zone or domain.endswith("." + zone)):
        problems.append(f"dnsZone: {zone!r} is not allowed: a zone that contains domain {domain!r}")
    if not {"backups", "spaces_region", "region"} <= set(values):
        return problems
    if values["backups"] and not values["spaces_region"] and values["region"] not in SPACES_REGIONS:
        problems.append(
            f"spacesRegion: '' is not allowed when region is {values['region']!r} (no Spaces "
            f"there): one of {', '.join(SPACES_REGIONS)}"
        )
    return problems


def _allowed(setting: Setting) -> str:
    """What the setting's parser accepts, in its own words."""
    try:
        setting.parse(None)
    except Invalid as allowed:
        return str(allowed)
    return "a value"


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _hidden(value: Any) -> str:
    """A secret value as a message may show it: its scheme and host at most."""
    shown = re.match(r"^([a-z][a-z0-9+.-]*://)(?:[^/?#\s@]*@)?([^/?#\s@]*)", str(value), re.IGNORECASE)
    if not shown:
        return "(a value hidden: a secret)"
    return repr(f"{shown.group(1)}{shown.group(2)}/...") + " (the rest hidden: a secret)"


def plain_entries(stack_file_config: dict[str, Any]) -> set[str]:
    """`KEY.NAME` of every entry of a secret map setting (appSecrets) that a stack file's
    config (without the project prefix) holds in plain text, not as `{secure: ...}`. Pulumi
    marks a whole map secret once one entry is, so only the file tells the others apart."""
    found = set()
    for setting in SETTINGS:
        value = stack_file_config.get(setting.key)
        if setting.secret and isinstance(value, dict):
            found |= {f"{setting.key}.{name}" for name, item in value.items()
                      if not (isinstance(item, dict) and set(item) == {"secure"})}
    return found


def stack_config(project: str, config: dict[str, Any]) -> dict[str, Any]:
    """This project's keys of a Pulumi config map, without the `project:` prefix."""
    prefix = project + ":"
    return {k[len(prefix):]: v for k, v in config.items() if k.startswith(prefix)}
