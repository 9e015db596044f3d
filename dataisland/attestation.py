"""Attestation evidence: its format, its verification, and the signed statements enclaves make.

Evidence is what an enclave returns to `Attest(nonce)`: claims about itself (measurement,
configuration claim, signer, product id, security version, debug flag, timestamp, its two public
keys and report_data = SHA-256(signing key || HPKE key || nonce)), signed by a platform key,
with the platform key's certificate. Today's only format is the simulated one
(``dataisland-simulated-evidence-v1``, produced by enclave/attestation.py); a hardware format
(SGX/TDX quote, SEV-SNP report, Nitro document) is a second branch of `verify_evidence` that
ends in the same `AttestedEnclave` (docs/tee.md).

Verification runs in the order real verifiers use and stops at the first failing check, which
the `AttestationError` names: chain to the pinned vendor root, signature, freshness (a single-use
nonce this verifier issued, or for evidence relayed by the coordinator the claim timestamp),
report_data, node and role, measurement and signer against the reference values, svn at least
the minimum, debug off unless the federation is for development. Only then are the keys pinned.

This lives in the kernel because the coordinator (which may not import enclave/) verifies
evidence too. It does no I/O and reads no clock: `now` is passed in; `NonceBook` takes its
randomness from `os.urandom` unless told otherwise.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from dataisland.canonical import (
    SALT_SIZE,
    canonical_json,
    commit,
    format_rfc3339,
    parse_canonical_json,
    parse_rfc3339,
)
from dataisland.errors import ConfigError, DataislandError, PermissionDeniedError
from dataisland.federation import Federation

SIMULATED_FORMAT = "dataisland-simulated-evidence-v1"
"""The `format` of simulated evidence; hardware formats get names of their own."""
EVIDENCE_CONTEXT = b"dataisland simulated evidence v1\x00"
"""Prefix of what a simulated platform key signs (domain separation)."""
NONCE_SIZE = 32
KEY_SIZE = 32
MAX_EVIDENCE_BYTES = 16_384
NONCE_TTL = dt.timedelta(seconds=60)
"""How long a nonce this verifier issued stays usable."""
RELAYED_MAX_AGE = dt.timedelta(minutes=10)
"""Oldest relayed evidence an enclave accepts (the coordinator re-attests every 5 minutes)."""
MAX_SKEW = dt.timedelta(seconds=30)
Role = Literal["department", "aggregator"]
Kem = Literal["x25519", "mlkem768-x25519"]
"""The HPKE KEM of a federation (its federation file's `attestation.hpke_kem`)."""
HpkePublicKey = X25519PublicKey | hpke.MLKEM768X25519PublicKey
MLKEM768_PUBLIC_SIZE = 1184
HPKE_KEY_SIZES: Mapping[str, int] = {
    "x25519": KEY_SIZE,
    "mlkem768-x25519": MLKEM768_PUBLIC_SIZE + KEY_SIZE,
}
"""The size of an enclave's HPKE public key in evidence: X25519's 32 bytes, or ML-KEM-768's
1,184 followed by X25519's 32."""
PRODUCT_IDS: Mapping[str, int] = {"department": 1, "aggregator": 2}
"""Product id per enclave role: one signer ships both roles as two products."""

_T = TypeVar("_T")

PARTIAL_FORMAT = "dataisland-partial-v1"
RESULT_FORMAT = "dataisland-result-v1"


class AttestationError(DataislandError):
    """Evidence failed a check; the message names the node and the check.

    Attributes:
        node: the node whose evidence failed.
        check: the failing check: ``format``, ``chain``, ``signature``, ``nonce``,
            ``freshness``, ``report_data``, ``identity``, ``measurement``, ``signer``,
            ``svn``, ``debug`` or ``unavailable``.
    """

    code = "PERMISSION_DENIED"

    def __init__(self, node: str, check: str, detail: str, *, code: str | None = None) -> None:
        super().__init__(f"attestation of {node} failed the {check} check: {detail}")
        self.node = node
        self.check = check
        if code is not None:
            self.code = code


class BadSignatureError(PermissionDeniedError):
    """A partial or a result is not signed by the attested key of the enclave it claims."""


@dataclass(frozen=True)
class ReferenceValues:
    """What a verifier requires of one role's evidence (from its own federation file).

    Attributes:
        measurement: expected measurement (hex SHA-256).
        signer: expected signer (hex SHA-256).
        minimum_svn: lowest acceptable security version.
        debug_allowed: whether a debug enclave is acceptable (development federations only).
    """

    measurement: str
    signer: str
    minimum_svn: int
    debug_allowed: bool


@dataclass(frozen=True)
class Claims:
    """What an enclave's evidence asserts about it."""

    simulated: bool
    node: str
    role: str
    measurement: str
    config: str
    signer: str
    product_id: int
    svn: int
    debug: bool
    timestamp: dt.datetime
    signing_key: bytes
    hpke_key: bytes
    nonce: bytes
    report_data: bytes

    def to_bytes(self) -> bytes:
        """RFC 8785 JSON of the claims (what the platform key signs, after the context)."""
        return canonical_json(
            {
                "simulated": self.simulated,
                "node": self.node,
                "role": self.role,
                "measurement": self.measurement,
                "config": self.config,
                "signer": self.signer,
                "product_id": self.product_id,
                "svn": self.svn,
                "debug": self.debug,
                "timestamp": format_rfc3339(self.timestamp),
                "signing_key": _b64(self.signing_key),
                "hpke_key": _b64(self.hpke_key),
                "nonce": self.nonce.hex(),
                "report_data": self.report_data.hex(),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Claims:
        """Parse canonical claims bytes.

        Raises:
            DataislandError: not canonical JSON or a field of the wrong kind.
        """
        obj = parse_canonical_json(data)
        if not isinstance(obj, dict):
            raise DataislandError("claims are not a JSON object")
        try:
            claims = cls(
                simulated=_typed(obj, "simulated", bool),
                node=_typed(obj, "node", str),
                role=_typed(obj, "role", str),
                measurement=_typed(obj, "measurement", str),
                config=_typed(obj, "config", str),
                signer=_typed(obj, "signer", str),
                product_id=_typed(obj, "product_id", int),
                svn=_typed(obj, "svn", int),
                debug=_typed(obj, "debug", bool),
                timestamp=parse_rfc3339(_typed(obj, "timestamp", str)),
                signing_key=_unb64(_typed(obj, "signing_key", str)),
                hpke_key=_unb64(_typed(obj, "hpke_key", str)),
                nonce=bytes.fromhex(_typed(obj, "nonce", str)),
                report_data=bytes.fromhex(_typed(obj, "report_data", str)),
            )
        except (ValueError, binascii.Error):
            raise DataislandError("a claim is not the right encoding") from None
        if set(obj) != set(_CLAIM_FIELDS):
            raise DataislandError("claims have missing or unknown fields")
        if claims.to_bytes() != data:
            raise DataislandError("claims do not re-serialise to the same bytes")
        return claims


_CLAIM_FIELDS = (
    "simulated",
    "node",
    "role",
    "measurement",
    "config",
    "signer",
    "product_id",
    "svn",
    "debug",
    "timestamp",
    "signing_key",
    "hpke_key",
    "nonce",
    "report_data",
)


def _typed(obj: Mapping[str, object], name: str, kind: type[_T]) -> _T:
    value = obj.get(name)
    # bool is an int in Python; a claim typed int must not accept true.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(name)
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def report_data(signing_key: bytes, hpke_key: bytes, nonce: bytes) -> bytes:
    """SHA-256(signing key || HPKE key || nonce): binds the enclave's keys to one challenge."""
    return hashlib.sha256(signing_key + hpke_key + nonce).digest()


@dataclass(frozen=True)
class Evidence:
    """Signed claims and the certificate of the platform key that signed them."""

    claims: bytes
    signature: bytes
    platform_certificate: bytes
    format: str = SIMULATED_FORMAT

    def to_bytes(self) -> bytes:
        """The evidence as it travels and as it is logged: RFC 8785 JSON."""
        return canonical_json(
            {
                "format": self.format,
                "claims": _b64(self.claims),
                "signature": _b64(self.signature),
                "platform_certificate": _b64(self.platform_certificate),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, node: str) -> Evidence:
        """Parse evidence bytes.

        Raises:
            AttestationError: (check ``format``) not evidence in a known format.
        """
        if not data:
            raise AttestationError(node, "format", "no evidence was presented")
        if len(data) > MAX_EVIDENCE_BYTES:
            raise AttestationError(node, "format", "the evidence is too large")
        try:
            obj = parse_canonical_json(data)
        except DataislandError:
            raise AttestationError(node, "format", "the evidence does not parse") from None
        fields = {"format", "claims", "signature", "platform_certificate"}
        if not isinstance(obj, dict) or set(obj) != fields:
            raise AttestationError(node, "format", "the evidence has missing or unknown fields")
        try:
            evidence = cls(
                format=_typed(obj, "format", str),
                claims=_unb64(_typed(obj, "claims", str)),
                signature=_unb64(_typed(obj, "signature", str)),
                platform_certificate=_unb64(_typed(obj, "platform_certificate", str)),
            )
        except (ValueError, binascii.Error):
            raise AttestationError(node, "format", "the evidence does not parse") from None
        if evidence.format != SIMULATED_FORMAT:
            raise AttestationError(node, "format", f"unknown evidence format {evidence.format!r}")
        return evidence


@dataclass(frozen=True)
class AttestedEnclave:
    """Evidence that passed every check, and the keys it pins.

    Attributes:
        node: the department name, or the committee's name for the aggregator.
        role: ``department`` or ``aggregator``.
        claims: the verified claims.
        signing_key: the enclave's Ed25519 key (partials, results).
        hpke_key: the enclave's HPKE key (what partials are sealed to), of the federation's KEM.
        evidence: the exact evidence bytes verified (to relay and to log).
    """

    node: str
    role: str
    claims: Claims
    signing_key: Ed25519PublicKey
    hpke_key: HpkePublicKey
    evidence: bytes

    @property
    def hpke_key_bytes(self) -> bytes:
        """The HPKE public key as the evidence carries it (sealing binds these bytes)."""
        return self.claims.hpke_key

    @property
    def evidence_hash(self) -> str:
        """SHA-256 of the evidence bytes (hex)."""
        return hashlib.sha256(self.evidence).hexdigest()


class NonceBook:
    """Single-use nonces one verifier issued, each valid for `ttl`; thread-safe."""

    def __init__(
        self,
        *,
        ttl: dt.timedelta = NONCE_TTL,
        randomness: Callable[[int], bytes] = os.urandom,
        capacity: int = 10_000,
    ) -> None:
        self.ttl = ttl
        self.randomness = randomness
        self.capacity = capacity
        self._lock = threading.Lock()
        self._issued: dict[bytes, dt.datetime] = {}

    def issue(self, now: dt.datetime) -> bytes:
        """A fresh nonce, usable once until `now + ttl`."""
        nonce = self.randomness(NONCE_SIZE)
        with self._lock:
            for stale in [n for n, at in self._issued.items() if now - at > self.ttl]:
                del self._issued[stale]
            while len(self._issued) >= self.capacity:
                del self._issued[next(iter(self._issued))]
            self._issued[nonce] = now
        return nonce

    def consume(self, nonce: bytes, *, now: dt.datetime, node: str) -> None:
        """Use `nonce` up.

        Raises:
            AttestationError: (check ``nonce``) not issued here, already used, or expired.
        """
        with self._lock:
            issued = self._issued.pop(nonce, None)
        if issued is None:
            raise AttestationError(
                node,
                "nonce",
                "the evidence answers a nonce this verifier did not issue or "
                "already used (replayed evidence)",
            )
        if now - issued > self.ttl:
            raise AttestationError(node, "nonce", "the evidence answers an expired nonce")


def verify_evidence(
    evidence: bytes,
    *,
    node: str,
    role: Role,
    root: x509.Certificate,
    reference: ReferenceValues,
    now: dt.datetime,
    nonce: bytes | None = None,
    nonces: NonceBook | None = None,
    max_age: dt.timedelta = RELAYED_MAX_AGE,
    kem: Kem = "x25519",
) -> AttestedEnclave:
    """Verify `evidence` of `node` in the order real verifiers use; return the pinned keys.

    Freshness: pass the `nonce` this verifier sent and the `nonces` book that issued it
    (single use), or neither for evidence another party relayed, which must then be at most
    `max_age` old. Either way the claim timestamp may not be in the future beyond MAX_SKEW.
    The HPKE key must be of the federation's `kem`, so no party can downgrade the sealing.

    Raises:
        AttestationError: the first check that fails, named with the node.
    """
    parsed = Evidence.from_bytes(evidence, node=node)
    # 1. chain to the pinned vendor root
    try:
        platform = x509.load_der_x509_certificate(parsed.platform_certificate)
    except ValueError:
        raise AttestationError(node, "chain", "the platform certificate does not parse") from None
    try:
        platform.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise AttestationError(
            node, "chain", "the platform key is not certified by the pinned vendor root"
        ) from None
    if not platform.not_valid_before_utc <= now <= platform.not_valid_after_utc:
        raise AttestationError(node, "chain", "the platform certificate is not valid now")
    platform_key = platform.public_key()
    if not isinstance(platform_key, Ed25519PublicKey):
        raise AttestationError(node, "chain", "the platform key is not Ed25519")
    # 2. signature
    try:
        platform_key.verify(parsed.signature, EVIDENCE_CONTEXT + parsed.claims)
    except InvalidSignature:
        raise AttestationError(
            node, "signature", "the claims are not signed by the platform key"
        ) from None
    try:
        claims = Claims.from_bytes(parsed.claims)
    except DataislandError:
        raise AttestationError(node, "format", "the signed claims do not parse") from None
    # 3. freshness: a single-use nonce, or the age of relayed evidence
    if claims.timestamp > now + MAX_SKEW:
        raise AttestationError(node, "freshness", "the evidence is dated in the future")
    if nonces is not None or nonce is not None:
        if nonce is None or claims.nonce != nonce:
            raise AttestationError(node, "nonce", "the evidence answers another nonce")
        if nonces is not None:
            nonces.consume(nonce, now=now, node=node)
    elif now - claims.timestamp > max_age:
        raise AttestationError(
            node, "freshness", f"the relayed evidence is older than {max_age.total_seconds():.0f}s"
        )
    # 4. report_data binds the keys to the nonce
    if len(claims.signing_key) != KEY_SIZE or len(claims.hpke_key) != HPKE_KEY_SIZES[kem]:
        raise AttestationError(
            node, "report_data", f"a public key has the wrong size (the federation's KEM is {kem})"
        )
    if report_data(claims.signing_key, claims.hpke_key, claims.nonce) != claims.report_data:
        raise AttestationError(
            node, "report_data", "report_data is not SHA-256(public keys || nonce)"
        )
    if claims.node != node or claims.role != role or claims.product_id != PRODUCT_IDS[role]:
        raise AttestationError(
            node, "identity", f"the evidence is of {claims.role} {claims.node}, not {role} {node}"
        )
    # 5. measurement and signer against the reference values
    if claims.measurement != reference.measurement:
        raise AttestationError(
            node,
            "measurement",
            f"measurement {claims.measurement[:16]}... is not the reference "
            f"{reference.measurement[:16]}... (code, pinned versions or lockdown differ)",
        )
    if claims.signer != reference.signer:
        raise AttestationError(node, "signer", "the enclave was not signed by the expected signer")
    # 6. svn, 7. debug
    if claims.svn < reference.minimum_svn:
        raise AttestationError(
            node,
            "svn",
            f"security version {claims.svn} is below the minimum {reference.minimum_svn}",
        )
    if claims.debug and not reference.debug_allowed:
        raise AttestationError(
            node, "debug", "a debug enclave is refused by a federation not for development"
        )
    return AttestedEnclave(
        node=node,
        role=role,
        claims=claims,
        signing_key=Ed25519PublicKey.from_public_bytes(claims.signing_key),
        hpke_key=hpke_public_key(claims.hpke_key, kem=kem),
        evidence=evidence,
    )


def hpke_public_key(data: bytes, *, kem: Kem) -> HpkePublicKey:
    """An HPKE public key of `kem` from its evidence bytes.

    Raises:
        ValueError: the bytes are not a key of that KEM.
    """
    if len(data) != HPKE_KEY_SIZES[kem]:
        raise ValueError(f"not a {kem} public key")
    if kem == "x25519":
        return X25519PublicKey.from_public_bytes(data)
    return hpke.MLKEM768X25519PublicKey(
        MLKEM768PublicKey.from_public_bytes(data[:MLKEM768_PUBLIC_SIZE]),
        X25519PublicKey.from_public_bytes(data[MLKEM768_PUBLIC_SIZE:]),
    )


# ------------------------------------------------------------------------------------------
# What attested enclaves sign
# ------------------------------------------------------------------------------------------


def partial_statement(
    *,
    department: str,
    query_id: str,
    query_hash: str,
    ciphertext_sha256: str,
    k: int,
    policy_hashes: Mapping[str, str],
) -> bytes:
    """What a department enclave signs for one sealed partial: RFC 8785 JSON binding
    SHA-256(ciphertext) to the query and to the release parameters that travel beside it.

    It takes the ciphertext's hash, not the ciphertext, so that an auditor can check the
    signature from the log, which keeps the hash and never the sealed bytes."""
    return canonical_json(
        {
            "format": PARTIAL_FORMAT,
            "department": department,
            "query_id": query_id,
            "query_hash": query_hash,
            "ciphertext_sha256": ciphertext_sha256,
            "k": k,
            "policy_hashes": dict(policy_hashes),
        }
    )


def result_statement(*, query_id: str, query_hash: str, result_commitment: bytes) -> bytes:
    """What the aggregator signs for a released result: RFC 8785 JSON binding the commitment
    SHA-256(salt || {result_digest, suppressed}) to the query."""
    return canonical_json(
        {
            "format": RESULT_FORMAT,
            "query_id": query_id,
            "query_hash": query_hash,
            "result_commitment": result_commitment.hex(),
        }
    )


def verify_released(
    *,
    aggregator: AttestedEnclave,
    query_id: str,
    query_hash: str,
    result_digest: str,
    suppressed: bool,
    salt: bytes,
    commitment: bytes,
    signature: bytes,
) -> None:
    """Accept a released result only if the attested aggregator signed a commitment that opens
    to it: the coordinator checks this before it releases, and a requester's client again, so a
    coordinator that alters a result (and its digest) is caught.

    Raises:
        PermissionDeniedError: the commitment does not open to this digest and flag.
        BadSignatureError: the signature does not verify with the aggregator's attested key.
    """
    opened = (
        commit(
            canonical_json({"result_digest": result_digest, "suppressed": suppressed}), salt=salt
        )
        if len(salt) == SALT_SIZE
        else b""
    )
    if not opened or opened != commitment:
        raise PermissionDeniedError(
            "the aggregator's result commitment does not open to the released result"
        )
    verify_statement(
        aggregator.signing_key,
        result_statement(query_id=query_id, query_hash=query_hash, result_commitment=commitment),
        signature,
        what="the released result",
    )


def verify_statement(
    key: Ed25519PublicKey, statement: bytes, signature: bytes, *, what: str
) -> None:
    """Check an enclave's Ed25519 signature over a statement.

    Raises:
        BadSignatureError: the signature does not verify (`what` names the signed thing).
    """
    try:
        key.verify(signature, statement)
    except InvalidSignature:
        raise BadSignatureError(
            f"the signature of {what} does not verify with the attested key"
        ) from None


@dataclass(frozen=True)
class TrustAnchors:
    """One verifier's own trust inputs: the pinned vendor root and the reference values.

    Attributes:
        root: the vendor root certificate the federation file pins.
        references: reference values by role.
        kem: the HPKE KEM every enclave's key must be of.
    """

    root: x509.Certificate
    references: Mapping[str, ReferenceValues]
    kem: Kem = "x25519"

    @classmethod
    def from_federation(cls, federation: Federation) -> TrustAnchors:
        """Read the pinned root and the reference values from a (loaded) federation file.

        Raises:
            ConfigError: no ``attestation:`` section, or the root certificate is unreadable.
        """
        section = federation.attestation
        if section is None:
            raise ConfigError(
                "the federation file has no 'attestation:' section (vendor root and reference "
                "values); enclaves cannot be attested without it"
            )
        try:
            root = x509.load_pem_x509_certificate(section.vendor_root.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the vendor root {section.vendor_root}: {exc}") from None
        references: dict[str, ReferenceValues] = {
            str(role): ReferenceValues(
                measurement=entry.measurement,
                signer=entry.signer,
                minimum_svn=section.minimum_svn,
                debug_allowed=federation.development,
            )
            for role, entry in section.reference.items()
        }
        return cls(root=root, references=references, kem=section.hpke_kem)

    def verify(
        self,
        evidence: bytes,
        *,
        node: str,
        role: Role,
        now: dt.datetime,
        nonce: bytes | None = None,
        nonces: NonceBook | None = None,
    ) -> AttestedEnclave:
        """`verify_evidence` against these anchors.

        Raises:
            AttestationError: the first failing check.
        """
        return verify_evidence(
            evidence,
            node=node,
            role=role,
            root=self.root,
            reference=self.references[role],
            now=now,
            nonce=nonce,
            nonces=nonces,
            kem=self.kem,
        )
