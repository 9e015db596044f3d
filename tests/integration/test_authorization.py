"""Who may call what: every RPC of every gRPC server and every HTTPS endpoint, by every role.

`MATRIX` is the roles-by-RPCs table of the README as data, one row per RPC or endpoint; each row
is called by every role of `ROLES` against the running federation, and each cell checks the
outcome: allowed (past the role check: any answer but a role refusal, a refused handshake or
INTERNAL), denied (PERMISSION_DENIED naming the rule, or HTTP 403), or refused by TLS (the
enclaves accept only the committee's CA). `test_every_rpc_has_a_row` fails when a service gains
an RPC without a row here, and `test_the_readme_table_lists_every_row` when the README's table
lacks one: a new RPC or endpoint is one row in each.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from dataisland.federation import load_federation, load_node_config
from dataisland.supervisor import FederationProcesses
from dataisland.tls import secure_channel
from dataisland.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    coordinator_pb2,
    coordinator_pb2_grpc,
    enclave_pb2,
    enclave_pb2_grpc,
)
from tests.integration.conftest import credentials_of, https_request

Server = Literal["coordinator", "aggregator", "enclave", "witness"]
Outcome = Literal["allowed", "denied", "tls"]

ROLES: dict[str, str] = {
    "requester": "qingpu/requester/analyst",
    "officer": "qingpu/officer/officer",
    "auditor": "qingpu/auditor/auditor",
    "operator": "qingpu/operator/operator",
    "committee operator": "committee/operator/operator",
    "coordinator": "committee/coordinator/node",
    "aggregator": "committee/aggregator/node",
    "enclave": "qingpu/enclave/node",
    "witness": "qingpu/witness/node",
}
"""The role of each column and the identity that plays it (qingpu's, or the committee's)."""

EVERYONE = frozenset(ROLES)
COMMITTEE = frozenset(r for r, identity in ROLES.items() if identity.startswith("committee/"))

GrpcCall = Callable[[grpc.Channel], object]


@dataclass(frozen=True)
class Row:
    """One RPC or endpoint: where it is served, who may call it, and how to call it.

    `tls` lists who gets past the server's TLS handshake (the rest: a refused handshake).
    """

    name: str
    server: Server
    allowed: frozenset[str]
    call: GrpcCall | None = None
    method: str = "GET"
    path: str = ""
    tls: frozenset[str] = EVERYONE


def _coordinator(method: str, request: object) -> GrpcCall:
    return lambda ch: getattr(coordinator_pb2_grpc.CoordinatorServiceStub(ch), method)(
        request, timeout=10
    )


def _audit(method: str, request: object) -> GrpcCall:
    return lambda ch: getattr(audit_pb2_grpc.AuditServiceStub(ch), method)(request, timeout=10)


def _enclave(method: str, request: object) -> GrpcCall:
    return lambda ch: getattr(enclave_pb2_grpc.EnclaveServiceStub(ch), method)(request, timeout=10)


def _aggregator(method: str, request: object) -> GrpcCall:
    return lambda ch: getattr(enclave_pb2_grpc.AggregatorServiceStub(ch), method)(
        request, timeout=10
    )


def _health(method: str) -> GrpcCall:
    def call(channel: grpc.Channel) -> object:
        stub = health_pb2_grpc.HealthStub(channel)
        if method == "Watch":
            return next(iter(stub.Watch(health_pb2.HealthCheckRequest(), timeout=10)))
        return getattr(stub, method)(
            health_pb2.HealthCheckRequest()
            if method == "Check"
            else health_pb2.HealthListRequest(),
            timeout=10,
        )

    return call


def _reflection(channel: grpc.Channel) -> object:
    return ProtoReflectionDescriptorDatabase(channel).get_services()


REQUESTER = frozenset({"requester"})
OFFICER = frozenset({"officer"})
AUDITOR = frozenset({"auditor"})
COORDINATOR = frozenset({"coordinator"})
EMPTY = "00000000-0000-4000-8000-000000000000"

MATRIX: tuple[Row, ...] = (
    Row(
        "CoordinatorService.SubmitQuery",
        "coordinator",
        REQUESTER,
        _coordinator("SubmitQuery", coordinator_pb2.SubmitQueryRequest()),
    ),
    Row(
        "CoordinatorService.GetResult",
        "coordinator",
        REQUESTER,
        _coordinator("GetResult", coordinator_pb2.GetResultRequest(query_id=EMPTY)),
    ),
    Row(
        "CoordinatorService.WaitResult",
        "coordinator",
        REQUESTER,
        _coordinator("WaitResult", coordinator_pb2.WaitResultRequest(query_id=EMPTY)),
    ),
    Row(
        "CoordinatorService.ListQueries",
        "coordinator",
        REQUESTER,
        _coordinator("ListQueries", coordinator_pb2.ListQueriesRequest()),
    ),
    Row(
        "CoordinatorService.CancelQuery",
        "coordinator",
        REQUESTER,
        _coordinator("CancelQuery", coordinator_pb2.CancelQueryRequest(query_id=EMPTY)),
    ),
    Row(
        "CoordinatorService.ListPendingApprovals",
        "coordinator",
        OFFICER,
        _coordinator("ListPendingApprovals", coordinator_pb2.ListPendingApprovalsRequest()),
    ),
    Row(
        "CoordinatorService.ApproveQuery",
        "coordinator",
        OFFICER,
        _coordinator("ApproveQuery", coordinator_pb2.ApproveQueryRequest(query_id=EMPTY)),
    ),
    Row(
        "CoordinatorService.DenyQuery",
        "coordinator",
        OFFICER,
        _coordinator("DenyQuery", coordinator_pb2.DenyQueryRequest(query_id=EMPTY)),
    ),
    Row(
        "AuditService.GetEntries",
        "coordinator",
        AUDITOR,
        _audit("GetEntries", audit_pb2.GetEntriesRequest(start=0, end=1)),
    ),
    Row(
        "AuditService.GetCheckpoint",
        "coordinator",
        AUDITOR,
        _audit("GetCheckpoint", audit_pb2.GetCheckpointRequest()),
    ),
    Row(
        "AuditService.ListCheckpoints",
        "coordinator",
        AUDITOR,
        _audit("ListCheckpoints", audit_pb2.ListCheckpointsRequest(page_size=1)),
    ),
    Row(
        "AuditService.GetInclusionProof",
        "coordinator",
        AUDITOR,
        _audit("GetInclusionProof", audit_pb2.GetInclusionProofRequest(index=0, size=1)),
    ),
    Row(
        "AuditService.GetConsistencyProof",
        "coordinator",
        AUDITOR,
        _audit("GetConsistencyProof", audit_pb2.GetConsistencyProofRequest(first=1, second=1)),
    ),
    Row(
        "AuditService.GetReceipt",
        "coordinator",
        REQUESTER,
        _audit("GetReceipt", audit_pb2.GetReceiptRequest(query_id=EMPTY, timeout_ms=1)),
    ),
    Row(
        "EnclaveService.DescribeShard",
        "enclave",
        COORDINATOR,
        _enclave("DescribeShard", enclave_pb2.DescribeShardRequest()),
        tls=COMMITTEE,
    ),
    Row(
        "EnclaveService.ExecutePartial",
        "enclave",
        COORDINATOR,
        _enclave("ExecutePartial", enclave_pb2.ExecutePartialRequest(query_id=EMPTY)),
        tls=COMMITTEE,
    ),
    Row(
        "EnclaveService.Attest",
        "enclave",
        COORDINATOR,
        _enclave("Attest", enclave_pb2.AttestRequest(nonce=b"\0" * 32)),
        tls=COMMITTEE,
    ),
    Row(
        "EnclaveService.DeclareRun",
        "enclave",
        COORDINATOR,
        _enclave("DeclareRun", enclave_pb2.DeclareRunRequest(query_id=EMPTY)),
        tls=COMMITTEE,
    ),
    Row(
        "AggregatorService.MergePartials",
        "aggregator",
        COORDINATOR,
        _aggregator("MergePartials", enclave_pb2.MergePartialsRequest(query_id=EMPTY)),
        tls=COMMITTEE,
    ),
    Row(
        "AggregatorService.Attest",
        "aggregator",
        COORDINATOR,
        _aggregator("Attest", enclave_pb2.AggregatorServiceAttestRequest(nonce=b"\0" * 32)),
        tls=COMMITTEE,
    ),
    *(
        Row(
            f"grpc.health.v1.Health.{method} ({server})",
            server,
            EVERYONE if server == "coordinator" else COMMITTEE,
            _health(method),
            tls=EVERYONE if server == "coordinator" else COMMITTEE,
        )
        for server in ("coordinator", "aggregator", "enclave")
        for method in ("Check", "List", "Watch")
    ),
    *(
        Row(
            f"grpc.reflection.v1alpha.ServerReflection.ServerReflectionInfo ({server})",
            server,
            EVERYONE if server == "coordinator" else COMMITTEE,
            _reflection,
            tls=EVERYONE if server == "coordinator" else COMMITTEE,
        )
        for server in ("coordinator", "aggregator", "enclave")
    ),
    Row(
        "witness POST /add-checkpoint",
        "witness",
        COORDINATOR,
        method="POST",
        path="/add-checkpoint",
    ),
    Row("witness POST /entries", "witness", COORDINATOR, method="POST", path="/entries"),
    Row(
        "witness POST /quorum-checkpoint",
        "witness",
        COORDINATOR,
        method="POST",
        path="/quorum-checkpoint",
    ),
    Row("witness GET /execution-reports", "witness", COORDINATOR, path="/execution-reports"),
    # Only qingpu's own enclave reports to qingpu's witness (the "enclave" column is qingpu's).
    Row(
        "witness POST /execution-report",
        "witness",
        frozenset({"enclave"}),
        method="POST",
        path="/execution-report",
    ),
    Row(
        "witness GET /entries",
        "witness",
        frozenset({"enclave", "coordinator", "auditor"}),
        path="/entries",
    ),
    Row("witness GET /checkpoint", "witness", EVERYONE, path="/checkpoint"),
    Row("witness GET /quorum-checkpoint", "witness", EVERYONE, path="/quorum-checkpoint"),
    Row("witness GET /healthz", "witness", EVERYONE, path="/healthz"),
    Row(
        "metrics GET /metrics (coordinator)",
        "coordinator",
        frozenset({"committee operator"}),
        path="/metrics",
    ),
    Row(
        "metrics GET /metrics (aggregator)",
        "aggregator",
        frozenset({"committee operator"}),
        path="/metrics",
    ),
    Row("metrics GET /metrics (enclave)", "enclave", frozenset({"operator"}), path="/metrics"),
    Row("metrics GET /metrics (witness)", "witness", frozenset({"operator"}), path="/metrics"),
)


def _expected(row: Row, role: str) -> Outcome:
    if role not in row.tls:
        return "tls"
    return "allowed" if role in row.allowed else "denied"


@dataclass(frozen=True)
class Target:
    grpc_address: str
    https_address: str
    metrics_address: str
    ca: bytes
    dns: str


def _targets(directory: Path) -> dict[Server, Target]:
    federation = load_federation(directory / "federation.yaml")
    committee = federation.committee
    assert federation.log is not None
    nodes = directory / "nodes"

    def metrics_of(name: str) -> str:
        address = load_node_config(nodes / f"{name}.yaml").metrics_listen
        assert address is not None, name
        return address

    return {
        "coordinator": Target(
            committee.coordinator,
            "",
            metrics_of("coordinator"),
            committee.ca.read_bytes(),
            federation.dns_name("coordinator", committee.name),
        ),
        "aggregator": Target(
            committee.aggregator,
            "",
            metrics_of("aggregator"),
            committee.ca.read_bytes(),
            federation.dns_name("aggregator", committee.name),
        ),
        "enclave": Target(
            federation.departments["qingpu"].enclave,
            "",
            metrics_of("qingpu"),
            federation.departments["qingpu"].ca.read_bytes(),
            federation.dns_name("enclave", "qingpu"),
        ),
        "witness": Target(
            "",
            federation.log.witnesses["qingpu"].address,
            metrics_of("witness-qingpu"),
            federation.log.witnesses["qingpu"].ca.read_bytes(),
            federation.dns_name("witness", "qingpu"),
        ),
    }


def _grpc_outcome(call: GrpcCall, channel: grpc.Channel) -> tuple[Outcome, str]:
    failure: grpc.RpcError | None = None
    try:
        call(channel)
    except grpc.RpcError as exc:
        failure = exc
    except ValueError as exc:  # the reflection client's way of saying the stream failed
        return "tls", str(exc)
    if failure is None:
        return "allowed", "OK"
    assert isinstance(failure, grpc.Call)
    code, details = failure.code(), failure.details() or ""
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), details
    if code == grpc.StatusCode.UNAVAILABLE:
        return "tls", details
    if code == grpc.StatusCode.PERMISSION_DENIED and "may not call" in details:
        return "denied", details
    return "allowed", f"{code.name}: {details}"


def _https(
    directory: Path, identity: str, target: Target, *, address: str, method: str, path: str
) -> tuple[int, bytes]:
    return https_request(
        directory, identity, address, ca=target.ca, server_name=target.dns, method=method, path=path
    )


def _http_outcome(status: int, body: bytes) -> Outcome:
    if status == 403:
        return "denied"
    assert status < 500, (status, body)
    return "allowed"


pytestmark = pytest.mark.integration


@pytest.mark.parametrize("row", MATRIX, ids=lambda r: r.name)
def test_each_role_gets_what_the_table_says(
    row: Row, running: FederationProcesses, federation_dir: Path
) -> None:
    target = _targets(federation_dir)[row.server]
    seen: dict[str, tuple[Outcome, str]] = {}
    for role, identity in ROLES.items():
        if row.call is not None:
            channel = secure_channel(
                target.grpc_address,
                own=credentials_of(federation_dir, identity),
                server_ca_pem=target.ca,
                server_name=target.dns,
            )
            try:
                seen[role] = _grpc_outcome(row.call, channel)
            finally:
                channel.close()
            continue
        address = target.metrics_address if row.path == "/metrics" else target.https_address
        try:
            status, body = _https(
                federation_dir, identity, target, address=address, method=row.method, path=row.path
            )
        except (ssl.SSLError, OSError) as exc:
            seen[role] = ("tls", str(exc))
            continue
        seen[role] = (_http_outcome(status, body), f"{status} {body[:120]!r}")
    wrong = {
        role: (outcome, detail)
        for role, (outcome, detail) in seen.items()
        if outcome != _expected(row, role)
    }
    assert not wrong, f"{row.name}: expected {[(r, _expected(row, r)) for r in wrong]}, got {wrong}"


def _all_rpcs() -> set[str]:
    names = set()
    for module in (coordinator_pb2, audit_pb2, enclave_pb2, health_pb2, reflection_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                names.add(f"{service.full_name}.{method.name}".removeprefix("dataisland.v1."))
    return names


def _listed_as(row: Row) -> str:
    """How the README's table names a row: without the server in brackets or grpc's package."""
    name = row.name.split(" (")[0]
    for prefix in ("grpc.health.v1.", "grpc.reflection.v1alpha."):
        name = name.removeprefix(prefix)
    return name


def test_every_rpc_has_a_row() -> None:
    covered = {row.name.split(" (")[0] for row in MATRIX if row.call is not None}
    assert _all_rpcs() - covered == set()


def test_the_readme_table_lists_every_row() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| RPC or endpoint |") :]
    table = table[: table.index("\n\n")]
    missing = sorted({_listed_as(row) for row in MATRIX if f"`{_listed_as(row)}`" not in table})
    assert not missing, f"README's roles table lacks {missing}"


def test_no_client_certificate_gets_nothing_anywhere(
    running: FederationProcesses, federation_dir: Path
) -> None:
    targets = _targets(federation_dir)
    for server in ("coordinator", "aggregator", "enclave"):
        target = targets[server]
        # Server-authenticated TLS only: the handshake fails, no RPC runs.
        credentials = grpc.ssl_channel_credentials(root_certificates=target.ca)
        options = [("grpc.ssl_target_name_override", target.dns)]
        with grpc.secure_channel(target.grpc_address, credentials, options=options) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, server
    for target, address in (
        (targets["witness"], targets["witness"].https_address),
        (targets["enclave"], targets["enclave"].metrics_address),
    ):
        with pytest.raises((ssl.SSLError, OSError)):
            _https_without_certificate(target, address)


def _https_without_certificate(target: Target, address: str) -> None:
    context = ssl.create_default_context(cadata=target.ca.decode("ascii"))
    host, _, port = address.rpartition(":")
    raw = socket.create_connection((host, int(port)), timeout=10)
    with context.wrap_socket(raw, server_hostname=target.dns) as tls:
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        if not tls.recv(1):
            raise ConnectionResetError("closed without an answer")
