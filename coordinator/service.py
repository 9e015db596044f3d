"""The coordinator: early answers, routing, fan-out with deadlines, and the query lifecycle.

The coordinator is an untrusted host: it authenticates, checks the SQL for an early answer,
resolves logical tables to the departments holding shards, sends the requester's envelope (never
a plan) to each department enclave in parallel, hands the partials to the aggregator, and keeps
query state for Get/Wait/List/Cancel. It never opens a partial: it forwards payloads as bytes.

Callers are named by their verified TLS certificate only; a requester sees and cancels only its
own queries. Every owner's policy gives the early answer (coordinator/judge.py): a denied query
ends at once with its reasons, one that needs approval waits until an officer of every department
whose policy asks for it has approved with a signed approval, which the coordinator forwards and
each enclave verifies itself.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from typing import TypeVar

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.protobuf.timestamp_pb2 import Timestamp

from coordinator.attestation import Attestor, verify_result
from coordinator.audit import partial_ref
from coordinator.book import FINAL_STATES, QueryBook, QueryRecord
from coordinator.judge import Judge, reasons_to_proto, waiting_for
from coordinator.scheduler import FairScheduler
from dataisland.approvals import TemplateApproval, is_template_approval
from dataisland.canonical import QueryEnvelope, query_hash
from dataisland.catalog import Catalog
from dataisland.envelopes import APPROVAL_WINDOW, check_signed_envelope
from dataisland.errors import (
    DataislandError,
    ExecutionError,
    InvalidInputError,
    NodeUnavailableError,
    PermissionDeniedError,
    QueryCancelledError,
    QueryDeadlineError,
    RequestIdReusedError,
)
from dataisland.identity import Principal
from dataisland.limits import RateLimiter, check_sql_length
from dataisland.logs import bind_query
from dataisland.rpc import error_from_rpc, guarded
from dataisland.tls import Authenticator, require_role
from dataisland.v1 import (
    common_pb2,
    coordinator_pb2,
    coordinator_pb2_grpc,
    enclave_pb2,
    enclave_pb2_grpc,
)
from ledger.entries import RunIntentEntry
from ledger.errors import LedgerError
from policies.approvals import verify_approval, verify_template_approval
from policies.checker import Verdict
from policies.routing import required_departments
from policies.sqlfront import ParseCache
from policies.templates import logged_sql, parse_envelope_query

log = logging.getLogger("dataisland.coordinator")

_Response = TypeVar("_Response")
_CANCEL_CHECK = 0.05
"""Seconds between checks for a cancel request while an enclave call runs."""

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


def _issued_at(record: QueryRecord) -> dt.datetime:
    return QueryEnvelope.from_bytes(record.envelope.envelope).issued_at


_STATE_OF = {
    Verdict.ALLOW: coordinator_pb2.QUERY_STATE_RUNNING,
    Verdict.NEEDS_APPROVAL: coordinator_pb2.QUERY_STATE_PENDING,
    Verdict.DENY: coordinator_pb2.QUERY_STATE_DENIED,
}
_DECISION_OF = {
    Verdict.ALLOW: coordinator_pb2.DECISION_ALLOW,
    Verdict.NEEDS_APPROVAL: coordinator_pb2.DECISION_NEEDS_APPROVAL,
    Verdict.DENY: coordinator_pb2.DECISION_DENY,
}


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
        judge: Judge,
        enclaves: Mapping[str, enclave_pb2_grpc.EnclaveServiceStub],
        aggregator: enclave_pb2_grpc.AggregatorServiceStub,
        query_timeout: float,
        book: QueryBook,
        attestor: Attestor,
        clock: Callable[[], float] = time.time,
        workers: int = 8,
        max_running_per_requester: int | None = None,
        limiter: RateLimiter | None = None,
        max_sql_bytes: int = 16_384,
    ) -> None:
        self.attestor = attestor
        self.catalog = catalog
        self.parse = ParseCache(catalog)
        self.authenticator = authenticator
        self.judge = judge
        self._standing_lock = threading.Lock()
        self._standing: dict[
            tuple[str, str, str, str], tuple[common_pb2.Approval, TemplateApproval, int]
        ] = {}
        self.enclaves = dict(enclaves)
        self.aggregator = aggregator
        self.query_timeout = query_timeout
        self.book = book
        self.clock = clock
        self.limiter = limiter
        self.max_sql_bytes = max_sql_bytes
        # Fan-outs run fairly across requesters (coordinator/scheduler.py).
        self.scheduler = FairScheduler(
            workers=workers, per_key=max_running_per_requester or workers
        )

    def close(self) -> None:
        """Stop accepting work and cancel the running fan-outs."""
        for record in self.book.unfinished():
            record.cancel_requested.set()
        self.scheduler.close()

    def start(self, record: QueryRecord) -> None:
        """Queue `record`'s fan-out behind its requester's others (fairly, among requesters)."""
        self.scheduler.submit(record.requester, partial(self._run_logged, record))

    def _run_logged(self, record: QueryRecord) -> None:
        with bind_query(record.query_id):
            self._run(record)

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
        check_sql_length(envelope.sql, limit=self.max_sql_bytes)
        digest = envelope.digest()
        existing = self.book.find_request(requester, envelope.request_id)
        if existing is not None:
            return coordinator_pb2.SubmitQueryResponse(
                status=self._status(self._same(existing, digest))
            )
        try:
            parsed = parse_envelope_query(checked, self.parse)
        except DataislandError as exc:
            # Refused SQL is a decision too: logged (with an audit log) before it is answered.
            self.book.log_refusal(requester, request.envelope, exc)
            raise
        departments = required_departments(parsed.tables, self.catalog)
        decision = self.judge.decide(parsed, requester=principal, purpose=envelope.purpose)
        # A denied query is created running and finished at once, so waiters wake up.
        denied = decision.verdict is Verdict.DENY
        # SQL with parameters is recorded with its placeholders: the values stay with the enclaves.
        canonical_sql = logged_sql(checked, parsed)
        record = QueryRecord(
            query_id=str(uuid.uuid4()),
            requester=requester,
            request_id=envelope.request_id,
            envelope_digest=digest,
            envelope=_with_certificate(request.envelope, certificate),
            purpose=envelope.purpose,
            canonical_sql=canonical_sql,
            query_hash=query_hash(canonical_sql).hex(),
            departments=tuple(sorted(departments)),
            submitted_at=self.clock(),
            state=_STATE_OF[Verdict.ALLOW if denied else decision.verdict],
            decision=_DECISION_OF[decision.verdict],
            reasons=reasons_to_proto(decision.reasons),
            policy_hashes=dict(decision.policy_hashes),
            waiting_for=waiting_for(decision)
            if decision.verdict is Verdict.NEEDS_APPROVAL
            else set(),
            template_hashes=dict(decision.template.template_hashes) if decision.template else {},
        )
        stored = self.book.add(record)
        if stored is record:
            if denied:
                self.book.finish(
                    record,
                    coordinator_pb2.QUERY_STATE_DENIED,
                    error=common_pb2.ErrorDetail(
                        code="PERMISSION_DENIED",
                        message="; ".join(str(r) for r in decision.reasons if r.denies),
                    ),
                )
            elif decision.verdict is Verdict.ALLOW:
                self.start(record)
            else:
                self._apply_standing_approvals(record)
        return coordinator_pb2.SubmitQueryResponse(status=self._status(self._same(stored, digest)))

    def restore_standing_approvals(
        self,
        standing: Mapping[
            tuple[str, str, str, str], tuple[common_pb2.Approval, TemplateApproval, int]
        ],
    ) -> None:
        """Take back the template approvals the log holds (after a restart), with runs used."""
        with self._standing_lock:
            for key, value in standing.items():
                self._standing.setdefault(key, value)

    def _apply_standing_approvals(self, record: QueryRecord) -> None:
        """Attach officers' template approvals with runs left; run once none is missing.

        The coordinator's count only decides when to ask the officers again; each enclave
        counts the runs itself and refuses one too many.
        """
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        for department in sorted(record.waiting_for):
            key = (
                department,
                record.template_hashes.get(department, ""),
                record.requester,
                record.purpose,
            )
            with self._standing_lock:
                standing = self._standing.get(key)
                if standing is None:
                    continue
                message, approval, used = standing
                if now >= approval.expires_at or used >= approval.runs:
                    del self._standing[key]
                    continue
                self._standing[key] = (message, approval, used + 1)
            if self.book.approve(record, department, message):
                self.start(record)

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
        if self.limiter is not None:
            self.limiter.take(principal.spiffe_id)
        return principal, certificate

    # -- officers ------------------------------------------------------------------------------

    @guarded
    def ListPendingApprovals(
        self, request: coordinator_pb2.ListPendingApprovalsRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.ListPendingApprovalsResponse:
        officer = self._officer(context, "ListPendingApprovals")
        pending = [
            coordinator_pb2.PendingApproval(
                query_id=r.query_id,
                requester=r.requester,
                purpose=r.purpose,
                canonical_sql=r.canonical_sql,
                envelope_digest=r.envelope_digest.hex(),
                policy_hash=r.policy_hashes.get(officer.department, ""),
                reasons=r.reasons,
                submitted_at=_timestamp(r.submitted_at),
                approved_by=sorted(r.approvals),
                waiting_for=sorted(r.waiting_for),
                template_hash=r.template_hashes.get(officer.department, ""),
            )
            for r in self.book.pending()
            if officer.department in r.waiting_for or officer.department in r.approvals
        ]
        return coordinator_pb2.ListPendingApprovalsResponse(pending=pending)

    @guarded
    def ApproveQuery(
        self, request: coordinator_pb2.ApproveQueryRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.ApproveQueryResponse:
        officer = self._officer(context, "ApproveQuery")
        record = self.book.get_any(request.query_id)
        if is_template_approval(request.approval.approval):
            template = verify_template_approval(
                request.approval.approval,
                request.approval.signature,
                officers=self.judge.federation.officer_keys(officer.department),
                department=officer.department,
                template_hash=record.template_hashes.get(officer.department, ""),
                requester=record.requester,
                purpose=record.purpose,
                now=dt.datetime.fromtimestamp(self.clock(), dt.UTC),
            )
            if template.officer != officer.name:
                raise PermissionDeniedError(
                    f"{officer} may not present an approval signed by officer {template.officer}"
                )
            key = (officer.department, template.template_hash, record.requester, record.purpose)
            with self._standing_lock:
                # This query uses the first run; later ones of the same template attach it.
                self._standing[key] = (request.approval, template, 1)
            if self.book.approve(record, officer.department, request.approval):
                self.start(record)
            return coordinator_pb2.ApproveQueryResponse(status=self._status(record))
        approval = verify_approval(
            request.approval.approval,
            request.approval.signature,
            officers=self.judge.federation.officer_keys(officer.department),
            department=officer.department,
            envelope_digest=record.envelope_digest.hex(),
            requester=record.requester,
            purpose=record.purpose,
            policy_hash=record.policy_hashes.get(officer.department, ""),
            now=dt.datetime.fromtimestamp(self.clock(), dt.UTC),
            latest_expiry=_issued_at(record) + APPROVAL_WINDOW,
        )
        if approval.officer != officer.name:
            raise PermissionDeniedError(
                f"{officer} may not present an approval signed by officer {approval.officer}"
            )
        if self.book.approve(record, officer.department, request.approval):
            self.start(record)
        return coordinator_pb2.ApproveQueryResponse(status=self._status(record))

    @guarded
    def DenyQuery(
        self, request: coordinator_pb2.DenyQueryRequest, context: grpc.ServicerContext
    ) -> coordinator_pb2.DenyQueryResponse:
        officer = self._officer(context, "DenyQuery")
        record = self.book.get_any(request.query_id)
        if officer.department not in record.waiting_for | set(record.approvals):
            raise PermissionDeniedError(
                f"query {record.query_id} is not {officer.department}'s to deny"
            )
        reason = request.reason.strip() or "no reason given"
        self.book.finish(
            record,
            coordinator_pb2.QUERY_STATE_DENIED,
            decision=coordinator_pb2.DECISION_DENY,
            error=common_pb2.ErrorDetail(
                code="PERMISSION_DENIED", message=f"denied by {officer}: {reason}"
            ),
        )
        return coordinator_pb2.DenyQueryResponse(status=self._status(record))

    def _officer(self, context: grpc.ServicerContext, rpc: str) -> Principal:
        principal, _ = self.authenticator.caller(context)
        require_role(principal, {"officer"}, rpc=rpc)
        if self.limiter is not None:
            self.limiter.take(principal.spiffe_id)
        return principal

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
        # No query goes to a node that is not attested: the aggregator first (the departments
        # seal to its key), then every department whose partial it will check.
        aggregator = self.attestor.aggregator()
        evidence: dict[str, bytes] = {}
        for department in record.departments:
            if department not in self.enclaves:
                raise NodeUnavailableError(
                    f"department {department} has no enclave address configured"
                )
            evidence[department] = self.attestor.department(department).evidence
        intents = self._declare_runs(record, deadline) if record.approvals else {}
        calls: dict[str, grpc.Future[enclave_pb2.ExecutePartialResponse]] = {}
        for department in record.departments:
            request = enclave_pb2.ExecutePartialRequest(
                query_id=record.query_id,
                envelope=record.envelope,
                approvals=list(record.approvals.values()),
                aggregator_evidence=aggregator.evidence,
                intent=intents.get(department),
            )
            stub = self.enclaves[department]
            calls[department] = stub.ExecutePartial.future(request, timeout=self._left(deadline))
        answers = [
            self._collect(record, department, call, deadline) for department, call in calls.items()
        ]
        # Every execution is in the log before anything of its result can be released.
        self.book.log_reports([a.execution_report for a in answers])
        partials = [a.partial for a in answers]
        self._check_cancelled(record, calls.values())
        merge = enclave_pb2.MergePartialsRequest(
            query_id=record.query_id,
            envelope=record.envelope,
            partials=partials,
            department_evidence=evidence,
        )
        merging = self.aggregator.MergePartials.future(merge, timeout=self._left(deadline))
        try:
            response = self._await(record, merging, deadline=deadline, node="the aggregator")
        except grpc.RpcError as exc:
            # A restarted aggregator or department has new keys: attest everyone afresh.
            for node in [aggregator.node, *record.departments]:
                self.attestor.forget(node)
            raise error_from_rpc(exc, node="the aggregator") from None
        verify_result(response, aggregator=aggregator, query_id=record.query_id)
        record.aggregator_evidence = aggregator.evidence
        record.partial_refs = tuple(partial_ref(p) for p in partials)
        return response

    def _declare_runs(
        self, record: QueryRecord, deadline: float
    ) -> dict[str, enclave_pb2.LoggedIntent]:
        """For an approved query: each approving department's enclave declares the run, the
        intents are logged under a quorum checkpoint, and each enclave gets its own back with
        the proof (it releases nothing before)."""
        request = enclave_pb2.DeclareRunRequest(
            query_id=record.query_id,
            envelope=record.envelope,
            approvals=list(record.approvals.values()),
        )
        departments = [d for d in record.departments if d in record.approvals]
        calls = {
            d: self.enclaves[d].DeclareRun.future(request, timeout=self._left(deadline))
            for d in departments
        }
        declared = {d: self._collect(record, d, call, deadline).intent for d, call in calls.items()}
        try:
            entries = [RunIntentEntry.from_bytes(declared[d]) for d in departments]
        except LedgerError:
            raise ExecutionError("a department enclave declared a malformed run intent") from None
        note, proofs = self.book.log_intents(entries, timeout=self._left(deadline))
        return {
            d: enclave_pb2.LoggedIntent(
                entry=declared[d], index=index, inclusion_proof=proof, checkpoint=note
            )
            for d, (index, proof) in zip(departments, proofs, strict=True)
        }

    def _collect(
        self, record: QueryRecord, department: str, call: grpc.Future[_Response], deadline: float
    ) -> _Response:
        """A department enclave's answer; a failed call makes it be attested afresh.

        Raises:
            DataislandError: the call failed (the error names the department).
        """
        try:
            return self._await(record, call, deadline=deadline, node=f"department {department}")
        except grpc.RpcError as exc:
            self.attestor.forget(department)
            raise error_from_rpc(exc, node=f"department {department}") from None

    def _await(
        self, record: QueryRecord, call: grpc.Future[_Response], *, deadline: float, node: str
    ) -> _Response:
        """The call's response the moment it arrives (no polling delay); a cancel request is
        noticed within `_CANCEL_CHECK` seconds, and a node silent past the deadline is named.

        Raises:
            grpc.RpcError: the call failed.
        """
        while True:
            self._check_cancelled(record, [call])
            try:
                return call.result(timeout=_CANCEL_CHECK)
            except grpc.FutureTimeoutError:
                if self.clock() > deadline + 1:
                    call.cancel()
                    raise QueryDeadlineError(f"{node} did not answer within the deadline") from None

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
            log_index=record.log_index,
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
            result_commitment=result.result_commitment,
            result_salt=result.result_salt,
            result_signature=result.result_signature,
            aggregator_evidence=record.aggregator_evidence,
        )
