"""Unit tests for e5s_proxy.spiffeid: strict SPIFFE ID and trust domain parsing."""

from __future__ import annotations

import pytest
from spiffe import SpiffeId as PySpiffeId
from spiffe import TrustDomain as PyTrustDomain

from e5s_proxy.spiffeid import (
    MAX_SPIFFE_ID_LENGTH,
    MAX_TRUST_DOMAIN_LENGTH,
    SpiffeId,
    SpiffeIdError,
    parse_spiffe_id,
    parse_trust_domain,
)

VALID_IDS = [
    ("spiffe://example.org", "example.org", ""),
    ("spiffe://example.org/web", "example.org", "/web"),
    ("spiffe://example.org/ns/default/sa/web", "example.org", "/ns/default/sa/web"),
    ("spiffe://a-b_c.d0/Path.With-Mixed_Case9", "a-b_c.d0", "/Path.With-Mixed_Case9"),
    ("spiffe://example.org/.../a..b/.x", "example.org", "/.../a..b/.x"),
    ("spiffe://1.2.3.4/x", "1.2.3.4", "/x"),
    ("spiffe://example..org/x", "example..org", "/x"),
]

# (text, a fragment the error message must contain)
INVALID_IDS = [
    ("", "it is empty"),
    ("SPIFFE://example.org/web", 'use "spiffe://example.org/web"'),
    ("Spiffe://example.org", "lower-case"),
    ("spiffe:example.org", '"//"'),
    ("spiffe:/example.org", '"//"'),
    ("https://example.org/web", 'the scheme is "https"'),
    ("example.org/web", 'does not start with "spiffe://"'),
    ("spiffe://", "trust domain is empty"),
    ("spiffe:///web", "trust domain is empty"),
    ("spiffe://Example.org/web", 'use "spiffe://example.org/web"'),
    ("spiffe://EXAMPLE.ORG", "upper-case"),
    ("spiffe://example.org:8443/web", "no port"),
    ("spiffe://user@example.org/web", "userinfo"),
    ("spiffe://user:pass@example.org/web", "userinfo"),
    ("spiffe://example.org/web?x=1", "query"),
    ("spiffe://example.org?x=1", "query"),
    ("spiffe://example.org/web#top", "fragment"),
    ("spiffe://example.org/web/", "trailing slash"),
    ("spiffe://example.org/", "trailing slash"),
    ("spiffe://example.org//web", "empty segment"),
    ("spiffe://example.org/a//b", "empty segment"),
    ("spiffe://example.org/./web", '"."'),
    ("spiffe://example.org/web/..", '".."'),
    ("spiffe://example.org/w%65b", "percent-encoding"),
    ("spiffe://ex%61mple.org/web", "percent-encoding"),
    ("spiffe://example.org/web page", "' '"),
    ("spiffe://example.org/web*", "'*'"),
    ("spiffe://example.org/caf\u00e9", "'\u00e9'"),
    ("spiffe://example.org/web\n", "whitespace"),
    ("spiffe://example.org\n/web", "'\\n'"),
    ("spiffe://exa mple.org/web", "' '"),
    ("spiffe://[::1]/web", "'['"),
    (" spiffe://example.org/web", "whitespace"),
    ("spiffe://example.org/" + "a" * MAX_SPIFFE_ID_LENGTH, "maximum of 2048"),
    ("spiffe://" + "a" * (MAX_TRUST_DOMAIN_LENGTH + 1), "maximum of 255"),
]


@pytest.mark.parametrize("text, trust_domain, path", VALID_IDS)
def test_parse_spiffe_id_valid(text: str, trust_domain: str, path: str) -> None:
    spiffe_id = parse_spiffe_id(text)

    assert spiffe_id.trust_domain == trust_domain
    assert spiffe_id.path == path
    assert str(spiffe_id) == text


@pytest.mark.parametrize("text, expected", INVALID_IDS)
def test_parse_spiffe_id_invalid(text: str, expected: str) -> None:
    with pytest.raises(SpiffeIdError) as raised:
        parse_spiffe_id(text)

    assert expected in str(raised.value)


@pytest.mark.parametrize("text, _", INVALID_IDS)
def test_spiffe_id_error_names_value(text: str, _: str) -> None:
    with pytest.raises(SpiffeIdError) as raised:
        parse_spiffe_id(text)

    assert str(raised.value).startswith(f'invalid SPIFFE ID "{text}": ')
    assert "; " in str(raised.value)


def test_spiffe_id_error_is_value_error() -> None:
    assert issubclass(SpiffeIdError, ValueError)


def test_parse_spiffe_id_non_string() -> None:
    with pytest.raises(SpiffeIdError):
        parse_spiffe_id(42)  # type: ignore[arg-type]


def test_parse_spiffe_id_max_length_accepted() -> None:
    prefix = "spiffe://example.org/"
    text = prefix + "a" * (MAX_SPIFFE_ID_LENGTH - len(prefix))

    assert len(text) == MAX_SPIFFE_ID_LENGTH
    assert str(parse_spiffe_id(text)) == text


def test_parse_trust_domain_max_length_accepted() -> None:
    name = "a" * MAX_TRUST_DOMAIN_LENGTH

    assert parse_trust_domain(name) == name


@pytest.mark.parametrize("text, trust_domain, path", VALID_IDS)
def test_py_spiffe_agrees_on_valid_ids(text: str, trust_domain: str, path: str) -> None:
    # Certificates are parsed elsewhere with py-spiffe, so every ID that the
    # config accepts must parse there to the same value.
    py_id = PySpiffeId(text)

    assert str(py_id.trust_domain) == trust_domain
    assert py_id.path == path


@pytest.mark.parametrize(
    "text",
    [
        "SPIFFE://example.org/web",
        "spiffe://Example.org/web",
        "spiffe://example.org/web\n",
        "spiffe://example.org/" + "a" * MAX_SPIFFE_ID_LENGTH,
    ],
)
def test_stricter_than_py_spiffe(text: str) -> None:
    # py-spiffe 0.3.2 accepts these; the SPIFFE ID specification does not.
    PySpiffeId(text)

    with pytest.raises(SpiffeIdError):
        parse_spiffe_id(text)


def test_spiffe_id_ordering() -> None:
    first = parse_spiffe_id("spiffe://a.org/z")
    second = parse_spiffe_id("spiffe://b.org/a")

    assert sorted([second, first]) == [first, second]


def test_spiffe_id_equality_and_hash() -> None:
    first = parse_spiffe_id("spiffe://example.org/web")
    second = SpiffeId("example.org", "/web")

    assert first == second
    assert hash(first) == hash(second)


def test_spiffe_id_path_is_case_sensitive() -> None:
    assert parse_spiffe_id("spiffe://example.org/Web") != parse_spiffe_id(
        "spiffe://example.org/web"
    )


def test_spiffe_id_is_frozen() -> None:
    spiffe_id = parse_spiffe_id("spiffe://example.org/web")

    with pytest.raises(AttributeError):
        spiffe_id.path = "/other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "trust_domain, path",
    [
        ("Example.org", "/web"),
        ("example.org", "web"),
        ("example.org", "/web/"),
        ("example.org", "/a//b"),
        ("", "/web"),
    ],
)
def test_spiffe_id_constructor_validates(trust_domain: str, path: str) -> None:
    with pytest.raises(SpiffeIdError):
        SpiffeId(trust_domain, path)


VALID_TRUST_DOMAINS = [
    ("example.org", "example.org"),
    ("spiffe://example.org", "example.org"),
    ("prod-1.example_corp.internal", "prod-1.example_corp.internal"),
    ("localdomain", "localdomain"),
]

INVALID_TRUST_DOMAINS = [
    ("", "it is empty"),
    ("Example..org", 'use the lower-case form "example..org"'),
    ("EXAMPLE.ORG", "upper-case"),
    ("example.org:8443", "no port"),
    ("user@example.org", "userinfo"),
    ("ex%61mple.org", "percent-encoding"),
    ("example org", "' '"),
    ("example.org\n", "'\\n'"),
    ("example.org/web", "'/'"),
    ("spiffe://example.org/web", "a trust domain has no path"),
    ("spiffe://example.org/", "trailing slash"),
    ("SPIFFE://example.org", "lower-case"),
    ("spiffe://Example.org", "upper-case"),
    ("https://example.org", 'URL with the scheme "https"'),
    ("spiffe://example.org?x", "query"),
    ("a" * (MAX_TRUST_DOMAIN_LENGTH + 1), "maximum of 255"),
]


@pytest.mark.parametrize("text, expected", VALID_TRUST_DOMAINS)
def test_parse_trust_domain_valid(text: str, expected: str) -> None:
    assert parse_trust_domain(text) == expected


@pytest.mark.parametrize("text, expected", INVALID_TRUST_DOMAINS)
def test_parse_trust_domain_invalid(text: str, expected: str) -> None:
    with pytest.raises(SpiffeIdError) as raised:
        parse_trust_domain(text)

    assert expected in str(raised.value)


@pytest.mark.parametrize("text, _", INVALID_TRUST_DOMAINS)
def test_trust_domain_error_names_value(text: str, _: str) -> None:
    with pytest.raises(SpiffeIdError) as raised:
        parse_trust_domain(text)

    assert str(raised.value).startswith(f'invalid trust domain "{text}": ')


@pytest.mark.parametrize(
    "text", ["Example.org", "example.org\n", "spiffe://example.org/web"]
)
def test_trust_domain_stricter_than_py_spiffe(text: str) -> None:
    # py-spiffe 0.3.2 lower-cases, allows a trailing newline and drops a path.
    PyTrustDomain(text)

    with pytest.raises(SpiffeIdError):
        parse_trust_domain(text)


@pytest.mark.parametrize("text, expected", VALID_TRUST_DOMAINS)
def test_py_spiffe_agrees_on_trust_domains(text: str, expected: str) -> None:
    assert PyTrustDomain(text).name == expected
