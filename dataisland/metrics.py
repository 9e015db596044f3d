"""Prometheus metrics of every node, and the mutual-TLS endpoint that serves them.

What is measured (names as Prometheus shows them; every node has the `dataisland_rpc_*` ones and
the client library's `process_*` ones):

- `dataisland_rpc_total{service,method,code}`, `dataisland_rpc_duration_seconds{service,method}`:
  every RPC a servicer handled (counted in `dataisland.rpc.guarded`);
- `dataisland_queries_total{decision}`: queries by their early decision (allow, needs_approval,
  deny), and `dataisland_query_outcomes_total{state,code}` with
  `dataisland_query_duration_seconds{state}` from submission to the final state (coordinator);
- `dataisland_limit_refusals_total{limit}`: requests refused by a configured limit;
- `dataisland_enclave_calls_total{node,method,code}`, `dataisland_enclave_call_duration_seconds
  {node,method}`: the coordinator's calls to each enclave and the aggregator;
- `dataisland_attestations_total{node}`, `dataisland_attestation_failures_total{node,check}`;
- `dataisland_log_entries`, `dataisland_log_checkpoint_size`, `dataisland_witness_lag_entries
  {witness}` (entries the log holds beyond what that witness last cosigned).

Labels never carry requesters, SQL or values: only node, method, status and decision names.
The endpoint (`MetricsServer`) is HTTPS with a client certificate required, like every other
connection (docs/adr/0005), and answers only an `operator` of the node's own department.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from dataisland.errors import DataislandError
from dataisland.https import MutualTLSHandler, MutualTLSServer
from dataisland.identity import Principal

log = logging.getLogger("dataisland.metrics")

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

RPCS = Counter(
    "dataisland_rpc",
    "RPCs handled, by service, method and status code",
    ["service", "method", "code"],
)
RPC_SECONDS = Histogram(
    "dataisland_rpc_duration_seconds",
    "Time to handle one RPC",
    ["service", "method"],
    buckets=_LATENCY,
)
QUERIES = Counter("dataisland_queries", "Queries by early decision", ["decision"])
QUERY_OUTCOMES = Counter(
    "dataisland_query_outcomes", "Queries by final state and error code", ["state", "code"]
)
QUERY_SECONDS = Histogram(
    "dataisland_query_duration_seconds",
    "Time from submission to the final state",
    ["state"],
    buckets=_LATENCY,
)
LIMIT_REFUSALS = Counter(
    "dataisland_limit_refusals", "Requests refused by a configured limit", ["limit"]
)
ENCLAVE_CALLS = Counter(
    "dataisland_enclave_calls",
    "The coordinator's calls to enclaves and the aggregator, by status code",
    ["node", "method", "code"],
)
ENCLAVE_CALL_SECONDS = Histogram(
    "dataisland_enclave_call_duration_seconds",
    "Duration of the coordinator's calls to enclaves and the aggregator",
    ["node", "method"],
    buckets=_LATENCY,
)
ATTESTATIONS = Counter("dataisland_attestations", "Evidence verified, by node", ["node"])
ATTESTATION_FAILURES = Counter(
    "dataisland_attestation_failures", "Evidence refused, by node and check", ["node", "check"]
)
LOG_ENTRIES = Gauge("dataisland_log_entries", "Entries in the audit log")
LOG_CHECKPOINT_SIZE = Gauge(
    "dataisland_log_checkpoint_size", "Size of the latest checkpoint a quorum cosigned"
)
WITNESS_LAG = Gauge(
    "dataisland_witness_lag_entries",
    "Entries in the log beyond the size this witness last cosigned",
    ["witness"],
)


def count_limit(error: DataislandError) -> None:
    """Count a refusal by a configured limit (called where limits are checked)."""
    LIMIT_REFUSALS.labels(limit=getattr(error, "limit", "") or "unnamed").inc()


# -- the coordinator's outgoing calls -------------------------------------------------------------


if TYPE_CHECKING:
    _Interceptor = grpc.UnaryUnaryClientInterceptor[Any, Any]
else:
    _Interceptor = grpc.UnaryUnaryClientInterceptor


class _Observed(_Interceptor):
    def __init__(self, node: str) -> None:
        self.node = node

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        method = str(client_call_details.method).rsplit("/", 1)[-1]
        began = time.perf_counter()
        call = continuation(client_call_details, request)

        def done(finished: Any) -> None:
            code = finished.code()
            name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
            ENCLAVE_CALLS.labels(node=self.node, method=method, code=name).inc()
            ENCLAVE_CALL_SECONDS.labels(node=self.node, method=method).observe(
                time.perf_counter() - began
            )

        call.add_done_callback(done)
        return call


def observed_channel(channel: grpc.Channel, *, node: str) -> grpc.Channel:
    """`channel` with every call counted and timed under `node`."""
    return grpc.intercept_channel(channel, _Observed(node))


# -- the endpoint -------------------------------------------------------------------------------


class _Handler(MutualTLSHandler):
    server: _MetricsHTTPServer

    def do_GET(self) -> None:
        principal = self.caller()
        if principal is None:
            return
        if not self.server.may_read(principal):
            self.text(
                HTTPStatus.FORBIDDEN,
                f"{principal} (role {principal.role}) may not read this node's metrics",
            )
            return
        if self.path.split("?", 1)[0] != "/metrics":
            self.text(HTTPStatus.NOT_FOUND, "unknown path; metrics are at /metrics")
            return
        self.reply(HTTPStatus.OK, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)


class _MetricsHTTPServer(MutualTLSServer):
    may_read: Callable[[Principal], bool]


class MetricsServer:
    """`GET /metrics` (Prometheus text format) over HTTPS with mutual TLS, in a thread.

    Args:
        address: HOST:PORT to bind.
        context: from `dataisland.https.tls_server_context`.
        authenticate: verifies a client certificate (DER) in full, returning its principal.
        may_read: whether that principal may read the metrics.

    Raises:
        ConfigError: the address cannot be bound.
    """

    def __init__(
        self,
        address: str,
        *,
        context: ssl.SSLContext,
        authenticate: Callable[[bytes], Principal],
        may_read: Callable[[Principal], bool],
    ) -> None:
        host, _, port = address.rpartition(":")
        self._server = _MetricsHTTPServer(
            (host.strip("[]"), int(port)),
            _Handler,
            context=context,
            authenticate=authenticate,
            what="metrics",
        )
        self._server.may_read = may_read

    def start(self) -> None:
        """Serve in a background thread."""
        self._server.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.stop()


def operator_of(department: str) -> Callable[[Principal], bool]:
    """The rule for reading a node's metrics: an operator of the node's own department."""

    def may_read(principal: Principal) -> bool:
        return principal.role == "operator" and principal.department == department

    return may_read
