"""X.509-SVID verification and authorizers.

A peer's certificate chain is checked in a fixed order. First the leaf's
SPIFFE ID is parsed and the X.509-SVID leaf rules applied. Then the bundle
of the leaf's own trust domain is picked and the chain verified against that
bundle alone. Only then does the authorizer decide. Every failure raises `SvidError` whose message starts with
what failed, so one log line or one 502 body can carry it. Time is a
parameter, so expiry is testable without waiting.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Mapping, Sequence

from cryptography import x509
from cryptography.x509.oid import ExtensionOID
from OpenSSL import crypto

from e5s_proxy.spiffeid import SpiffeId, SpiffeIdError, parse_spiffe_id

Bundles = Mapping[str, Sequence[x509.Certificate]]
"""X.509 authorities keyed by trust domain name."""


class SvidError(Exception):
    """A peer certificate that is not an acceptable X.509-SVID.

    ``presented_id`` is the SPIFFE ID the peer claimed, when it got far
    enough to claim one; logs and 502 bodies show it. ``kind`` is a short
    fixed label for metrics: ``invalid_svid``, ``unknown_trust_domain``,
    ``untrusted_chain`` or ``unauthorized``.
    """

    kind = "invalid_svid"

    def __init__(self, reason: str, presented_id: SpiffeId | None = None, kind: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.presented_id = presented_id
        if kind is not None:
            self.kind = kind


class AuthorizationError(SvidError):
    """A valid SVID whose SPIFFE ID the policy does not allow."""

    kind = "unauthorized"


Authorizer = Callable[[SpiffeId], None]
"""A policy: returns for an allowed SPIFFE ID, raises AuthorizationError otherwise."""


def spiffe_id_from_certificate(cert: x509.Certificate) -> SpiffeId:
    """Return the SPIFFE ID in the certificate's single URI SAN."""
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        raise SvidError("certificate has no subject alternative names, so no SPIFFE ID") from None

    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise SvidError(f"an X.509-SVID must have exactly one URI SAN, found {len(uris)}")

    try:
        return parse_spiffe_id(uris[0])
    except SpiffeIdError as error:
        raise SvidError(f"URI SAN {uris[0]!r} is not a valid SPIFFE ID: {error}") from None


def check_leaf(cert: x509.Certificate) -> SpiffeId:
    """Apply the X.509-SVID rules for a leaf and return its SPIFFE ID."""
    spiffe_id = spiffe_id_from_certificate(cert)

    try:
        constraints = cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and constraints.ca:
        raise SvidError("leaf certificate is a CA certificate", spiffe_id)

    try:
        usage = cert.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE).value
    except x509.ExtensionNotFound:
        raise SvidError("leaf certificate has no key usage extension", spiffe_id) from None
    if not usage.digital_signature:
        raise SvidError("leaf certificate lacks the digitalSignature key usage", spiffe_id)
    if usage.key_cert_sign:
        raise SvidError("leaf certificate has the keyCertSign key usage", spiffe_id)
    if usage.crl_sign:
        raise SvidError("leaf certificate has the cRLSign key usage", spiffe_id)

    return spiffe_id


def verify_chain(
    chain: Sequence[x509.Certificate],
    bundles: Bundles,
    now: datetime.datetime,
) -> SpiffeId:
    """Verify a peer chain (leaf first) and return the leaf's SPIFFE ID.

    Only the bundle of the leaf's own trust domain is trusted, so a bundle
    of trust domain X can never vouch for an ID in trust domain Y.
    """
    return ChainVerifier(bundles).verify([crypto.X509.from_cryptography(cert) for cert in chain], now)


class ChainVerifier:
    """Chain check of `verify_chain` for one set of bundles, fast for chains it has verified before.

    Peers reconnect with the same SVID, so a chain that verified is
    remembered by its exact bytes, with the time window in which every
    certificate involved is valid: the chain's and all authorities of its
    trust domain. Inside that window the same bytes verify the same way
    against the same bundles, so the result is reused. A new set of bundles
    gets a new verifier. Each trust domain's authorities are converted for
    OpenSSL once.
    """

    def __init__(self, bundles: Bundles, *, max_remembered: int = 1024) -> None:
        self._bundles = bundles
        self._max_remembered = max_remembered
        self._anchors: dict[str, list[crypto.X509]] = {}
        self._verified: dict[tuple[bytes, ...], tuple[SpiffeId, datetime.datetime, datetime.datetime]] = {}

    def verify(self, chain: Sequence[crypto.X509], now: datetime.datetime) -> SpiffeId:
        """Verify ``chain`` (leaf first, as OpenSSL hands it over) and return the leaf's SPIFFE ID."""
        if not chain:
            raise SvidError("peer presented no certificate")

        key = tuple(crypto.dump_certificate(crypto.FILETYPE_ASN1, cert) for cert in chain)
        remembered = self._verified.get(key)
        if remembered is not None:
            spiffe_id, valid_from, valid_until = remembered
            if valid_from <= now <= valid_until:
                return spiffe_id

        leaf = chain[0].to_cryptography()
        spiffe_id = check_leaf(leaf)

        authorities = self._bundles.get(spiffe_id.trust_domain)
        if not authorities:
            raise SvidError(f"no bundle for trust domain {spiffe_id.trust_domain!r}", spiffe_id, "unknown_trust_domain")

        store = self._store(spiffe_id.trust_domain, authorities, now)
        context = crypto.X509StoreContext(store, chain[0], list(chain[1:]))
        try:
            context.verify_certificate()
        except crypto.X509StoreContextError as error:
            raise SvidError(
                f"certificate chain does not verify against the bundle of {spiffe_id.trust_domain!r}: {error}",
                spiffe_id,
                "untrusted_chain",
            ) from None

        involved = [leaf, *(cert.to_cryptography() for cert in chain[1:]), *authorities]
        if len(self._verified) >= self._max_remembered:
            self._verified.clear()
        self._verified[key] = (
            spiffe_id,
            max(cert.not_valid_before_utc for cert in involved),
            min(cert.not_valid_after_utc for cert in involved),
        )
        return spiffe_id

    def _store(self, trust_domain: str, authorities: Sequence[x509.Certificate], now: datetime.datetime) -> crypto.X509Store:
        # A store takes its verification time once: OpenSSL keeps the first
        # time set on it, so each verification gets a new store.
        anchors = self._anchors.get(trust_domain)
        if anchors is None:
            anchors = self._anchors[trust_domain] = [crypto.X509.from_cryptography(cert) for cert in authorities]
        store = crypto.X509Store()
        for anchor in anchors:
            store.add_cert(anchor)
        store.set_time(now)
        return store


def authorize_ids(allowed: Iterable[SpiffeId]) -> Authorizer:
    """Allow exactly the given SPIFFE IDs."""
    allowed_ids = frozenset(allowed)
    shown = ", ".join(sorted(str(spiffe_id) for spiffe_id in allowed_ids))

    def authorize(spiffe_id: SpiffeId) -> None:
        if spiffe_id not in allowed_ids:
            raise AuthorizationError(f"SPIFFE ID {spiffe_id} is not one of the allowed IDs: {shown}", spiffe_id)

    return authorize


def authorize_trust_domains(allowed: Iterable[str]) -> Authorizer:
    """Allow any SPIFFE ID whose trust domain is one of the given names."""
    allowed_domains = frozenset(allowed)
    shown = ", ".join(sorted(allowed_domains))

    def authorize(spiffe_id: SpiffeId) -> None:
        if spiffe_id.trust_domain not in allowed_domains:
            raise AuthorizationError(
                f"SPIFFE ID {spiffe_id} is not a member of the allowed trust domain(s): {shown}", spiffe_id
            )

    return authorize


def build_authorizer(spiffe_ids: Sequence[SpiffeId], trust_domains: Sequence[str]) -> Authorizer:
    """Build the authorizer for a config section that sets exactly one of the two."""
    if spiffe_ids and trust_domains:
        raise ValueError("set allowed SPIFFE IDs or trust domains, not both")
    if spiffe_ids:
        return authorize_ids(spiffe_ids)
    if trust_domains:
        return authorize_trust_domains(trust_domains)
    raise ValueError("an authorizer needs at least one SPIFFE ID or trust domain")


def describe_expected(spiffe_ids: Sequence[SpiffeId], trust_domains: Sequence[str]) -> str:
    """Describe a policy for messages, e.g. ``spiffe://example.org/api`` or ``trust domain example.org``."""
    if spiffe_ids:
        return " or ".join(str(spiffe_id) for spiffe_id in spiffe_ids)
    return " or ".join(f"any ID in trust domain {name}" for name in trust_domains)
