"""The coordinator's query book: idempotency, retention and the limits that keep it bounded."""

from __future__ import annotations

import pytest

from coordinator.book import QueryBook, QueryRecord
from dataisland.errors import NotFoundError, ResourceLimitError
from dataisland.v1 import common_pb2, coordinator_pb2


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _record(requester: str, request_id: str, at: float = 0.0) -> QueryRecord:
    return QueryRecord(
        query_id=f"{requester}/{request_id}",
        requester=requester,
        request_id=request_id,
        envelope_digest=request_id.encode(),
        envelope=common_pb2.SignedEnvelope(),
        purpose="statistics",
        canonical_sql="SELECT 1",
        query_hash="00",
        departments=("qingpu",),
        submitted_at=at,
    )


def _book(clock: Clock, *, max_queries: int = 100, **limits: int) -> QueryBook:
    return QueryBook(
        retention_seconds=60,
        max_queries=max_queries,
        clock=clock,
        max_unfinished_per_requester=limits.get("max_unfinished_per_requester", 16),
    )


def test_same_request_id_returns_the_same_record() -> None:
    book = _book(Clock())
    first = book.add(_record("a", "r1"))
    again = _record("a", "r1")
    again.query_id = "other"
    assert book.add(again) is first
    assert book.add(_record("b", "r1")) is not first  # request ids are per requester


def test_requesters_see_only_their_own_queries() -> None:
    book = _book(Clock())
    record = book.add(_record("a", "r1"))
    assert book.get("a", record.query_id) is record
    with pytest.raises(NotFoundError):
        book.get("b", record.query_id)
    assert book.of_requester("b") == []


def test_finished_queries_leave_after_the_retention_period() -> None:
    clock = Clock()
    book = _book(clock)
    record = book.add(_record("a", "r1"))
    book.finish(record, coordinator_pb2.QUERY_STATE_SUCCEEDED)
    clock.now += 59
    assert book.get("a", record.query_id) is record
    clock.now += 2
    with pytest.raises(NotFoundError):
        book.get("a", record.query_id)
    assert book.find_request("a", "r1") is None


def test_unfinished_queries_are_never_evicted_and_a_full_book_refuses() -> None:
    clock = Clock()
    book = _book(clock, max_queries=2)
    book.add(_record("a", "r1"))
    book.add(_record("b", "r2"))
    clock.now += 10_000
    with pytest.raises(ResourceLimitError):
        book.add(_record("c", "r3"))


def test_oldest_finished_make_room_when_the_book_is_full() -> None:
    clock = Clock()
    book = _book(clock, max_queries=2)
    old = book.add(_record("a", "r1"))
    book.finish(old, coordinator_pb2.QUERY_STATE_SUCCEEDED)
    book.add(_record("a", "r2"))
    book.add(_record("a", "r3"))
    with pytest.raises(NotFoundError):
        book.get("a", old.query_id)


def test_one_requester_cannot_fill_the_book() -> None:
    book = _book(Clock(), max_unfinished_per_requester=2)
    first = book.add(_record("greedy", "r1"))
    book.add(_record("greedy", "r2"))
    with pytest.raises(ResourceLimitError) as info:
        book.add(_record("greedy", "r3"))
    assert "greedy" in str(info.value)
    book.add(_record("polite", "r1"))  # others are unaffected
    book.finish(first, coordinator_pb2.QUERY_STATE_SUCCEEDED)
    book.add(_record("greedy", "r3"))  # a finished one frees a slot
