"""The aggregator role: re-plan the merge from the envelope, require every partial, merge, release.

The aggregator trusts no plan from the coordinator: it parses the same requester envelope the
departments received, plans the merge itself, and requires exactly one partial, for the same
query hash, from every department its catalog lists as holding the tables.

The caller must be the coordinator and the envelope a requester's own (enclave/admission.py).
This module does not yet verify partial signatures or unseal them (the TEE issue), nor apply the
owners' k thresholds (the Policies issue); HAVING, ORDER BY and LIMIT run in the merge plan.
"""

from __future__ import annotations

import grpc
import pyarrow as pa

from dataisland.canonical import CanonicalResult, query_hash
from dataisland.catalog import Catalog
from dataisland.errors import InvalidInputError, ResourceLimitError
from dataisland.rpc import guarded
from dataisland.v1 import common_pb2, enclave_pb2, enclave_pb2_grpc
from enclave.admission import Admission
from enclave.engine import DuckDBMergeEngine, Lockdown
from enclave.planner import merge_partials, plan_query
from policies.templates import parse_envelope_query


def ipc_to_arrow(payload: bytes, *, department: str) -> pa.Table:
    """Read a partial's Arrow IPC stream.

    Raises:
        InvalidInputError: the payload is not an Arrow IPC stream.
    """
    try:
        with pa.ipc.open_stream(pa.py_buffer(payload)) as reader:
            return reader.read_all()
    except (pa.ArrowInvalid, pa.ArrowException, OSError):
        raise InvalidInputError(f"the partial of {department} is not an Arrow IPC stream") from None


def result_to_proto(
    result: CanonicalResult,
) -> tuple[list[common_pb2.Column], list[common_pb2.Row]]:
    """Columns and rows of a canonical result as wire messages."""
    columns = [common_pb2.Column(name=c.name, type=c.type) for c in result.columns]
    rows = [
        common_pb2.Row(
            values=[common_pb2.Value() if v is None else common_pb2.Value(text=v) for v in row]
        )
        for row in result.rows()
    ]
    return columns, rows


class Aggregator(enclave_pb2_grpc.AggregatorServiceServicer):
    """The AggregatorService of the executive committee's node."""

    def __init__(
        self, *, catalog: Catalog, max_result_rows: int, admission: Admission, lockdown: Lockdown
    ) -> None:
        self.catalog = catalog
        self.admission = admission
        self.max_result_rows = max_result_rows
        self.engine = DuckDBMergeEngine(lockdown)

    @guarded
    def MergePartials(
        self, request: enclave_pb2.MergePartialsRequest, context: grpc.ServicerContext
    ) -> enclave_pb2.MergePartialsResponse:
        self.admission.coordinator(context, rpc="MergePartials")
        checked, _requester = self.admission.admit(request.envelope, once=True)
        parsed = parse_envelope_query(checked, self.catalog)
        plan = plan_query(parsed, self.catalog)
        expected_hash = query_hash(parsed.canonical_sql).hex()
        partials: dict[str, pa.Table] = {}
        thresholds: dict[str, int] = {}
        for partial in request.partials:
            if partial.query_hash != expected_hash:
                raise InvalidInputError(
                    f"the partial of {partial.department} is for a different query"
                )
            if partial.department in partials:
                raise InvalidInputError(f"two partials from {partial.department}")
            if partial.encoding != enclave_pb2.PARTIAL_ENCODING_ARROW_IPC:
                raise InvalidInputError(
                    f"the partial of {partial.department} has an unknown encoding"
                )
            partials[partial.department] = ipc_to_arrow(
                partial.payload, department=partial.department
            )
            thresholds[partial.department] = partial.k
        outcome = merge_partials(plan, partials, self.engine, k=thresholds)
        merged = outcome.result
        if merged.table.num_rows > self.max_result_rows:
            raise ResourceLimitError(
                f"the result has more than {self.max_result_rows} rows; aggregate more coarsely"
            )
        result = CanonicalResult.from_arrow(merged.table, merged.types)
        columns, rows = result_to_proto(result)
        return enclave_pb2.MergePartialsResponse(
            columns=columns,
            rows=rows,
            result_digest=result.digest().hex(),
            suppressed=outcome.suppressed,
            query_hash=expected_hash,
        )
