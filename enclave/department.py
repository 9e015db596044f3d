"""The department role: receive a requester's envelope, plan it here, run the partial, return it.

The enclave receives the query, never a plan: it parses the envelope it was sent, checks and
plans the SQL with the shared code, and executes only the partial SQL regenerated from the checked
tree. Only the partial (grouped aggregates and distinct-unit counts) leaves.

The caller must be the coordinator and the envelope a requester's own (enclave/admission.py).
The query is judged by this department's own policy alone, verified against the officer keys this
department pins and re-read on every query; a query that needs approval runs only with a valid
approval of one of its officers bound to this very envelope. The threshold k and the policy hash
travel beside the partial.

The partial leaves only sealed (enclave/sealing.py) to the aggregator whose evidence the
coordinator relayed, after this enclave re-verified that evidence against its own federation
file's vendor root and reference values (never the coordinator's word), and signed with this
enclave's attested key over the partial statement (SHA-256 of the ciphertext, the query, k and
the policy hashes). This module does not merge or release anything.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from collections.abc import Callable, Mapping, Sequence

import grpc
import pyarrow as pa

from dataisland.approvals import is_template_approval
from dataisland.attestation import TrustAnchors, partial_statement
from dataisland.canonical import query_hash
from dataisland.catalog import Catalog
from dataisland.envelopes import APPROVAL_WINDOW, MAX_AGE, CheckedEnvelope, check_fresh
from dataisland.errors import InvalidInputError, PermissionDeniedError, SchemaMismatchError
from dataisland.rpc import guarded
from dataisland.v1 import common_pb2, enclave_pb2, enclave_pb2_grpc
from enclave.admission import Admission
from enclave.attestation import Attester
from enclave.planner import PlanCache
from enclave.sealing import seal
from enclave.shard import Shard
from policies.approvals import ApprovalError, verify_approval, verify_template_approval
from policies.checker import Verdict, check
from policies.keeper import PolicyKeeper
from policies.sqlfront import ParseCache
from policies.templates import parse_envelope_query

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
        keeper: PolicyKeeper,
        read_policy: Callable[[], tuple[bytes, bytes]],
        attester: Attester,
        anchors: TrustAnchors,
        committee: str,
    ) -> None:
        self.department = department
        self.attester = attester
        self.anchors = anchors
        self.committee = committee
        self.admission = admission
        self.keeper = keeper
        self.officers = keeper.officers
        self.read_policy = read_policy
        # Runs used per template approval. Kept in memory: a restart forgets them, which the
        # TEE issue's state rebuilt from the cosigned log closes.
        self._runs_lock = threading.Lock()
        self._runs_used: dict[str, int] = {}
        self.catalog = catalog
        self.parse = ParseCache(catalog)
        self.plans = PlanCache(catalog)
        self.shard = shard
        self.query_timeout = query_timeout
        self.versions = dict(versions)
        check_shard_schema(department, catalog, shard.tables())
        # Tables whose partials may bound units by their masks (verified here, not trusted).
        self.masked = shard.verify_unit_masks(
            {n: i.privacy_unit for n, i in catalog.items() if department in i.holders}
        )
        self.dense = shard.dense_columns(self.masked)

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
    def Attest(
        self, request: enclave_pb2.AttestRequest, context: grpc.ServicerContext
    ) -> enclave_pb2.AttestResponse:
        self.admission.coordinator(context, rpc="Attest")
        return enclave_pb2.AttestResponse(evidence=self.attester.evidence(request.nonce))

    @guarded
    def ExecutePartial(
        self, request: enclave_pb2.ExecutePartialRequest, context: grpc.ServicerContext
    ) -> enclave_pb2.ExecutePartialResponse:
        self.admission.coordinator(context, rpc="ExecutePartial")
        checked, requester = self.admission.admit(request.envelope, once=True)
        parsed = parse_envelope_query(checked, self.parse)
        plan = self.plans.plan(parsed)
        if self.department not in plan.departments:
            raise PermissionDeniedError(
                f"department {self.department} holds none of the tables {list(parsed.tables)}"
            )
        policy = self.keeper.accept(*self.read_policy())
        now = self.admission.clock()
        decision = check(
            parsed,
            requester=requester,
            purpose=checked.envelope.purpose,
            policies={self.department: policy},
            catalog=self.catalog,
            now=now,
            only={self.department},
        )
        if decision.verdict is Verdict.DENY:
            raise PermissionDeniedError(
                f"{self.department}'s policy denies the query: "
                + "; ".join(str(r) for r in decision.reasons if r.denies)
            )
        if decision.verdict is Verdict.NEEDS_APPROVAL:
            template = decision.template
            self._require_approval(
                request.approvals,
                checked,
                requester.spiffe_id,
                policy.hash,
                now,
                template_hash=template.template_hashes.get(self.department) if template else None,
            )
        else:
            # Only an approved query may be older than the usual freshness window.
            check_fresh(checked.envelope, now=now, max_age=MAX_AGE)
        # Checked before running anything: a partial is computed only if it can leave sealed.
        aggregator = self.anchors.verify(
            request.aggregator_evidence, node=self.committee, role="aggregator", now=now
        )
        remaining = context.time_remaining()
        timeout = self.query_timeout if remaining is None else min(self.query_timeout, remaining)
        k = decision.k[self.department]
        sql = plan.partial_sql_for(k=k, masked=self.masked, dense=self.dense)
        partial = self.shard.run(sql, timeout=timeout)
        digest = query_hash(parsed.canonical_sql).hex()
        ciphertext = seal(
            arrow_to_ipc(partial.table),
            aggregator_key=aggregator.hpke_key,
            query_id=request.query_id,
            query_hash=digest,
            department=self.department,
        )
        policy_hashes = {self.department: policy.hash}
        statement = partial_statement(
            department=self.department,
            query_id=request.query_id,
            query_hash=digest,
            ciphertext_sha256=hashlib.sha256(ciphertext).hexdigest(),
            k=k,
            policy_hashes=policy_hashes,
        )
        return enclave_pb2.ExecutePartialResponse(
            partial=enclave_pb2.Partial(
                department=self.department,
                query_id=request.query_id,
                query_hash=digest,
                encoding=enclave_pb2.PARTIAL_ENCODING_HPKE_SEALED,
                payload=ciphertext,
                signature=self.attester.keys.sign(statement),
                k=k,
                policy_hashes=policy_hashes,
            )
        )

    def _require_approval(
        self,
        approvals: Sequence[common_pb2.Approval],
        checked: CheckedEnvelope,
        requester: str,
        policy_hash: str,
        now: dt.datetime,
        template_hash: str | None,
    ) -> None:
        """Accept the query only with one valid approval by an officer of this department: of
        this very envelope, or (for a template) of the template for this requester and purpose
        with a run left, which this enclave then counts as used.

        Raises:
            ApprovalError: no approval of this department, or every one of them fails.
        """
        failures = []
        for item in approvals:
            if is_template_approval(item.approval):
                if template_hash is None:
                    failures.append("a template approval cannot approve an ad-hoc query")
                    continue
                try:
                    approval = verify_template_approval(
                        item.approval,
                        item.signature,
                        officers=self.officers,
                        department=self.department,
                        template_hash=template_hash,
                        requester=requester,
                        purpose=checked.envelope.purpose,
                        now=now,
                    )
                except ApprovalError as exc:
                    failures.append(str(exc))
                    continue
                except InvalidInputError:
                    continue
                with self._runs_lock:
                    used = self._runs_used.get(approval.approval_id, 0)
                    if used < approval.runs:
                        self._runs_used[approval.approval_id] = used + 1
                        return
                failures.append(
                    f"all {approval.runs} run(s) of the template approval by "
                    f"{approval.officer} are used"
                )
                continue
            try:
                verify_approval(
                    item.approval,
                    item.signature,
                    officers=self.officers,
                    department=self.department,
                    envelope_digest=checked.envelope.digest().hex(),
                    requester=requester,
                    purpose=checked.envelope.purpose,
                    policy_hash=policy_hash,
                    now=now,
                    latest_expiry=checked.envelope.issued_at + APPROVAL_WINDOW,
                )
                return
            except ApprovalError as exc:
                failures.append(str(exc))
            except InvalidInputError:
                continue  # another department's record, or not one at all: not ours to judge
        detail = f" ({'; '.join(failures)})" if failures else ""
        raise ApprovalError(
            f"{self.department}'s policy needs an officer's approval of this query{detail}"
        )
