"""The witness's replica, execution reports and quorum checkpoints, in memory (no HTTP)."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataisland.canonical import format_rfc3339
from ledger.checkpoint import Checkpoint, add_signatures, cosign, sign_checkpoint
from ledger.entries import ExecutionReportEntry, FailureEntry
from ledger.errors import (
    MalformedEntryError,
    ProofError,
    QuorumError,
    SignatureError,
    UnloggedExecutionError,
    WitnessConflictError,
    WitnessRequestError,
)
from ledger.merkle import MerkleTree, hash_leaf
from ledger.note import SIG_TYPE_COSIGNATURE_V1, Ed25519Signer
from ledger.replica import Replica
from ledger.storage import LogStorage
from ledger.witness_client import encode_lines
from ledger.witness_service import Quorum, ReplicaBehindError, WitnessService

ORIGIN = "log.committee.test.dataisland"
LOG = Ed25519Signer(ORIGIN, Ed25519PrivateKey.generate())
WITNESS = Ed25519Signer("w-qingpu", Ed25519PrivateKey.generate(), SIG_TYPE_COSIGNATURE_V1)
OTHER = Ed25519Signer("w-other", Ed25519PrivateKey.generate(), SIG_TYPE_COSIGNATURE_V1)
T = format_rfc3339(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


def _failure(i: int) -> bytes:
    return FailureEntry(
        version=1,
        kind="failure",
        query_id=f"q-{i}",
        request_id=None,
        stage="execution",
        code="CANCELLED",
        message="cancelled",
        failed_at=T,
    ).to_bytes()


def _report(report_id: str, department: str = "qingpu") -> bytes:
    return ExecutionReportEntry(
        version=1,
        kind="execution_report",
        report_id=report_id,
        department=department,
        enclave=department,
        query_id="q",
        request_id=f"r-{report_id}",
        requester="spiffe://test/dept/qingpu/requester/analyst",
        query_hash="a" * 64,
        envelope_digest="b" * 64,
        partial_hash="c" * 64,
        policy_hash="d" * 64,
        policy_version=1,
        reported_at=T,
        signature=base64.b64encode(b"s" * 64).decode(),
    ).to_bytes()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _service(tmp_path: Path, clock: Clock) -> WitnessService:
    return WitnessService(
        state_path=tmp_path / "state.json",
        log_verifier=LOG.verifier(),
        cosigner=WITNESS,
        clock=clock,
        replica=Replica(LogStorage.open(tmp_path / "replica", create=True)),
        report_bound=30,
        quorum=Quorum(witnesses=(WITNESS.verifier(), OTHER.verifier()), size=2),
    )


def _note(tree: MerkleTree, size: int, signer: Ed25519Signer = LOG) -> bytes:
    return sign_checkpoint(Checkpoint(ORIGIN, size, tree.root(size)), signer=signer)


def _push(service: WitnessService, entries: list[bytes], start: int, end: int) -> int:
    tree = MerkleTree.from_leaf_hashes(hash_leaf(e) for e in entries[:end])
    body = f"start {start}\n{encode_lines(entries[start:end])}\n".encode() + _note(tree, end)
    return service.push_entries(body)


def _add(service: WitnessService, entries: list[bytes], old: int, size: int) -> bytes:
    tree = MerkleTree.from_leaf_hashes(hash_leaf(e) for e in entries[:size])
    proof = "".join(base64.b64encode(h).decode() + "\n" for h in tree.consistency_proof(old, size))
    return service.add_checkpoint(f"old {old}\n{proof}\n".encode() + _note(tree, size))


def test_the_replica_keeps_only_entries_that_reproduce_a_log_signed_root(tmp_path: Path) -> None:
    service = _service(tmp_path, Clock())
    entries = [_failure(i) for i in range(6)]
    assert _push(service, entries, 0, 4) == 4
    # Not where the replica ends: refused with its size.
    with pytest.raises(WitnessConflictError) as conflict:
        _push(service, entries, 2, 5)
    assert conflict.value.known_size == 4
    # A changed entry does not reproduce the log's root.
    forged = [*entries[:4], _failure(99), entries[5]]
    tree = MerkleTree.from_leaf_hashes(hash_leaf(e) for e in entries)
    body = f"start 4\n{encode_lines(forged[4:])}\n".encode() + _note(tree, 6)
    with pytest.raises(ProofError):
        service.push_entries(body)
    # A checkpoint the log did not sign.
    impostor = Ed25519Signer(ORIGIN, Ed25519PrivateKey.generate())
    body = f"start 4\n{encode_lines(entries[4:])}\n".encode() + _note(tree, 6, impostor)
    with pytest.raises(SignatureError):
        service.push_entries(body)
    with pytest.raises(WitnessRequestError):
        service.push_entries(b"start x\n\n" + _note(tree, 6))
    assert service.replica is not None
    assert service.replica.size == 4
    assert service.entries(1, 3) == entries[1:3]


def test_cosigning_needs_the_replica_to_hold_the_checkpoint(tmp_path: Path) -> None:
    service = _service(tmp_path, Clock())
    entries = [_failure(i) for i in range(5)]
    with pytest.raises(ReplicaBehindError) as behind:
        _add(service, entries, 0, 3)
    assert behind.value.replica_size == 0
    _push(service, entries, 0, 3)
    assert _add(service, entries, 0, 3).startswith("\u2014 w-qingpu ".encode())
    assert service.state.size == 3


def test_a_report_left_out_too_long_blocks_cosigning_and_new_reports(tmp_path: Path) -> None:
    clock = Clock()
    service = _service(tmp_path, clock)
    entries = [_failure(i) for i in range(3)]
    _push(service, entries, 0, 2)
    _add(service, entries, 0, 2)
    service.report_execution(_report("rep-1"), department="qingpu")
    assert service.pending_reports() == [_report("rep-1")]
    with pytest.raises(WitnessRequestError):
        service.report_execution(_report("rep-x", department="wujiang"), department="qingpu")
    with pytest.raises(MalformedEntryError):
        service.report_execution(entries[0], department="qingpu")
    # Young: a checkpoint without it is still cosigned.
    _push(service, entries, 2, 3)
    _add(service, entries, 2, 3)
    clock.now += 31
    # Overdue: another checkpoint without it is refused, naming it; so is any new report.
    more = [*entries, _failure(3)]
    _push(service, more, 3, 4)
    with pytest.raises(UnloggedExecutionError) as refused:
        _add(service, more, 3, 4)
    assert refused.value.report_id == "rep-1"
    with pytest.raises(UnloggedExecutionError):
        service.report_execution(_report("rep-2"), department="qingpu")
    # Once the log holds it, the witness cosigns again, and it is no longer pending.
    logged = [*more, _report("rep-1")]
    _push(service, logged, 4, 5)
    _add(service, logged, 3, 5)
    assert service.pending_reports() == []
    service.report_execution(_report("rep-2"), department="qingpu")
    # A report the replica already holds is not pending again.
    service.report_execution(_report("rep-1"), department="qingpu")
    assert service.pending_reports() == [_report("rep-2")]


def test_pending_reports_and_the_replica_survive_a_restart(tmp_path: Path) -> None:
    service = _service(tmp_path, Clock())
    entries = [_failure(0), _report("rep-0")]
    _push(service, entries, 0, 2)
    service.report_execution(_report("rep-1"), department="qingpu")
    assert service.replica is not None
    service.replica.close()
    again = _service(tmp_path, Clock())
    assert again.pending_reports() == [_report("rep-1")]
    assert again.replica is not None
    assert again.replica.size == 2
    assert again.replica.report_index("rep-0") == 1


def test_only_a_quorum_checkpoint_is_published(tmp_path: Path) -> None:
    service = _service(tmp_path, Clock())
    entries = [_failure(i) for i in range(2)]
    _push(service, entries, 0, 2)
    tree = MerkleTree.from_leaf_hashes(hash_leaf(e) for e in entries)
    checkpoint = Checkpoint(ORIGIN, 2, tree.root())
    note = sign_checkpoint(checkpoint, signer=LOG)
    one = add_signatures(note, [cosign(checkpoint, cosigner=WITNESS, timestamp=1)])
    with pytest.raises(QuorumError):
        service.publish_quorum(one)
    both = add_signatures(one, [cosign(checkpoint, cosigner=OTHER, timestamp=2)])
    service.publish_quorum(both)
    assert service.quorum_checkpoint() == both
    # A quorum checkpoint that contradicts the replica is evidence of a fork: refused.
    fork = Checkpoint(ORIGIN, 2, bytes(32))
    forked = add_signatures(
        sign_checkpoint(fork, signer=LOG),
        [cosign(fork, cosigner=w, timestamp=3) for w in (WITNESS, OTHER)],
    )
    with pytest.raises(ProofError):
        service.publish_quorum(forked)
    assert service.quorum_checkpoint() == both
