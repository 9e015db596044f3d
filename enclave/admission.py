"""Admission to an enclave: the caller must be the coordinator, the query a requester's own.

An enclave trusts nothing the coordinator says about who asked: it verifies the requester's
certificate against the requester department's pinned CA (and its revocation list), the
requester's signature over the envelope, freshness, the parameter opening, and that this
(requester, request id) has not run here before.

An envelope is admitted while it is at most APPROVAL_WINDOW old (a query may wait that long for
officers' approvals); the department then requires the short MAX_AGE for queries that need no
approval. The seen-request set is kept in memory for that whole window: an older envelope is
refused as stale anyway. After a restart the enclave seeds it from the cosigned log
(`remember`, enclave/history.py) before it serves.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Mapping

import grpc

from dataisland.envelopes import (
    APPROVAL_WINDOW,
    MAX_SKEW,
    CheckedEnvelope,
    check_signed_envelope,
)
from dataisland.errors import ReplayedEnvelopeError
from dataisland.identity import Principal, UnauthenticatedError, load_certificate
from dataisland.limits import check_sql_length
from dataisland.tls import Authenticator, require_role
from dataisland.v1 import common_pb2


class Admission:
    """Checks callers and envelopes for one enclave; remembers which envelopes ran."""

    def __init__(
        self,
        authenticator: Authenticator,
        *,
        clock: Callable[[], dt.datetime],
        max_sql_bytes: int = 16_384,
    ) -> None:
        self.authenticator = authenticator
        self.clock = clock
        self.max_sql_bytes = max_sql_bytes
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], dt.datetime] = {}

    def coordinator(self, context: grpc.ServicerContext, *, rpc: str) -> Principal:
        """The verified caller, which must be the committee's coordinator.

        Raises:
            UnauthenticatedError: no or bad client certificate.
            PermissionDeniedError: the caller is not the coordinator.
        """
        principal, _ = self.authenticator.caller(context)
        require_role(principal, {"coordinator"}, rpc=rpc)
        if principal.department != self.authenticator.federation.committee.name:
            raise UnauthenticatedError(f"{principal} is not the committee's coordinator")
        return principal

    def remember(self, seen: Mapping[tuple[str, str], dt.datetime]) -> None:
        """Add envelopes that ran before (requester, request id, when), as the log shows them."""
        with self._lock:
            for key, when in seen.items():
                self._seen.setdefault(key, when)

    def claim(self, requester: str, request_id: str, issued_at: dt.datetime) -> None:
        """Mark this requester's request id as run here, refusing it if it already ran.

        Raises:
            ReplayedEnvelopeError: it already ran here.
        """
        key = (requester, request_id)
        with self._lock:
            horizon = self.clock() - APPROVAL_WINDOW - MAX_SKEW
            for stale in [k for k, issued in self._seen.items() if issued < horizon]:
                del self._seen[stale]
            if key in self._seen:
                raise self.replayed(requester, request_id)
            self._seen[key] = issued_at

    def has_run(self, requester: str, request_id: str) -> bool:
        """Whether this requester's request id already ran here."""
        with self._lock:
            return (requester, request_id) in self._seen

    @staticmethod
    def replayed(requester: str, request_id: str) -> ReplayedEnvelopeError:
        """The error for an envelope that already ran here."""
        return ReplayedEnvelopeError(f"request {request_id} of {requester} already ran here")

    def admit(
        self, signed: common_pb2.SignedEnvelope, *, once: bool
    ) -> tuple[CheckedEnvelope, Principal]:
        """Verify a requester's signed envelope; with `once`, refuse it if it already ran here.

        Raises:
            UnauthenticatedError: certificate, signature or freshness fails.
            PermissionDeniedError: the signer is not a requester.
            ReplayedEnvelopeError: the envelope already ran here.
            InvalidInputError: malformed envelope or parameters.
            ResourceLimitError: the SQL is longer than `max_sql_bytes`.
        """
        if not signed.requester_certificate:
            raise UnauthenticatedError("the envelope carries no requester certificate")
        certificate = load_certificate(signed.requester_certificate)
        principal = self.authenticator.verify(certificate)
        require_role(principal, {"requester"}, rpc="queries")
        now = self.clock()
        checked = check_signed_envelope(
            signed, signer=certificate, now=now, max_age=APPROVAL_WINDOW
        )
        check_sql_length(checked.envelope.sql, limit=self.max_sql_bytes)
        if once:
            self.claim(principal.spiffe_id, checked.envelope.request_id, checked.envelope.issued_at)
        return checked, principal
