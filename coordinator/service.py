"""The coordinator: early answers, routing, fan-out with deadlines, and the query lifecycle.

The coordinator is an untrusted host: it authenticates, checks the SQL for an early answer,
resolves logical tables to the departments holding shards, sends the requester's envelope (never
a plan) to each department enclave in parallel, hands the partials to the aggregator, and keeps
query state for Get/Wait/List/Cancel. It never opens a partial: it forwards payloads as bytes.

Callers are named by their verified TLS certificate only; a requester sees and cancels only its
own queries. This module does not yet run approvals (Policies) or append to the audit log (the
audit log issue): `log_index` stays unset.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.protobuf.timestamp_pb2 import Timestamp

from coordinator.book import FINAL_STATES, QueryBook, QueryRecord
from dataisland.canonical import query_hash
from dataisland.catalog import Catalog
from dataisland.envelopes import check_signed_envelope
from dataisland.errors import (
    DataislandError,
    InvalidInputError,
    NodeUnavailableError,
    QueryCancelledError,
    QueryDeadlineError,
    RequestIdReusedError,
)
from dataisland.identity import Principal
from dataisland.rpc import error_from_rpc, guarded
from dataisland.tls import Authenticator, require_role
from dataisland.v1 import (
    common_pb2,
    coordinator_pb2,
    coordinator_pb2_grpc,
    enclave_pb2,
    enclave_pb2_grpc,
)
from policies.routing import required_departments
from policies.sqlfront import parse_query

log = logging.getLogger("dataisland.coordinator")

DEFAULT_PAGE_SIZE = 1_000
MAX_PAGE_SIZE = 10_000
DEFAULT_WAIT_SECONDS = 30.0
MAX_WAIT_SECONDS = 300.0
REQUESTER_ROLES = frozenset({"requester"})


def _with_certificate(
    signed: common_pb2.SignedEnvelope, certificate: x509.Certificate
) -> common_pb2.SignedEnvelope:
    """The envelope as enclaves receive it: with the requester's certificate attached."""
    forwarded = common_pb2.SignedEnvelope()
    forwarded.CopyFrom(signed)
    forwarded.requester_certificate = certificate.public_bytes(serialization.Encoding.DER)
    return forwarded


def _timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _page_bounds(page_size: int, page_token: str, total: int) -> tuple[int, int]:
    if page_size > MAX_PAGE_SIZE:
        raise InvalidInputError(f"page_size {page_size} is above the maximum {MAX_PAGE_SIZE}")
    size = page_size or DEFAULT_PAGE_SIZE
    if page_token == "":
        start = 0
    elif page_token.isdigit() and len(page_token) <= 12:
        start = int(page_token)
    else:
        raise InvalidInputError("page_token is not one this server issued")
    if start > total:
        raise InvalidInputError("page_token is past the end of the result")
    return start, min(start + size, total)


class Coordinator(coordinator_pb2_grpc.CoordinatorServiceServicer):
    """The CoordinatorService servicer and the engine that runs each query's fan-out."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        authenticator: Authenticator,
        enclaves: Mapping[str, enclave_pb2_grpc.EnclaveServiceStub],
        aggregator: enclave_pb2_grpc.AggregatorServiceStub,
        query_timeout: float,
        book: QueryBook,
        clock: Callable[[], float] = time.time,
        workers: int = 8,
    ) -> None:
        self.catalog = catalog
        self.authenticator = authenticator
        self.enclaves = dict(enclaves)
        self.aggregator = aggregator
        self.query_timeout = query_timeout
        self.book = book
        self.clock = clock
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="query")

    def close(self) -> None:
        """Stop accepting work and cancel the running fan-outs."""
        for record in self.book.unfinished():
            record.cancel_requested.set()
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- requester API ------------------------------------------------------------------------

    @guarded
    def SubmitQuery(
        self, request: coordinator_pb2.SubmitQueryRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.SubmitQueryResponse:
        principal, certificate = self._requester(context, "SubmitQuery")
        requester = principal.spiffe_id
        checked = check_signed_envelope(
            request.envelope,
            signer=certificate,
            now=dt.datetime.fromtimestamp(self.clock(), dt.UTC),
        )
        envelope = checked.envelope
        digest = envelope.digest()
        existing = self.book.find_request(requester, envelope.request_id)
        if existing is not None:
            return coordinator_pb2.SubmitQueryResponse(
                status=self._status(self._same(existing, digest))
            )
        parsed = parse_query(envelope.sql, catalog=self.catalog)
        departments = required_departments(parsed.tables, self.catalog)
        record = QueryRecord(
            query_id=str(uuid.uuid4()),
            requester=requester,
            request_id=envelope.request_id,
            envelope_digest=digest,
            envelope=_with_certificate(request.envelope, certificate),
            purpose=envelope.purpose,
            canonical_sql=parsed.canonical_sql,
            query_hash=query_hash(parsed.canonical_sql).hex(),
            departments=tuple(sorted(departments)),
            submitted_at=self.clock(),
        )
        stored = self.book.add(record)
        if stored is record:
            self.pool.submit(self._run, record)
        return coordinator_pb2.SubmitQueryResponse(status=self._status(self._same(stored, digest)))

    @guarded
    def GetResult(
        self, request: coordinator_pb2.GetResultRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.GetResultResponse:
        record = self.book.get(self._requester(context, "GetResult")[0].spiffe_id, request.query_id)
        status, page = (
            self._status(record),
            self._page(record, request.page_size, request.page_token),
        )
        return coordinator_pb2.GetResultResponse(status=status, page=page)

    @guarded
    def WaitResult(
        self, request: coordinator_pb2.WaitResultRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.WaitResultResponse:
        record = self.book.get(
            self._requester(context, "WaitResult")[0].spiffe_id, request.query_id
        )
        wait = request.timeout_ms / 1000 if request.timeout_ms else DEFAULT_WAIT_SECONDS
        wait = min(wait, MAX_WAIT_SECONDS)
        remaining = context.time_remaining()
        if remaining is not None:
            # Answer with the current state just before the caller's own deadline.
            wait = max(0.0, min(wait, remaining - 0.05))
        record.done.wait(wait)
        status, page = self._status(record), self._page(record, request.page_size, "")
        return coordinator_pb2.WaitResultResponse(status=status, page=page)

    @guarded
    def ListQueries(
        self, request: coordinator_pb2.ListQueriesRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.ListQueriesResponse:
        records = self.book.of_requester(self._requester(context, "ListQueries")[0].spiffe_id)
        start, end = _page_bounds(request.page_size, request.page_token, len(records))
        return coordinator_pb2.ListQueriesResponse(
            queries=[self._status(r) for r in records[start:end]],
            next_page_token=str(end) if end < len(records) else "",
        )

    @guarded
    def CancelQuery(
        self, request: coordinator_pb2.CancelQueryRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.CancelQueryResponse:
        record = self.book.get(
            self._requester(context, "CancelQuery")[0].spiffe_id, request.query_id
        )
        record.cancel_requested.set()
        self.book.finish(
            record,
            coordinator_pb2.QUERY_STATE_CANCELLED,
            error=common_pb2.ErrorDetail(code="CANCELLED", message="cancelled by the requester"),
        )
        return coordinator_pb2.CancelQueryResponse(status=self._status(record))

    def _requester(
        self, context: grpc.ServicerContext, rpc: str
    ) -> tuple[Principal, x509.Certificate]:
        principal, certificate = self.authenticator.caller(context)
        require_role(principal, REQUESTER_ROLES, rpc=rpc)
        return principal, certificate

    # -- the fan-out ----------------------------------------------------------------------------

    def _run(self, record: QueryRecord) -> None:
        try:
            result = self._execute(record)
        except DataislandError as exc:
            self.book.finish(
                record,
                coordinator_pb2.QUERY_STATE_FAILED,
                error=common_pb2.ErrorDetail(code=exc.code, message=str(exc)),
            )
            return
        except Exception:
            log.exception("query %s failed unexpectedly", record.query_id)
            self.book.finish(
                record,
                coordinator_pb2.QUERY_STATE_FAILED,
                error=common_pb2.ErrorDetail(
                    code="INTERNAL", message="internal error in the coordinator"
                ),
            )
            return
        self.book.finish(record, coordinator_pb2.QUERY_STATE_SUCCEEDED, result=result)

    def _execute(self, record: QueryRecord) -> enclave_pb2.MergePartialsResponse:
        deadline = record.submitted_at + self.query_timeout
        request = enclave_pb2.ExecutePartialRequest(
            query_id=record.query_id, envelope=record.envelope
        )
        calls: dict[str, grpc.Future[enclave_pb2.ExecutePartialResponse]] = {}
        for department in record.departments:
            stub = self.enclaves.get(department)
            if stub is None:
                raise NodeUnavailableError(
                    f"department {department} has no enclave address configured"
                )
            calls[department] = stub.ExecutePartial.future(request, timeout=self._left(deadline))
        partials = [
            self._collect(record, department, call, deadline) for department, call in calls.items()
        ]
        self._check_cancelled(record, calls.values())
        merge = enclave_pb2.MergePartialsRequest(
            query_id=record.query_id, envelope=record.envelope, partials=partials
        )
        merging = self.aggregator.MergePartials.future(merge, timeout=self._left(deadline))
        try:
            while not merging.done():
                self._check_cancelled(record, [merging])
                time.sleep(0.01)
            response: enclave_pb2.MergePartialsResponse = merging.result()
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, node="the aggregator") from None
        return response

    def _collect(
        self,
        record: QueryRecord,
        department: str,
        call: grpc.Future[enclave_pb2.ExecutePartialResponse],
        deadline: float,
    ) -> enclave_pb2.Partial:
        try:
            while not call.done():
                self._check_cancelled(record, [call])
                if self.clock() > deadline + 1:
                    raise QueryDeadlineError(
                        f"department {department} did not answer within the deadline"
                    )
                time.sleep(0.005)
            response: enclave_pb2.ExecutePartialResponse = call.result()
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, node=f"department {department}") from None
        return response.partial

    def _left(self, deadline: float) -> float:
        left = deadline - self.clock()
        if left <= 0:
            raise QueryDeadlineError(
                f"the query ran past its deadline of {self.query_timeout:.0f}s"
            )
        return left

    @staticmethod
    def _check_cancelled(record: QueryRecord, calls: object) -> None:
        if record.cancel_requested.is_set():
            for call in calls:  # type: ignore[attr-defined]
                call.cancel()
            raise QueryCancelledError("cancelled by the requester")

    # -- conversions ----------------------------------------------------------------------------

    @staticmethod
    def _same(record: QueryRecord, digest: bytes) -> QueryRecord:
        if record.envelope_digest != digest:
            raise RequestIdReusedError(
                f"request id {record.request_id!r} was already used for a different envelope"
            )
        return record

    def _status(self, record: QueryRecord) -> coordinator_pb2.QueryStatus:
        result = record.result
        return coordinator_pb2.QueryStatus(
            query_id=record.query_id,
            request_id=record.request_id,
            state=record.state,  # type: ignore[arg-type]
            decision=record.decision,  # type: ignore[arg-type]
            reasons=record.reasons,
            purpose=record.purpose,
            canonical_sql=record.canonical_sql,
            query_hash=record.query_hash,
            submitted_at=_timestamp(record.submitted_at),
            finished_at=_timestamp(record.finished_at),
            error=record.error,
            row_count=len(result.rows) if result is not None else 0,
            suppressed=result.suppressed if result is not None else False,
        )

    def _page(
        self, record: QueryRecord, page_size: int, page_token: str
    ) -> coordinator_pb2.ResultPage | None:
        result = record.result
        if record.state not in FINAL_STATES or result is None:
            return None
        start, end = _page_bounds(page_size, page_token, len(result.rows))
        return coordinator_pb2.ResultPage(
            columns=result.columns,
            rows=result.rows[start:end],
            offset=start,
            next_page_token=str(end) if end < len(result.rows) else "",
            result_digest=result.result_digest,
        )
