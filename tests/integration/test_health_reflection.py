"""Every gRPC server answers standard health checks and server reflection, over mutual TLS.

Generic clients call them knowing nothing of dataisland: one built only from what reflection
returns, and `buf curl` (from the dev tools), as an operator would with grpcurl or buf curl.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from dataisland.federation import load_federation
from dataisland.identity import credential_paths
from dataisland.supervisor import FederationProcesses
from dataisland.tls import KeyPair, secure_channel

pytestmark = pytest.mark.integration


def _servers(directory: Path) -> list[tuple[str, str, bytes, str]]:
    """(name, address, CA of the server, DNS name) of every gRPC server of the federation."""
    federation = load_federation(directory / "federation.yaml")
    committee = federation.committee
    servers = [
        (
            "coordinator",
            committee.coordinator,
            committee.ca.read_bytes(),
            federation.dns_name("coordinator", committee.name),
        ),
        (
            "aggregator",
            committee.aggregator,
            committee.ca.read_bytes(),
            federation.dns_name("aggregator", committee.name),
        ),
    ]
    servers += [
        (name, entry.enclave, entry.ca.read_bytes(), federation.dns_name("enclave", name))
        for name, entry in federation.departments.items()
    ]
    return servers


def test_every_server_lists_its_services_and_is_serving(
    running: FederationProcesses, federation_dir: Path
) -> None:
    # The coordinator's certificate: every server accepts it (enclaves accept only it).
    certificate, key = credential_paths(
        federation_dir, department="committee", role="coordinator", name="node"
    )
    own = KeyPair.load(certificate, key)
    seen = {}
    for name, address, ca, dns in _servers(federation_dir):
        channel = secure_channel(address, own=own, server_ca_pem=ca, server_name=dns)
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert "grpc.health.v1.Health" in services, name
        assert "grpc.reflection.v1alpha.ServerReflection" in services, name
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ["", *(s for s in services if s.startswith("dataisland."))]:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, (name, service)
        seen[name] = services
        channel.close()
    assert "dataisland.v1.CoordinatorService" in seen["coordinator"]
    assert "dataisland.v1.AggregatorService" in seen["aggregator"]
    assert "dataisland.v1.EnclaveService" in seen["qingpu"]


def test_health_needs_mutual_tls(running: FederationProcesses, federation_dir: Path) -> None:
    address = load_federation(federation_dir / "federation.yaml").committee.coordinator
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as info:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def _generic_check(channel: grpc.Channel) -> str:
    """Health.Check with nothing compiled in: the method, its request and response types come
    from the server's reflection, and the messages are built from those descriptors."""
    database = ProtoReflectionDescriptorDatabase(channel)
    pool = DescriptorPool(database)
    service = pool.FindServiceByName("grpc.health.v1.Health")
    method = service.FindMethodByName("Check")
    request_class = GetMessageClass(method.input_type)
    response_class = GetMessageClass(method.output_type)
    call = channel.unary_unary(
        f"/{service.full_name}/{method.name}",
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=response_class.FromString,
    )
    answer = call(request_class(), timeout=10)
    return str(json_format.MessageToDict(answer)["status"])


def test_a_generic_client_gets_every_servers_health_through_reflection(
    running: FederationProcesses, federation_dir: Path
) -> None:
    certificate, key = credential_paths(
        federation_dir, department="committee", role="coordinator", name="node"
    )
    own = KeyPair.load(certificate, key)
    for name, address, ca, dns in _servers(federation_dir):
        with secure_channel(address, own=own, server_ca_pem=ca, server_name=dns) as channel:
            assert _generic_check(channel) == "SERVING", name


def test_buf_curl_gets_every_servers_health_through_reflection(
    running: FederationProcesses, federation_dir: Path, tmp_path: Path
) -> None:
    # buf curl is a generic gRPC client (like grpcurl): it knows nothing of dataisland's protos.
    buf = Path(sys.executable).parent / "buf"
    certificate, key = credential_paths(
        federation_dir, department="committee", role="coordinator", name="node"
    )
    for name, address, ca, dns in _servers(federation_dir):
        ca_file = tmp_path / f"{name}-ca.pem"
        ca_file.write_bytes(ca)
        done = subprocess.run(
            [
                str(buf), "curl", "--protocol", "grpc", "--cacert", str(ca_file),
                "--cert", str(certificate), "--key", str(key), "--servername", dns,
                "--data", "{}", f"https://{address}/grpc.health.v1.Health/Check",
            ],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, (name, done.stderr)
        assert json.loads(done.stdout) == {"status": "SERVING"}, name
