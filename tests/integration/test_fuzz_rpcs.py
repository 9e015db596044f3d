"""Hostile input to every RPC of the running federation: never INTERNAL, never a crash, never data.

Hypothesis sends each RPC raw bytes (mostly not a valid message at all) and well-formed messages
with random field values built from the RPC's own descriptor, as a caller of the role the RPC
admits (so the fuzzing reaches past the role check), and signed envelopes around random SQL.
Every answer must be a deliberate status (never INTERNAL or UNKNOWN); an enclave or the
aggregator never answers such a request with OK (it would be a partial or a result); oversized
messages are RESOURCE_EXHAUSTED; afterwards every server is still SERVING.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as _descriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataisland.canonical import TypedParam
from dataisland.cli.identity import issue_identity
from dataisland.errors import DataislandError
from dataisland.federation import load_federation
from dataisland.supervisor import FederationProcesses
from dataisland.tls import secure_channel
from dataisland.v1 import audit_pb2, coordinator_pb2, coordinator_pb2_grpc, enclave_pb2
from tests.integration.conftest import client_for, credentials_of, signed_envelope

pytestmark = pytest.mark.integration

FD = _descriptor.FieldDescriptor
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


@dataclass(frozen=True)
class Rpc:
    service: _descriptor.ServiceDescriptor
    method: _descriptor.MethodDescriptor
    server: str
    role: str

    @property
    def path(self) -> str:
        return f"/{self.service.full_name}/{self.method.name}"


def _rpcs() -> list[Rpc]:
    out = []
    coordinator = coordinator_pb2.DESCRIPTOR.services_by_name["CoordinatorService"]
    officers = {"ListPendingApprovals", "ApproveQuery", "DenyQuery"}
    for method in coordinator.methods:
        role = "officer" if method.name in officers else "requester"
        out.append(Rpc(coordinator, method, "coordinator", role))
    audit = audit_pb2.DESCRIPTOR.services_by_name["AuditService"]
    for method in audit.methods:
        role = "requester" if method.name == "GetReceipt" else "auditor"
        out.append(Rpc(audit, method, "coordinator", role))
    for name, server in (("EnclaveService", "enclave"), ("AggregatorService", "aggregator")):
        service = enclave_pb2.DESCRIPTOR.services_by_name[name]
        out += [Rpc(service, method, server, "coordinator") for method in service.methods]
    return out


RPCS = _rpcs()


def _scalar(field: FD) -> st.SearchStrategy[Any]:
    if field.type == FD.TYPE_STRING:
        return st.one_of(
            st.text(max_size=40), st.uuids().map(str), st.sampled_from(["", "0", "-1", "é\x00"])
        )
    if field.type == FD.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type == FD.TYPE_BOOL:
        return st.booleans()
    if field.type == FD.TYPE_ENUM:
        assert field.enum_type is not None
        return st.sampled_from([v.number for v in field.enum_type.values])
    if field.type in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if field.type in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    if field.type in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
        return st.integers(-(2**31), 2**31 - 1)
    if field.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return st.floats(allow_nan=True)
    return st.integers(-(2**63), 2**63 - 1)


def _repeated(field: FD) -> bool:
    return bool(field.is_repeated)


@st.composite
def _message(draw: st.DrawFn, descriptor: _descriptor.Descriptor, depth: int = 0) -> Message:
    """A message of `descriptor` with a random subset of its fields set to random values."""
    message = GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key, value = (
                field.message_type.fields_by_name["key"],
                field.message_type.fields_by_name["value"],
            )
            if value.message_type is not None:
                continue
            for k, v in draw(st.dictionaries(_scalar(key), _scalar(value), max_size=3)).items():
                getattr(message, field.name)[k] = v
            continue
        if field.message_type is not None:
            if depth >= 3:
                continue
            if _repeated(field):
                for item in draw(st.lists(_message(field.message_type, depth + 1), max_size=2)):
                    getattr(message, field.name).add().CopyFrom(item)
            else:
                getattr(message, field.name).CopyFrom(draw(_message(field.message_type, depth + 1)))
            continue
        if _repeated(field):
            getattr(message, field.name).extend(draw(st.lists(_scalar(field), max_size=3)))
        else:
            setattr(message, field.name, draw(_scalar(field)))
    return message


@dataclass
class Channels:
    directory: Path
    by_key: dict[tuple[str, str], grpc.Channel]

    def get(self, server: str, identity: str) -> grpc.Channel:
        key = (server, identity)
        if key not in self.by_key:
            federation = load_federation(self.directory / "federation.yaml")
            committee = federation.committee
            address, ca, dns = {
                "coordinator": (
                    committee.coordinator,
                    committee.ca,
                    federation.dns_name("coordinator", committee.name),
                ),
                "aggregator": (
                    committee.aggregator,
                    committee.ca,
                    federation.dns_name("aggregator", committee.name),
                ),
                "enclave": (
                    federation.departments["wujiang"].enclave,
                    federation.departments["wujiang"].ca,
                    federation.dns_name("enclave", "wujiang"),
                ),
            }[server]
            self.by_key[key] = secure_channel(
                address,
                own=credentials_of(self.directory, identity),
                server_ca_pem=ca.read_bytes(),
                server_name=dns,
            )
        return self.by_key[key]


@pytest.fixture(scope="module")
def channels(running: FederationProcesses, federation_dir: Path) -> Iterator[Channels]:
    federation = load_federation(federation_dir / "federation.yaml").federation
    # Identities of their own, so the fuzzing neither trips nor is slowed by other tests' limits.
    for role in ("requester", "officer", "auditor"):
        for rpc in RPCS:
            name = f"fuzz-{rpc.method.name.lower()}"
            path = federation_dir / "identity" / "qingpu" / f"{role}-{name}.crt"
            if rpc.role == role and not path.exists():
                issue_identity(
                    federation_dir,
                    federation=federation,
                    department="qingpu",
                    role=role,
                    name=name,
                )
    pool = Channels(federation_dir, {})
    yield pool
    for channel in pool.by_key.values():
        channel.close()


def _identity(rpc: Rpc) -> str:
    if rpc.role == "coordinator":
        return "committee/coordinator/node"
    return f"qingpu/{rpc.role}/fuzz-{rpc.method.name.lower()}"


def _call(channels: Channels, rpc: Rpc, payload: bytes) -> tuple[grpc.StatusCode, str]:
    channel = channels.get(rpc.server, _identity(rpc))
    call = channel.unary_unary(rpc.path, request_serializer=None, response_deserializer=None)
    try:
        call(payload, timeout=20)
    except grpc.RpcError as exc:
        return _code(exc)
    return grpc.StatusCode.OK, ""


def _code(exc: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    if not isinstance(exc, grpc.Call):
        raise TypeError("not a call's error")
    return exc.code(), exc.details() or ""


def _check(rpc: Rpc, code: grpc.StatusCode, details: str) -> None:
    assert code not in NEVER, f"{rpc.path}: {code.name} {details}"
    assert "Traceback" not in details
    if rpc.server in ("enclave", "aggregator") and rpc.method.name in (
        "ExecutePartial",
        "MergePartials",
    ):
        assert code != grpc.StatusCode.OK, f"{rpc.path} answered a forged request"


_FUZZ = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


@pytest.mark.parametrize("rpc", RPCS, ids=lambda r: f"{r.service.name}.{r.method.name}")
def test_random_bytes_and_random_messages(rpc: Rpc, channels: Channels) -> None:
    @_FUZZ
    @given(
        payload=st.one_of(
            st.binary(max_size=256),
            _message(rpc.method.input_type).map(lambda m: m.SerializeToString()),
        )
    )
    def fuzz(payload: bytes) -> None:
        _check(rpc, *_call(channels, rpc, payload))

    fuzz()
    # Never a crash: the server that took all this still serves.
    channel = channels.get(rpc.server, "committee/coordinator/node")
    answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


SQL_WORDS = [
    "SELECT", "count(*)", "sum(amount)", "avg(age)", "FROM", "claims", "water_readings",
    "WHERE", "GROUP BY", "ORDER BY", "HAVING", "LIMIT", "1", "age", "category", "person_id",
    "AND", "OR", "NOT", ">", "=", "'x'", "(", ")", ",", "*", "AS", "n", "UNION", "JOIN",
    "read_csv('/etc/passwd')", "$p", "NULL", "CASE WHEN", "THEN", "ELSE", "END", ";",
    "date_trunc('month', service_date)", "FILTER (WHERE", "OVER ()", "DISTINCT", "--", "/*",
]  # fmt: skip


@_FUZZ
@given(
    sql=st.one_of(
        st.lists(st.sampled_from(SQL_WORDS), min_size=1, max_size=14).map(" ".join),
        st.text(max_size=120),
    ),
    purpose=st.sampled_from(["statistics", "planning", "eligibility check", "", "x" * 300]),
)
def test_signed_envelopes_around_random_sql(channels: Channels, sql: str, purpose: str) -> None:
    identity = "qingpu/requester/fuzz-submitquery"
    try:
        envelope = signed_envelope(
            channels.directory,
            sql,
            uuid.uuid4().hex,
            identity=identity,
            purpose=purpose,
            params=[TypedParam(name="p", type="VARCHAR", value="p1-1")] if "$p" in sql else [],
        )
    except DataislandError:
        return  # the client refuses to sign it (empty SQL or purpose): nothing to send

    stub = coordinator_pb2_grpc.CoordinatorServiceStub(channels.get("coordinator", identity))
    try:
        status = stub.SubmitQuery(
            coordinator_pb2.SubmitQueryRequest(envelope=envelope), timeout=20
        ).status
    except grpc.RpcError as exc:
        code, details = _code(exc)
    else:
        code, details = grpc.StatusCode.OK, ""
    assert code not in NEVER, f"{sql!r}: {code.name} {details}"
    if code != grpc.StatusCode.OK:
        return
    if status.state == coordinator_pb2.QUERY_STATE_RUNNING:
        answer = stub.WaitResult(
            coordinator_pb2.WaitResultRequest(query_id=status.query_id, timeout_ms=20_000),
            timeout=25,
        ).status
        assert answer.error.code not in ("INTERNAL", "UNKNOWN"), (sql, answer.error.message)


def test_bytes_that_are_no_message_are_invalid_argument_not_internal(channels: Channels) -> None:
    # gRPC itself would answer INTERNAL ("Exception deserializing request!").
    for rpc in (RPCS[0], next(r for r in RPCS if r.server == "aggregator")):
        code, details = _call(channels, rpc, b"\xff\xff\xff")
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid message" in details
    health = channels.get("coordinator", "committee/coordinator/node").unary_unary(
        "/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.RpcError) as info:
        health(b"\xff\xff\xff", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_oversized_messages_are_resource_exhausted(channels: Channels) -> None:
    requester = next(r for r in RPCS if r.method.name == "SubmitQuery")
    code, details = _call(channels, requester, b"\x0a" + b"\xff" * 5 + b"\x00" * (5 << 20))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    execute = next(r for r in RPCS if r.method.name == "ExecutePartial")
    code, details = _call(channels, execute, b"\x00" * (5 << 20))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details


def test_the_coordinator_answers_real_queries_after_hostile_ones(channels: Channels) -> None:
    with client_for(channels.directory) as client:
        assert client.query("SELECT count(*) AS n FROM claims", purpose="statistics").rows
