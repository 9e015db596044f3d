"""The department role: receive a requester's envelope, plan it here, run the partial, return it.

The enclave receives the query, never a plan: it parses the envelope it was sent, checks and
plans the SQL with the shared code, and executes only the partial SQL regenerated from the checked
tree. Only the partial (grouped aggregates and distinct-unit counts) leaves.

The caller must be the coordinator and the envelope a requester's own (enclave/admission.py).
This module does not yet check policies or attestation (the Policies and TEE issues add them
here); it does not merge or release anything.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
import pyarrow as pa

from dataisland.canonical import query_hash
from dataisland.catalog import Catalog
from dataisland.errors import PermissionDeniedError, SchemaMismatchError
from dataisland.rpc import guarded
from dataisland.v1 import common_pb2, enclave_pb2, enclave_pb2_grpc
from enclave.admission import Admission
from enclave.planner import plan_query
from enclave.shard import Shard
from policies.sqlfront import parse_query

VERSIONS_KEYS = ("duckdb", "sqlglot")


def arrow_to_ipc(table: pa.Table) -> bytes:
    """Serialise a partial as an Arrow IPC stream."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def check_shard_schema(
    department: str, catalog: Catalog, tables: Mapping[str, Mapping[str, str]]
) -> None:
    """Refuse to serve a shard whose tables differ from the federation's schema.

    Raises:
        SchemaMismatchError: a table this department holds is missing or typed differently.
    """
    for name, info in catalog.items():
        if department not in info.holders:
            continue
        actual = tables.get(name)
        if actual is None:
            raise SchemaMismatchError(f"shard of {department} lacks table {name!r}")
        if dict(actual) != dict(info.columns):
            raise SchemaMismatchError(
                f"shard table {name!r} of {department} has columns {dict(actual)}, "
                f"the federation says {dict(info.columns)}"
            )


class DepartmentEnclave(enclave_pb2_grpc.EnclaveServiceServicer):
    """The EnclaveService of one department node."""

    def __init__(
        self,
        *,
        department: str,
        catalog: Catalog,
        shard: Shard,
        query_timeout: float,
        versions: Mapping[str, str],
        admission: Admission,
    ) -> None:
        self.department = department
        self.admission = admission
        self.catalog = catalog
        self.shard = shard
        self.query_timeout = query_timeout
        self.versions = dict(versions)
        check_shard_schema(department, catalog, shard.tables())

    @guarded
    def DescribeShard(
        self, request: enclave_pb2.DescribeShardRequest, context: grpc.ServicerContext
    ) -> enclave_pb2.DescribeShardResponse:
        self.admission.coordinator(context, rpc="DescribeShard")
        return enclave_pb2.DescribeShardResponse(
            department=self.department,
            tables=[
                enclave_pb2.TableSchema(
                    name=info.name,
                    columns=[common_pb2.Column(name=c, type=t) for c, t in info.columns.items()],
                    privacy_unit=info.privacy_unit,
                )
                for info in self.catalog.values()
                if self.department in info.holders
            ],
            versions=self.versions,
        )

    @guarded
    def ExecutePartial(
        self, request: enclave_pb2.ExecutePartialRequest, context: grpc.ServicerContext
    ) -> enclave_pb2.ExecutePartialResponse:
        self.admission.coordinator(context, rpc="ExecutePartial")
        checked, _requester = self.admission.admit(request.envelope, once=True)
        parsed = parse_query(checked.envelope.sql, catalog=self.catalog)
        plan = plan_query(parsed, self.catalog)
        if self.department not in plan.departments:
            raise PermissionDeniedError(
                f"department {self.department} holds none of the tables {list(parsed.tables)}"
            )
        remaining = context.time_remaining()
        timeout = self.query_timeout if remaining is None else min(self.query_timeout, remaining)
        partial = self.shard.run(plan.partial_sql, timeout=timeout)
        return enclave_pb2.ExecutePartialResponse(
            partial=enclave_pb2.Partial(
                department=self.department,
                query_id=request.query_id,
                query_hash=query_hash(parsed.canonical_sql).hex(),
                encoding=enclave_pb2.PARTIAL_ENCODING_ARROW_IPC,
                payload=arrow_to_ipc(partial.table),
            )
        )
