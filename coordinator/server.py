"""Wiring of the coordinator into a gRPC server from a node configuration file."""

from __future__ import annotations

import time

import grpc

from coordinator.book import QueryBook
from coordinator.service import Coordinator
from dataisland.federation import NodeConfig, load_federation
from dataisland.rpc import insecure_channel, serve_until_signalled
from dataisland.v1 import coordinator_pb2_grpc, enclave_pb2_grpc


def serve_coordinator(config: NodeConfig) -> None:
    """Connect to every enclave and the aggregator and serve CoordinatorService until signalled.

    Raises:
        ConfigError: the configuration or federation file is unusable.
    """
    federation = load_federation(config.federation)
    enclaves = {
        name: enclave_pb2_grpc.EnclaveServiceStub(insecure_channel(entry.enclave))
        for name, entry in federation.departments.items()
    }
    aggregator = enclave_pb2_grpc.AggregatorServiceStub(
        insecure_channel(federation.committee.aggregator)
    )
    book = QueryBook(
        retention_seconds=config.retention_seconds,
        max_queries=config.retention_max_queries,
        clock=time.time,
    )
    servicer = Coordinator(
        catalog=federation.catalog(),
        enclaves=enclaves,
        aggregator=aggregator,
        query_timeout=config.query_timeout_seconds,
        book=book,
    )

    def register(server: grpc.Server) -> None:
        coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(servicer, server)

    serve_until_signalled(register, config.listen, name="coordinator", on_stop=servicer.close)
