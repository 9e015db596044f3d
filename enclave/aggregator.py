"""The aggregator role: re-plan the merge from the envelope, require every partial, merge, release.

The aggregator trusts no plan from the coordinator: it parses the same requester envelope the
departments received, plans the merge itself, and requires exactly one partial, for the same
query hash, from every department its catalog lists as holding the tables.

The caller must be the coordinator and the envelope a requester's own (enclave/admission.py).
Each partial must be sealed to this aggregator's attested HPKE key and signed by its
department's attested key: the aggregator re-verifies the department evidence the coordinator
relays against its own federation file, checks the signature over the partial statement (which
binds k and the policy hashes too), and only then opens it. The released result is committed to
(salted, as dataisland.canonical.commit) and the commitment signed with this enclave's attested
key. The release rules, HAVING, ORDER BY and LIMIT run in the merge plan (enclave/planner.py).
"""

from __future__ import annotations

import hashlib

import grpc
import pyarrow as pa

from dataisland.attestation import (
    TrustAnchors,
    partial_statement,
    result_statement,
    verify_statement,
)
from dataisland.canonical import CanonicalResult, canonical_json, commit, new_salt, query_hash
from dataisland.catalog import Catalog
from dataisland.errors import InvalidInputError, ResourceLimitError
from dataisland.rpc import guarded
from dataisland.v1 import common_pb2, enclave_pb2, enclave_pb2_grpc
from enclave.admission import Admission
from enclave.attestation import Attester
from enclave.engine import DuckDBMergeEngine, Lockdown
from enclave.planner import PlanCache, merge_partials
from enclave.sealing import open_sealed
from policies.sqlfront import ParseCache
from policies.templates import logged_sql, parse_envelope_query


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
        self,
        *,
        catalog: Catalog,
        max_result_rows: int,
        admission: Admission,
        max_result_bytes: int = 64 << 20,
        lockdown: Lockdown,
        attester: Attester,
        anchors: TrustAnchors,
    ) -> None:
        self.attester = attester
        self.anchors = anchors
        self.catalog = catalog
        self.parse = ParseCache(catalog)
        self.plans = PlanCache(catalog)
        self.admission = admission
        self.max_result_rows = max_result_rows
        self.max_result_bytes = max_result_bytes
        self.engine = DuckDBMergeEngine(lockdown)

    @guarded
    def Attest(
        self,
        request: enclave_pb2.AggregatorServiceAttestRequest,
        context: grpc.ServicerContext,
    ) -> enclave_pb2.AggregatorServiceAttestResponse:
        self.admission.coordinator(context, rpc="Attest")
        return enclave_pb2.AggregatorServiceAttestResponse(
            evidence=self.attester.evidence(request.nonce)
        )

    def _open(
        self, partial: enclave_pb2.Partial, request: enclave_pb2.MergePartialsRequest
    ) -> pa.Table:
        """Verify the department's evidence and signature, then open its sealed partial.

        Raises:
            AttestationError: the department's relayed evidence fails a check.
            BadSignatureError: the partial is not signed by that department's attested key.
            PermissionDeniedError: it does not open for this aggregator, query and department.
            InvalidInputError: not a sealed partial of this query.
        """
        department = partial.department
        if partial.encoding != enclave_pb2.PARTIAL_ENCODING_HPKE_SEALED:
            raise InvalidInputError(
                f"the partial of {department} is not sealed to this aggregator; "
                "plaintext partials are refused"
            )
        if partial.query_id != request.query_id:
            raise InvalidInputError(f"the partial of {department} is for another query id")
        attested = self.anchors.verify(
            request.department_evidence.get(department, b""),
            node=department,
            role="department",
            now=self.admission.clock(),
        )
        statement = partial_statement(
            department=department,
            query_id=partial.query_id,
            query_hash=partial.query_hash,
            ciphertext_sha256=hashlib.sha256(partial.payload).hexdigest(),
            k=partial.k,
            policy_hashes=dict(partial.policy_hashes),
        )
        verify_statement(
            attested.signing_key, statement, partial.signature, what=f"the partial of {department}"
        )
        payload = open_sealed(
            partial.payload,
            private_key=self.attester.keys.hpke_private,
            public_bytes=self.attester.keys.hpke_public,
            query_id=partial.query_id,
            query_hash=partial.query_hash,
            department=department,
        )
        return ipc_to_arrow(payload, department=department)

    @guarded
    def MergePartials(
        self, request: enclave_pb2.MergePartialsRequest, context: grpc.ServicerContext
    ) -> enclave_pb2.MergePartialsResponse:
        self.admission.coordinator(context, rpc="MergePartials")
        checked, _requester = self.admission.admit(request.envelope, once=True)
        parsed = parse_envelope_query(checked, self.parse)
        plan = self.plans.plan(parsed)
        expected_hash = query_hash(logged_sql(checked, parsed)).hex()
        partials: dict[str, pa.Table] = {}
        thresholds: dict[str, int] = {}
        for partial in request.partials:
            if partial.query_hash != expected_hash:
                raise InvalidInputError(
                    f"the partial of {partial.department} is for a different query"
                )
            if partial.department in partials:
                raise InvalidInputError(f"two partials from {partial.department}")
            partials[partial.department] = self._open(partial, request)
            thresholds[partial.department] = partial.k
        outcome = merge_partials(plan, partials, self.engine, k=thresholds)
        merged = outcome.result
        # Limits apply to the released result only, never to partials (DESIGN.md).
        if merged.table.num_rows > self.max_result_rows:
            raise ResourceLimitError(
                f"the released result has more than {self.max_result_rows} rows "
                "(max_result_rows); aggregate more coarsely",
                limit="max_result_rows",
                subject="the released result",
            )
        result = CanonicalResult.from_arrow(merged.table, merged.types)
        columns, rows = result_to_proto(result)
        size = sum(row.ByteSize() for row in rows)
        if size > self.max_result_bytes:
            raise ResourceLimitError(
                f"the released result is {size} bytes, more than {self.max_result_bytes} "
                "(max_result_bytes); aggregate more coarsely or select fewer columns",
                limit="max_result_bytes",
                subject="the released result",
            )
        digest = result.digest().hex()
        salt = new_salt()
        # The same opening the log's result commitment uses (coordinator/audit.py).
        commitment = commit(
            canonical_json({"result_digest": digest, "suppressed": outcome.suppressed}), salt=salt
        )
        statement = result_statement(
            query_id=request.query_id, query_hash=expected_hash, result_commitment=commitment
        )
        return enclave_pb2.MergePartialsResponse(
            columns=columns,
            rows=rows,
            result_digest=digest,
            suppressed=outcome.suppressed,
            query_hash=expected_hash,
            result_commitment=commitment,
            result_salt=salt,
            result_signature=self.attester.keys.sign(statement),
        )
