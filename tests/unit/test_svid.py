"""X.509-SVID verification order, leaf rules and authorizers."""

from __future__ import annotations

import datetime

import pytest

from e5s_proxy.spiffeid import SpiffeId
from OpenSSL import crypto

from e5s_proxy.svid import (
    AuthorizationError,
    ChainVerifier,
    SvidError,
    authorize_ids,
    authorize_trust_domains,
    build_authorizer,
    check_leaf,
    describe_expected,
    verify_chain,
)
from tests.pki import NOW, make_authority, make_svid

EXAMPLE = make_authority("example.org")
OTHER = make_authority("other.org")


def test_verify_chain_accepts_valid_svid():
    cert, _ = make_svid(EXAMPLE, ["spiffe://example.org/web"])
    assert verify_chain([cert], {"example.org": [EXAMPLE.cert]}, NOW) == SpiffeId("example.org", "/web")


def test_verify_chain_uses_own_domain_bundle():
    # other.org's CA signs a leaf that claims example.org: the union of
    # bundles would accept it, the leaf's own trust domain bundle must not.
    forged, _ = make_svid(OTHER, ["spiffe://example.org/web"])
    bundles = {"example.org": [EXAMPLE.cert], "other.org": [OTHER.cert]}
    with pytest.raises(SvidError) as caught:
        verify_chain([forged], bundles, NOW)
    assert "does not verify against the bundle of 'example.org'" in caught.value.reason


def test_verify_chain_reports_presented_id_on_chain_failure():
    forged, _ = make_svid(OTHER, ["spiffe://example.org/web"])
    with pytest.raises(SvidError) as caught:
        verify_chain([forged], {"example.org": [EXAMPLE.cert]}, NOW)
    assert caught.value.presented_id == SpiffeId("example.org", "/web")


def test_verify_chain_rejects_unknown_trust_domain():
    cert, _ = make_svid(OTHER, ["spiffe://other.org/web"])
    with pytest.raises(SvidError, match="no bundle for trust domain 'other.org'"):
        verify_chain([cert], {"example.org": [EXAMPLE.cert]}, NOW)


def test_verify_chain_rejects_expired_leaf():
    cert, _ = make_svid(EXAMPLE, ["spiffe://example.org/web"], not_after=NOW - datetime.timedelta(minutes=1))
    with pytest.raises(SvidError, match="expired"):
        verify_chain([cert], {"example.org": [EXAMPLE.cert]}, NOW)


def test_verify_chain_rejects_not_yet_valid_leaf():
    cert, _ = make_svid(EXAMPLE, ["spiffe://example.org/web"], not_before=NOW + datetime.timedelta(minutes=5))
    with pytest.raises(SvidError, match="not yet valid"):
        verify_chain([cert], {"example.org": [EXAMPLE.cert]}, NOW)


def test_verify_chain_rejects_empty_chain():
    with pytest.raises(SvidError, match="no certificate"):
        verify_chain([], {"example.org": [EXAMPLE.cert]}, NOW)


@pytest.mark.parametrize(
    ("uris", "message"),
    [
        ([], "no subject alternative names"),
        (["spiffe://example.org/a", "spiffe://example.org/b"], "exactly one URI SAN, found 2"),
        (["https://example.org/web"], "not a valid SPIFFE ID"),
        (["spiffe://Example.org/web"], "not a valid SPIFFE ID"),
        (["spiffe://example.org/a/../b"], "not a valid SPIFFE ID"),
    ],
)
def test_check_leaf_rejects_bad_uri_sans(uris, message):
    cert, _ = make_svid(EXAMPLE, uris)
    with pytest.raises(SvidError, match=message):
        check_leaf(cert)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ca": True}, "is a CA certificate"),
        ({"digital_signature": False}, "lacks the digitalSignature"),
        ({"key_cert_sign": True}, "keyCertSign"),
        ({"crl_sign": True}, "cRLSign"),
        ({"key_usage": False}, "no key usage"),
    ],
)
def test_check_leaf_enforces_svid_key_rules(options, message):
    cert, _ = make_svid(EXAMPLE, ["spiffe://example.org/web"], **options)
    with pytest.raises(SvidError, match=message):
        check_leaf(cert)


def test_authorize_ids_allows_listed_id():
    authorize_ids([SpiffeId("example.org", "/web")])(SpiffeId("example.org", "/web"))


def test_authorize_ids_rejects_other_id():
    with pytest.raises(AuthorizationError, match="not one of the allowed IDs: spiffe://example.org/web"):
        authorize_ids([SpiffeId("example.org", "/web")])(SpiffeId("example.org", "/db"))


def test_authorize_trust_domains_allows_member():
    authorize_trust_domains(["example.org"])(SpiffeId("example.org", "/anything"))


def test_authorize_trust_domains_rejects_other_domain():
    with pytest.raises(AuthorizationError, match="not a member of the allowed trust domain"):
        authorize_trust_domains(["example.org"])(SpiffeId("other.org", "/web"))


def test_build_authorizer_rejects_both_policies():
    with pytest.raises(ValueError, match="not both"):
        build_authorizer([SpiffeId("example.org", "/web")], ["example.org"])


def test_describe_expected_names_ids():
    assert describe_expected([SpiffeId("example.org", "/a")], []) == "spiffe://example.org/a"


def test_describe_expected_names_trust_domain():
    assert describe_expected([], ["example.org"]) == "any ID in trust domain example.org"


def test_unknown_trust_domain_kind():
    cert, _ = make_svid(OTHER, ["spiffe://other.org/web"])
    with pytest.raises(SvidError) as caught:
        verify_chain([cert], {"example.org": [EXAMPLE.cert]}, NOW)
    assert caught.value.kind == "unknown_trust_domain"


def test_untrusted_chain_kind():
    forged, _ = make_svid(OTHER, ["spiffe://example.org/web"])
    with pytest.raises(SvidError) as caught:
        verify_chain([forged], {"example.org": [EXAMPLE.cert]}, NOW)
    assert caught.value.kind == "untrusted_chain"


def test_unauthorized_kind():
    with pytest.raises(AuthorizationError) as caught:
        authorize_trust_domains(["example.org"])(SpiffeId("other.org", "/web"))
    assert caught.value.kind == "unauthorized"


def as_openssl(*certs) -> list[crypto.X509]:
    return [crypto.X509.from_cryptography(cert) for cert in certs]


def test_chain_verifier_accepts_chain_again():
    cert, _ = make_svid(EXAMPLE, ["spiffe://example.org/web"])
    verifier = ChainVerifier({"example.org": [EXAMPLE.cert]})
    verifier.verify(as_openssl(cert), NOW)
    assert verifier.verify(as_openssl(cert), NOW) == SpiffeId("example.org", "/web")


def test_chain_verifier_rejects_remembered_chain_after_expiry():
    cert, _ = make_svid(EXAMPLE, ["spiffe://example.org/web"], not_after=NOW + datetime.timedelta(minutes=1))
    verifier = ChainVerifier({"example.org": [EXAMPLE.cert]})
    verifier.verify(as_openssl(cert), NOW)
    with pytest.raises(SvidError, match="expired"):
        verifier.verify(as_openssl(cert), NOW + datetime.timedelta(minutes=2))


def test_chain_verifier_rejects_remembered_chain_before_validity():
    cert, _ = make_svid(EXAMPLE, ["spiffe://example.org/web"], not_before=NOW - datetime.timedelta(minutes=1))
    verifier = ChainVerifier({"example.org": [EXAMPLE.cert]})
    verifier.verify(as_openssl(cert), NOW)
    with pytest.raises(SvidError, match="not yet valid"):
        verifier.verify(as_openssl(cert), NOW - datetime.timedelta(minutes=2))


def test_chain_verifier_does_not_remember_failures():
    forged, _ = make_svid(OTHER, ["spiffe://example.org/web"])
    verifier = ChainVerifier({"example.org": [EXAMPLE.cert]})
    with pytest.raises(SvidError):
        verifier.verify(as_openssl(forged), NOW)
    with pytest.raises(SvidError, match="does not verify"):
        verifier.verify(as_openssl(forged), NOW)


def test_chain_verifier_tells_apart_chains_of_same_id():
    genuine, _ = make_svid(EXAMPLE, ["spiffe://example.org/web"])
    forged, _ = make_svid(OTHER, ["spiffe://example.org/web"])
    verifier = ChainVerifier({"example.org": [EXAMPLE.cert]})
    verifier.verify(as_openssl(genuine), NOW)
    with pytest.raises(SvidError, match="does not verify"):
        verifier.verify(as_openssl(forged), NOW)


def test_chain_verifier_of_new_bundles_forgets_chains():
    cert, _ = make_svid(EXAMPLE, ["spiffe://example.org/web"])
    ChainVerifier({"example.org": [EXAMPLE.cert]}).verify(as_openssl(cert), NOW)
    with pytest.raises(SvidError, match="does not verify"):
        ChainVerifier({"example.org": [OTHER.cert]}).verify(as_openssl(cert), NOW)


def test_chain_verifier_limits_remembered_chains():
    verifier = ChainVerifier({"example.org": [EXAMPLE.cert]}, max_remembered=2)
    for name in ("a", "b", "c"):
        cert, _ = make_svid(EXAMPLE, [f"spiffe://example.org/{name}"])
        verifier.verify(as_openssl(cert), NOW)
    assert len(verifier._verified) <= 2


def test_chain_verifier_uses_current_time_per_chain():
    first, _ = make_svid(EXAMPLE, ["spiffe://example.org/first"])
    short, _ = make_svid(EXAMPLE, ["spiffe://example.org/short"], not_after=NOW + datetime.timedelta(minutes=1))
    verifier = ChainVerifier({"example.org": [EXAMPLE.cert]})
    verifier.verify(as_openssl(first), NOW)
    with pytest.raises(SvidError, match="expired"):
        verifier.verify(as_openssl(short), NOW + datetime.timedelta(minutes=2))
