"""The coordinator's log keeper: durable entries, checkpoints, witness cosignatures, receipts.

`AuditLog` owns the log directory (`ledger.storage.LogStorage` behind a group-commit
`LogWriter`): `append` returns an entry's index only once it is on disk, so the coordinator
answers after its decision is logged. A background thread, about every half second when the log
grew, signs a C2SP checkpoint with the log's Ed25519 key, sends it to every witness
(c2sp.org/tlog-witness add-checkpoint over HTTPS with mutual TLS, as the coordinator's own node
certificate) with the consistency proof from that witness's last cosigned size, and records the
checkpoint in the history once a quorum of distinct witnesses cosigned it.

`AuditedBook` is the coordinator's `QueryBook` with the log wired in: a query is logged when it
is added (a query entry, allowed or pending; a denial entry when the policies denied it), an
approval when it is recorded, and the outcome (released, failed, cancelled, denied by an officer)
before the record becomes final, which is when Get/WaitResult can first see it; each step waits
for the fsync, and a step that cannot be logged does not happen (UNAVAILABLE). SQL the SQL front
refuses is logged as a denial (`log_refusal`) before the refusal is answered.

Entries are built from the query record (`submission_entry`, `released_entry`, `approval_entry`,
`failure_entry`, `denial_entry`): identifiers, the canonical SQL, hashes, the requester's envelope
signature, and for a released result only a salted commitment to {result digest, suppressed
flag}, whose opening (`ResultOpening`) goes to the requester with its receipt. No result value,
no count, no parameter appears in the clear.

A released entry carries the aggregator's own commitment and its signature over the result
statement (dataisland/attestation.py); attestation entries are appended by the coordinator's
`Attestor` (coordinator/attestation.py, wired in coordinator/server.py).

The checkpointer also keeps the witnesses' replicas: before cosigning, each witness is pushed the
entries it lacks with the log-signed checkpoint they lead to, and every quorum checkpoint is
published back to every witness (a restarted enclave rebuilds its state against one). Before each
checkpoint it logs the execution reports the witnesses hold that the log lacks, and an idle log
is re-cosigned every `REFRESH_SECONDS`.

This module does not judge queries, talk to enclaves, or verify what enclaves signed (the
auditor's `ledger.signatures` does, offline).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from coordinator.book import QueryBook, QueryRecord
from dataisland.approvals import Approval, TemplateApproval, is_template_approval
from dataisland.canonical import QueryEnvelope, canonical_json, commit, format_rfc3339, new_salt
from dataisland.errors import (
    ConfigError,
    DataislandError,
    NodeUnavailableError,
    NotFoundError,
)
from dataisland.federation import Federation, NodeConfig
from dataisland.v1 import common_pb2, coordinator_pb2, enclave_pb2
from ledger.checkpoint import Checkpoint, add_signatures, sign_checkpoint, verify_cosigned
from ledger.entries import (
    ApprovalEntry,
    DenialEntry,
    Entry,
    ExecutionReportEntry,
    FailureEntry,
    OfficerSignature,
    PolicyActivationEntry,
    QueryEntry,
    RunIntentEntry,
)
from ledger.errors import LedgerError
from ledger.keys import load_signer
from ledger.note import (
    SIG_TYPE_ED25519,
    Ed25519Signer,
    Ed25519Verifier,
    Note,
    NoteSignature,
)
from ledger.storage import LogStorage, LogWriter
from ledger.witness_client import PUSH_BYTES, WitnessClient, WitnessError, decode_lines
from policies.document import Policy
from policies.signing import decode_signatures

if TYPE_CHECKING:
    from coordinator.pending import PendingStore

log = logging.getLogger("dataisland.coordinator.audit")

CHECKPOINT_INTERVAL = 0.5
"""Seconds between checkpoint attempts (a checkpoint is made only when the log grew)."""
REFRESH_SECONDS = 2.0
"""An idle log is re-cosigned this often, so a restarted enclave soon finds a checkpoint that a
quorum cosigned after it started (it rebuilds its state against one)."""
CATCH_UP_ENTRIES = 1_000
"""Most entries pushed to a witness's replica in one request."""
MAX_OPENINGS = 100_000
"""Openings kept for receipts (oldest dropped first)."""
MAX_INDEXED_QUERIES = MAX_OPENINGS
"""Finished queries whose entries stay indexed for receipts (older ones: NOT_FOUND)."""
OPENINGS_FILE = "openings.jsonl"
"""Where, in the coordinator's state directory, result openings outlive a restart."""


def _time(seconds: float) -> str:
    return format_rfc3339(dt.datetime.fromtimestamp(seconds, dt.UTC))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---------------------------------------------------------------------------------------------
# entries
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultOpening:
    """The opening of a released result's commitment.

    The committed canonical bytes are the RFC 8785 JSON ``{"result_digest": <hex SHA-256 of the
    canonical result>, "suppressed": <bool>}``; the commitment is SHA-256(salt || those bytes).
    """

    salt: bytes
    canonical_bytes: bytes

    @classmethod
    def new(cls, *, result_digest: str, suppressed: bool) -> ResultOpening:
        """A fresh opening (new salt) for a result digest and suppressed flag."""
        data = canonical_json({"result_digest": result_digest, "suppressed": suppressed})
        return cls(salt=new_salt(), canonical_bytes=data)

    def commitment(self) -> bytes:
        """SHA-256(salt || canonical bytes)."""
        return commit(self.canonical_bytes, salt=self.salt)


def _envelope(signed: common_pb2.SignedEnvelope) -> QueryEnvelope:
    return QueryEnvelope.from_bytes(signed.envelope)


def submission_entry(
    *,
    query_id: str,
    requester: str,
    signed: common_pb2.SignedEnvelope,
    canonical_sql: str,
    query_hash: str,
    decision: str,
    submitted_at: float,
) -> QueryEntry:
    """The query entry appended when a query is accepted (decision allowed or pending).

    Raises:
        MalformedEntryError: a field does not fit the entry format.
    """
    envelope = _envelope(signed)
    return QueryEntry.model_validate(
        {
            "version": 1,
            "kind": "query",
            "query_id": query_id,
            "request_id": envelope.request_id,
            "requester": requester,
            "purpose": envelope.purpose,
            "sql": canonical_sql,
            "query_hash": query_hash,
            "params_commitment": envelope.params_commitment.hex(),
            "envelope_digest": envelope.digest().hex(),
            "envelope_signature": _b64(signed.signature),
            "issued_at": format_rfc3339(envelope.issued_at),
            "policies": (),
            "approvals": (),
            "partials": (),
            "result_commitment": None,
            "aggregator_signature": None,
            "suppressed_commitment": None,
            "decision": decision,
            "submitted_at": _time(submitted_at),
            "decided_at": _time(submitted_at),
        }
    )


def partial_ref(partial: enclave_pb2.Partial) -> dict[str, object]:
    """What the log keeps of one partial: the hash of its sealed bytes, the release parameters
    it declared and the enclave's signature, enough to check the signature offline."""
    return {
        "department": partial.department,
        "payload_hash": hashlib.sha256(partial.payload).hexdigest(),
        "k": partial.k,
        "policies": tuple(
            {"department": d, "policy_hash": h} for d, h in sorted(partial.policy_hashes.items())
        ),
        "signature": _b64(partial.signature),
    }


def released_entry(
    submission: QueryEntry,
    *,
    opening: ResultOpening,
    decided_at: float,
    aggregator_signature: bytes | None = None,
    partials: Sequence[dict[str, object]] = (),
) -> QueryEntry:
    """The query entry appended when a result is released: the submission's fields plus each
    partial's hash and signature (`partial_ref`), the policies they were checked against, the
    result commitment and the aggregator's signature over the result statement
    (dataisland.attestation.result_statement), when it signed.

    Raises:
        MalformedEntryError: a field does not fit the entry format.
    """
    policies = {
        (str(p["department"]), str(p["policy_hash"]))
        for partial in partials
        for p in partial["policies"]  # type: ignore[attr-defined]
    }
    fields = submission.model_dump()
    fields.update(
        {
            "partials": tuple(sorted(partials, key=lambda p: str(p["department"]))),
            "policies": tuple({"department": d, "policy_hash": h} for d, h in sorted(policies)),
            "result_commitment": opening.commitment().hex(),
            "aggregator_signature": _b64(aggregator_signature) if aggregator_signature else None,
            "decision": "released",
            "decided_at": _time(decided_at),
        }
    )
    return QueryEntry.model_validate(fields)


def failure_entry(
    *, query_id: str, request_id: str, code: str, stage: str, failed_at: float
) -> FailureEntry:
    """A failed (or cancelled) query: the status code and a fixed description, never data."""
    return FailureEntry(
        version=1,
        kind="failure",
        query_id=query_id,
        request_id=request_id,
        stage=stage,
        code=code,
        message=f"the query ended with {code}",
        failed_at=_time(failed_at),
    )


def approval_entry(
    *, query_id: str, department: str, approval: common_pb2.Approval, decided_at: float
) -> ApprovalEntry:
    """An officer's signed approval of one envelope, as the coordinator verified and recorded it.

    Raises:
        InvalidInputError: the approval document does not parse.
    """
    subject: Literal["envelope", "template"]
    if is_template_approval(approval.approval):
        template = TemplateApproval.from_bytes(approval.approval)
        officer, subject, subject_hash = template.officer, "template", template.template_hash
    else:
        document = Approval.from_bytes(approval.approval)
        officer, subject, subject_hash = document.officer, "envelope", document.envelope_digest
    return ApprovalEntry(
        version=1,
        kind="approval",
        query_id=query_id,
        department=department,
        officer=officer,
        subject=subject,
        subject_hash=subject_hash,
        approval=_b64(approval.approval),
        approval_hash=hashlib.sha256(approval.approval).hexdigest(),
        signature=_b64(approval.signature),
        decision="approved",
        decided_at=_time(decided_at),
    )


def denial_entry(
    *,
    query_id: str,
    requester: str,
    signed: common_pb2.SignedEnvelope,
    query_hash: str | None,
    denied_by: str,
    reasons: Sequence[str],
    decided_at: float,
) -> DenialEntry:
    """A refused query: who refused it and why (reasons name rules and constructs, not data)."""
    envelope = _envelope(signed)
    return DenialEntry(
        version=1,
        kind="denial",
        query_id=query_id,
        request_id=envelope.request_id,
        requester=requester,
        purpose=envelope.purpose,
        query_hash=query_hash,
        envelope_digest=envelope.digest().hex(),
        envelope_signature=_b64(signed.signature),
        denied_by=denied_by,
        reasons=tuple(r[:16_384] for r in reasons if r) or ("refused",),
        decided_at=_time(decided_at),
    )


# ---------------------------------------------------------------------------------------------
# the keeper
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Receipt:
    """What a requester gets for one of its queries (see `AuditLog.receipt`)."""

    query_id: str
    checkpoint: bytes
    entries: tuple[tuple[int, bytes, tuple[bytes, ...]], ...]
    opening: ResultOpening | None


class AuditLog:
    """The log the coordinator keeps; thread-safe.

    Args:
        storage: the opened log directory (this object closes it).
        signer: the log's type 0x01 key, named after the origin.
        witnesses: a client per witness.
        quorum: distinct witnesses that must cosign a checkpoint before it is recorded.
        interval: seconds between checkpoint attempts.
    """

    def __init__(
        self,
        *,
        storage: LogStorage,
        signer: Ed25519Signer,
        witnesses: Sequence[WitnessClient],
        quorum: int,
        interval: float = CHECKPOINT_INTERVAL,
        clock: Callable[[], float] = time.time,
        openings: Path | None = None,
    ) -> None:
        if not 1 <= quorum <= len(witnesses):
            raise ConfigError(f"quorum {quorum} does not fit {len(witnesses)} witnesses")
        verifiers = [w.verifier for w in witnesses]
        if any(v is None for v in verifiers):
            raise ConfigError("every witness needs its cosignature key")
        self._verifiers = [v for v in verifiers if v is not None]
        self.storage = storage
        self.signer = signer
        self.origin = signer.name
        self.log_verifier = signer.verifier()
        self.witnesses = list(witnesses)
        self.quorum = quorum
        self.interval = interval
        self.clock = clock
        self.writer = LogWriter(storage)
        self._lock = threading.Condition()
        self._by_query: OrderedDict[str, list[int]] = OrderedDict()
        self._finished: set[str] = set()
        self._openings: OrderedDict[str, ResultOpening] = OrderedDict()
        self._openings_path = openings
        if openings is not None:
            self._openings.update(_read_openings(openings))
        self._submissions: dict[str, QueryEntry] = {}
        self._owners: dict[str, str] = {}
        self._reports: OrderedDict[str, None] = OrderedDict()
        self._report_lock = threading.Lock()
        for index, data in enumerate(storage.entries()):
            self._index(index, data)
        latest = self._latest_size()
        # Where each witness stood when we last heard: the size it last cosigned and the size
        # of its replica; corrected by its 409 and 412 answers.
        self._known = {w.name: max(latest, 0) for w in self.witnesses}
        self._replicas = dict(self._known)
        self._cosigned_at = 0.0
        self._published_at = 0.0
        self._collected_at = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=len(self.witnesses), thread_name_prefix="wit")
        self._thread: threading.Thread | None = None

    @classmethod
    def open(cls, config: NodeConfig, federation: Federation) -> AuditLog:
        """Open the coordinator's log from its node configuration and the federation file.

        Raises:
            ConfigError: no log section, no log_dir/log_key, or keys that do not match it.
            LedgerError: the log directory is damaged (`LogCorruptionError`) or unreadable.
        """
        section = federation.log
        if section is None or config.log_dir is None or config.log_key is None:
            raise ConfigError("the audit log needs the federation's 'log:' and log_dir/log_key")
        signer = load_signer(config.log_key, name=section.origin, sig_type=SIG_TYPE_ED25519)
        if signer.verifier().to_vkey() != section.verifier_key:
            raise ConfigError(f"{config.log_key} does not match the log key in the federation file")
        witnesses = []
        for name, entry in section.witnesses.items():
            try:
                verifier = Ed25519Verifier.from_vkey(entry.verifier_key)
            except LedgerError as exc:
                raise ConfigError(f"witness {name}'s verifier key: {exc}") from None
            witnesses.append(
                WitnessClient(
                    name=name,
                    address=entry.address,
                    server_name=federation.dns_name("witness", name),
                    ca=entry.ca,
                    certificate=config.tls.certificate,
                    key=config.tls.key,
                    verifier=verifier,
                )
            )
        storage = LogStorage.open(config.log_dir, create=True)
        openings = None if config.state_dir is None else config.state_dir / OPENINGS_FILE
        try:
            return cls(
                storage=storage,
                signer=signer,
                witnesses=witnesses,
                quorum=section.quorum,
                openings=openings,
            )
        except BaseException:
            storage.close()
            raise

    # -- entries ------------------------------------------------------------------------------

    def _index(self, index: int, data: bytes) -> None:
        try:
            entry = Entry.from_bytes(data)
        except LedgerError:
            log.warning("entry %d does not parse; not indexed", index)
            return
        with self._lock:
            self._note(index, entry)

    def _note(self, index: int, entry: Entry) -> None:
        if isinstance(entry, ExecutionReportEntry):
            self._reports[entry.report_id] = None
            while len(self._reports) > 3 * MAX_INDEXED_QUERIES:
                self._reports.popitem(last=False)
        query_id = getattr(entry, "query_id", None)
        if not isinstance(query_id, str):
            return
        self._by_query.setdefault(query_id, []).append(index)
        if isinstance(entry, QueryEntry):
            self._submissions.setdefault(query_id, entry)
        if isinstance(entry, (QueryEntry, DenialEntry)):
            self._owners.setdefault(query_id, entry.requester)
        final = isinstance(entry, (DenialEntry, FailureEntry)) or (
            isinstance(entry, QueryEntry) and entry.decision in ("released", "denied", "failed")
        )
        if final:
            # Its outcome is logged: only a receipt will ask for it now, which needs indexes.
            self._finished.add(query_id)
            self._submissions.pop(query_id, None)
            self._evict()

    def _evict(self) -> None:
        """Forget the oldest finished queries beyond MAX_INDEXED_QUERIES (never an unfinished
        one: its submission is needed when it ends), so memory stays bounded."""
        for _ in range(len(self._by_query)):
            if len(self._by_query) <= MAX_INDEXED_QUERIES:
                return
            oldest = next(iter(self._by_query))
            if oldest in self._finished:
                del self._by_query[oldest]
                self._finished.discard(oldest)
                self._owners.pop(oldest, None)
            else:
                self._by_query.move_to_end(oldest)

    def log_activation(self, policy: Policy, signatures: bytes) -> None:
        """Log a policy version the coordinator sees take effect (best effort: a failure is
        logged locally; each enclave enforces the policy whether or not this entry exists)."""
        try:
            self.append(policy_activation_entry(policy, signatures, at=time.time()))
        except DataislandError as exc:
            log.warning("could not log %s's policy activation: %s", policy.department, exc)

    def append(self, entry: Entry) -> int:
        """Append `entry` durably and return its index (after the fsync).

        Raises:
            EntryTooLargeError: the entry is over 65,535 bytes.
            StorageError: it could not be made durable.
        """
        data = entry.to_bytes()
        index = self.writer.append(data)
        with self._lock:
            self._note(index, entry)
            self._lock.notify_all()
        return index

    def indexes(self, query_id: str) -> list[int]:
        """The indexes of the entries about `query_id`, in order."""
        with self._lock:
            return sorted(self._by_query.get(query_id, ()))

    def first_index(self, query_id: str) -> int | None:
        """The index of the first entry about `query_id` (its submission), if logged."""
        found = self.indexes(query_id)
        return found[0] if found else None

    def wait_logged(self, query_id: str, timeout: float) -> int | None:
        """Wait until `query_id` has an entry; return its first index (None on timeout)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while query_id not in self._by_query:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._lock.wait(left)
            return min(self._by_query[query_id])

    def submission(self, query_id: str) -> QueryEntry | None:
        """The first query entry of `query_id`."""
        with self._lock:
            return self._submissions.get(query_id)

    def keep_opening(self, query_id: str, opening: ResultOpening) -> None:
        """Remember a result opening for the requester's receipt, in memory and (with a state
        directory) in the coordinator's own openings file, so a receipt asked for after a
        restart still opens the result commitment."""
        with self._lock:
            self._openings[query_id] = opening
            while len(self._openings) > MAX_OPENINGS:
                self._openings.popitem(last=False)
            if self._openings_path is not None:
                _append_opening(self._openings_path, query_id, opening, keep=self._openings)

    # -- checkpoints --------------------------------------------------------------------------

    def _latest_size(self) -> int:
        note = self.storage.latest_checkpoint()
        if note is None:
            return -1
        return Checkpoint.from_text(Note.from_bytes(note).text).size

    def latest_checkpoint(self) -> bytes | None:
        """The latest recorded checkpoint (a quorum cosigned it)."""
        return self.storage.latest_checkpoint()

    def checkpointed_size(self) -> int:
        """The size of the latest recorded checkpoint (-1 before the first), for metrics."""
        return self._latest_size()

    def witness_names(self) -> list[str]:
        """The witnesses' names, in the federation file's order."""
        return [w.name for w in self.witnesses]

    def witness_sizes(self) -> dict[str, int]:
        """The size each witness last cosigned, as far as this log knows (for metrics)."""
        return dict(self._known)

    def start(self) -> None:
        """Start the checkpointing thread."""
        self._thread = threading.Thread(target=self._loop, name="checkpointer", daemon=True)
        self._thread.start()

    def request_checkpoint(self) -> None:
        """Checkpoint now rather than at the next interval (a run intent waits for one)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                # Each query's reports are logged with it; this sweep only catches those a
                # coordinator that crashed mid-query never logged, so it need not run often.
                if self.clock() - self._collected_at >= REFRESH_SECONDS:
                    self.collect_reports()
                    self._collected_at = self.clock()
                self.checkpoint_once()
            except Exception:
                log.exception("checkpointing failed; retrying")

    def collect_reports(self) -> int:
        """Log the execution reports enclaves made to their witnesses that are not logged yet.

        An enclave reports each execution to its own node's witness before its partial leaves;
        the witnesses refuse to cosign checkpoints that leave a report out too long. Fetching
        them here, rather than trusting each query's fan-out to pass them on, means a
        coordinator that crashed mid-query still logs every execution once it is back.

        Returns:
            How many reports were appended.
        """
        found: list[bytes] = []
        for witness in self.witnesses:
            try:
                status, body = witness.execution_reports()
                items = decode_lines(body) if status == 200 else []
            except (*WitnessError, ValueError) as exc:
                log.warning("witness %s: execution reports unavailable: %s", witness.name, exc)
                continue
            for data in items:
                try:
                    ExecutionReportEntry.from_bytes(data)
                except LedgerError:
                    log.warning("witness %s passed on a malformed execution report", witness.name)
                    continue
                found.append(data)
        try:
            return self.log_reports(found)
        except DataislandError as exc:
            log.warning("execution reports could not be logged: %s", exc)
            return 0

    def log_reports(self, reports: Sequence[bytes]) -> int:
        """Append the execution reports not logged yet, durably, once each.

        Returns:
            How many were appended.

        Raises:
            MalformedEntryError: a report is not an execution report entry (none is appended).
            EntryTooLargeError, StorageError: they could not be appended.
        """
        parsed = [ExecutionReportEntry.from_bytes(data) for data in reports]
        with self._report_lock:
            with self._lock:
                fresh = {r.report_id: r for r in parsed if r.report_id not in self._reports}
            if not fresh:
                return 0
            data = [r.to_bytes() for r in fresh.values()]
            first = self.writer.append_many(data)
            with self._lock:
                for offset, report in enumerate(fresh.values()):
                    self._note(first + offset, report)
                self._lock.notify_all()
        return len(fresh)

    def checkpoint_once(self) -> bool:
        """Sign a checkpoint of the current size and record it if a quorum cosigns it.

        A log that did not grow (the empty log included) is re-cosigned every
        `REFRESH_SECONDS`, so that a restarted enclave finds a checkpoint cosigned after it
        started; a quorum checkpoint goes to every witness (which hands it to its enclave) at
        least that often.

        Returns:
            Whether a new checkpoint was recorded or refreshed.
        """
        size = self.storage.size
        latest = self._latest_size()
        if size == latest and self.clock() - self._cosigned_at < REFRESH_SECONDS:
            return False
        checkpoint = Checkpoint(self.origin, size, self.storage.root(size))
        note = sign_checkpoint(checkpoint, signer=self.signer)
        futures = [self._pool.submit(self._cosign, w, note, checkpoint) for w in self.witnesses]
        signatures = [sig for f in futures if (sig := f.result()) is not None]
        if len(signatures) < self.quorum:
            log.warning(
                "checkpoint of size %d: %d cosignature(s), quorum %d; not recorded",
                size,
                len(signatures),
                self.quorum,
            )
            return False
        cosigned = add_signatures(note, signatures)
        verify_cosigned(
            cosigned,
            origin=self.origin,
            log_verifier=self.log_verifier,
            witness_verifiers=self._verifiers,
            quorum=self.quorum,
        )
        if size > latest:
            self.storage.append_checkpoint(cosigned)
        self._cosigned_at = self.clock()
        with self._lock:
            self._lock.notify_all()
        # Enclaves need a fresh one only when they restart: publishing every few seconds
        # spares the witnesses a request and four signature checks per checkpoint.
        if self._cosigned_at - self._published_at >= REFRESH_SECONDS:
            self._published_at = self._cosigned_at
            for future in [self._pool.submit(self._publish, w, cosigned) for w in self.witnesses]:
                future.result()
        return True

    def _publish(self, witness: WitnessClient, note: bytes) -> None:
        try:
            status, body = witness.publish_quorum_checkpoint(note)
        except WitnessError as exc:
            log.warning("witness %s unreachable: %s", witness.name, exc)
            return
        if status != 200:
            log.warning(
                "witness %s refused the quorum checkpoint: %d %s",
                witness.name,
                status,
                body[:200].decode("utf-8", "replace").strip(),
            )

    def _push(self, witness: WitnessClient, note: bytes, checkpoint: Checkpoint) -> bool:
        """Bring the witness's replica to `checkpoint`, in pieces with intermediate
        checkpoints when it is far behind. Returns whether it got there."""
        for _ in range(1_000_000):
            have = self._replicas.get(witness.name, 0)
            if have > checkpoint.size:
                log.error(
                    "witness %s holds %d entries, beyond the log's %d: the log lost entries",
                    witness.name,
                    have,
                    checkpoint.size,
                )
                return False
            if have == checkpoint.size:
                return True
            entries: list[bytes] = []
            total = 0
            for data in self.storage.entries(have, checkpoint.size):
                entries.append(data)
                total += len(data)
                if len(entries) >= CATCH_UP_ENTRIES or total >= PUSH_BYTES:
                    break
            end = have + len(entries)
            step = (
                note
                if end == checkpoint.size
                else sign_checkpoint(
                    Checkpoint(self.origin, end, self.storage.root(end)), signer=self.signer
                )
            )
            try:
                status, body = witness.push_entries(start=have, entries=entries, note=step)
            except WitnessError as exc:
                log.warning("witness %s unreachable: %s", witness.name, exc)
                return False
            text = body.decode("ascii", "replace").strip()
            if status in (200, 409) and text.isdigit():
                self._replicas[witness.name] = int(text)
                continue
            log.warning(
                "witness %s refused entries from %d: %d %s", witness.name, have, status, text[:200]
            )
            return False
        return False

    def _cosign(
        self, witness: WitnessClient, note: bytes, checkpoint: Checkpoint
    ) -> NoteSignature | None:
        if not self._push(witness, note, checkpoint):
            return None
        old = self._known.get(witness.name, 0)
        for _ in range(3):
            if old > checkpoint.size:
                log.error(
                    "witness %s has cosigned size %d, beyond the log's %d: the log lost entries",
                    witness.name,
                    old,
                    checkpoint.size,
                )
                return None
            proof = self.storage.consistency_proof(old, checkpoint.size)
            try:
                status, body = witness.add_checkpoint(old_size=old, proof=proof, note=note)
            except WitnessError as exc:
                log.warning("witness %s unreachable: %s", witness.name, exc)
                return None
            text = body.decode("ascii", "replace").strip()
            if status == 409 and text.isdigit():
                old = int(text)
                self._known[witness.name] = old
                continue
            if status == 412 and text.isdigit():
                # Its replica is behind (a restarted witness): push, then try again.
                self._replicas[witness.name] = int(text)
                if not self._push(witness, note, checkpoint):
                    return None
                continue
            if status != 200:
                log.warning(
                    "witness %s refused the checkpoint of size %d: %d %s",
                    witness.name,
                    checkpoint.size,
                    status,
                    text[:200],
                )
                return None
            return self._accept(witness, body, checkpoint)
        return None

    def _accept(
        self, witness: WitnessClient, body: bytes, checkpoint: Checkpoint
    ) -> NoteSignature | None:
        text = checkpoint.to_text()
        verifier = witness.verifier
        assert isinstance(verifier, Ed25519Verifier)
        try:
            for line in body.decode("utf-8").splitlines():
                sig = NoteSignature.from_line(line)
                if (
                    sig.name == verifier.name
                    and sig.key_id == verifier.key_id
                    and verifier.verify(text, sig.signature)
                ):
                    self._known[witness.name] = checkpoint.size
                    return sig
        except (UnicodeDecodeError, LedgerError):
            pass
        log.warning("witness %s answered without a valid cosignature", witness.name)
        return None

    # -- run intents --------------------------------------------------------------------------

    def standing_approvals(
        self,
    ) -> dict[tuple[str, str, str, str], tuple[common_pb2.Approval, TemplateApproval, int]]:
        """The officers' template approvals in the log, with the runs their intents used.

        Keyed as the coordinator keeps them (department, template hash, requester, purpose),
        the latest approval of each key winning, so a restarted coordinator attaches them to
        later runs as before instead of asking the officers again. The enclaves count runs
        themselves; this count only decides when the coordinator asks again.
        """
        approvals: dict[tuple[str, str, str, str], tuple[common_pb2.Approval, TemplateApproval]]
        approvals = {}
        used: dict[tuple[str, str], int] = {}
        for data in self.storage.entries():
            try:
                entry = Entry.from_bytes(data)
            except LedgerError:
                continue
            if isinstance(entry, RunIntentEntry):
                key = (entry.department, entry.approval_hash)
                used[key] = used.get(key, 0) + 1
            elif (
                isinstance(entry, ApprovalEntry)
                and entry.subject == "template"
                and entry.decision == "approved"
            ):
                document = base64.b64decode(entry.approval)
                try:
                    template = TemplateApproval.from_bytes(document)
                except DataislandError:
                    continue
                message = common_pb2.Approval(
                    approval=document, signature=base64.b64decode(entry.signature)
                )
                key4 = (
                    entry.department,
                    template.template_hash,
                    template.requester,
                    template.purpose,
                )
                approvals[key4] = (message, template)
        return {
            key: (
                message,
                template,
                used.get((key[0], hashlib.sha256(message.approval).hexdigest()), 0),
            )
            for key, (message, template) in approvals.items()
        }

    def log_intents(
        self, entries: Sequence[Entry], *, timeout: float
    ) -> tuple[bytes, list[tuple[int, list[bytes]]]]:
        """Append run intents and wait until a quorum-cosigned checkpoint covers them.

        Returns:
            That checkpoint and, per entry, its index and inclusion proof in it.

        Raises:
            EntryTooLargeError, StorageError: an entry could not be appended.
            NodeUnavailableError: no quorum cosigned a covering checkpoint within `timeout`.
        """
        indexes = [self.append(entry) for entry in entries]
        self.request_checkpoint()
        note = self.wait_for_checkpoint(max(indexes) + 1, timeout)
        if note is None:
            raise NodeUnavailableError(
                "no checkpoint cosigned by a quorum of witnesses covers the run intents in time"
            )
        size = Checkpoint.from_text(Note.from_bytes(note).text).size
        return note, [(i, self.storage.inclusion_proof(i, size)) for i in indexes]

    def wait_for_checkpoint(self, size: int, timeout: float) -> bytes | None:
        """Wait until a recorded checkpoint covers `size` entries; return it (None on timeout)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._latest_size() < size:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._lock.wait(min(left, self.interval))
        return self.storage.latest_checkpoint()

    # -- receipts -----------------------------------------------------------------------------

    def receipt(self, query_id: str, *, requester: str, timeout: float) -> Receipt:
        """The requester's receipt for `query_id`: entries, proofs, a cosigned checkpoint and
        the result's opening.

        Raises:
            NotFoundError: no such query in the log, or another requester's (indistinguishably).
            NodeUnavailableError: no cosigned checkpoint covers the entries within `timeout`.
        """
        with self._lock:
            owner = self._owners.get(query_id)
        if owner is None or owner != requester:
            raise NotFoundError(f"no query {query_id!r} of yours in the log")
        indexes = self.indexes(query_id)
        note = self.wait_for_checkpoint(max(indexes) + 1, timeout)
        if note is None:
            raise NodeUnavailableError(
                "no checkpoint cosigned by a quorum covers this query's entries yet; retry"
            )
        size = Checkpoint.from_text(Note.from_bytes(note).text).size
        entries = tuple(
            (i, self.storage.entry(i), tuple(self.storage.inclusion_proof(i, size)))
            for i in indexes
        )
        with self._lock:
            opening = self._openings.get(query_id)
        return Receipt(query_id=query_id, checkpoint=note, entries=entries, opening=opening)

    def close(self) -> None:
        """Stop checkpointing, finish queued appends, release the log directory."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self._pool.shutdown(wait=True)
        for witness in self.witnesses:
            witness.close()
        self.writer.close()
        self.storage.close()


def _opening_line(query_id: str, opening: ResultOpening) -> bytes:
    return (
        canonical_json(
            {
                "query_id": query_id,
                "salt": _b64(opening.salt),
                "opened": _b64(opening.canonical_bytes),
            }
        )
        + b"\n"
    )


def _read_openings(path: Path) -> OrderedDict[str, ResultOpening]:
    """The openings a coordinator kept before it restarted (the newest MAX_OPENINGS); a line
    torn by a crash is skipped."""
    out: OrderedDict[str, ResultOpening] = OrderedDict()
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return out
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    for line in lines[-MAX_OPENINGS:]:
        try:
            obj = json.loads(line)
            out[str(obj["query_id"])] = ResultOpening(
                salt=base64.b64decode(obj["salt"]),
                canonical_bytes=base64.b64decode(obj["opened"]),
            )
        except (ValueError, KeyError, TypeError):
            continue
    return out


def _append_opening(
    path: Path, query_id: str, opening: ResultOpening, *, keep: OrderedDict[str, ResultOpening]
) -> None:
    """Append one opening (flushed to the OS: it survives the process, not the machine); past
    twice MAX_OPENINGS lines the file is rewritten with the ones still kept."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with path.open("ab") as f:
            f.write(_opening_line(query_id, opening))
            size = f.tell()
        if size > 2 * MAX_OPENINGS * 200:
            path.write_bytes(b"".join(_opening_line(q, o) for q, o in keep.items()))
    except OSError as exc:
        log.warning("a result opening could not be kept in %s: %s", path, exc.strerror)


def logged_or_unavailable(error: DataislandError) -> NodeUnavailableError:
    """The error a caller sees when its decision could not be logged."""
    return NodeUnavailableError(f"the audit log could not record the decision: {error}")


# ---------------------------------------------------------------------------------------------
# the book, logged
# ---------------------------------------------------------------------------------------------


class AuditedBook(QueryBook):
    """A `QueryBook` that appends every decision to the audit log before it takes effect.

    Args:
        audit: the log.
        retention_seconds, max_queries, clock: as for `QueryBook`.
    """

    def __init__(
        self,
        *,
        audit: AuditLog,
        retention_seconds: float,
        max_queries: int,
        clock: Callable[[], float],
        max_unfinished_per_requester: int = 16,
        pending: PendingStore | None = None,
    ) -> None:
        super().__init__(
            retention_seconds=retention_seconds,
            max_queries=max_queries,
            clock=clock,
            max_unfinished_per_requester=max_unfinished_per_requester,
            pending=pending,
        )
        self.audit = audit
        self._finishing: set[str] = set()

    def _await_logged(self, record: QueryRecord) -> None:
        if record.log_index is None and not record.finished:
            # A concurrent duplicate submission: answer only once the first one is logged.
            record.log_index = self.audit.wait_logged(record.query_id, timeout=10.0)

    def find_request(self, requester: str, request_id: str) -> QueryRecord | None:
        """As `QueryBook.find_request`, once the found query's first entry is durable."""
        record = super().find_request(requester, request_id)
        if record is not None:
            self._await_logged(record)
        return record

    def add(self, record: QueryRecord) -> QueryRecord:
        """As `QueryBook.add`; a new query's entry (or denial) is durable before this returns.

        Raises:
            ResourceLimitError: the book is full of unfinished queries.
            NodeUnavailableError: the entry could not be logged (the query ends FAILED).
        """
        stored = super().add(record)
        if stored is not record:
            self._await_logged(stored)
            return stored
        signed = record.envelope
        try:
            entry: Entry
            if record.state == coordinator_pb2.QUERY_STATE_DENIED:
                entry = denial_entry(
                    query_id=record.query_id,
                    requester=record.requester,
                    signed=signed,
                    query_hash=record.query_hash,
                    denied_by="policy",
                    reasons=[r.message or r.rule for r in record.reasons],
                    decided_at=record.submitted_at,
                )
            else:
                entry = submission_entry(
                    query_id=record.query_id,
                    requester=record.requester,
                    signed=signed,
                    canonical_sql=record.canonical_sql,
                    query_hash=record.query_hash,
                    decision=(
                        "pending"
                        if record.state == coordinator_pb2.QUERY_STATE_PENDING
                        else "allowed"
                    ),
                    submitted_at=record.submitted_at,
                )
            record.log_index = self.audit.append(entry)
        except DataislandError as exc:
            super().finish(
                record,
                coordinator_pb2.QUERY_STATE_FAILED,
                error=common_pb2.ErrorDetail(code="UNAVAILABLE", message="audit log unavailable"),
            )
            raise logged_or_unavailable(exc) from None
        return record

    def approve(self, record: QueryRecord, department: str, approval: common_pb2.Approval) -> bool:
        """As `QueryBook.approve`, with the approval durable in the log first.

        Raises:
            PermissionDeniedError: the query is not waiting for this department.
            NodeUnavailableError: the approval could not be logged (it is not recorded).
        """
        if record.state == coordinator_pb2.QUERY_STATE_PENDING and department in record.waiting_for:
            try:
                self.audit.append(
                    approval_entry(
                        query_id=record.query_id,
                        department=department,
                        approval=approval,
                        decided_at=self.clock(),
                    )
                )
            except DataislandError as exc:
                raise logged_or_unavailable(exc) from None
        return super().approve(record, department, approval)

    def finish(self, record: QueryRecord, state: int, **changes: object) -> bool:
        """As `QueryBook.finish`, with the outcome durable in the log first (logged once even
        when a cancel races the end of the run); if it cannot be logged, the query fails and
        nothing is released."""
        with self.lock:
            if record.finished or record.query_id in self._finishing:
                return False
            self._finishing.add(record.query_id)
        try:
            try:
                self._log_outcome(record, state, changes)
            except DataislandError:
                log.exception("query %s: its outcome could not be logged", record.query_id)
                state = coordinator_pb2.QUERY_STATE_FAILED
                changes = {
                    "error": common_pb2.ErrorDetail(
                        code="UNAVAILABLE", message="audit log unavailable; nothing released"
                    )
                }
            return super().finish(record, state, **changes)
        finally:
            with self.lock:
                self._finishing.discard(record.query_id)

    def _log_outcome(self, record: QueryRecord, state: int, changes: dict[str, object]) -> None:
        now = self.clock()
        result = changes.get("result")
        error = changes.get("error")
        message = error.message if isinstance(error, common_pb2.ErrorDetail) else ""
        code = error.code if isinstance(error, common_pb2.ErrorDetail) and error.code else "FAILED"
        if state == coordinator_pb2.QUERY_STATE_SUCCEEDED and isinstance(
            result, enclave_pb2.MergePartialsResponse
        ):
            submission = self.audit.submission(record.query_id)
            if submission is None:
                raise NodeUnavailableError("the query's submission is not in the log")
            opening = ResultOpening.new(
                result_digest=result.result_digest, suppressed=result.suppressed
            )
            if result.result_salt:
                # The aggregator made and signed the commitment: log that one, not a new one.
                opening = ResultOpening(
                    salt=result.result_salt, canonical_bytes=opening.canonical_bytes
                )
            self.audit.append(
                released_entry(
                    submission,
                    opening=opening,
                    decided_at=now,
                    aggregator_signature=result.result_signature or None,
                    partials=record.partial_refs,
                )
            )
            self.audit.keep_opening(record.query_id, opening)
        elif state == coordinator_pb2.QUERY_STATE_DENIED:
            self.audit.append(
                denial_entry(
                    query_id=record.query_id,
                    requester=record.requester,
                    signed=record.envelope,
                    query_hash=record.query_hash,
                    denied_by="officer",
                    reasons=[message or "denied"],
                    decided_at=now,
                )
            )
        else:
            stage = "cancel" if state == coordinator_pb2.QUERY_STATE_CANCELLED else "execution"
            self.audit.append(
                failure_entry(
                    query_id=record.query_id,
                    request_id=record.request_id,
                    code=code,
                    stage=stage,
                    failed_at=now,
                )
            )

    def log_reports(self, reports: Sequence[bytes]) -> None:
        """Log a query's execution reports (`AuditLog.log_reports`) before its result is released.

        Raises:
            NodeUnavailableError: they could not be logged (the query fails; the reports stay
                with the witnesses, and the checkpointer logs them later).
        """
        try:
            self.audit.log_reports(reports)
        except DataislandError as exc:
            raise logged_or_unavailable(exc) from None

    def log_intents(
        self, entries: Sequence[Entry], *, timeout: float
    ) -> tuple[bytes, list[tuple[int, list[bytes]]]]:
        """Log run intents and wait for a quorum checkpoint covering them (`AuditLog.log_intents`).

        Raises:
            NodeUnavailableError: they could not be logged or cosigned in time.
        """
        try:
            return self.audit.log_intents(entries, timeout=timeout)
        except DataislandError as exc:
            raise logged_or_unavailable(exc) from None

    def log_refusal(
        self, requester: str, signed: common_pb2.SignedEnvelope, error: DataislandError
    ) -> None:
        """Log SQL the SQL front refused (a denial entry) before the refusal is answered.

        Raises:
            NodeUnavailableError: it could not be logged.
        """
        entry = denial_entry(
            query_id=str(uuid.uuid4()),
            requester=requester,
            signed=signed,
            query_hash=None,
            denied_by="coordinator.sql_front",
            reasons=[str(error)],
            decided_at=self.clock(),
        )
        try:
            self.audit.append(entry)
        except DataislandError as exc:
            raise logged_or_unavailable(exc) from None


def policy_activation_entry(
    policy: Policy, signatures: bytes, *, at: float
) -> PolicyActivationEntry:
    """The log entry of a department's policy version taking effect, signatures included."""
    return PolicyActivationEntry(
        version=1,
        kind="policy_activation",
        department=policy.department,
        policy_version=policy.version,
        policy=_b64(policy.canonical_bytes),
        policy_hash=policy.hash,
        signatures=tuple(
            OfficerSignature(officer=s.officer, signature=_b64(s.signature))
            for s in decode_signatures(signatures)
        ),
        activated_at=_time(at),
    )
