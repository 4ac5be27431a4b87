"""Certificates minted in-test: SPIFFE CAs and X.509-SVIDs shaped like SPIRE's."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from e5s_proxy.identity import IdentitySnapshot
from e5s_proxy.spiffeid import parse_spiffe_id

NOW = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=datetime.timezone.utc)


@dataclass
class Authority:
    trust_domain: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def make_authority(trust_domain: str, *, not_after: datetime.datetime | None = None) -> Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{trust_domain} CA"))
        .issuer_name(_name(f"{trust_domain} CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(not_after or NOW + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
            critical=False,
        )
    )
    return Authority(trust_domain, builder.sign(key, hashes.SHA256()), key)


def make_svid(
    authority: Authority,
    uris: list[str],
    *,
    ca: bool = False,
    digital_signature: bool = True,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
    key_usage: bool = True,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("workload"))
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - datetime.timedelta(hours=1))
        .not_valid_after(not_after or NOW + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    )
    if key_usage:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=digital_signature,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_cert_sign,
                crl_sign=crl_sign,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri) for uri in uris]),
            critical=False,
        )
    return builder.sign(authority.key, hashes.SHA256()), key


def make_snapshot(authority: Authority, spiffe_id: str, *extra: Authority) -> IdentitySnapshot:
    """An identity for ``spiffe_id`` that trusts ``authority`` and any ``extra`` ones."""
    cert, key = make_svid(authority, [spiffe_id], not_after=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1))
    bundles: dict[str, tuple[x509.Certificate, ...]] = {}
    for each in (authority, *extra):
        bundles[each.trust_domain] = bundles.get(each.trust_domain, ()) + (each.cert,)
    parsed = parse_spiffe_id(spiffe_id)
    return IdentitySnapshot(spiffe_id=parsed, chain=(cert,), private_key=key, bundles=bundles, svid_ids=(parsed,))
