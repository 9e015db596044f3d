"""Sealing a partial to the attested aggregator: padding and HPKE (RFC 9180, base mode).

Suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, from cryptography's hpke module;
or, where the federation file asks for it (`attestation.hpke_kem: mlkem768-x25519`), the
hybrid post-quantum KEM ML-KEM-768 + X25519 with the same KDF and AEAD, so a partial recorded
today stays sealed against a future quantum computer. The suite follows the aggregator's key,
whose kind its verified evidence fixed.
The info string is the RFC 8785 JSON of {format, query_id, query_hash, department,
aggregator_key}: a ciphertext opens only for the query, department and aggregator key it was
sealed for, so the coordinator cannot move a partial between queries or to another aggregator.

Padding: the plaintext is an 8-byte big-endian length, the Arrow IPC stream, then zero bytes up
to a power-of-two bucket of at least MIN_BUCKET bytes. Partials whose streams fall in the same
bucket have sealed sizes that are equal; across buckets the sealed size still reveals the
partial's size to within a factor of two (roughly how many groups it holds, in orders of
magnitude). There is no maximum: no partial fails because of its group count (the gRPC message
limit is the only ceiling, and it applies to released results too).

This module does no I/O and holds no keys: the caller passes them.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from dataisland.attestation import HpkePublicKey
from dataisland.canonical import canonical_json
from dataisland.errors import InvalidInputError, PermissionDeniedError

SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
HYBRID_SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)


def _suite(key: object) -> hpke.Suite:
    return SUITE if isinstance(key, X25519PublicKey | X25519PrivateKey) else HYBRID_SUITE


SEAL_FORMAT = "dataisland-sealed-partial-v1"
MIN_BUCKET = 16_384
LENGTH_BYTES = 8


def bucket_size(length: int) -> int:
    """The padded plaintext size for a payload of `length` bytes: a power of two."""
    needed = length + LENGTH_BYTES
    size = MIN_BUCKET
    while size < needed:
        size *= 2
    return size


def pad(payload: bytes) -> bytes:
    """Length-prefix `payload` and zero-pad it to its bucket."""
    size = bucket_size(len(payload))
    return (
        len(payload).to_bytes(LENGTH_BYTES, "big")
        + payload
        + bytes(size - LENGTH_BYTES - len(payload))
    )


def unpad(padded: bytes) -> bytes:
    """The payload inside a padded plaintext.

    Raises:
        InvalidInputError: the length prefix or the padding is malformed.
    """
    if len(padded) < MIN_BUCKET or len(padded) & (len(padded) - 1):
        raise InvalidInputError("a sealed partial's plaintext is not a padding bucket")
    length = int.from_bytes(padded[:LENGTH_BYTES], "big")
    end = LENGTH_BYTES + length
    # count() runs in C; any() over a padded partial of megabytes took a Python step per byte.
    if end > len(padded) or padded.count(0, end) != len(padded) - end:
        raise InvalidInputError("a sealed partial's padding is malformed")
    return padded[LENGTH_BYTES:end]


def seal_info(*, query_id: str, query_hash: str, department: str, aggregator_key: bytes) -> bytes:
    """The HPKE info binding a sealed partial to its query, department and aggregator key."""
    return canonical_json(
        {
            "format": SEAL_FORMAT,
            "query_id": query_id,
            "query_hash": query_hash,
            "department": department,
            "aggregator_key": aggregator_key.hex(),
        }
    )


def seal(
    payload: bytes,
    *,
    aggregator_key: HpkePublicKey,
    aggregator_key_bytes: bytes,
    query_id: str,
    query_hash: str,
    department: str,
) -> bytes:
    """Pad `payload` and seal it to `aggregator_key` (the attested aggregator's HPKE key, whose
    evidence bytes are `aggregator_key_bytes`)."""
    info = seal_info(
        query_id=query_id,
        query_hash=query_hash,
        department=department,
        aggregator_key=aggregator_key_bytes,
    )
    return _suite(aggregator_key).encrypt(pad(payload), aggregator_key, info=info)


def open_sealed(
    ciphertext: bytes,
    *,
    private_key: X25519PrivateKey | hpke.MLKEM768X25519PrivateKey,
    public_bytes: bytes,
    query_id: str,
    query_hash: str,
    department: str,
) -> bytes:
    """Open a partial sealed to this aggregator's key for this query and department.

    Raises:
        PermissionDeniedError: it was sealed to another key, query or department, or altered.
        InvalidInputError: the padding inside is malformed.
    """
    info = seal_info(
        query_id=query_id,
        query_hash=query_hash,
        department=department,
        aggregator_key=public_bytes,
    )
    try:
        padded = _suite(private_key).decrypt(ciphertext, private_key, info=info)
    except (InvalidTag, ValueError):
        raise PermissionDeniedError(
            f"the partial of {department} does not open: it was sealed to another aggregator "
            "key, query or department, or altered"
        ) from None
    return unpad(padded)
