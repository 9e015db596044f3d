"""What a restarted enclave recalls from the log: only what it can verify itself."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.audit import policy_activation_entry
from dataisland.attestation import TrustAnchors
from dataisland.errors import NodeUnavailableError
from enclave.attestation import EnclaveKeys
from enclave.history import Recalled, WitnessLog, recall
from ledger.checkpoint import Checkpoint, add_signatures, cosign, sign_checkpoint
from ledger.entries import ExecutionReportEntry, RunIntentEntry
from ledger.errors import LedgerError, ProofError
from ledger.merkle import MerkleTree, hash_leaf
from ledger.note import SIG_TYPE_COSIGNATURE_V1, Ed25519Signer
from ledger.witness_client import WitnessClient
from policies.document import Policy
from policies.signing import encode_signatures, sign_policy
from tests.unit.test_audit_signatures import _attest, _report, anchors, vendor

__all__ = ["anchors", "vendor"]  # the fixtures, shared with the signature checker's tests

EXAMPLE = Path(__file__).resolve().parents[2] / "policies" / "examples" / "qingpu.yaml"
OFFICER = Ed25519PrivateKey.generate()


def _intent(keys: EnclaveKeys, *, run: int, intent_id: str) -> bytes:
    intent = RunIntentEntry(
        version=1,
        kind="run_intent",
        intent_id=intent_id,
        department="qingpu",
        enclave="qingpu",
        query_id="q2",
        request_id=f"r-{intent_id}",
        requester="spiffe://demo/dept/qingpu/requester/analyst",
        purpose="eligibility check",
        envelope_digest="e" * 64,
        approval_hash="a" * 64,
        template_hash="f" * 64,
        run=run,
        runs=5,
        recorded_at="2026-05-01T12:00:00.000000Z",
        signature="AA==",
    )
    signature = base64.b64encode(keys.sign(intent.signed_bytes())).decode()
    return intent.model_copy(update={"signature": signature}).to_bytes()


def _activation(version: int, key: Ed25519PrivateKey = OFFICER) -> bytes:
    text = re.sub(r"^version: \d+$", f"version: {version}", EXAMPLE.read_text(), flags=re.M)
    policy = Policy.from_yaml(text.encode())
    signatures = encode_signatures([sign_policy(policy, officer="officer", private_key=key)])
    return policy_activation_entry(policy, signatures, at=1_777_000_000).to_bytes()


def _recall(entries: list[bytes], anchors: TrustAnchors) -> Recalled:
    return recall(
        entries,
        department="qingpu",
        anchors=anchors,
        officers={"officer": OFFICER.public_key()},
        required=1,
    )


def test_recall_counts_what_this_departments_attested_enclaves_and_officers_signed(
    vendor: Path, anchors: TrustAnchors
) -> None:
    attestation, keys = _attest(vendor, "qingpu", "department")
    impostor = EnclaveKeys.generate()
    entries = [
        _intent(keys, run=1, intent_id="i1"),  # before any attestation: not counted
        attestation,
        _report(keys),
        _intent(keys, run=1, intent_id="i2"),
        _intent(keys, run=2, intent_id="i3"),
        _intent(impostor, run=3, intent_id="i4"),  # not a key the log attested
        _activation(7),
        _activation(9, key=Ed25519PrivateKey.generate()),  # not a pinned officer's signature
        b"not an entry",
    ]
    recalled = _recall(entries, anchors)
    assert recalled.size == len(entries)
    assert recalled.runs == {"a" * 64: {"i2", "i3"}}
    assert set(recalled.seen) == {
        ("spiffe://demo/dept/qingpu/requester/analyst", "r1"),
        ("spiffe://demo/dept/qingpu/requester/analyst", "r-i2"),
        ("spiffe://demo/dept/qingpu/requester/analyst", "r-i3"),
    }
    assert set(recalled.policies) == {1, 7}  # the report applied version 1


def test_another_departments_enclave_cannot_vouch_for_this_one(
    vendor: Path, anchors: TrustAnchors
) -> None:
    attestation, keys = _attest(vendor, "committee", "aggregator")
    report = ExecutionReportEntry.from_bytes(_report(keys))
    assert report.department == "qingpu"
    assert _recall([attestation, _report(keys)], anchors).seen == {}


def _signed_checkpoint(
    log: Ed25519Signer, witnesses: list[Ed25519Signer], tree: MerkleTree, timestamp: int
) -> bytes:
    checkpoint = Checkpoint("log.test", tree.size, tree.root())
    note = sign_checkpoint(checkpoint, signer=log)
    return add_signatures(
        note, [cosign(checkpoint, cosigner=w, timestamp=timestamp) for w in witnesses]
    )


def test_only_a_quorum_checkpoint_cosigned_after_the_start_is_trusted() -> None:
    log = Ed25519Signer("log.test", Ed25519PrivateKey.generate())
    witnesses = [
        Ed25519Signer(f"w{i}", Ed25519PrivateKey.generate(), SIG_TYPE_COSIGNATURE_V1)
        for i in range(4)
    ]
    view = WitnessLog(
        witness=WitnessClient.__new__(WitnessClient),  # never called: no I/O in this test
        log_verifier=log.verifier(),
        witnesses=[w.verifier() for w in witnesses],
        quorum=3,
    )
    tree = MerkleTree.from_leaf_hashes(hash_leaf(bytes([i])) for i in range(5))
    fresh = _signed_checkpoint(log, witnesses[:3], tree, timestamp=2_000)
    assert view.verify_quorum(fresh, cosigned_after=2_000).checkpoint.size == 5
    with pytest.raises(LedgerError):
        view.verify_quorum(_signed_checkpoint(log, witnesses[:2], tree, 2_000))
    # Cosigned by a quorum, but before the enclave started: a host could replay it.
    stale = _signed_checkpoint(log, witnesses[:3], tree, timestamp=1_999)
    with pytest.raises(NodeUnavailableError, match="after this enclave started"):
        view.verify_quorum(stale, cosigned_after=2_000)
    # An entry shown in the tree, and one that is not.
    view.verify_logged(bytes([3]), index=3, proof=tree.inclusion_proof(3, 5), note=fresh)
    with pytest.raises(ProofError):
        view.verify_logged(bytes([4]), index=3, proof=tree.inclusion_proof(3, 5), note=fresh)
