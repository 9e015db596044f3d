"""The witness core: tlog-witness add-checkpoint semantics, the execution-report rule, state I/O."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.checkpoint import Checkpoint, sign_checkpoint, verify_cosigned
from ledger.errors import (
    LogCorruptionError,
    ProofError,
    SignatureError,
    UnknownLogError,
    UnloggedExecutionError,
    WitnessConflictError,
    WitnessRequestError,
)
from ledger.merkle import MerkleTree, hash_leaf
from ledger.note import SIG_TYPE_COSIGNATURE_V1, Ed25519Signer
from ledger.witness import (
    ExecutionRule,
    WitnessState,
    add_checkpoint,
    load_state,
    parse_add_checkpoint_body,
    record_execution_report,
    save_state,
)

ORIGIN = "log.example/dataisland"
LOG = Ed25519Signer(ORIGIN, Ed25519PrivateKey.generate())
WITNESS = Ed25519Signer("witness.example/w1", Ed25519PrivateKey.generate(), SIG_TYPE_COSIGNATURE_V1)


def _tree(n: int, salt: bytes = b"") -> MerkleTree:
    return MerkleTree.from_leaf_hashes(hash_leaf(salt + bytes([i])) for i in range(n))


def _signed(tree: MerkleTree, size: int, signer: Ed25519Signer = LOG) -> bytes:
    return sign_checkpoint(Checkpoint(ORIGIN, size, tree.root(size)), signer=signer)


def _add(
    state: WitnessState,
    tree: MerkleTree,
    old: int,
    new: int,
    *,
    timestamp: int = 1000,
    rule: ExecutionRule | None = None,
    note: bytes | None = None,
) -> WitnessState:
    proof = tree.consistency_proof(old, new) if old <= new else []
    new_state, sig = add_checkpoint(
        state,
        old_size=old,
        consistency_proof=proof,
        signed_checkpoint=_signed(tree, new) if note is None else note,
        log_verifier=LOG.verifier(),
        cosigner=WITNESS,
        timestamp=timestamp,
        rule=rule,
    )
    assert sig.name == WITNESS.name
    assert new_state.checkpoint is not None
    verify_cosigned(
        new_state.checkpoint,
        origin=ORIGIN,
        log_verifier=LOG.verifier(),
        witness_verifiers=[WITNESS.verifier()],
        quorum=1,
    )
    return new_state


def test_cosigns_a_growing_log_and_persists(tmp_path: Path) -> None:
    tree = _tree(20)
    state = WitnessState.initial(ORIGIN)
    state = _add(state, tree, 0, 5)
    state = _add(state, tree, 5, 13)
    state = _add(state, tree, 13, 13)  # same checkpoint again is fine
    state = _add(state, tree, 13, 20)
    assert (state.size, state.root_hash) == (20, tree.root())
    path = tmp_path / "witness.json"
    save_state(path, state)
    assert load_state(path) == state
    path.write_bytes(b"{}")
    with pytest.raises(LogCorruptionError):
        load_state(path)


def test_conflicts_carry_the_known_size() -> None:
    tree = _tree(20)
    state = _add(WitnessState.initial(ORIGIN), tree, 0, 9)
    with pytest.raises(WitnessConflictError) as info:
        _add(state, tree, 5, 12)
    assert info.value.known_size == 9
    # An older checkpoint presented as new.
    with pytest.raises(WitnessRequestError):
        _add(state, tree, 9, 5)
    with pytest.raises(WitnessConflictError):
        _add(state, tree, 5, 5)
    # A fork: another checkpoint of the same size.
    forked = _tree(20, salt=b"fork")
    with pytest.raises(WitnessConflictError):
        _add(state, forked, 9, 9, note=_signed(forked, 9))


def test_proof_and_signature_failures() -> None:
    tree = _tree(20)
    state = _add(WitnessState.initial(ORIGIN), tree, 0, 9)
    forked = _tree(20, salt=b"fork")
    with pytest.raises(ProofError):
        _add(state, tree, 9, 15, note=_signed(forked, 15))
    with pytest.raises(ProofError):
        add_checkpoint(
            WitnessState.initial(ORIGIN),
            old_size=0,
            consistency_proof=[tree.root()],
            signed_checkpoint=_signed(tree, 3),
            log_verifier=LOG.verifier(),
            cosigner=WITNESS,
            timestamp=1,
            rule=None,
        )
    with pytest.raises(SignatureError):
        _add(
            state,
            tree,
            9,
            15,
            note=_signed(tree, 15, Ed25519Signer(ORIGIN, Ed25519PrivateKey.generate())),
        )
    other = Ed25519Signer("other.example/log", Ed25519PrivateKey.generate())
    with pytest.raises(UnknownLogError):
        add_checkpoint(
            state,
            old_size=9,
            consistency_proof=[],
            signed_checkpoint=sign_checkpoint(
                Checkpoint(other.name, 9, tree.root(9)), signer=other
            ),
            log_verifier=LOG.verifier(),
            cosigner=WITNESS,
            timestamp=1,
            rule=None,
        )
    with pytest.raises(WitnessRequestError):
        add_checkpoint(
            state,
            old_size=9,
            consistency_proof=[tree.root()] * 64,
            signed_checkpoint=_signed(tree, 15),
            log_verifier=LOG.verifier(),
            cosigner=WITNESS,
            timestamp=1,
            rule=None,
        )


def test_refuses_checkpoints_that_omit_old_execution_reports() -> None:
    tree = _tree(20)
    state = _add(WitnessState.initial(ORIGIN), tree, 0, 4)
    state = record_execution_report(state, report_id="rep-1", received_at=100)
    assert record_execution_report(state, report_id="rep-1", received_at=101) == state
    where = {"rep-1": 10}  # the replica found rep-1's entry at index 10
    rule = ExecutionRule(bound_seconds=30, included=where)
    # Young enough: cosigned although not yet included, still pending.
    state = _add(state, tree, 4, 6, timestamp=120, rule=rule)
    assert [r.report_id for r in state.pending_reports] == ["rep-1"]
    # Too old and still missing from a size-9 checkpoint: refused, naming the report.
    with pytest.raises(UnloggedExecutionError) as info:
        _add(state, tree, 6, 9, timestamp=130, rule=rule)
    assert info.value.report_id == "rep-1"
    # Included at size 11 (index 10 < 11): cosigned, and no longer pending.
    state = _add(state, tree, 6, 11, timestamp=200, rule=rule)
    assert state.pending_reports == ()
    # A callable predicate works the same way.
    state = record_execution_report(state, report_id="rep-2", received_at=300)
    with pytest.raises(UnloggedExecutionError):
        _add(state, tree, 11, 12, timestamp=400, rule=ExecutionRule(60, lambda rid, size: False))


def test_parses_the_spec_request_body() -> None:
    body = (
        "old 20852014\n"
        "PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\n"
        "jrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=\n"
        "5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=\n"
        "/6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=\n"
        "\n"
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n"
        "— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/"
        "Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
    ).encode()
    old, proof, note = parse_add_checkpoint_body(body)
    assert old == 20852014
    assert proof[0] == base64.b64decode("PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=")
    assert len(proof) == 4
    assert note.startswith(b"example.com/behind-the-sofa\n20852163\n")
    for bad in [b"old 01\n\nx", b"new 1\n\nx", b"old 1\nAAAA\n\nx", b"old 1\n"]:
        with pytest.raises(WitnessRequestError):
            parse_add_checkpoint_body(bad)
    assert hashlib.sha256(note).digest()  # parsed bytes are the checkpoint note verbatim
