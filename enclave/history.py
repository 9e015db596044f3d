"""What a department enclave remembers across restarts, rebuilt from the cosigned log.

An enclave keeps three things that a restart must not reset: the highest policy version it
applied (so a host that puts back an older signed policy gains nothing), the runs used of each
approval (so a template approved for n runs runs n times), and the envelopes it ran (so none
runs twice). It keeps them in memory and, at start, rebuilds them from the log (`recall`),
never from files the host could roll back:

- the log is read from its own node's witness's replica, but trusted only up to a checkpoint
  that a quorum of the federation's witnesses cosigned *after this enclave started*
  (`WitnessLog.recall`): the other witnesses run on other hosts, so a host that restores its
  own witness's files cannot hide entries from the enclave;
- of the entries, only those this department's enclaves signed (execution reports, run intents),
  with keys that attestation entries earlier in the log pinned and that verify against this
  enclave's own vendor root and reference values, and policy activations signed by enough of
  the officers this enclave pins, count; anything else a coordinator might have appended is
  ignored.

Every run of an approved query is logged as a run intent, under a quorum checkpoint, before its
partial leaves (enclave/department.py), so the rebuilt runs and envelopes cover every released
run of an approved query. An automatically allowed query is reported to the witness before its
partial leaves and logged by the coordinator soon after; one that ran in the moments before a
restart and was not yet logged could run once more within its freshness window: the requester
may ask it again anyway and gets the same answer (docs/tee.md).

`recall` is pure (entries in, state out); `WitnessLog` is the I/O shell around a witness.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dataisland.attestation import AttestationError, TrustAnchors
from dataisland.canonical import parse_rfc3339
from dataisland.errors import DataislandError, ExecutionError, NodeUnavailableError
from ledger.checkpoint import CosignedCheckpoint, verify_cosigned
from ledger.entries import (
    AttestationEntry,
    Entry,
    ExecutionReportEntry,
    PolicyActivationEntry,
    RunIntentEntry,
)
from ledger.errors import LedgerError
from ledger.merkle import CompactRange, hash_leaf, verify_inclusion
from ledger.note import Ed25519Verifier
from ledger.signatures import AttestedKeys
from ledger.witness_client import WitnessClient, WitnessError, decode_lines
from policies.signing import OfficerSignature, public_key_bytes, verify_signed_policy


class UnloggedExecutionsError(ExecutionError):
    """The enclave's witness refuses new reports: an earlier execution stayed out of the log."""


@dataclass
class Recalled:
    """An enclave's state as the log shows it.

    Attributes:
        policies: policy version to its hash, for every version this department applied or
            activated.
        runs: approval hash to the ids of the run intents logged under it.
        seen: (requester, request id) to when it ran, for every envelope that ran.
        size: how many entries were read.
    """

    policies: dict[int, str] = field(default_factory=dict)
    runs: dict[str, set[str]] = field(default_factory=dict)
    seen: dict[tuple[str, str], dt.datetime] = field(default_factory=dict)
    size: int = 0


def _signature(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        return b""


def recall(
    entries: Iterable[bytes],
    *,
    department: str,
    anchors: TrustAnchors,
    officers: Mapping[str, Ed25519PublicKey],
    required: int,
) -> Recalled:
    """Rebuild one department enclave's state from the log's entries, in order.

    Args:
        entries: the log's entries from index 0, each as stored.
        department: this enclave's department.
        anchors: this enclave's own vendor root and reference values.
        officers: the officer keys this enclave pins.
        required: how many of them must sign a policy.

    Returns:
        The state the verified entries show; unverifiable entries are skipped.
    """
    out = Recalled()
    keys = AttestedKeys(anchors)
    for data in entries:
        out.size += 1
        try:
            entry = Entry.from_bytes(data)
        except LedgerError:
            continue
        if isinstance(entry, AttestationEntry):
            if entry.role == "department" and entry.subject == department:
                try:
                    keys.attest(entry)
                except (AttestationError, DataislandError):
                    continue
        elif isinstance(entry, ExecutionReportEntry | RunIntentEntry):
            if entry.department != department or not keys.signed(
                "department", department, entry.signed_bytes(), _signature(entry.signature)
            ):
                continue
            if isinstance(entry, ExecutionReportEntry):
                out.policies.setdefault(entry.policy_version, entry.policy_hash)
                when = entry.reported_at
            else:
                out.runs.setdefault(entry.approval_hash, set()).add(entry.intent_id)
                when = entry.recorded_at
            out.seen.setdefault((entry.requester, entry.request_id), parse_rfc3339(when))
        elif isinstance(entry, PolicyActivationEntry) and entry.department == department:
            signatures = [
                OfficerSignature(
                    officer=s.officer,
                    public_key=public_key_bytes(officers[s.officer]),
                    signature=_signature(s.signature),
                )
                for s in entry.signatures
                if s.officer in officers
            ]
            try:
                policy = verify_signed_policy(
                    base64.b64decode(entry.policy),
                    signatures,
                    pinned_officer_keys=officers,
                    required=required,
                    department=department,
                )
            except DataislandError:
                continue
            out.policies.setdefault(policy.version, policy.hash)
    return out


class WitnessLog:
    """A department enclave's view of the log, through its own node's witness.

    Args:
        witness: a client of this department's witness, as this enclave.
        log_verifier: the log's checkpoint key.
        witnesses: every witness's cosignature key.
        quorum: how many must cosign a checkpoint the enclave trusts.
    """

    def __init__(
        self,
        *,
        witness: WitnessClient,
        log_verifier: Ed25519Verifier,
        witnesses: Sequence[Ed25519Verifier],
        quorum: int,
    ) -> None:
        self.witness = witness
        self.log_verifier = log_verifier
        self.witnesses = tuple(witnesses)
        self.quorum = quorum

    def verify_quorum(
        self, note: bytes, *, cosigned_after: float | None = None
    ) -> CosignedCheckpoint:
        """A checkpoint of this log that a quorum cosigned (at or after `cosigned_after`).

        Raises:
            LedgerError: it is not signed by the log, or too few witnesses cosigned it (then).
        """
        cosigned = verify_cosigned(
            note,
            origin=self.log_verifier.name,
            log_verifier=self.log_verifier,
            witness_verifiers=self.witnesses,
            quorum=self.quorum,
        )
        if cosigned_after is not None:
            late = sum(1 for c in cosigned.cosignatures if c.timestamp >= cosigned_after)
            if late < self.quorum:
                raise NodeUnavailableError(
                    f"only {late} witness(es) cosigned the log's latest checkpoint after this "
                    f"enclave started; {self.quorum} needed"
                )
        return cosigned

    def verify_logged(
        self, entry: bytes, *, index: int, proof: Sequence[bytes], note: bytes
    ) -> None:
        """Check that `entry` is at `index` of a checkpoint a quorum cosigned.

        Raises:
            LedgerError: the checkpoint or the inclusion proof does not verify.
        """
        cosigned = self.verify_quorum(note)
        verify_inclusion(
            leaf_hash=hash_leaf(entry),
            index=index,
            size=cosigned.checkpoint.size,
            proof=list(proof),
            root=cosigned.checkpoint.root_hash,
        )

    def _unreachable(self, exc: Exception) -> NodeUnavailableError:
        return NodeUnavailableError(f"witness {self.witness.name} is unreachable: {exc}")

    def report(self, entry: bytes) -> None:
        """Hand one execution report to the witness; returns once it is durable there.

        Raises:
            UnloggedExecutionsError: an earlier report stayed out of the log too long.
            NodeUnavailableError: the witness did not take it.
        """
        try:
            status, body = self.witness.report_execution(entry)
        except WitnessError as exc:
            raise NodeUnavailableError(
                f"witness {self.witness.name} is unreachable: {exc}"
            ) from None
        text = body.decode("utf-8", "replace").strip()
        if status == 423:
            raise UnloggedExecutionsError(f"this enclave stops serving: {text}")
        if status != 200:
            raise NodeUnavailableError(
                f"witness {self.witness.name} did not record the execution ({status} {text[:200]})"
            )

    def _entries(self, size: int) -> Iterator[bytes]:
        start = 0
        while start < size:
            try:
                status, body = self.witness.entries(start, size)
                items = decode_lines(body) if status == 200 else []
            except (*WitnessError, ValueError) as exc:
                raise NodeUnavailableError(f"witness {self.witness.name}: {exc}") from None
            if not items:
                raise NodeUnavailableError(
                    f"witness {self.witness.name} does not yet hold entries from {start} ({status})"
                )
            yield from items
            start += len(items)

    def recall(
        self, *, started_at: float, rebuild: Callable[[Iterable[bytes]], Recalled]
    ) -> Recalled:
        """Rebuild state from the log up to a quorum checkpoint cosigned after `started_at`.

        Args:
            started_at: POSIX seconds when this enclave started.
            rebuild: `recall` with this enclave's own trust inputs bound.

        Raises:
            NodeUnavailableError: no such checkpoint yet, or the replica lacks its entries.
            LedgerError: the witness's checkpoint or entries do not verify.
        """
        try:
            status, note = self.witness.quorum_checkpoint()
        except WitnessError as exc:
            raise NodeUnavailableError(
                f"witness {self.witness.name} is unreachable: {exc}"
            ) from None
        if status != 200:
            raise NodeUnavailableError("no checkpoint cosigned by a quorum is published yet")
        checkpoint = self.verify_quorum(note, cosigned_after=math.ceil(started_at)).checkpoint
        tree = CompactRange()

        def verified() -> Iterator[bytes]:
            for data in self._entries(checkpoint.size):
                tree.append(hash_leaf(data))
                yield data

        recalled = rebuild(verified())
        if tree.size != checkpoint.size or tree.root() != checkpoint.root_hash:
            raise LedgerError(
                "the witness's entries do not reproduce the cosigned root of size "
                f"{checkpoint.size}"
            )
        return recalled


class EnclaveLog(Protocol):
    """What a department enclave needs of the log (`WitnessLog`, or an in-memory one in tests)."""

    def report(self, entry: bytes) -> None:
        """Hand an execution report to this node's witness; return once it is durable."""

    def verify_logged(
        self, entry: bytes, *, index: int, proof: Sequence[bytes], note: bytes
    ) -> None:
        """Check that `entry` is at `index` of a checkpoint a quorum cosigned."""

    def recall(
        self, *, started_at: float, rebuild: Callable[[Iterable[bytes]], Recalled]
    ) -> Recalled:
        """Rebuild state from the log against a quorum checkpoint cosigned after the start."""


def wait_for_recall(
    log: EnclaveLog,
    *,
    started_at: float,
    rebuild: Callable[[Iterable[bytes]], Recalled],
    stop: Callable[[], bool],
    retry_seconds: float = 0.25,
    on_retry: Callable[[DataislandError], None] | None = None,
) -> Recalled | None:
    """`WitnessLog.recall`, retried until it succeeds or `stop()` (then None)."""
    while not stop():
        try:
            return log.recall(started_at=started_at, rebuild=rebuild)
        except DataislandError as exc:
            if on_retry is not None:
                on_retry(exc)
        time.sleep(retry_seconds)
    return None
