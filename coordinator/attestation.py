"""The coordinator attests every enclave and the aggregator before it routes a query to them.

For each node the `Attestor` keeps the evidence it last verified (nonce it issued, single use;
the checks of dataisland/attestation.py against the federation file's vendor root and reference
values) and re-attests when that is older than `interval` (5 minutes), or after the node failed
an RPC (`forget`: a reconnect or a restarted enclave brings new keys). A node that fails gets
no query: the error names the node and the check. Every verified piece of evidence, in full, and
every failure is handed to the callbacks, which the coordinator wires to its audit log.

The coordinator verifies evidence to decide where to route, and relays what it verified to the
enclaves; they do not take its word for it, they verify the relayed evidence themselves.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import grpc

from dataisland.attestation import (
    AttestationError,
    AttestedEnclave,
    NonceBook,
    Role,
    TrustAnchors,
    verify_released,
)
from dataisland.canonical import format_rfc3339
from dataisland.errors import DataislandError
from dataisland.rpc import error_from_rpc
from dataisland.v1 import enclave_pb2, enclave_pb2_grpc
from ledger.entries import AttestationEntry, FailureEntry

log = logging.getLogger("dataisland.coordinator.attestation")
_T = TypeVar("_T")

REATTEST_INTERVAL = dt.timedelta(minutes=5)
"""Evidence older than this is refreshed before the next query (the enclaves accept relayed
evidence up to RELAYED_MAX_AGE, 10 minutes)."""
ATTEST_TIMEOUT = 10.0


@dataclass(frozen=True)
class _Cached:
    attested: AttestedEnclave
    verified_at: dt.datetime


class Attestor:
    """Verified evidence per node, refreshed on a schedule and after failures; thread-safe.

    Args:
        anchors: the vendor root and reference values from the coordinator's federation file.
        enclaves: a stub per department.
        aggregator: the aggregator's stub.
        aggregator_node: the committee's name (the aggregator's node name in evidence).
        clock: the current UTC time.
        on_verified: called with each newly verified evidence (to log it).
        on_failed: called with each failure (to log it).
    """

    def __init__(
        self,
        *,
        anchors: TrustAnchors,
        enclaves: Mapping[str, enclave_pb2_grpc.EnclaveServiceStub],
        aggregator: enclave_pb2_grpc.AggregatorServiceStub,
        aggregator_node: str,
        clock: Callable[[], dt.datetime],
        interval: dt.timedelta = REATTEST_INTERVAL,
        on_verified: Callable[[AttestedEnclave], None] | None = None,
        on_failed: Callable[[AttestationError], None] | None = None,
    ) -> None:
        self.anchors = anchors
        self.enclaves = dict(enclaves)
        self.aggregator_stub = aggregator
        self.aggregator_node = aggregator_node
        self.clock = clock
        self.interval = interval
        self.on_verified = on_verified
        self.on_failed = on_failed
        self.nonces = NonceBook()
        self._lock = threading.Lock()
        self._node_locks: dict[str, threading.Lock] = {}
        self._cache: dict[str, _Cached] = {}

    def department(self, name: str) -> AttestedEnclave:
        """Department `name`'s verified evidence, attesting it first if needed.

        Raises:
            AttestationError: the evidence failed a check (named).
            NodeUnavailableError: the enclave could not be reached.
        """
        stub = self.enclaves[name]

        def call(nonce: bytes) -> bytes:
            response: enclave_pb2.AttestResponse = stub.Attest(
                enclave_pb2.AttestRequest(nonce=nonce), timeout=ATTEST_TIMEOUT
            )
            return response.evidence

        return self._attested(name, "department", f"department {name}", call)

    def aggregator(self) -> AttestedEnclave:
        """The aggregator's verified evidence, attesting it first if needed.

        Raises:
            AttestationError: the evidence failed a check (named).
            NodeUnavailableError: the aggregator could not be reached.
        """

        def call(nonce: bytes) -> bytes:
            response: enclave_pb2.AggregatorServiceAttestResponse = self.aggregator_stub.Attest(
                enclave_pb2.AggregatorServiceAttestRequest(nonce=nonce), timeout=ATTEST_TIMEOUT
            )
            return response.evidence

        return self._attested(self.aggregator_node, "aggregator", "the aggregator", call)

    def forget(self, node: str) -> None:
        """Drop `node`'s evidence: the next query re-attests it (after an RPC failure)."""
        with self._lock:
            self._cache.pop(node, None)

    def _attested(
        self, node: str, role: Role, label: str, call: Callable[[bytes], bytes]
    ) -> AttestedEnclave:
        with self._lock:
            node_lock = self._node_locks.setdefault(node, threading.Lock())
        with node_lock:
            now = self.clock()
            with self._lock:
                cached = self._cache.get(node)
            if cached is not None and now - cached.verified_at < self.interval:
                return cached.attested
            nonce = self.nonces.issue(now)
            try:
                evidence = call(nonce)
            except grpc.RpcError as exc:
                raise error_from_rpc(exc, node=label) from None
            try:
                attested = self.anchors.verify(
                    evidence,
                    node=node,
                    role=role,
                    now=self.clock(),
                    nonce=nonce,
                    nonces=self.nonces,
                )
            except AttestationError as error:
                with self._lock:
                    self._cache.pop(node, None)
                if self.on_failed is not None:
                    _quietly(self.on_failed, error)
                raise
            with self._lock:
                self._cache[node] = _Cached(attested=attested, verified_at=now)
            if self.on_verified is not None:
                _quietly(self.on_verified, attested)
            return attested


def _quietly(callback: Callable[[_T], None], value: _T) -> None:
    # The log is a record of attestations, not a gate on them: a full disk must not make an
    # enclave look unattested (the query's own entries still must be durable to run).
    try:
        callback(value)
    except DataislandError:
        log.exception("an attestation could not be logged")


def verify_result(
    response: enclave_pb2.MergePartialsResponse, *, aggregator: AttestedEnclave, query_id: str
) -> None:
    """Accept a released result only if the attested aggregator signed its commitment.

    Raises:
        BadSignatureError: the signature does not verify with the aggregator's attested key.
        PermissionDeniedError: the commitment does not open to this result digest.
    """
    verify_released(
        aggregator=aggregator,
        query_id=query_id,
        query_hash=response.query_hash,
        result_digest=response.result_digest,
        suppressed=response.suppressed,
        salt=response.result_salt,
        commitment=response.result_commitment,
        signature=response.result_signature,
    )


def attestation_entry(attested: AttestedEnclave, *, verified_at: dt.datetime) -> AttestationEntry:
    """The log entry for evidence the coordinator accepted: the evidence in full."""
    return AttestationEntry(
        version=1,
        kind="attestation",
        subject=attested.node,
        role="aggregator" if attested.role == "aggregator" else "department",
        department=attested.node if attested.role == "department" else None,
        evidence=base64.b64encode(attested.evidence).decode("ascii"),
        evidence_hash=attested.evidence_hash,
        verifier="coordinator",
        verified_at=format_rfc3339(verified_at),
    )


def attestation_failure_entry(error: AttestationError, *, failed_at: dt.datetime) -> FailureEntry:
    """The log entry for evidence the coordinator refused: the node and the failed check."""
    return FailureEntry(
        version=1,
        kind="failure",
        query_id=None,
        request_id=None,
        stage="attestation",
        code=error.code,
        message=str(error)[:16_384],
        failed_at=format_rfc3339(failed_at),
    )
