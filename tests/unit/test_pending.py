"""Queries waiting for approval are kept on disk and put back after a restart."""

from __future__ import annotations

from pathlib import Path

from coordinator.book import QueryBook, QueryRecord
from coordinator.pending import PendingStore, restore_pending
from dataisland.v1 import common_pb2, coordinator_pb2


def _pending(query_id: str, *, waiting: set[str]) -> QueryRecord:
    return QueryRecord(
        query_id=query_id,
        requester="spiffe://f/dept/qingpu/requester/a",
        request_id=f"r-{query_id}",
        envelope_digest=b"\x01" * 32,
        envelope=common_pb2.SignedEnvelope(envelope=b"{}", signature=b"sig", params_salt=b"salt"),
        purpose="eligibility check",
        canonical_sql="SELECT count(*) > 0 AS ok FROM claims WHERE person_id = $p",
        query_hash="ab" * 32,
        departments=("qingpu", "wujiang"),
        submitted_at=100.0,
        state=coordinator_pb2.QUERY_STATE_PENDING,
        decision=coordinator_pb2.DECISION_NEEDS_APPROVAL,
        reasons=[common_pb2.Reason(rule="approval.manual", message="needs approval")],
        policy_hashes={"qingpu": "11" * 32, "wujiang": "22" * 32},
        waiting_for=set(waiting),
        template_hashes={"qingpu": "33" * 32},
    )


def _book(store: PendingStore) -> QueryBook:
    return QueryBook(retention_seconds=60, max_queries=10, clock=lambda: 200.0, pending=store)


def test_a_pending_query_and_its_approvals_survive_a_new_book(tmp_path: Path) -> None:
    store = PendingStore(tmp_path)
    book = _book(store)
    record = book.add(_pending("0f0f-1", waiting={"qingpu", "wujiang"}))
    approval = common_pb2.Approval(approval=b"{}", signature=b"s")
    assert not book.approve(record, "qingpu", approval)

    again = _book(PendingStore(tmp_path))
    started: list[str] = []
    restored = restore_pending(
        PendingStore(tmp_path), again, audit=None, start=lambda r: started.append(r.query_id)
    )
    assert [r.query_id for r in restored] == ["0f0f-1"]
    kept = again.get_any("0f0f-1")
    assert kept.waiting_for == {"wujiang"}
    assert kept.approvals["qingpu"] == approval
    assert kept.envelope.params_salt == b"salt"
    assert kept.reasons[0].rule == "approval.manual"
    assert again.find_request(kept.requester, kept.request_id) is kept
    assert [r.query_id for r in again.pending()] == ["0f0f-1"]
    assert started == []


def test_a_fully_approved_query_is_started_and_a_finished_one_forgotten(tmp_path: Path) -> None:
    store = PendingStore(tmp_path)
    book = _book(store)
    approved = book.add(_pending("0a-1", waiting={"qingpu"}))
    assert book.approve(approved, "qingpu", common_pb2.Approval())
    denied = book.add(_pending("0b-2", waiting={"qingpu"}))
    book.finish(denied, coordinator_pb2.QUERY_STATE_DENIED)
    assert sorted(p.name for p in (tmp_path / "pending").iterdir()) == ["0a-1.json"]
    started: list[str] = []
    restore_pending(store, _book(store), audit=None, start=lambda r: started.append(r.query_id))
    assert started == ["0a-1"]


def test_an_unreadable_file_is_skipped(tmp_path: Path) -> None:
    store = PendingStore(tmp_path)
    (tmp_path / "pending" / "bad.json").write_text("{not json")
    assert store.load() == []
