"""Entry records: canonical bytes, strict parsing, size limit, no low-entropy values in clear."""

from __future__ import annotations

import base64
import hashlib
import typing
from typing import Any

import pytest
import rfc8785
from pydantic import BaseModel

from ledger.entries import (
    _KINDS,
    ENTRY_KINDS,
    MAX_ENTRY_BYTES,
    ApprovalEntry,
    AttestationEntry,
    DenialEntry,
    Entry,
    ExecutionReportEntry,
    FailureEntry,
    PolicyActivationEntry,
    QueryEntry,
    RunIntentEntry,
)
from ledger.errors import EntryTooLargeError, MalformedEntryError
from ledger.merkle import hash_leaf

T = "2024-03-01T12:00:00.000000Z"
H = hashlib.sha256(b"h").hexdigest()
SIG = base64.b64encode(b"s" * 64).decode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sample_entries() -> list[Entry]:
    """One entry of every kind (used by the export tests too)."""
    approval = b'{"approval":1}'
    policy = b'{"policy":1}'
    evidence = b"evidence" * 10
    return [
        QueryEntry(
            version=1,
            kind="query",
            query_id="q-1",
            request_id="r-1",
            requester="health/svc",
            purpose="monthly totals",
            sql="SELECT month, sum(amount) FROM claims GROUP BY month",
            query_hash=H,
            params_commitment=H,
            envelope_digest=H,
            envelope_signature=SIG,
            issued_at=T,
            policies=({"department": "d1", "policy_hash": H},),  # type: ignore[arg-type]
            approvals=(),
            partials=(
                {
                    "department": "d1",
                    "payload_hash": H,
                    "k": 5,
                    "policies": ({"department": "d1", "policy_hash": H},),
                    "signature": SIG,
                },
            ),  # type: ignore[arg-type]
            result_commitment=H,
            aggregator_signature=SIG,
            suppressed_commitment=H,
            decision="released",
            submitted_at=T,
            decided_at=T,
        ),
        DenialEntry(
            version=1,
            kind="denial",
            query_id="q-2",
            request_id="r-2",
            requester="x",
            purpose="p",
            query_hash=None,
            envelope_digest=H,
            envelope_signature=SIG,
            denied_by="coordinator",
            reasons=("column claims.name is an identity column",),
            decided_at=T,
        ),
        ApprovalEntry(
            version=1,
            kind="approval",
            query_id=None,
            department="d1",
            officer="alice",
            subject="template",
            subject_hash=H,
            approval=_b64(approval),
            approval_hash=hashlib.sha256(approval).hexdigest(),
            signature=SIG,
            decision="approved",
            decided_at=T,
        ),
        PolicyActivationEntry(
            version=1,
            kind="policy_activation",
            department="d1",
            policy_version=3,
            policy=_b64(policy),
            policy_hash=hashlib.sha256(policy).hexdigest(),
            signatures=({"officer": "alice", "signature": SIG},),  # type: ignore[arg-type]
            activated_at=T,
        ),
        RunIntentEntry(
            version=1,
            kind="run_intent",
            intent_id="i-3",
            department="d1",
            enclave="d1",
            query_id="q-3",
            request_id="r-3",
            requester="x",
            purpose="p",
            envelope_digest=H,
            approval_hash=H,
            template_hash=H,
            run=1,
            runs=3,
            recorded_at=T,
            signature=SIG,
        ),
        AttestationEntry(
            version=1,
            kind="attestation",
            subject="node-1/enclave",
            role="department",
            department="d1",
            evidence=_b64(evidence),
            evidence_hash=hashlib.sha256(evidence).hexdigest(),
            verifier="aggregator",
            verified_at=T,
        ),
        FailureEntry(
            version=1,
            kind="failure",
            query_id="q-4",
            request_id=None,
            stage="merge",
            code="NODE_UNAVAILABLE",
            message="department d2 did not answer",
            failed_at=T,
        ),
        ExecutionReportEntry(
            version=1,
            kind="execution_report",
            report_id="rep-1",
            department="d1",
            enclave="node-1/enclave",
            query_id="q-1",
            request_id="r-1",
            requester="x",
            query_hash=H,
            envelope_digest=H,
            partial_hash=H,
            policy_hash=H,
            policy_version=2,
            reported_at=T,
            signature=SIG,
        ),
    ]


def test_every_kind_round_trips() -> None:
    entries = sample_entries()
    assert sorted(e.kind for e in entries) == sorted(ENTRY_KINDS)  # type: ignore[attr-defined]
    for e in entries:
        data = e.to_bytes()
        back = Entry.from_bytes(data)
        assert back == e
        assert type(back) is type(e)
        assert back.to_bytes() == data
        assert back.leaf_hash() == hash_leaf(data)
        assert type(e).from_bytes(data) == e


def _mutate(data: bytes, old: bytes, new: bytes) -> bytes:
    assert old in data
    return data.replace(old, new, 1)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b'"version":1', b'"version":2'),
        (b'"version":1', b'"version":true'),
        (b'"kind":"failure"', b'"kind":"nope"'),
        (b'"stage":"merge"', b'"stage":""'),
        (b'"query_id":"q-4"', b'"query_id":4'),
        (b'"query_id":"q-4",', b""),
        (b'"code"', b'"a":1,"code"'),
        (b'"failed_at":"2024-03-01T12:00:00.000000Z"', b'"failed_at":"2024-03-01T12:00:00Z"'),
        (b"{", b" {"),
    ],
)
def test_strict_parsing(old: bytes, new: bytes) -> None:
    data = sample_entries()[6].to_bytes()
    with pytest.raises(MalformedEntryError):
        Entry.from_bytes(_mutate(data, old, new))


def test_cross_field_checks_and_kind_mismatch() -> None:
    q = sample_entries()[0]
    with pytest.raises(MalformedEntryError):
        FailureEntry.from_bytes(q.to_bytes())
    data = _mutate(
        q.to_bytes(),
        b'"result_commitment":"' + H.encode() + b'"',
        b'"result_commitment":null',
    )
    with pytest.raises(MalformedEntryError):
        Entry.from_bytes(data)
    att = sample_entries()[5]
    assert isinstance(att, AttestationEntry)
    other = _b64(b"other evidence")
    with pytest.raises(MalformedEntryError):
        Entry.from_bytes(_mutate(att.to_bytes(), att.evidence.encode(), other.encode()))


def test_size_limit() -> None:
    big = FailureEntry(
        version=1,
        kind="failure",
        query_id=None,
        request_id=None,
        stage="s",
        code="c",
        message="m" * 16_384,
        failed_at=T,
    )
    assert len(big.to_bytes()) < MAX_ENTRY_BYTES
    huge: dict[str, Any] = sample_entries()[5].to_json()
    evidence = b"e" * 50_000
    huge.update(evidence=_b64(evidence), evidence_hash=hashlib.sha256(evidence).hexdigest())
    with pytest.raises(EntryTooLargeError):
        AttestationEntry(**huge).to_bytes()
    with pytest.raises(EntryTooLargeError):
        Entry.from_bytes(b"x" * (MAX_ENTRY_BYTES + 1))


def test_no_low_entropy_values_in_the_clear() -> None:
    # Results, parameters and suppressed counts appear only as 64-hex commitments; the only
    # integers in any entry are the format version, policy versions, run numbers and the runs
    # an approval allows.
    for e in sample_entries():
        for key, value in e.to_json().items():
            if isinstance(value, int) and not isinstance(value, bool):
                assert key in {"version", "policy_version", "run", "runs"}
            if key.endswith("_commitment") and value is not None:
                assert len(value) == 64


def _models(model: type[BaseModel]) -> set[type[BaseModel]]:
    found = {model}
    for field in model.model_fields.values():
        for arg in typing.get_args(field.annotation) or (field.annotation,):
            for inner in typing.get_args(arg) or (arg,):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    found |= _models(inner)
    return found


def test_entry_shapes_justify_skipping_the_canonical_walk() -> None:
    """`Entry.to_bytes` serialises with `shape_checked=True`: every field of every entry model
    is a string, None, bool, a bounded integer or a tuple of such models, with ASCII names, so
    the fast encoder's bytes are the RFC 8785 bytes (checked here on every kind as well)."""
    models = set().union(*(_models(cls) for cls in _KINDS.values()))
    for model in models:
        for name, field in model.model_fields.items():
            assert name.isascii()
            text = repr(field.annotation)
            assert not any(bad in text for bad in ("float", "dict", "Any", "Decimal")), text
            if field.annotation is int or int in typing.get_args(field.annotation):
                assert any(getattr(m, "le", None) == 2**53 - 1 for m in field.metadata), name
    for e in sample_entries():
        assert e.to_bytes() == rfc8785.dumps(e.to_json())
