"""Wiring of the coordinator into a mutual-TLS gRPC server from a node configuration file."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import grpc

from coordinator.attestation import Attestor, attestation_entry, attestation_failure_entry
from coordinator.audit import AuditedBook, AuditLog
from coordinator.audit_service import AuditServicer
from coordinator.book import QueryBook
from coordinator.judge import Judge
from coordinator.pending import PendingStore, restore_pending, settle_interrupted
from coordinator.service import Coordinator
from dataisland import metrics
from dataisland.attestation import AttestationError, AttestedEnclave, TrustAnchors
from dataisland.federation import NodeConfig, load_federation
from dataisland.limits import RateLimiter
from dataisland.metrics import observed_channel
from dataisland.rpc import serve_until_signalled
from dataisland.tls import (
    Authenticator,
    KeyPair,
    metrics_server,
    secure_channel,
    server_credentials,
)
from dataisland.v1 import audit_pb2_grpc, coordinator_pb2_grpc, enclave_pb2_grpc


def serve_coordinator(config: NodeConfig) -> None:
    """Connect to every enclave and the aggregator and serve CoordinatorService until signalled.

    Each outgoing channel pins the CA of the node it dials and checks that node's DNS SAN.

    Raises:
        ConfigError: the configuration, federation file or TLS files are unusable.
    """
    federation = load_federation(config.federation)
    authenticator = Authenticator(federation, clock=lambda: dt.datetime.now(dt.UTC))
    own = KeyPair.of_node(config)
    committee = federation.committee.name
    # Every call to an enclave or the aggregator is counted and timed (dataisland/metrics.py).
    enclaves = {
        name: enclave_pb2_grpc.EnclaveServiceStub(
            observed_channel(
                secure_channel(
                    entry.enclave,
                    own=own,
                    server_ca_pem=authenticator.roots_pem([name]),
                    server_name=federation.dns_name("enclave", name),
                ),
                node=name,
            )
        )
        for name, entry in federation.departments.items()
    }
    aggregator = enclave_pb2_grpc.AggregatorServiceStub(
        observed_channel(
            secure_channel(
                federation.committee.aggregator,
                own=own,
                server_ca_pem=authenticator.roots_pem([committee]),
                server_name=federation.dns_name("aggregator", committee),
            ),
            node="aggregator",
        )
    )
    # Queries waiting for approvals survive a restart in the coordinator's own directory.
    pending = PendingStore(config.state_dir) if config.state_dir is not None else None
    book = QueryBook(
        retention_seconds=config.retention_seconds,
        max_queries=config.retention_max_queries,
        clock=time.time,
        max_unfinished_per_requester=config.max_unfinished_per_requester,
        pending=pending,
    )
    # With a `log:` section, every decision is logged before it is answered (coordinator/audit.py).
    audit = AuditLog.open(config, federation) if federation.log is not None else None
    if audit is not None:
        book = AuditedBook(
            audit=audit,
            retention_seconds=config.retention_seconds,
            max_queries=config.retention_max_queries,
            clock=time.time,
            max_unfinished_per_requester=config.max_unfinished_per_requester,
            pending=pending,
        )
        audit.start()
        watch_log(audit)

    def utc_now() -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    # Every enclave and the aggregator is attested before a query goes to it; accepted evidence
    # and refusals go to the audit log when there is one.
    log_evidence, log_failure = attestation_callbacks(audit, clock=utc_now)

    # One token bucket per caller, shared by CoordinatorService and AuditService.
    limiter = RateLimiter(
        rate=config.rate_per_caller, burst=config.rate_burst, clock=time.monotonic
    )
    attestor = Attestor(
        anchors=TrustAnchors.from_federation(federation),
        enclaves=enclaves,
        aggregator=aggregator,
        aggregator_node=committee,
        clock=utc_now,
        on_verified=log_evidence,
        on_failed=log_failure,
    )
    servicer = Coordinator(
        attestor=attestor,
        catalog=federation.catalog(),
        authenticator=authenticator,
        judge=Judge(
            federation,
            clock=lambda: dt.datetime.now(dt.UTC),
            on_activation=None if audit is None else audit.log_activation,
        ),
        enclaves=enclaves,
        aggregator=aggregator,
        query_timeout=config.query_timeout_seconds,
        book=book,
        workers=config.query_workers,
        max_running_per_requester=config.max_running_per_requester,
        limiter=limiter,
        max_sql_bytes=config.max_sql_bytes,
    )
    # After a restart: queries waiting for approvals come back; those that were running end.
    if pending is not None:
        restore_pending(pending, book, audit=audit, start=servicer.start)
    if audit is not None:
        settle_interrupted(audit, book)
        servicer.restore_standing_approvals(audit.standing_approvals())

    def register(server: grpc.Server) -> None:
        coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(servicer, server)
        if audit is not None:
            audit_pb2_grpc.add_AuditServiceServicer_to_server(
                AuditServicer(audit=audit, authenticator=authenticator, limiter=limiter), server
            )

    # Requesters of every department (and later officers and auditors) call the coordinator.
    credentials = server_credentials(own, client_roots_pem=authenticator.roots_pem())
    try:
        serve_until_signalled(
            register,
            config.listen,
            credentials=credentials,
            name="coordinator",
            on_stop=servicer.close,
            max_request_bytes=config.request_limit,
            metrics_server=metrics_server(config, authenticator, department=committee),
        )
    finally:
        if audit is not None:
            audit.close()


def attestation_callbacks(
    audit: AuditLog | None, *, clock: Callable[[], dt.datetime]
) -> tuple[Callable[[AttestedEnclave], None], Callable[[AttestationError], None]]:
    """What the `Attestor` calls on each verified and each refused piece of evidence: count it
    (dataisland/metrics.py) and, with an audit log, log it."""

    def verified(attested: AttestedEnclave) -> None:
        metrics.ATTESTATIONS.labels(node=attested.node).inc()
        if audit is not None:
            audit.append(attestation_entry(attested, verified_at=clock()))

    def failed(error: AttestationError) -> None:
        metrics.ATTESTATION_FAILURES.labels(node=error.node, check=error.check).inc()
        if audit is not None:
            audit.append(attestation_failure_entry(error, failed_at=clock()))

    return verified, failed


def watch_log(audit: AuditLog) -> None:
    """Expose the log's size, its latest cosigned size and each witness's lag as gauges."""
    metrics.LOG_ENTRIES.set_function(lambda: audit.storage.size)
    metrics.LOG_CHECKPOINT_SIZE.set_function(lambda: max(audit.checkpointed_size(), 0))
    for name in audit.witness_names():

        def lag(name: str = name) -> float:
            return audit.storage.size - audit.witness_sizes().get(name, 0)

        metrics.WITNESS_LAG.labels(witness=name).set_function(lag)
