"""The AuditService servicer: authenticate, check the role, convert, delegate to `AuditLog`.

Auditors of any department read entries, checkpoints and proofs; a requester fetches receipts of
its own queries only (another requester's query is indistinguishable from an unknown one). The
servicer holds no state of its own.
"""

from __future__ import annotations

import grpc

from coordinator.audit import AuditLog
from dataisland.errors import InvalidInputError
from dataisland.identity import Principal
from dataisland.limits import RateLimiter
from dataisland.rpc import guarded
from dataisland.tls import Authenticator, require_role
from dataisland.v1 import audit_pb2, audit_pb2_grpc
from ledger.checkpoint import Checkpoint
from ledger.errors import LedgerError
from ledger.note import Note

AUDITOR_ROLES = frozenset({"auditor"})
REQUESTER_ROLES = frozenset({"requester"})
MAX_ENTRIES = 1_000
MAX_ENTRIES_BYTES = 4 << 20
DEFAULT_CHECKPOINT_PAGE = 1_000
DEFAULT_RECEIPT_WAIT = 5.0
MAX_RECEIPT_WAIT = 10.0


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """AuditService over the coordinator's log."""

    def __init__(
        self,
        *,
        audit: AuditLog,
        authenticator: Authenticator,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.audit = audit
        self.authenticator = authenticator
        self.limiter = limiter

    def _caller(self, context: grpc.ServicerContext, roles: frozenset[str], rpc: str) -> Principal:
        principal, _ = self.authenticator.caller(context)
        require_role(principal, roles, rpc=rpc)
        if self.limiter is not None:
            self.limiter.take(principal.spiffe_id)
        return principal

    @guarded
    def GetEntries(
        self, request: audit_pb2.GetEntriesRequest, context: grpc.ServicerContext
    ) -> audit_pb2.GetEntriesResponse:
        self._caller(context, AUDITOR_ROLES, "GetEntries")
        size = self.audit.storage.size
        end = size if request.end == 0 else min(request.end, size)
        if request.start > end:
            raise InvalidInputError(f"start {request.start} is beyond end {end} (size {size})")
        entries: list[audit_pb2.LogEntry] = []
        total = 0
        for index in range(request.start, min(end, request.start + MAX_ENTRIES)):
            data = self.audit.storage.entry(index)
            total += len(data)
            if entries and total > MAX_ENTRIES_BYTES:
                break
            entries.append(audit_pb2.LogEntry(index=index, data=data))
        return audit_pb2.GetEntriesResponse(entries=entries, size=size)

    @guarded
    def GetCheckpoint(
        self, request: audit_pb2.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> audit_pb2.GetCheckpointResponse:
        self._caller(context, AUDITOR_ROLES, "GetCheckpoint")
        note = self.audit.latest_checkpoint()
        if note is None:
            return audit_pb2.GetCheckpointResponse()
        size = Checkpoint.from_text(Note.from_bytes(note).text).size
        return audit_pb2.GetCheckpointResponse(checkpoint=note, size=size)

    @guarded
    def ListCheckpoints(
        self, request: audit_pb2.ListCheckpointsRequest, context: grpc.ServicerContext
    ) -> audit_pb2.ListCheckpointsResponse:
        self._caller(context, AUDITOR_ROLES, "ListCheckpoints")
        history = self.audit.storage.checkpoints()
        if request.page_token and not (
            request.page_token.isdigit() and int(request.page_token) <= len(history)
        ):
            raise InvalidInputError("page_token is not one this server issued")
        start = int(request.page_token or "0")
        end = min(len(history), start + (request.page_size or DEFAULT_CHECKPOINT_PAGE))
        return audit_pb2.ListCheckpointsResponse(
            checkpoints=history[start:end],
            next_page_token=str(end) if end < len(history) else "",
        )

    @guarded
    def GetInclusionProof(
        self, request: audit_pb2.GetInclusionProofRequest, context: grpc.ServicerContext
    ) -> audit_pb2.GetInclusionProofResponse:
        self._caller(context, AUDITOR_ROLES, "GetInclusionProof")
        try:
            proof = self.audit.storage.inclusion_proof(request.index, request.size)
        except LedgerError as exc:
            raise InvalidInputError(str(exc)) from None
        return audit_pb2.GetInclusionProofResponse(proof=proof)

    @guarded
    def GetConsistencyProof(
        self, request: audit_pb2.GetConsistencyProofRequest, context: grpc.ServicerContext
    ) -> audit_pb2.GetConsistencyProofResponse:
        self._caller(context, AUDITOR_ROLES, "GetConsistencyProof")
        try:
            proof = self.audit.storage.consistency_proof(request.first, request.second)
        except LedgerError as exc:
            raise InvalidInputError(str(exc)) from None
        return audit_pb2.GetConsistencyProofResponse(proof=proof)

    @guarded
    def GetReceipt(
        self, request: audit_pb2.GetReceiptRequest, context: grpc.ServicerContext
    ) -> audit_pb2.GetReceiptResponse:
        principal = self._caller(context, REQUESTER_ROLES, "GetReceipt")
        wait = request.timeout_ms / 1000 if request.timeout_ms else DEFAULT_RECEIPT_WAIT
        receipt = self.audit.receipt(
            request.query_id,
            requester=principal.spiffe_id,
            timeout=min(wait, MAX_RECEIPT_WAIT),
        )
        opening = receipt.opening
        return audit_pb2.GetReceiptResponse(
            query_id=receipt.query_id,
            checkpoint=receipt.checkpoint,
            entries=[
                audit_pb2.ReceiptEntry(index=i, data=data, inclusion_proof=list(proof))
                for i, data, proof in receipt.entries
            ],
            result_salt=b"" if opening is None else opening.salt,
            result_opening=b"" if opening is None else opening.canonical_bytes,
        )
