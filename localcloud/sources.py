"""What the host itself is configured to download from, read at run time.

No registry or mirror host name is written in this repository: the droplets' mirror
and the proxy's allow-list both come from the host's own apt, npm and pip settings.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from . import shell

APT_SOURCES_LIST = Path("/etc/apt/sources.list")
APT_SOURCES_DIR = Path("/etc/apt/sources.list.d")


@dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]


def parse_deb822(text: str) -> list[AptSource]:
    """Stanzas of a .sources file; only 'deb' types, enabled ones."""
    found = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0] in " \t" and key:           # continuation line
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            found.append(AptSource(uri, tuple(fields.get("suites", "").split()),
                                   tuple(fields.get("components", "").split())))
    return found


def parse_one_line(text: str) -> list[AptSource]:
    """Lines of a classic sources.list: 'deb [opts] URI SUITE COMPONENT...'."""
    found = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):       # options like [signed-by=...]
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            found.append(AptSource(words[0], (words[1],), tuple(words[2:])))
    return found


def apt_sources(sources_list: Path = APT_SOURCES_LIST,
                sources_dir: Path = APT_SOURCES_DIR) -> list[AptSource]:
    found = []
    if sources_list.is_file():
        found += parse_one_line(sources_list.read_text())
    if sources_dir.is_dir():
        for path in sorted(sources_dir.glob("*.sources")):
            found += parse_deb822(path.read_text())
        for path in sorted(sources_dir.glob("*.list")):
            found += parse_one_line(path.read_text())
    return found


def debian_mirror(suite: str, sources: list[AptSource]) -> str:
    """The URI the host uses for `suite` itself (not -updates or -security)."""
    for source in sources:
        if suite in source.suites and urlsplit(source.uri).scheme in ("http", "https"):
            return source.uri
    raise LookupError(f"the host's apt sources name no mirror for {suite}")


def npm_registry_command() -> shell.Command:
    return ["npm", "config", "get", "registry"]


def pip_config_command() -> shell.Command:
    return ["pip", "config", "list"]


def npm_registry() -> str | None:
    if not shutil.which("npm"):
        return None
    out = shell.run(npm_registry_command(), check=False).stdout.strip()
    return out if urlsplit(out).scheme in ("http", "https") else None


def parse_pip_config(text: str) -> list[str]:
    """http(s) index URLs from `pip config list` output (key='value' lines)."""
    urls = []
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.rsplit(".", 1)[-1] in ("index-url", "extra-index-url"):
            urls += value.strip().strip("'\"").split()
    return [u for u in urls if urlsplit(u).scheme in ("http", "https")]


def pip_indexes() -> list[str]:
    urls = []
    if shutil.which("pip"):
        urls += parse_pip_config(shell.run(pip_config_command(), check=False).stdout)
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        urls += [u for u in os.environ.get(var, "").split() if urlsplit(u).scheme in ("http", "https")]
    return urls


def hosts_of(urls: list[str]) -> set[str]:
    return {urlsplit(u).hostname for u in urls if urlsplit(u).hostname}


def allowed_hosts() -> set[str]:
    """Every host the host itself downloads packages from: the proxy lets only these through."""
    urls = [s.uri for s in apt_sources()] + pip_indexes()
    registry = npm_registry()
    if registry:
        urls.append(registry)
    return hosts_of(urls)


def npm_registry_cafile() -> str | None:
    """A custom CA file the host's npm is told to trust, if any."""
    if not shutil.which("npm"):
        return None
    out = shell.run(["npm", "config", "get", "cafile"], check=False).stdout.strip()
    return out if out and out not in ("null", "undefined") and Path(out).is_file() else None
