"""Every gRPC server answers standard health checks and server reflection, over mutual TLS."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
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
