"""The coordinator's book of queries: lookup by id and by request id, and the retention rule.

Retention rule: a query that has finished (succeeded, failed, denied or cancelled) keeps its
status and result for `retention_seconds` after it finished, and the book holds at most
`max_queries` queries, evicting the oldest finished first; a query still running or pending is
never evicted, and when the book is full of them new submissions are refused with
RESOURCE_EXHAUSTED. After eviction GetResult answers NOT_FOUND and the same request id starts a
new query; the audit log, not this book, is the permanent record.

The book holds no rows and no partials: only released results, which the requester may see.
It does no I/O; the clock is passed in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dataisland.errors import (
    DataislandError,
    ExecutionError,
    NotFoundError,
    PermissionDeniedError,
    ResourceLimitError,
)
from dataisland.v1 import common_pb2, coordinator_pb2, enclave_pb2
from ledger.entries import Entry

FINAL_STATES = frozenset(
    {
        coordinator_pb2.QUERY_STATE_SUCCEEDED,
        coordinator_pb2.QUERY_STATE_FAILED,
        coordinator_pb2.QUERY_STATE_DENIED,
        coordinator_pb2.QUERY_STATE_CANCELLED,
    }
)


@dataclass
class QueryRecord:
    """One query as the coordinator tracks it. Mutated only under the book's lock."""

    query_id: str
    requester: str
    request_id: str
    envelope_digest: bytes
    envelope: common_pb2.SignedEnvelope
    purpose: str
    canonical_sql: str
    query_hash: str
    departments: tuple[str, ...]
    submitted_at: float
    state: int = coordinator_pb2.QUERY_STATE_RUNNING
    decision: int = coordinator_pb2.DECISION_ALLOW
    reasons: list[common_pb2.Reason] = field(default_factory=list)
    policy_hashes: dict[str, str] = field(default_factory=dict)
    waiting_for: set[str] = field(default_factory=set)
    template_hashes: dict[str, str] = field(default_factory=dict)
    approvals: dict[str, common_pb2.Approval] = field(default_factory=dict)
    finished_at: float | None = None
    # Index of the query's first audit-log entry, once it is durable (coordinator/audit.py).
    log_index: int | None = None
    error: common_pb2.ErrorDetail | None = None
    result: enclave_pb2.MergePartialsResponse | None = None
    # The aggregator evidence pinning the key that signed `result` (coordinator/attestation.py).
    aggregator_evidence: bytes = b""
    # What the log records of each partial (coordinator/audit.py `partial_ref`): hashes and
    # signatures, never the sealed bytes.
    partial_refs: tuple[dict[str, object], ...] = ()
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def finished(self) -> bool:
        """Whether the query reached a final state."""
        return self.state in FINAL_STATES


class QueryBook:
    """Thread-safe store of query records with the retention rule above."""

    def __init__(
        self,
        *,
        retention_seconds: float,
        max_queries: int,
        clock: Callable[[], float],
        max_unfinished_per_requester: int = 16,
    ) -> None:
        self.retention_seconds = retention_seconds
        self.max_queries = max_queries
        self.max_unfinished_per_requester = max_unfinished_per_requester
        self.clock = clock
        self.lock = threading.Lock()
        self._by_id: dict[str, QueryRecord] = {}
        self._by_request: dict[tuple[str, str], str] = {}

    def find_request(self, requester: str, request_id: str) -> QueryRecord | None:
        """The retained query a requester submitted under `request_id`, if any."""
        with self.lock:
            self._evict()
            query_id = self._by_request.get((requester, request_id))
            return None if query_id is None else self._by_id[query_id]

    def add(self, record: QueryRecord) -> QueryRecord:
        """Add `record`, or return the retained record with the same requester and request id.

        Raises:
            ResourceLimitError: the book is full of unfinished queries.
        """
        with self.lock:
            self._evict()
            existing = self._by_request.get((record.requester, record.request_id))
            if existing is not None:
                return self._by_id[existing]
            if len(self._by_id) >= self.max_queries:
                raise ResourceLimitError(
                    f"the coordinator already tracks {self.max_queries} unfinished queries; "
                    "retry later"
                )
            # One requester cannot starve the others: its unfinished queries are capped.
            mine = sum(
                1
                for r in self._by_id.values()
                if r.requester == record.requester and not r.finished
            )
            if mine >= self.max_unfinished_per_requester:
                raise ResourceLimitError(
                    f"{record.requester} already has {mine} unfinished queries, the most one "
                    "requester may have; wait for one to finish"
                )
            self._by_id[record.query_id] = record
            self._by_request[(record.requester, record.request_id)] = record.query_id
            return record

    def get(self, requester: str, query_id: str) -> QueryRecord:
        """The requester's own query `query_id`.

        Raises:
            NotFoundError: no such retained query, or it is someone else's (indistinguishably).
        """
        with self.lock:
            self._evict()
            record = self._by_id.get(query_id)
        if record is None or record.requester != requester:
            raise NotFoundError(
                f"no query {query_id!r} (unknown, someone else's, or past retention)"
            )
        return record

    def of_requester(self, requester: str) -> list[QueryRecord]:
        """The requester's retained queries, newest first."""
        with self.lock:
            self._evict()
            mine = [r for r in self._by_id.values() if r.requester == requester]
        return sorted(mine, key=lambda r: (r.submitted_at, r.query_id), reverse=True)

    def pending(self) -> list[QueryRecord]:
        """Every query waiting for approvals, oldest first."""
        with self.lock:
            waiting = [
                r for r in self._by_id.values() if r.state == coordinator_pb2.QUERY_STATE_PENDING
            ]
        return sorted(waiting, key=lambda r: (r.submitted_at, r.query_id))

    def approve(self, record: QueryRecord, department: str, approval: common_pb2.Approval) -> bool:
        """Record `department`'s approval; return True when it was the last one needed.

        Raises:
            PermissionDeniedError: the query is not waiting for this department.
        """
        with self.lock:
            if record.state != coordinator_pb2.QUERY_STATE_PENDING:
                raise PermissionDeniedError(f"query {record.query_id} is not waiting for approvals")
            if department not in record.waiting_for:
                raise PermissionDeniedError(
                    f"query {record.query_id} is not waiting for {department}'s approval"
                )
            record.waiting_for.discard(department)
            record.approvals[department] = approval
            if record.waiting_for:
                return False
            record.state = coordinator_pb2.QUERY_STATE_RUNNING
            return True

    def get_any(self, query_id: str) -> QueryRecord:
        """A retained query by id, whoever asked it (for officers acting on it).

        Raises:
            NotFoundError: no such retained query.
        """
        with self.lock:
            self._evict()
            record = self._by_id.get(query_id)
        if record is None:
            raise NotFoundError(f"no query {query_id!r} (unknown or past retention)")
        return record

    def log_refusal(
        self, requester: str, signed: common_pb2.SignedEnvelope, error: DataislandError
    ) -> None:
        """Record SQL refused before it became a query; a book without an audit log keeps
        nothing (coordinator.audit.AuditedBook logs it)."""

    def log_reports(self, reports: Sequence[bytes]) -> None:
        """Log the enclaves' execution reports of a query (coordinator.audit.AuditedBook); a
        book without an audit log keeps nothing."""

    def log_intents(
        self, entries: Sequence[Entry], *, timeout: float
    ) -> tuple[bytes, list[tuple[int, list[bytes]]]]:
        """Log run intents under a checkpoint a quorum cosigned (coordinator.audit.AuditedBook).

        Raises:
            ExecutionError: always, here: approved queries run only with an audit log.
        """
        raise ExecutionError("approved queries need the audit log: their runs are logged first")

    def unfinished(self) -> list[QueryRecord]:
        """Every query still running or pending."""
        with self.lock:
            return [r for r in self._by_id.values() if not r.finished]

    def finish(self, record: QueryRecord, state: int, **changes: object) -> bool:
        """Move `record` to final `state` unless it already is final; return whether it moved."""
        with self.lock:
            if record.finished:
                return False
            record.state = state
            record.finished_at = self.clock()
            for name, value in changes.items():
                setattr(record, name, value)
        record.done.set()
        return True

    def _evict(self) -> None:
        # Oldest finished first: expired ones always go; younger ones only to make room.
        now = self.clock()
        finished = sorted(
            (r for r in self._by_id.values() if r.finished_at is not None),
            key=lambda r: r.finished_at or 0.0,
        )
        for record in finished:
            expired = now - (record.finished_at or now) > self.retention_seconds
            if not expired and len(self._by_id) < self.max_queries:
                break
            del self._by_id[record.query_id]
            del self._by_request[(record.requester, record.request_id)]
