"""Officer signatures over canonical policies: sign, encode detached signatures, verify m-of-n.

Officers sign the canonical policy bytes (`Policy.canonical_bytes`) with Ed25519. A signed policy
file is the YAML plus a detached `<file>.sig.json` beside it: a JSON list of
`{officer, public_key, signature}` (keys and signatures in standard base64). Verification trusts
only the officer keys the verifier pins for the department (never a CA, never the key a
signature carries): the carried `public_key` lets people see who signed and must equal the
pinned one.

This module does not read files, remember versions across calls (`check_not_older` takes the
highest version seen) or decide which departments' keys to pin.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dataisland.canonical import canonical_json
from dataisland.errors import InvalidInputError
from dataisland.identity import UnauthenticatedError
from policies.document import NAME_PATTERN, Policy, check_not_older

_MAX_SIGNATURES = 64


class PolicySignatureError(UnauthenticatedError):
    """A signed policy does not carry enough valid signatures of pinned officers (says why)."""


class SignatureFileError(InvalidInputError):
    """A detached signature file is malformed."""


@dataclass(frozen=True)
class OfficerSignature:
    """One officer's Ed25519 signature over a canonical policy.

    Attributes:
        officer: the officer's name, as the verifier pins it.
        public_key: the 32-byte raw Ed25519 public key the officer used.
        signature: the 64-byte signature.
    """

    officer: str
    public_key: bytes
    signature: bytes

    def to_json_object(self) -> dict[str, str]:
        """The `.sig.json` entry."""
        return {
            "officer": self.officer,
            "public_key": base64.b64encode(self.public_key).decode("ascii"),
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }


def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    """The 32-byte raw form of an Ed25519 public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_from_base64(text: str) -> Ed25519PublicKey:
    """Parse a base64 raw Ed25519 public key (as `policy keygen` prints it).

    Raises:
        InvalidInputError: not base64 of 32 bytes.
    """
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise InvalidInputError("not a base64 Ed25519 public key (32 bytes)") from None


def sign_policy(
    policy: Policy, *, officer: str, private_key: Ed25519PrivateKey
) -> OfficerSignature:
    """Sign `policy`'s canonical bytes as `officer`.

    Raises:
        InvalidInputError: the officer name is not a valid name.
    """
    _check_officer(officer)
    return OfficerSignature(
        officer=officer,
        public_key=public_key_bytes(private_key.public_key()),
        signature=private_key.sign(policy.canonical_bytes),
    )


def _check_officer(officer: object) -> str:
    if not isinstance(officer, str) or not re.match(NAME_PATTERN, officer):
        raise InvalidInputError(f"officer name {officer!r} must match {NAME_PATTERN}")
    return officer


def encode_signatures(signatures: Sequence[OfficerSignature]) -> bytes:
    """The `.sig.json` bytes: canonical JSON, one entry per officer, sorted by officer."""
    entries = sorted((s.to_json_object() for s in signatures), key=lambda e: e["officer"])
    return canonical_json(entries)


def decode_signatures(data: bytes) -> list[OfficerSignature]:
    """Parse a `.sig.json` file (any valid JSON layout is accepted).

    Raises:
        SignatureFileError: not JSON, not a list of entries with exactly the three fields, bad
            base64 or wrong lengths, or too many entries.
    """
    try:
        value = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise SignatureFileError("the signature file is not JSON") from None
    if not isinstance(value, list):
        raise SignatureFileError("the signature file must hold a JSON list")
    if len(value) > _MAX_SIGNATURES:
        raise SignatureFileError(f"more than {_MAX_SIGNATURES} signatures")
    out = []
    for index, entry in enumerate(value):
        if not isinstance(entry, dict) or set(entry) != {"officer", "public_key", "signature"}:
            raise SignatureFileError(
                f"signature {index} must have exactly officer, public_key and signature"
            )
        try:
            officer = _check_officer(entry["officer"])
            key = base64.b64decode(str(entry["public_key"]), validate=True)
            sig = base64.b64decode(str(entry["signature"]), validate=True)
        except (binascii.Error, ValueError, InvalidInputError) as exc:
            raise SignatureFileError(f"signature {index}: {exc}") from None
        if len(key) != 32 or len(sig) != 64:
            raise SignatureFileError(f"signature {index}: wrong key or signature length")
        out.append(OfficerSignature(officer=officer, public_key=key, signature=sig))
    return out


def add_signature(
    signatures: Sequence[OfficerSignature], new: OfficerSignature
) -> list[OfficerSignature]:
    """`signatures` with `new` added, replacing an earlier signature of the same officer."""
    return [s for s in signatures if s.officer != new.officer] + [new]


@dataclass(frozen=True)
class VerificationResult:
    """Which officers' signatures counted and which did not (and why)."""

    valid: tuple[str, ...]
    rejected: tuple[tuple[str, str], ...]
    threshold: int


def verify_signatures(
    policy: Policy,
    signatures: Sequence[OfficerSignature],
    *,
    pinned_officer_keys: Mapping[str, Ed25519PublicKey],
) -> VerificationResult:
    """Check each signature against the pinned keys without deciding (see `verify_signed_policy`).

    A signature counts when its officer is pinned, its carried key is the pinned key and it
    verifies over the canonical bytes; each officer counts once.
    """
    valid: list[str] = []
    rejected: list[tuple[str, str]] = []
    for sig in signatures:
        pinned = pinned_officer_keys.get(sig.officer)
        if pinned is None:
            rejected.append((sig.officer, "not a pinned officer of this department"))
            continue
        if public_key_bytes(pinned) != sig.public_key:
            rejected.append((sig.officer, "signed with a key other than the pinned one"))
            continue
        try:
            pinned.verify(sig.signature, policy.canonical_bytes)
        except InvalidSignature:
            rejected.append((sig.officer, "signature does not verify over this policy"))
            continue
        if sig.officer not in valid:
            valid.append(sig.officer)
    return VerificationResult(
        valid=tuple(sorted(valid)),
        rejected=tuple(rejected),
        threshold=policy.document.required_signatures,
    )


def verify_signed_policy(
    document_bytes: bytes,
    signatures: Sequence[OfficerSignature],
    *,
    pinned_officer_keys: Mapping[str, Ed25519PublicKey],
    required: int,
    department: str | None = None,
    highest_seen_version: int | None = None,
) -> Policy:
    """Parse a policy and accept it only if enough pinned officers signed its canonical bytes.

    The threshold is the larger of `required` (what the verifier's configuration demands) and
    the document's own `required_signatures`, so a document can raise but never lower it.

    Args:
        document_bytes: the policy file as received (YAML or JSON).
        signatures: the detached signatures.
        pinned_officer_keys: officer name to the Ed25519 key the verifier pins for them.
        required: the verifier's minimum number of distinct officers (at least 1).
        department: when given, the policy must be this department's.
        highest_seen_version: when given, a lower policy version is refused.

    Returns:
        The verified policy.

    Raises:
        PolicyDocumentError: the document does not parse or validate.
        PolicySignatureError: fewer valid distinct officer signatures than the threshold, or
            the policy belongs to another department.
        PolicyRollbackError: the version is lower than `highest_seen_version`.
        InvalidInputError: `required` is below 1.
    """
    if not isinstance(required, int) or isinstance(required, bool) or required < 1:
        raise InvalidInputError("required must be an integer of at least 1")
    policy = Policy.from_yaml(document_bytes)
    if department is not None and policy.department != department:
        raise PolicySignatureError(f"the policy is {policy.department}'s, not {department}'s")
    result = verify_signatures(policy, signatures, pinned_officer_keys=pinned_officer_keys)
    threshold = max(required, result.threshold)
    if len(result.valid) < threshold:
        detail = "; ".join(f"{officer}: {why}" for officer, why in result.rejected)
        raise PolicySignatureError(
            f"policy {policy.department} v{policy.version} has {len(result.valid)} valid officer "
            f"signature(s), {threshold} required" + (f" ({detail})" if detail else "")
        )
    check_not_older(policy, highest_seen_version)
    return policy


def generate_key() -> Ed25519PrivateKey:
    """A new officer signing key."""
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (the CLI writes it 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private_key(data: bytes) -> Ed25519PrivateKey:
    """Parse an officer's PKCS#8 PEM private key.

    Raises:
        InvalidInputError: not an unencrypted Ed25519 PEM private key.
    """
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise InvalidInputError("not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInputError("officer keys are Ed25519")
    return key
