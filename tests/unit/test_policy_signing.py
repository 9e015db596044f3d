"""Officer signatures over canonical policies: m-of-n pinned officers, tampering, wrong keys,
rollback, and the detached `.sig.json` encoding."""

from __future__ import annotations

import base64
from collections.abc import Mapping

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dataisland.errors import DataislandError, InvalidInputError
from policies.document import Policy, PolicyDocumentError, PolicyRollbackError
from policies.signing import (
    OfficerSignature,
    PolicySignatureError,
    SignatureFileError,
    add_signature,
    decode_signatures,
    encode_signatures,
    load_private_key,
    private_key_pem,
    sign_policy,
    verify_signed_policy,
)

DOCUMENT = b"""\
schema_version: 1
department: qingpu
version: 7
valid_from: "2025-01-01T00:00:00Z"
valid_until: "2026-01-01T00:00:00Z"
required_signatures: 2
tables:
  claims:
    k: 5
    columns: {category: dimension}
    access: [{departments: [qingpu], roles: [requester], purposes: [statistics]}]
    approval: auto
"""

KEYS = {name: Ed25519PrivateKey.generate() for name in ("ana", "bo", "chen")}
PINNED: Mapping[str, Ed25519PublicKey] = {n: k.public_key() for n, k in KEYS.items()}


def signed_by(*names: str, document: bytes = DOCUMENT) -> list[OfficerSignature]:
    policy = Policy.from_yaml(document)
    return [sign_policy(policy, officer=n, private_key=KEYS[n]) for n in names]


def verify(document: bytes, signatures: list[OfficerSignature], **kwargs: object) -> Policy:
    options: dict[str, object] = {"pinned_officer_keys": PINNED, "required": 1}
    options.update(kwargs)
    return verify_signed_policy(document, signatures, **options)  # type: ignore[arg-type]


def test_two_of_three_officers_verify() -> None:
    policy = verify(DOCUMENT, signed_by("ana", "chen"))
    assert policy.version == 7


def test_threshold_not_met() -> None:
    with pytest.raises(PolicySignatureError, match="1 valid officer signature"):
        verify(DOCUMENT, signed_by("ana"))


def test_the_same_officer_counts_once() -> None:
    with pytest.raises(PolicySignatureError):
        verify(DOCUMENT, signed_by("ana") * 2)


def test_the_verifier_can_raise_but_the_document_cannot_lower_the_threshold() -> None:
    with pytest.raises(PolicySignatureError, match="3 required"):
        verify(DOCUMENT, signed_by("ana", "bo"), required=3)
    one = DOCUMENT.replace(b"required_signatures: 2", b"required_signatures: 1")
    with pytest.raises(PolicySignatureError, match="2 required"):
        verify(one, signed_by("ana", document=one), required=2)


def test_tampering_one_value_byte_breaks_every_signature() -> None:
    signatures = signed_by("ana", "bo")
    tampered = DOCUMENT.replace(b"k: 5", b"k: 4")
    with pytest.raises(PolicySignatureError, match="does not verify"):
        verify(tampered, signatures)


def test_tampering_one_signature_byte() -> None:
    first, second = signed_by("ana", "bo")
    sig = bytearray(second.signature)
    sig[0] ^= 1
    broken = OfficerSignature(second.officer, second.public_key, bytes(sig))
    with pytest.raises(PolicySignatureError, match="bo: signature does not verify"):
        verify(DOCUMENT, [first, broken])


def test_every_single_byte_change_is_caught() -> None:
    signatures = signed_by("ana", "bo")
    for index in range(len(DOCUMENT)):
        changed = bytearray(DOCUMENT)
        changed[index] ^= 0x01
        try:
            verify(bytes(changed), signatures)
        except DataislandError:
            continue
        # A flip that leaves the canonical form unchanged (layout) is harmless by design.
        assert Policy.from_yaml(bytes(changed)).hash == Policy.from_yaml(DOCUMENT).hash


def test_wrong_key_for_a_pinned_name() -> None:
    rogue = Ed25519PrivateKey.generate()
    policy = Policy.from_yaml(DOCUMENT)
    forged = [sign_policy(policy, officer=n, private_key=rogue) for n in ("ana", "bo")]
    with pytest.raises(PolicySignatureError, match="key other than the pinned"):
        verify(DOCUMENT, forged)


def test_signature_carrying_the_pinned_key_but_made_by_another() -> None:
    policy = Policy.from_yaml(DOCUMENT)
    rogue = Ed25519PrivateKey.generate()
    made = sign_policy(policy, officer="ana", private_key=rogue)
    lying = OfficerSignature("ana", signed_by("ana")[0].public_key, made.signature)
    with pytest.raises(PolicySignatureError, match="does not verify"):
        verify(DOCUMENT, [lying, *signed_by("bo")])


def test_unpinned_officer_does_not_count() -> None:
    outsider = Ed25519PrivateKey.generate()
    policy = Policy.from_yaml(DOCUMENT)
    extra = sign_policy(policy, officer="dan", private_key=outsider)
    with pytest.raises(PolicySignatureError, match="dan: not a pinned officer"):
        verify(DOCUMENT, [extra, *signed_by("ana")])


def test_lower_version_refused_and_other_department_refused() -> None:
    signatures = signed_by("ana", "bo")
    with pytest.raises(PolicyRollbackError):
        verify(DOCUMENT, signatures, highest_seen_version=8)
    assert verify(DOCUMENT, signatures, highest_seen_version=7).version == 7
    with pytest.raises(PolicySignatureError, match="not wujiang"):
        verify(DOCUMENT, signatures, department="wujiang")


def test_required_must_be_positive() -> None:
    with pytest.raises(InvalidInputError):
        verify(DOCUMENT, signed_by("ana", "bo"), required=0)


def test_malformed_document_is_a_document_error() -> None:
    with pytest.raises(PolicyDocumentError):
        verify(b"tables: [", signed_by("ana", "bo"))


def test_signature_file_round_trip() -> None:
    signatures = signed_by("bo", "ana")
    data = encode_signatures(signatures)
    assert [s.officer for s in decode_signatures(data)] == ["ana", "bo"]
    assert verify(DOCUMENT, decode_signatures(data)).version == 7
    replaced = add_signature(signatures, signed_by("bo")[0])
    assert sorted(s.officer for s in replaced) == ["ana", "bo"]


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"{}",
        b'[{"officer": "ana"}]',
        b'[{"officer": "ana", "public_key": "!!", "signature": "AA=="}]',
        b'[{"officer": "Ana!", "public_key": "AA==", "signature": "AA=="}]',
        b'[{"officer": "ana", "public_key": "AA==", "signature": "AA=="}]',
        b'[{"officer": "ana", "public_key": "AA==", "signature": "AA==", "extra": 1}]',
    ],
)
def test_malformed_signature_files(data: bytes) -> None:
    with pytest.raises(SignatureFileError):
        decode_signatures(data)


def test_private_key_pem_round_trip() -> None:
    key = KEYS["ana"]
    loaded = load_private_key(private_key_pem(key))
    assert loaded.public_key() == key.public_key()
    with pytest.raises(InvalidInputError):
        load_private_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert base64.b64decode(signed_by("ana")[0].to_json_object()["public_key"])
