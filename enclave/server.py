"""Wiring of the enclave roles into gRPC servers from a node configuration file.

This module only builds and starts: what a department or the aggregator does lives in
enclave/department.py and enclave/aggregator.py.
"""

from __future__ import annotations

from importlib.metadata import version

import grpc

from dataisland.errors import ConfigError
from dataisland.federation import NodeConfig, load_federation
from dataisland.rpc import serve_until_signalled
from dataisland.v1 import enclave_pb2_grpc
from enclave.aggregator import Aggregator
from enclave.department import DepartmentEnclave
from enclave.shard import Lockdown, Shard

VERSIONS = {name: version(name) for name in ("duckdb", "sqlglot")}


def serve_department(config: NodeConfig) -> None:
    """Open the department's shard locked down and serve EnclaveService until signalled.

    Raises:
        ConfigError: the configuration, federation file or shard is unusable.
    """
    if config.department is None or config.shard is None:
        raise ConfigError("a department node needs 'department' and 'shard'")
    federation = load_federation(config.federation)
    if config.department not in federation.departments:
        raise ConfigError(f"department {config.department!r} is not in the federation file")
    shard = Shard(config.shard, Lockdown(threads=config.threads, memory_limit=config.memory_limit))
    servicer = DepartmentEnclave(
        department=config.department,
        catalog=federation.catalog(),
        shard=shard,
        query_timeout=config.query_timeout_seconds,
        versions=VERSIONS,
    )

    def register(server: grpc.Server) -> None:
        enclave_pb2_grpc.add_EnclaveServiceServicer_to_server(servicer, server)

    serve_until_signalled(
        register, config.listen, name=f"enclave {config.department}", on_stop=shard.close
    )


def serve_aggregator(config: NodeConfig) -> None:
    """Serve AggregatorService until signalled.

    Raises:
        ConfigError: the configuration or federation file is unusable.
    """
    federation = load_federation(config.federation)
    servicer = Aggregator(
        catalog=federation.catalog(),
        max_result_rows=config.max_result_rows,
        threads=config.threads,
        memory_limit=config.memory_limit,
    )

    def register(server: grpc.Server) -> None:
        enclave_pb2_grpc.add_AggregatorServiceServicer_to_server(servicer, server)

    serve_until_signalled(register, config.listen, name="aggregator")
