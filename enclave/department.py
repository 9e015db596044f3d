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
the policy hashes).

Before a partial leaves, the enclave reports the execution to its own node's witness (a signed
execution report entry, which the coordinator then logs); while an earlier report stays out of
the log too long the witness refuses, and the enclave serves nothing. A query that needs an
officer's approval runs in two steps: `DeclareRun` verifies the approval, counts the run and
returns a signed run intent; `ExecutePartial` releases the partial only with that intent in a
checkpoint a quorum of witnesses cosigned. At start, and before serving any query, the enclave
rebuilds what it must remember (policy versions, runs used, envelopes run) from the log
(enclave/history.py). This module does not merge or release anything.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import grpc
import pyarrow as pa

from dataisland.approvals import is_template_approval
from dataisland.attestation import TrustAnchors, partial_statement
from dataisland.canonical import format_rfc3339, query_hash
from dataisland.catalog import Catalog
from dataisland.envelopes import APPROVAL_WINDOW, MAX_AGE, CheckedEnvelope, check_fresh
from dataisland.errors import (
    DataislandError,
    InvalidInputError,
    NodeUnavailableError,
    PermissionDeniedError,
    SchemaMismatchError,
)
from dataisland.identity import Principal
from dataisland.rpc import guarded
from dataisland.v1 import common_pb2, enclave_pb2, enclave_pb2_grpc
from enclave.admission import Admission
from enclave.attestation import Attester
from enclave.history import EnclaveLog, Recalled, recall, wait_for_recall
from enclave.planner import PlanCache
from enclave.sealing import seal
from enclave.shard import Shard
from ledger.entries import ExecutionReportEntry, RunIntentEntry
from ledger.errors import LedgerError
from policies.approvals import ApprovalError, verify_approval, verify_template_approval
from policies.checker import Verdict, check
from policies.document import Policy
from policies.keeper import PolicyKeeper
from policies.sqlfront import ParseCache, ParsedQuery
from policies.templates import logged_sql, parse_envelope_query

log = logging.getLogger("dataisland.enclave")

VERSIONS_KEYS = ("duckdb", "sqlglot")
READY_WAIT = 30.0
"""Longest a query waits for the enclave to finish rebuilding its state from the log."""
MAX_DECLARED = 10_000
"""Run intents declared and not yet executed that the enclave remembers (oldest dropped)."""


@dataclass(frozen=True)
class _Approved:
    """The approval a query runs under, as this enclave verified it."""

    approval_hash: str
    template_hash: str | None
    runs: int


@dataclass(frozen=True)
class _Judged:
    """A query admitted and judged by this department's policy."""

    checked: CheckedEnvelope
    requester: Principal
    parsed: ParsedQuery
    policy: Policy
    needs_approval: bool
    k: int
    template_hash: str | None


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
        log: EnclaveLog,
        started_at: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.department = department
        self.attester = attester
        self.anchors = anchors
        self.committee = committee
        self.admission = admission
        self.keeper = keeper
        self.officers = keeper.officers
        self.read_policy = read_policy
        self.log = log
        self.started_at = started_at
        self.clock = clock
        # Runs used per approval (by approval hash) and the run intents declared and not yet
        # executed (by query id); rebuilt from the log at start (`restore`).
        self._runs_lock = threading.Lock()
        self._runs_used: dict[str, int] = {}
        self._declared: OrderedDict[str, bytes] = OrderedDict()
        self._declared_requests: set[tuple[str, str]] = set()
        self._ready = threading.Event()
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

    # -- state across restarts -------------------------------------------------------------------

    def restore(self, *, stop: Callable[[], bool] = lambda: False) -> bool:
        """Rebuild policy versions, runs used and envelopes run from the log, then serve.

        Blocks until a checkpoint a quorum cosigned after `started_at` is available and its
        entries verify (retrying), or `stop()`. Returns whether the enclave is ready.
        """

        def rebuild(entries: Iterable[bytes]) -> Recalled:
            return recall(
                entries,
                department=self.department,
                anchors=self.anchors,
                officers=self.officers,
                required=self.keeper.required,
            )

        def waiting(exc: DataislandError) -> None:
            log.info("enclave %s restoring its state: %s", self.department, exc)

        recalled = wait_for_recall(
            self.log, started_at=self.started_at, rebuild=rebuild, stop=stop, on_retry=waiting
        )
        if recalled is None:
            return False
        self.admission.remember(recalled.seen)
        self.keeper.remember(recalled.policies)
        with self._runs_lock:
            for approval_hash, intents in recalled.runs.items():
                self._runs_used[approval_hash] = max(
                    self._runs_used.get(approval_hash, 0), len(intents)
                )
        log.info(
            "enclave %s restored from %d log entries: %d envelopes, %d approvals with runs, "
            "highest policy version %s",
            self.department,
            recalled.size,
            len(recalled.seen),
            len(recalled.runs),
            max(recalled.policies, default="none"),
        )
        self._ready.set()
        return True

    def _await_ready(self, context: grpc.ServicerContext) -> None:
        remaining = context.time_remaining()
        wait = READY_WAIT if remaining is None else max(0.0, min(READY_WAIT, remaining - 0.5))
        if not self._ready.wait(wait):
            raise NodeUnavailableError(
                f"department {self.department}'s enclave is still rebuilding its state from the "
                "log (it waits for a checkpoint a quorum of witnesses cosigned after it started)"
            )

    # -- queries --------------------------------------------------------------------------------

    def _judge(self, signed: common_pb2.SignedEnvelope) -> _Judged:
        checked, requester = self.admission.admit(signed, once=False)
        parsed = parse_envelope_query(checked, self.parse)
        plan = self.plans.plan(parsed)
        if self.department not in plan.departments:
            raise PermissionDeniedError(
                f"department {self.department} holds none of the tables {list(parsed.tables)}"
            )
        policy = self.keeper.accept(*self.read_policy())
        decision = check(
            parsed,
            requester=requester,
            purpose=checked.envelope.purpose,
            policies={self.department: policy},
            catalog=self.catalog,
            now=self.admission.clock(),
            only={self.department},
        )
        if decision.verdict is Verdict.DENY:
            raise PermissionDeniedError(
                f"{self.department}'s policy denies the query: "
                + "; ".join(str(r) for r in decision.reasons if r.denies)
            )
        template = decision.template
        return _Judged(
            checked=checked,
            requester=requester,
            parsed=parsed,
            policy=policy,
            needs_approval=decision.verdict is Verdict.NEEDS_APPROVAL,
            k=decision.k[self.department],
            template_hash=template.template_hashes.get(self.department) if template else None,
        )

    @guarded
    def DeclareRun(
        self, request: enclave_pb2.DeclareRunRequest, context: grpc.ServicerContext
    ) -> enclave_pb2.DeclareRunResponse:
        self.admission.coordinator(context, rpc="DeclareRun")
        self._await_ready(context)
        judged = self._judge(request.envelope)
        if not judged.needs_approval:
            raise InvalidInputError(
                f"{self.department}'s policy needs no approval for this query: nothing to declare"
            )
        key = (judged.requester.spiffe_id, judged.checked.envelope.request_id)
        if self.admission.has_run(*key):
            raise self.admission.replayed(*key)
        now = self.admission.clock()
        with self._runs_lock:
            if key in self._declared_requests:
                raise PermissionDeniedError(
                    f"request {key[1]} of {judged.requester} already has a run declared here"
                )
            approved = self._require_approval(
                request.approvals,
                judged.checked,
                judged.requester.spiffe_id,
                judged.policy.hash,
                now,
                template_hash=judged.template_hash,
            )
            run = self._runs_used.get(approved.approval_hash, 0) + 1
            if run > approved.runs:
                raise ApprovalError(
                    f"all {approved.runs} run(s) of the approval {approved.approval_hash[:12]} "
                    "are used"
                )
            self._runs_used[approved.approval_hash] = run
            self._declared_requests.add(key)
            intent = RunIntentEntry(
                version=1,
                kind="run_intent",
                intent_id=uuid.uuid4().hex,
                department=self.department,
                enclave=self.department,
                query_id=request.query_id,
                request_id=judged.checked.envelope.request_id,
                requester=judged.requester.spiffe_id,
                purpose=judged.checked.envelope.purpose,
                envelope_digest=judged.checked.envelope.digest().hex(),
                approval_hash=approved.approval_hash,
                template_hash=approved.template_hash,
                run=run,
                runs=approved.runs,
                recorded_at=format_rfc3339(now),
                signature="AA==",
            )
            signed = intent.model_copy(
                update={"signature": _b64(self.attester.keys.sign(intent.signed_bytes()))}
            )
            data = signed.to_bytes()
            self._declared[request.query_id] = data
            while len(self._declared) > MAX_DECLARED:
                self._declared.popitem(last=False)
        return enclave_pb2.DeclareRunResponse(intent=data)

    def _check_intent(self, request: enclave_pb2.ExecutePartialRequest, judged: _Judged) -> None:
        """An approved query runs only with the intent this enclave declared for it, in the log.

        Raises:
            PermissionDeniedError: no intent, another one, or one that is not under a checkpoint
                a quorum cosigned.
        """
        with self._runs_lock:
            declared = self._declared.get(request.query_id)
        if not request.HasField("intent") or declared is None:
            raise PermissionDeniedError(
                f"{self.department} releases an approved query only after the run intent it "
                "declared for it is in the log"
            )
        intent = request.intent
        if intent.entry != declared:
            raise PermissionDeniedError("the run intent is not the one this enclave declared")
        digest = judged.checked.envelope.digest().hex()
        if RunIntentEntry.from_bytes(declared).envelope_digest != digest:
            raise PermissionDeniedError("the run intent was declared for another envelope")
        try:
            self.log.verify_logged(
                declared,
                index=intent.index,
                proof=list(intent.inclusion_proof),
                note=intent.checkpoint,
            )
        except LedgerError as exc:
            raise PermissionDeniedError(f"the run intent is not shown in the log: {exc}") from None
        with self._runs_lock:
            self._declared.pop(request.query_id, None)

    @guarded
    def ExecutePartial(
        self, request: enclave_pb2.ExecutePartialRequest, context: grpc.ServicerContext
    ) -> enclave_pb2.ExecutePartialResponse:
        self.admission.coordinator(context, rpc="ExecutePartial")
        self._await_ready(context)
        judged = self._judge(request.envelope)
        checked, parsed, policy = judged.checked, judged.parsed, judged.policy
        now = self.admission.clock()
        if judged.needs_approval:
            # The approval is checked again (it may have expired), the run was counted when it
            # was declared, and the partial leaves only once the declared intent is logged.
            self._require_approval(
                request.approvals,
                checked,
                judged.requester.spiffe_id,
                policy.hash,
                now,
                template_hash=judged.template_hash,
            )
            self._check_intent(request, judged)
        else:
            # Only an approved query may be older than the usual freshness window.
            check_fresh(checked.envelope, now=now, max_age=MAX_AGE)
        # Checked before running anything: a partial is computed only if it can leave sealed.
        aggregator = self.anchors.verify(
            request.aggregator_evidence, node=self.committee, role="aggregator", now=now
        )
        # Every check passed: this envelope runs here now, and never again.
        self.admission.claim(
            judged.requester.spiffe_id, checked.envelope.request_id, checked.envelope.issued_at
        )
        plan = self.plans.plan(parsed)
        remaining = context.time_remaining()
        timeout = self.query_timeout if remaining is None else min(self.query_timeout, remaining)
        sql = plan.partial_sql_for(k=judged.k, masked=self.masked, dense=self.dense)
        partial = self.shard.run(sql, timeout=timeout)
        digest = query_hash(logged_sql(checked, parsed)).hex()
        ciphertext = seal(
            arrow_to_ipc(partial.table),
            aggregator_key=aggregator.hpke_key,
            aggregator_key_bytes=aggregator.hpke_key_bytes,
            query_id=request.query_id,
            query_hash=digest,
            department=self.department,
        )
        ciphertext_sha256 = hashlib.sha256(ciphertext).hexdigest()
        policy_hashes = {self.department: policy.hash}
        statement = partial_statement(
            department=self.department,
            query_id=request.query_id,
            query_hash=digest,
            ciphertext_sha256=ciphertext_sha256,
            k=judged.k,
            policy_hashes=policy_hashes,
        )
        report = self._report(request.query_id, judged, digest, ciphertext_sha256)
        return enclave_pb2.ExecutePartialResponse(
            execution_report=report,
            partial=enclave_pb2.Partial(
                department=self.department,
                query_id=request.query_id,
                query_hash=digest,
                encoding=enclave_pb2.PARTIAL_ENCODING_HPKE_SEALED,
                payload=ciphertext,
                signature=self.attester.keys.sign(statement),
                k=judged.k,
                policy_hashes=policy_hashes,
            ),
        )

    def _report(
        self, query_id: str, judged: _Judged, query_digest: str, partial_hash: str
    ) -> bytes:
        """Report the execution to this node's witness; the partial leaves only after that.
        Returns the signed report, for the coordinator to log.

        Raises:
            ExecutionError: the witness refuses: an earlier execution stayed out of the log.
            NodeUnavailableError: the witness did not record it.
        """
        report = ExecutionReportEntry(
            version=1,
            kind="execution_report",
            report_id=uuid.uuid4().hex,
            department=self.department,
            enclave=self.department,
            query_id=query_id,
            request_id=judged.checked.envelope.request_id,
            requester=judged.requester.spiffe_id,
            query_hash=query_digest,
            envelope_digest=judged.checked.envelope.digest().hex(),
            partial_hash=partial_hash,
            policy_hash=judged.policy.hash,
            policy_version=judged.policy.version,
            reported_at=format_rfc3339(self.admission.clock()),
            signature="AA==",
        )
        signed = report.model_copy(
            update={"signature": _b64(self.attester.keys.sign(report.signed_bytes()))}
        )
        data = signed.to_bytes()
        self.log.report(data)
        return data

    def _require_approval(
        self,
        approvals: Sequence[common_pb2.Approval],
        checked: CheckedEnvelope,
        requester: str,
        policy_hash: str,
        now: dt.datetime,
        template_hash: str | None,
    ) -> _Approved:
        """The one valid approval by an officer of this department: of this very envelope, or
        (for a template) of the template for this requester and purpose. Runs are counted by
        the caller.

        Raises:
            ApprovalError: no approval of this department, or every one of them fails.
        """
        failures = []
        for item in approvals:
            approval_hash = hashlib.sha256(item.approval).hexdigest()
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
                return _Approved(approval_hash, template_hash, approval.runs)
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
                return _Approved(approval_hash, None, 1)
            except ApprovalError as exc:
                failures.append(str(exc))
            except InvalidInputError:
                continue  # another department's record, or not one at all: not ours to judge
        detail = f" ({'; '.join(failures)})" if failures else ""
        raise ApprovalError(
            f"{self.department}'s policy needs an officer's approval of this query{detail}"
        )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
