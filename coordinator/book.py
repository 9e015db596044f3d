"""The coordinator's book of queries: lookup by id and by request id, and the retention rule.

Retention rule: a query that has finished (succeeded, failed, denied or cancelled) keeps its
status and result for `retention_seconds` after it finished, and the book holds at most
`max_queries` queries, evicting the oldest finished first; a query still running or pending is
never evicted, and when the book is full of them new submissions are refused with
RESOURCE_EXHAUSTED. After eviction GetResult answers NOT_FOUND and the same request id starts a
new query; the audit log, not this book, is the permanent record.

The book holds no rows and no partials: only released results, which the requester may see.
It does no I/O of its own: the clock is passed in, and a query waiting for approvals is handed to
the `PendingStore` given (coordinator/pending.py) so a restart keeps it. It counts decisions and
outcomes (dataisland/metrics.py) and logs every failure with its query id.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from google.protobuf.descriptor import EnumDescriptor

from dataisland import metrics
from dataisland.errors import (
    DataislandError,
    ExecutionError,
    NodeUnavailableError,
    NotFoundError,
    PermissionDeniedError,
    ResourceLimitError,
)
from dataisland.v1 import common_pb2, coordinator_pb2, enclave_pb2
from ledger.entries import Entry

if TYPE_CHECKING:
    from coordinator.pending import PendingStore

log = logging.getLogger("dataisland.coordinator.book")

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
        pending: PendingStore | None = None,
    ) -> None:
        self.pending_store = pending
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
                    "retry later (retention_max_queries)",
                    limit="retention_max_queries",
                    subject="the coordinator",
                    retry_after=1.0,
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
                    "requester may have (max_unfinished_per_requester); wait for one to finish",
                    limit="max_unfinished_per_requester",
                    subject=record.requester,
                    retry_after=1.0,
                )
            self._by_id[record.query_id] = record
            self._by_request[(record.requester, record.request_id)] = record.query_id
        if record.state == coordinator_pb2.QUERY_STATE_PENDING:
            self._keep(record, undo=True)
        metrics.QUERIES.labels(
            decision=_name(coordinator_pb2.Decision.DESCRIPTOR, record.decision)
        ).inc()
        return record

    def _keep(self, record: QueryRecord, *, undo: bool) -> None:
        """Hand a query waiting for approvals to the pending store, durably.

        Raises:
            NodeUnavailableError: it could not be kept (with `undo`, the query is dropped).
        """
        if self.pending_store is None:
            return
        try:
            self.pending_store.save(record)
        except OSError as exc:
            if undo:
                with self.lock:
                    self._by_id.pop(record.query_id, None)
                    self._by_request.pop((record.requester, record.request_id), None)
            raise NodeUnavailableError(
                f"the coordinator could not keep query {record.query_id} for its approvals: "
                f"{exc.strerror or exc}"
            ) from None

    def restore(self, record: QueryRecord) -> None:
        """Put back a query the pending store kept across a restart (not counted again)."""
        with self.lock:
            self._by_id[record.query_id] = record
            self._by_request[(record.requester, record.request_id)] = record.query_id

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
            if not record.waiting_for:
                record.state = coordinator_pb2.QUERY_STATE_RUNNING
        # Approvals are kept until the query ends, so a restart neither loses nor repeats them.
        self._keep(record, undo=False)
        return record.state == coordinator_pb2.QUERY_STATE_RUNNING

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
        self._observe(record)
        return True

    def _observe(self, record: QueryRecord) -> None:
        state = _name(coordinator_pb2.QueryState.DESCRIPTOR, record.state)
        code = record.error.code if record.error is not None and record.error.code else "OK"
        metrics.QUERY_OUTCOMES.labels(state=state, code=code).inc()
        metrics.QUERY_SECONDS.labels(state=state).observe(
            max(0.0, (record.finished_at or record.submitted_at) - record.submitted_at)
        )
        if record.state == coordinator_pb2.QUERY_STATE_FAILED and record.error is not None:
            log.warning(
                "query %s failed: %s %s",
                record.query_id,
                record.error.code,
                record.error.message,
                extra={"query_id": record.query_id, "code": record.error.code},
            )
        if self.pending_store is not None and (record.approvals or record.waiting_for):
            self.pending_store.remove(record.query_id)

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


def _name(enum: EnumDescriptor, value: int) -> str:
    """`DECISION_NEEDS_APPROVAL` -> `needs_approval`, `QUERY_STATE_FAILED` -> `failed`."""
    found = enum.values_by_number.get(value)
    name = found.name if found is not None else "UNSPECIFIED"
    for prefix in ("DECISION_", "QUERY_STATE_"):
        name = name.removeprefix(prefix)
    return name.lower()
