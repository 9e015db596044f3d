"""Identities: one certificate authority per department, SPIFFE names, revocation, signed envelopes.

Each department and the executive committee is its own CA. A principal's department is the CA
that issued its certificate: a certificate whose SPIFFE ID claims department D is accepted only if
D's CA (pinned in the federation file) signed it, so no key holder can mint identities for another
department. TLS keys are ECDSA P-256 (gRPC's TLS stack refuses Ed25519 leaves).

SPIFFE IDs: spiffe://FEDERATION/dept/DEPARTMENT/ROLE/NAME. Roles: requester, officer, auditor
(people and services) and enclave, witness, coordinator, aggregator (nodes).

This module creates, parses and verifies; it reads no clock (callers pass `now`) and does no
file I/O except the explicit `write_private_key`/`write_pem` helpers.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dataisland.errors import DataislandError, InvalidInputError

Role = Literal[
    "requester", "officer", "auditor", "operator", "enclave", "witness", "coordinator", "aggregator"
]
PERSON_ROLES: frozenset[str] = frozenset({"requester", "officer", "auditor", "operator"})
NODE_ROLES: frozenset[str] = frozenset({"enclave", "witness", "coordinator", "aggregator"})
ROLES: frozenset[str] = PERSON_ROLES | NODE_ROLES

_SPIFFE = re.compile(
    r"^spiffe://(?P<federation>[a-z0-9][a-z0-9.\-_]{0,62})/dept/(?P<department>[a-z][a-z0-9_]{0,62})"
    r"/(?P<role>[a-z]+)/(?P<name>[A-Za-z0-9][A-Za-z0-9._\-]{0,62})$"
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,62}$")


class UnauthenticatedError(DataislandError):
    """A certificate or signature does not prove who the caller claims to be (says which check)."""

    code = "UNAUTHENTICATED"


@dataclass(frozen=True)
class Principal:
    """Who a verified certificate names."""

    federation: str
    department: str
    role: str
    name: str

    @property
    def spiffe_id(self) -> str:
        """The SPIFFE ID this principal's certificate carries."""
        return f"spiffe://{self.federation}/dept/{self.department}/{self.role}/{self.name}"

    def __str__(self) -> str:
        return f"{self.department}/{self.role}/{self.name}"

    @classmethod
    def from_spiffe_id(cls, uri: str) -> Principal:
        """Parse a SPIFFE ID.

        Raises:
            UnauthenticatedError: the URI is not a dataisland SPIFFE ID or names an unknown role.
        """
        match = _SPIFFE.match(uri)
        if match is None or match["role"] not in ROLES:
            raise UnauthenticatedError(f"{uri!r} is not a dataisland SPIFFE ID")
        return cls(match["federation"], match["department"], match["role"], match["name"])


@dataclass(frozen=True)
class Credentials:
    """A private key and its certificate."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    def key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (written owner-only)."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def certificate_pem(self) -> bytes:
        """The certificate as PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str, federation: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"dataisland {federation}"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def create_authority(
    *, federation: str, department: str, now: dt.datetime, days: int = 3650
) -> Credentials:
    """Create a department's (or the committee's) self-signed certificate authority."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(f"dataisland {department} CA", federation)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{federation}/dept/{department}")]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Credentials(key, certificate)


def issue(
    authority: Credentials,
    *,
    principal: Principal,
    now: dt.datetime,
    dns_names: Sequence[str] = (),
    days: int = 365,
) -> Credentials:
    """Issue a TLS certificate for `principal` signed by its department's `authority`.

    Raises:
        InvalidInputError: the role or name is not valid.
    """
    if principal.role not in ROLES:
        raise InvalidInputError(f"unknown role {principal.role!r}; roles are {sorted(ROLES)}")
    if not _NAME.match(principal.name):
        raise InvalidInputError(f"name {principal.name!r} must be 1..63 of [A-Za-z0-9._-]")
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(principal.spiffe_id)]
    sans += [x509.DNSName(name) for name in dns_names]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(str(principal), principal.federation))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.certificate.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(authority.key, hashes.SHA256())
    )
    return Credentials(key, certificate)


def revocation_list(
    authority: Credentials, *, revoked_serials: Iterable[int], now: dt.datetime, days: int = 30
) -> x509.CertificateRevocationList:
    """A CRL signed by `authority` listing `revoked_serials`."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(authority.certificate.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=days))
    )
    for serial in sorted(set(revoked_serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    return builder.sign(authority.key, hashes.SHA256())


def principal_of(certificate: x509.Certificate) -> Principal:
    """The principal a certificate's SPIFFE URI SAN names (unverified).

    Raises:
        UnauthenticatedError: no single dataisland SPIFFE URI SAN.
    """
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise UnauthenticatedError("the certificate has no subject alternative name") from None
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise UnauthenticatedError("the certificate must carry exactly one SPIFFE URI")
    return Principal.from_spiffe_id(uris[0])


@dataclass(frozen=True)
class TrustStore:
    """The CAs a federation pins (by department) and their current revocation lists."""

    federation: str
    authorities: Mapping[str, x509.Certificate]
    revocations: Mapping[str, x509.CertificateRevocationList]

    def verify(self, certificate: x509.Certificate, *, now: dt.datetime) -> Principal:
        """Verify a peer or requester certificate and return the principal it proves.

        Order: SPIFFE ID parsed; the federation matches; the claimed department's pinned CA issued
        it (signature checked); it is within its validity; it is not on that CA's revocation list.

        Raises:
            UnauthenticatedError: naming the first check that failed.
        """
        principal = principal_of(certificate)
        if principal.federation != self.federation:
            raise UnauthenticatedError(
                f"certificate of {principal} belongs to federation {principal.federation!r}"
            )
        authority = self.authorities.get(principal.department)
        if authority is None:
            raise UnauthenticatedError(f"no pinned CA for department {principal.department!r}")
        try:
            certificate.verify_directly_issued_by(authority)
        except (ValueError, TypeError, InvalidSignature):
            raise UnauthenticatedError(
                f"certificate claiming {principal} was not issued by {principal.department}'s CA"
            ) from None
        if now < certificate.not_valid_before_utc or now > certificate.not_valid_after_utc:
            raise UnauthenticatedError(f"certificate of {principal} is expired or not yet valid")
        crl = self.revocations.get(principal.department)
        if crl is not None:
            if not crl.is_signature_valid(authority.public_key()):  # type: ignore[arg-type]
                raise UnauthenticatedError(
                    f"the revocation list of {principal.department} is not signed by its CA"
                )
            next_update = crl.next_update_utc
            if next_update is not None and now > next_update:
                # A stale list may omit recent revocations: fail closed until the CA re-issues it.
                raise UnauthenticatedError(
                    f"the revocation list of {principal.department} expired at {next_update}; "
                    "its CA must publish a new one"
                )
            if crl.get_revoked_certificate_by_serial_number(certificate.serial_number) is not None:
                raise UnauthenticatedError(f"certificate of {principal} is revoked")
        return principal


def sign_envelope(key: ec.EllipticCurvePrivateKey, envelope: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 signature (DER) over the canonical envelope bytes."""
    return key.sign(envelope, ec.ECDSA(hashes.SHA256()))


def verify_envelope_signature(
    certificate: x509.Certificate, envelope: bytes, signature: bytes
) -> None:
    """Check a requester's signature over its envelope with its certificate's key.

    Raises:
        UnauthenticatedError: the signature does not verify.
    """
    public_key = certificate.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise UnauthenticatedError("the requester certificate's key is not an ECDSA key")
    try:
        public_key.verify(signature, envelope, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise UnauthenticatedError("the envelope signature does not verify") from None


def load_certificate(data: bytes) -> x509.Certificate:
    """Parse one PEM or DER certificate.

    Raises:
        UnauthenticatedError: not a certificate.
    """
    try:
        if data.lstrip().startswith(b"-----"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise UnauthenticatedError("not an X.509 certificate") from None


def write_pem(path: Path, data: bytes) -> None:
    """Write public PEM material atomically (nodes re-read revocation lists while running)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def write_private_key(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner only (created 0600, never widened)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


IDENTITY_DIR = "identity"
"""Where a local federation directory keeps each department's CA and issued credentials."""


def credential_paths(
    directory: Path, *, department: str, role: str, name: str
) -> tuple[Path, Path]:
    """Certificate and key paths of an issued identity in a federation directory."""
    base = directory / IDENTITY_DIR / department
    return base / f"{role}-{name}.crt", base / f"{role}-{name}.key"


def authority_paths(directory: Path, department: str) -> tuple[Path, Path, Path]:
    """CA certificate, CA key and revocation list paths of a department's authority."""
    base = directory / IDENTITY_DIR / department
    return base / "ca.crt", base / "ca.key", base / "revocations.crl"


def load_private_key(data: bytes) -> ec.EllipticCurvePrivateKey:
    """Parse an unencrypted PEM ECDSA private key.

    Raises:
        InvalidInputError: not an ECDSA private key.
    """
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise InvalidInputError("not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidInputError("the private key is not an ECDSA key")
    return key
