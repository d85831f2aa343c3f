"""The host's package sources: what the image mirrors and the proxy lets through."""

from localcloud import sources

DEB822 = """\
Types: deb
# a comment inside the stanza
URIs: http://mirror.test/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://sources-only.test/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://disabled.test/debian
Suites: bookworm
Components: main
Enabled: no

Types: deb
URIs: http://security.test/debian-security
Suites: bookworm-security
Components: main
"""

ONE_LINE = """\
# deb http://commented.test/debian bookworm main
deb [arch=amd64 signed-by=/k.gpg] https://oneline.test/debian bookworm main contrib
deb-src http://src.test/debian bookworm main
deb http://plain.test/debian bookworm-updates main
"""


def test_deb822_keeps_enabled_binary_stanzas_only():
    found = sources.parse_deb822(DEB822)
    assert [s.uri for s in found] == ["http://mirror.test/debian", "http://security.test/debian-security"]
    assert found[0].suites == ("bookworm", "bookworm-updates")


def test_one_line_format_skips_options_comments_and_deb_src():
    found = sources.parse_one_line(ONE_LINE)
    assert [(s.uri, s.suites) for s in found] == [
        ("https://oneline.test/debian", ("bookworm",)),
        ("http://plain.test/debian", ("bookworm-updates",)),
    ]
    assert found[0].components == ("main", "contrib")


def test_apt_sources_reads_both_places_and_mirror_is_the_plain_suite(tmp_path):
    (tmp_path / "sources.list").write_text(ONE_LINE)
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(DEB822)
    found = sources.apt_sources(tmp_path / "sources.list", d)
    assert len(found) == 4
    # the first source naming the suite itself wins, not -updates/-security
    assert sources.debian_mirror("bookworm", found) == "https://oneline.test/debian"
    assert sources.debian_mirror("bookworm", found[2:]) == "http://mirror.test/debian"
    assert sources.hosts_of([s.uri for s in found]) == {
        "oneline.test", "plain.test", "mirror.test", "security.test"}


def test_no_mirror_for_suite_is_an_error():
    import pytest
    with pytest.raises(LookupError):
        sources.debian_mirror("trixie", sources.parse_deb822(DEB822))


def test_pip_config_yields_only_http_indexes():
    text = ("global.index-url='https://pypi-mirror.test/simple'\n"
            "global.extra-index-url='file:///opt/pypi/simple https://extra.test/simple'\n"
            "global.cert='/etc/ssl/certs/ca-certificates.crt'\n")
    assert sources.parse_pip_config(text) == ["https://pypi-mirror.test/simple", "https://extra.test/simple"]
