"""The Python client a department service uses to ask the federation a question.

    from dataisland.client import Client
    with Client.from_federation("fed/", identity="qingpu/requester/analyst") as client:
        print(client.query("SELECT count(*) AS n FROM claims", purpose="monthly report").rows)

A deployed service names its own files instead: `Client(address, certificate=..., key=...,
server_ca=..., server_name=...)`. Every call is mutual TLS with the requester's certificate.
`query` builds the envelope (raw SQL, a salted commitment to the typed parameters, purpose,
request id, time), signs it with the certificate's key, submits it, waits, reassembles every
page and checks the reassembled result against the digest the aggregator computed and, with
the federation's pinned vendor root and reference values (`from_federation` reads them; pass
`anchors=` otherwise), that an attested aggregator signed exactly that result. Failures raise
`QueryFailedError` with the gRPC status name and the server's message.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataisland.approvals import Approval, TemplateApproval
from dataisland.attestation import TrustAnchors, verify_released
from dataisland.canonical import (
    CanonicalResult,
    QueryEnvelope,
    ResultColumn,
    TypedParam,
    new_salt,
    params_commitment,
)
from dataisland.envelopes import sign
from dataisland.errors import ConfigError, DataislandError
from dataisland.federation import load_federation
from dataisland.identity import credential_paths, load_certificate, load_private_key, principal_of
from dataisland.rpc import error_details, error_from_rpc
from dataisland.tls import KeyPair, secure_channel
from dataisland.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc

FINAL = frozenset(
    {
        coordinator_pb2.QUERY_STATE_SUCCEEDED,
        coordinator_pb2.QUERY_STATE_FAILED,
        coordinator_pb2.QUERY_STATE_DENIED,
        coordinator_pb2.QUERY_STATE_CANCELLED,
    }
)


class QueryFailedError(DataislandError):
    """The query was refused, failed, was denied or cancelled; `code` is the gRPC status name.

    Attributes:
        reason: the server's google.rpc.ErrorInfo reason (e.g. ``MALFORMED_QUERY``), when the
            call itself was refused; empty for a query that failed after it was accepted.
        retry_after: seconds the server asked to wait (google.rpc.RetryInfo), if it did.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        reasons: Sequence[common_pb2.Reason] = (),
        reason: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reasons = list(reasons)
        self.reason = reason
        self.retry_after = retry_after


@dataclass(frozen=True)
class QueryResult:
    """A released result: typed columns and canonical cell strings (None for NULL)."""

    columns: list[tuple[str, str]]
    rows: list[tuple[str | None, ...]]
    status: coordinator_pb2.QueryStatus
    digest: str

    def as_json(self) -> dict[str, object]:
        """`{"columns": [...], "rows": [[...]], ...}` for machines."""
        return {
            "columns": [{"name": n, "type": t} for n, t in self.columns],
            "rows": [list(r) for r in self.rows],
            "query_id": self.status.query_id,
            "request_id": self.status.request_id,
            "canonical_sql": self.status.canonical_sql,
            "query_hash": self.status.query_hash,
            "result_digest": self.digest,
            "suppressed": self.status.suppressed,
        }


class Client:
    """A requester's connection to the coordinator."""

    def __init__(
        self,
        address: str,
        *,
        certificate: Path,
        key: Path,
        server_ca: Path,
        server_name: str,
        timeout: float = 60.0,
        anchors: TrustAnchors | None = None,
        committee: str = "committee",
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.anchors = anchors
        self.committee = committee
        own = KeyPair.load(certificate, key)
        self._key = load_private_key(own.key_pem)
        mine = load_certificate(own.certificate_pem)
        self.principal = principal_of(mine)
        now = dt.datetime.now(dt.UTC)
        if not mine.not_valid_before_utc <= now <= mine.not_valid_after_utc:
            # The server would only drop the TLS handshake; say why here instead.
            raise QueryFailedError(
                "UNAUTHENTICATED",
                f"your certificate {certificate} is valid from {mine.not_valid_before_utc} "
                f"until {mine.not_valid_after_utc}, not now; ask your department's CA for a "
                "new one",
            )
        ca = server_ca.read_bytes()
        self._channel = secure_channel(address, own=own, server_ca_pem=ca, server_name=server_name)
        self._stub = coordinator_pb2_grpc.CoordinatorServiceStub(self._channel)

    @classmethod
    def from_federation(
        cls, directory: Path | str, *, identity: str, timeout: float = 60.0
    ) -> Client:
        """A client for a local federation directory, as `DEPARTMENT/ROLE/NAME` from its identity/.

        Raises:
            ConfigError: the federation file is unusable or the identity does not exist.
        """
        directory = Path(directory)
        federation = load_federation(directory / "federation.yaml")
        parts = identity.split("/")
        if len(parts) != 3:
            raise ConfigError(f"identity {identity!r} is not DEPARTMENT/ROLE/NAME")
        department, role, name = parts
        certificate, key = credential_paths(directory, department=department, role=role, name=name)
        if not certificate.is_file():
            raise ConfigError(f"no identity {identity} in {directory} (looked for {certificate})")
        committee = federation.committee.name
        return cls(
            federation.committee.coordinator,
            certificate=certificate,
            key=key,
            server_ca=federation.committee.ca,
            server_name=federation.dns_name("coordinator", committee),
            timeout=timeout,
            anchors=(TrustAnchors.from_federation(federation) if federation.attestation else None),
            committee=committee,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def submit(
        self,
        sql: str,
        *,
        purpose: str,
        request_id: str | None = None,
        params: Sequence[TypedParam] = (),
    ) -> coordinator_pb2.QueryStatus:
        """Submit a query and return at once with its status (idempotent on `request_id`)."""
        salt = new_salt()
        envelope = QueryEnvelope(
            sql=sql,
            params_commitment=params_commitment(list(params), salt=salt),
            purpose=purpose,
            request_id=request_id or uuid.uuid4().hex,
            issued_at=dt.datetime.now(dt.UTC),
        )
        signed = sign(envelope, key=self._key, params=params, salt=salt)
        response = self._call("SubmitQuery", coordinator_pb2.SubmitQueryRequest(envelope=signed))
        status: coordinator_pb2.QueryStatus = response.status
        return status

    def wait(self, query_id: str, *, timeout: float | None = None) -> coordinator_pb2.QueryStatus:
        """Wait until the query reaches a final state (or `timeout` passes); return its status."""
        end = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            left = end - time.monotonic()
            request = coordinator_pb2.WaitResultRequest(
                query_id=query_id, timeout_ms=max(1, int(min(left, 30.0) * 1000)), page_size=1
            )
            status: coordinator_pb2.QueryStatus = self._call("WaitResult", request).status
            if status.state in FINAL or time.monotonic() >= end:
                return status

    def result(self, query_id: str, *, page_size: int = 1_000) -> QueryResult:
        """Fetch every page of a succeeded query and check it against the released digest.

        Raises:
            QueryFailedError: the query did not succeed, or the pages do not match the digest.
        """
        token = ""
        rows: list[tuple[str | None, ...]] = []
        while True:
            response = self._call(
                "GetResult",
                coordinator_pb2.GetResultRequest(
                    query_id=query_id, page_size=page_size, page_token=token
                ),
            )
            status: coordinator_pb2.QueryStatus = response.status
            _raise_unless_succeeded(status)
            page: coordinator_pb2.ResultPage = response.page
            rows.extend(
                tuple(v.text if v.HasField("text") else None for v in r.values) for r in page.rows
            )
            token = page.next_page_token
            if not token:
                break
        columns = [(c.name, c.type) for c in page.columns]
        recomputed = _digest(columns, rows)
        if recomputed != page.result_digest:
            raise QueryFailedError("DATA_LOSS", "the reassembled result does not match its digest")
        if self.anchors is not None:
            self._verify_released(query_id, status, page, recomputed)
        return QueryResult(columns=columns, rows=rows, status=status, digest=page.result_digest)

    def _verify_released(
        self,
        query_id: str,
        status: coordinator_pb2.QueryStatus,
        page: coordinator_pb2.ResultPage,
        digest: str,
    ) -> None:
        """Check, with the federation's pinned vendor root and reference values, that an
        attested aggregator signed this very result: the coordinator cannot alter it unseen.

        Raises:
            QueryFailedError: the evidence or the signature does not verify (PERMISSION_DENIED).
        """
        assert self.anchors is not None
        released_at = status.finished_at.ToDatetime(tzinfo=dt.UTC)
        try:
            aggregator = self.anchors.verify(
                page.aggregator_evidence, node=self.committee, role="aggregator", now=released_at
            )
            verify_released(
                aggregator=aggregator,
                query_id=query_id,
                query_hash=status.query_hash,
                result_digest=digest,
                suppressed=status.suppressed,
                salt=page.result_salt,
                commitment=page.result_commitment,
                signature=page.result_signature,
            )
        except DataislandError as exc:
            raise QueryFailedError(
                "PERMISSION_DENIED",
                f"the result is not the one an attested aggregator signed: {exc}",
            ) from None

    def query(
        self,
        sql: str,
        *,
        purpose: str,
        params: Sequence[TypedParam] = (),
        timeout: float | None = None,
    ) -> QueryResult:
        """Submit, wait and fetch the whole result.

        Raises:
            QueryFailedError: refused, failed, denied, cancelled, or not finished within `timeout`.
        """
        status = self.submit(sql, purpose=purpose, params=params)
        status = self.wait(status.query_id, timeout=timeout)
        if status.state not in FINAL:
            raise QueryFailedError(
                "DEADLINE_EXCEEDED", f"query {status.query_id} did not finish in time"
            )
        return self.result(status.query_id)

    def list_queries(self) -> list[coordinator_pb2.QueryStatus]:
        """This requester's retained queries, newest first."""
        out: list[coordinator_pb2.QueryStatus] = []
        token = ""
        while True:
            response = self._call(
                "ListQueries", coordinator_pb2.ListQueriesRequest(page_token=token)
            )
            out.extend(response.queries)
            token = response.next_page_token
            if not token:
                return out

    def cancel(self, query_id: str) -> coordinator_pb2.QueryStatus:
        """Cancel a query that has not finished."""
        response = self._call("CancelQuery", coordinator_pb2.CancelQueryRequest(query_id=query_id))
        status: coordinator_pb2.QueryStatus = response.status
        return status

    # -- officers ------------------------------------------------------------------------------

    def pending_approvals(self) -> list[coordinator_pb2.PendingApproval]:
        """Queries waiting for this officer's department (the caller must be an officer)."""
        response = self._call("ListPendingApprovals", coordinator_pb2.ListPendingApprovalsRequest())
        return list(response.pending)

    def approve(
        self,
        pending: coordinator_pb2.PendingApproval,
        *,
        signing_key: Ed25519PrivateKey,
        valid_for: dt.timedelta = dt.timedelta(hours=1),
        runs: int | None = None,
    ) -> coordinator_pb2.QueryStatus:
        """Sign and send this officer's approval of one pending query.

        Without `runs`, the approval binds the query's envelope, requester, purpose and the
        policy it was judged by: one approval, one run. With `runs` (template queries only), it
        binds the template, requester and purpose for that many runs, with any parameters,
        until it expires. `signing_key` is the officer key the department pins.

        Raises:
            QueryFailedError: `runs` for a query that is not a template's, or the coordinator
                refused the approval.
        """
        expires_at = dt.datetime.now(dt.UTC) + valid_for
        if runs is not None:
            if not pending.template_hash:
                raise QueryFailedError(
                    "INVALID_ARGUMENT", f"query {pending.query_id} is not a template's: no runs"
                )
            template = TemplateApproval(
                department=self.principal.department,
                officer=self.principal.name,
                approval_id=uuid.uuid4().hex,
                template_hash=pending.template_hash,
                requester=pending.requester,
                purpose=pending.purpose,
                runs=runs,
                expires_at=expires_at,
            )
            signed = common_pb2.Approval(
                approval=template.to_bytes(), signature=template.sign(signing_key)
            )
            request = coordinator_pb2.ApproveQueryRequest(
                query_id=pending.query_id, approval=signed
            )
            status: coordinator_pb2.QueryStatus = self._call("ApproveQuery", request).status
            return status
        approval = Approval(
            department=self.principal.department,
            officer=self.principal.name,
            query_id=pending.query_id,
            envelope_digest=pending.envelope_digest,
            requester=pending.requester,
            purpose=pending.purpose,
            policy_hash=pending.policy_hash,
            expires_at=expires_at,
        )
        request = coordinator_pb2.ApproveQueryRequest(
            query_id=pending.query_id,
            approval=common_pb2.Approval(
                approval=approval.to_bytes(), signature=approval.sign(signing_key)
            ),
        )
        answer: coordinator_pb2.QueryStatus = self._call("ApproveQuery", request).status
        return answer

    def deny(self, query_id: str, *, reason: str) -> coordinator_pb2.QueryStatus:
        """Deny a pending query for this officer's department."""
        request = coordinator_pb2.DenyQueryRequest(query_id=query_id, reason=reason)
        status: coordinator_pb2.QueryStatus = self._call("DenyQuery", request).status
        return status

    def _call(self, method: str, request: object) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout + 5)
        except grpc.RpcError as exc:
            error = error_from_rpc(exc, node=f"the coordinator at {self.address}")
            reached = error.code not in {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
            # The coordinator answered: its message stands on its own.
            message = (exc.details() if isinstance(exc, grpc.Call) else None) if reached else None
            reason, retry_after = "", None
            for detail in error_details(exc):
                if hasattr(detail, "reason"):
                    reason = str(detail.reason)
                if hasattr(detail, "retry_delay"):
                    retry_after = detail.retry_delay.ToNanoseconds() / 1e9
            raise QueryFailedError(
                error.code, message or str(error), reason=reason, retry_after=retry_after
            ) from None


def _raise_unless_succeeded(status: coordinator_pb2.QueryStatus) -> None:
    if status.state == coordinator_pb2.QUERY_STATE_SUCCEEDED:
        return
    if status.state == coordinator_pb2.QUERY_STATE_DENIED:
        raise QueryFailedError(
            "PERMISSION_DENIED",
            status.error.message or "; ".join(r.message for r in status.reasons),
            reasons=status.reasons,
        )
    if status.state == coordinator_pb2.QUERY_STATE_CANCELLED:
        raise QueryFailedError("CANCELLED", "the query was cancelled")
    if status.state == coordinator_pb2.QUERY_STATE_FAILED:
        raise QueryFailedError(status.error.code or "UNKNOWN", status.error.message)
    raise QueryFailedError("FAILED_PRECONDITION", f"query {status.query_id} has not finished")


def _digest(columns: list[tuple[str, str]], rows: list[tuple[str | None, ...]]) -> str:
    result = CanonicalResult(
        columns=tuple(
            ResultColumn(name=name, type=type_name, values=tuple(row[i] for row in rows))
            for i, (name, type_name) in enumerate(columns)
        )
    )
    return result.digest().hex()
