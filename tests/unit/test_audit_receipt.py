"""Receipts, the witness service's state transitions and the coordinator's entries, in memory."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import time
from http import HTTPStatus
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.audit import ResultOpening, failure_entry, released_entry, submission_entry
from dataisland.canonical import QueryEnvelope, new_salt, params_commitment
from dataisland.v1 import common_pb2
from ledger.checkpoint import Checkpoint, add_signatures, cosign, sign_checkpoint
from ledger.errors import (
    ProofError,
    SignatureError,
    VerificationError,
    WitnessConflictError,
    WitnessRequestError,
)
from ledger.keys import generate_key, load_signer
from ledger.merkle import MerkleTree, hash_leaf
from ledger.note import SIG_TYPE_COSIGNATURE_V1, SIG_TYPE_ED25519, Ed25519Signer
from ledger.receipt import Receipt, ReceiptEntry, verify_receipt
from ledger.witness import load_state
from ledger.witness_service import WitnessService, http_status

ORIGIN = "log.committee.test.dataisland"


def _signed(request_id: str) -> common_pb2.SignedEnvelope:
    envelope = QueryEnvelope(
        sql="SELECT count(*) AS n FROM claims",
        params_commitment=params_commitment([], salt=new_salt()),
        purpose="statistics",
        request_id=request_id,
        issued_at=dt.datetime.now(dt.UTC),
    )
    return common_pb2.SignedEnvelope(envelope=envelope.to_bytes(), signature=b"s" * 70)


@dataclasses.dataclass
class Log:
    signer: Ed25519Signer
    witnesses: list[Ed25519Signer]
    entries: list[bytes]
    tree: MerkleTree

    def checkpoint(self, quorum: int) -> bytes:
        cp = Checkpoint(ORIGIN, self.tree.size, self.tree.root())
        note = sign_checkpoint(cp, signer=self.signer)
        sigs = [cosign(cp, cosigner=w, timestamp=1_700_000_000) for w in self.witnesses[:quorum]]
        return add_signatures(note, sigs)


def _log() -> tuple[Log, ResultOpening]:
    signer = Ed25519Signer(ORIGIN, Ed25519PrivateKey.generate())
    witnesses = [
        Ed25519Signer(f"w{i}", Ed25519PrivateKey.generate(), SIG_TYPE_COSIGNATURE_V1)
        for i in range(4)
    ]
    submitted = submission_entry(
        query_id="q-1",
        requester="spiffe://test/dept/a/requester/r",
        signed=_signed("r-1"),
        canonical_sql="SELECT COUNT(*) AS n FROM claims",
        query_hash="ab" * 32,
        decision="allowed",
        submitted_at=time.time(),
    )
    opening = ResultOpening.new(result_digest="cd" * 32, suppressed=True)
    released = released_entry(submitted, opening=opening, decided_at=time.time())
    other = failure_entry(
        query_id="q-2", request_id="r-2", code="CANCELLED", stage="cancel", failed_at=time.time()
    )
    entries = [submitted.to_bytes(), other.to_bytes(), released.to_bytes()]
    tree = MerkleTree.from_leaf_hashes(hash_leaf(e) for e in entries)
    return Log(signer, witnesses, entries, tree), opening


def _receipt(log: Log, opening: ResultOpening, quorum: int = 3) -> Receipt:
    note = log.checkpoint(quorum)
    return Receipt(
        query_id="q-1",
        checkpoint=note,
        entries=tuple(
            ReceiptEntry(i, log.entries[i], tuple(log.tree.inclusion_proof(i, log.tree.size)))
            for i in (0, 2)
        ),
        result_salt=opening.salt,
        result_committed=opening.canonical_bytes,
    )


def _verify(log: Log, receipt: Receipt) -> object:
    return verify_receipt(
        Receipt.from_bytes(receipt.to_bytes()),
        log_verifier=log.signer.verifier(),
        witness_verifiers=[w.verifier() for w in log.witnesses],
        quorum=3,
    )


def test_a_receipt_round_trips_and_verifies() -> None:
    log, opening = _log()
    report = _verify(log, _receipt(log, opening))
    assert report.result_digest == "cd" * 32  # type: ignore[attr-defined]
    assert report.suppressed is True  # type: ignore[attr-defined]
    assert [e[2] for e in report.entries] == ["allowed", "released"]  # type: ignore[attr-defined]


def test_the_released_entry_holds_no_value_in_the_clear() -> None:
    log, opening = _log()
    assert b"cdcdcd" not in log.entries[2]
    assert b"suppressed" in log.entries[2]  # only as the (null) suppressed_commitment field
    assert b'"suppressed_commitment":null' in log.entries[2]
    assert opening.commitment().hex().encode() in log.entries[2]


@pytest.mark.parametrize("what", ["salt", "entry", "proof", "quorum", "query", "opening"])
def test_a_tampered_receipt_fails(what: str) -> None:
    log, opening = _log()
    receipt = _receipt(log, opening, quorum=2 if what == "quorum" else 3)
    if what == "salt":
        receipt = dataclasses.replace(receipt, result_salt=bytes(32))
    elif what == "entry":
        first = receipt.entries[0]
        data = first.data.replace(b"statistics", b"statistica")
        receipt = dataclasses.replace(
            receipt, entries=(dataclasses.replace(first, data=data), *receipt.entries[1:])
        )
    elif what == "proof":
        first = receipt.entries[0]
        bad = (bytes(32), *first.inclusion_proof[1:])
        receipt = dataclasses.replace(
            receipt,
            entries=(dataclasses.replace(first, inclusion_proof=bad), *receipt.entries[1:]),
        )
    elif what == "query":
        receipt = dataclasses.replace(receipt, query_id="q-2")
    elif what == "opening":
        receipt = dataclasses.replace(receipt, result_salt=None, result_committed=None)
    with pytest.raises(VerificationError):
        _verify(log, receipt)


def test_witness_service_cosigns_persists_and_refuses_forks(tmp_path: Path) -> None:
    log, _ = _log()
    generate_key(tmp_path / "w.key")
    cosigner = load_signer(tmp_path / "w.key", name="w0", sig_type=SIG_TYPE_COSIGNATURE_V1)
    assert (tmp_path / "w.key").stat().st_mode & 0o777 == 0o600
    state = tmp_path / "state.json"
    service = WitnessService(
        state_path=state, log_verifier=log.signer.verifier(), cosigner=cosigner, clock=time.time
    )
    cp2 = Checkpoint(ORIGIN, 2, log.tree.root(2))
    line = service.add_checkpoint(b"old 0\n\n" + sign_checkpoint(cp2, signer=log.signer))
    assert line.startswith("\u2014 w0 ".encode())
    assert load_state(state).size == 2
    # Another root for the same size, signed by the log: refused with the known size.
    fork = Checkpoint(ORIGIN, 2, bytes(32))
    with pytest.raises(WitnessConflictError) as conflict:
        service.add_checkpoint(b"old 2\n\n" + sign_checkpoint(fork, signer=log.signer))
    assert conflict.value.known_size == 2
    assert http_status(conflict.value) == HTTPStatus.CONFLICT
    # Wrong old size: 409 with the size to retry from.
    cp3 = Checkpoint(ORIGIN, 3, log.tree.root(3))
    with pytest.raises(WitnessConflictError):
        service.add_checkpoint(b"old 1\n\n" + sign_checkpoint(cp3, signer=log.signer))
    # A consistency proof that does not hold.
    bogus = "\n".join(["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="] * 2)
    with pytest.raises(ProofError) as proof:
        service.add_checkpoint(
            f"old 2\n{bogus}\n\n".encode() + sign_checkpoint(cp3, signer=log.signer)
        )
    assert http_status(proof.value) == HTTPStatus.UNPROCESSABLE_ENTITY
    # Not the log's key.
    impostor = Ed25519Signer(ORIGIN, Ed25519PrivateKey.generate(), SIG_TYPE_ED25519)
    with pytest.raises(SignatureError):
        service.add_checkpoint(b"old 2\n\n" + sign_checkpoint(cp3, signer=impostor))
    with pytest.raises(WitnessRequestError):
        service.add_checkpoint(b"garbage")
    # The right proof: accepted, and a restarted witness remembers it.
    proof_lines = "".join(
        base64.b64encode(h).decode() + "\n" for h in log.tree.consistency_proof(2, 3)
    )
    service.add_checkpoint(
        f"old 2\n{proof_lines}\n".encode() + sign_checkpoint(cp3, signer=log.signer)
    )
    again = WitnessService(
        state_path=state, log_verifier=log.signer.verifier(), cosigner=cosigner, clock=time.time
    )
    assert again.state.size == 3
    assert again.latest() is not None
