"""The witness core: C2SP tlog-witness add-checkpoint semantics as a pure state transition.

`add_checkpoint(state, ...)` takes the witness's persisted state for one log and a request (old
size, consistency proof, signed checkpoint) and returns the new state and a tlog-cosignature/v1,
or raises the error the spec's HTTP status stands for:

- malformed request, old size above the checkpoint size, > 63 proof lines: `WitnessRequestError`
  (or `MalformedNoteError` for the note) - 400;
- checkpoint for another origin: `UnknownLogError` - 404;
- no valid signature from the log's key: `SignatureError` - 403;
- old size is not the size the witness last cosigned, or same size with another root:
  `WitnessConflictError` carrying the witness's size - 409;
- consistency proof does not verify: `ProofError` - 422.

dataisland's rule on top: an enclave reports each execution to its node's witness before it
releases its partial (`record_execution_report`, which keeps the signed report entry so the
coordinator can fetch and log it); the witness refuses (`UnloggedExecutionError`) to cosign a
checkpoint that omits a report received at least `bound_seconds` before the cosignature's
timestamp, and refuses further reports while one is that overdue, so the enclave stops serving
until the log catches up. Which reports a checkpoint includes is the caller's answer, computed
from its verified replica of the entries (`ExecutionRule.included`, ledger/replica.py).

The caller must run check-and-persist atomically (one request at a time per log, state saved with
`save_state` before the cosignature is returned). Only `save_state` / `load_state` do I/O; the
core reads no clock (timestamps are passed in) and holds no keys of its own.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dataisland.canonical import canonical_json, parse_canonical_json
from dataisland.errors import DataislandError
from ledger.checkpoint import add_signatures, cosign, open_checkpoint
from ledger.errors import (
    LogCorruptionError,
    ProofError,
    StorageError,
    UnloggedExecutionError,
    WitnessConflictError,
    WitnessRequestError,
)
from ledger.merkle import EMPTY_ROOT, HASH_SIZE, verify_consistency
from ledger.note import Ed25519Signer, Ed25519Verifier, NoteSignature

MAX_PROOF_LINES = 63
"""Most consistency proof hashes an add-checkpoint request may carry."""

STATE_VERSION = 2


_STATE_FIELDS = frozenset(
    {"version", "origin", "size", "root_hash", "checkpoint", "pending_reports"}
)


class _InvalidError(Exception):
    pass


def _as_dict(obj: object) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _InvalidError
    return obj


def _require(condition: bool) -> None:
    if not condition:
        raise _InvalidError


@dataclass(frozen=True)
class PendingReport:
    """An execution an enclave reported, not yet seen in a cosigned checkpoint.

    Attributes:
        report_id: the report's id (the `report_id` of its execution_report entry).
        received_at: POSIX seconds when the witness received it.
        entry: the report's canonical entry bytes, as the enclave signed them.
    """

    report_id: str
    received_at: int
    entry: bytes = b""


@dataclass(frozen=True)
class WitnessState:
    """What a witness persists for one log.

    Attributes:
        origin: the log's origin line.
        size: the size of the latest checkpoint it cosigned (0 before the first).
        root_hash: that checkpoint's root (the empty-tree root before the first).
        checkpoint: that checkpoint note with this witness's cosignature, to publish; None
            before the first.
        pending_reports: reported executions not yet included in a cosigned checkpoint.
    """

    origin: str
    size: int
    root_hash: bytes
    checkpoint: bytes | None
    pending_reports: tuple[PendingReport, ...]

    @classmethod
    def initial(cls, origin: str) -> WitnessState:
        """The state of a witness that never cosigned for `origin`."""
        return cls(origin, 0, EMPTY_ROOT, None, ())

    def to_bytes(self) -> bytes:
        """Canonical JSON of the state (what `save_state` writes)."""
        return canonical_json(
            {
                "version": STATE_VERSION,
                "origin": self.origin,
                "size": self.size,
                "root_hash": base64.b64encode(self.root_hash).decode(),
                "checkpoint": None if self.checkpoint is None else self.checkpoint.decode(),
                "pending_reports": [
                    {
                        "report_id": r.report_id,
                        "received_at": r.received_at,
                        "entry": base64.b64encode(r.entry).decode(),
                    }
                    for r in self.pending_reports
                ],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> WitnessState:
        """Parse `to_bytes` output.

        Raises:
            LogCorruptionError: anything else.
        """
        try:
            obj = _as_dict(parse_canonical_json(data))
            _require(set(obj) == _STATE_FIELDS and obj["version"] == STATE_VERSION)
            root = base64.b64decode(obj["root_hash"], validate=True)
            size, origin, ckp = obj["size"], obj["origin"], obj["checkpoint"]
            _require(len(root) == HASH_SIZE and type(size) is int and size >= 0)
            _require(isinstance(origin, str) and (ckp is None or isinstance(ckp, str)))
            reports = []
            for r in obj["pending_reports"]:
                _require(isinstance(r, dict) and set(r) == {"report_id", "received_at", "entry"})
                _require(isinstance(r["report_id"], str) and type(r["received_at"]) is int)
                entry = base64.b64decode(r["entry"], validate=True)
                reports.append(PendingReport(r["report_id"], r["received_at"], entry))
            return cls(origin, size, root, None if ckp is None else ckp.encode(), tuple(reports))
        except (_InvalidError, DataislandError, KeyError, TypeError, ValueError):
            raise LogCorruptionError("witness state file is not a valid state") from None


@dataclass(frozen=True)
class ExecutionRule:
    """The refuse-to-cosign rule for reported executions.

    Attributes:
        bound_seconds: how long an execution may stay unlogged.
        included: whether a report is among the first `size` entries, as
            `included(report_id, size)`, or a mapping from report id to the index of its entry
            in the witness's replica.
    """

    bound_seconds: int
    included: Callable[[str, int], bool] | Mapping[str, int]

    def is_included(self, report_id: str, size: int) -> bool:
        """Whether the tree of `size` entries holds the report."""
        if isinstance(self.included, Mapping):
            index = self.included.get(report_id)
            return index is not None and index < size
        return bool(self.included(report_id, size))


def record_execution_report(
    state: WitnessState,
    *,
    report_id: str,
    received_at: int,
    entry: bytes = b"",
    bound_seconds: int | None = None,
) -> WitnessState:
    """Return the state with one more pending execution report (idempotent on report_id).

    Args:
        state: the witness's state.
        report_id: the report's id.
        received_at: POSIX seconds now.
        entry: the signed report entry, kept for the coordinator to log.
        bound_seconds: with a bound, refuse any new report while an earlier one has stayed
            unlogged that long: the reporting enclave then stops serving.

    Raises:
        WitnessRequestError: empty report id or negative time.
        UnloggedExecutionError: an earlier report is overdue (it names that report).
    """
    if not isinstance(report_id, str) or not report_id:
        raise WitnessRequestError("an execution report has an id")
    if type(received_at) is not int or received_at < 0:
        raise WitnessRequestError("received_at is POSIX seconds")
    if any(r.report_id == report_id for r in state.pending_reports):
        return state
    if bound_seconds is not None:
        for report in state.pending_reports:
            if report.received_at + bound_seconds <= received_at:
                raise UnloggedExecutionError(
                    f"execution {report.report_id}, reported at {report.received_at}, has stayed "
                    f"out of the log for more than {bound_seconds} s; no further execution is "
                    "accepted until it is logged",
                    report_id=report.report_id,
                )
    return replace(
        state,
        pending_reports=(*state.pending_reports, PendingReport(report_id, received_at, entry)),
    )


def add_checkpoint(
    state: WitnessState,
    *,
    old_size: int,
    consistency_proof: Sequence[bytes],
    signed_checkpoint: bytes,
    log_verifier: Ed25519Verifier,
    cosigner: Ed25519Signer,
    timestamp: int,
    rule: ExecutionRule | None,
) -> tuple[WitnessState, NoteSignature]:
    """Check an add-checkpoint request against the state; cosign it if it passes.

    Args:
        state: the witness's persisted state for this log.
        old_size: the size the client believes the witness last cosigned.
        consistency_proof: RFC 9162 proof from old_size to the checkpoint's size.
        signed_checkpoint: the checkpoint note, signed by the log (other signatures ignored).
        log_verifier: the log's key (its name is the origin the witness serves).
        cosigner: this witness's type 0x04 key.
        timestamp: POSIX seconds to put in the cosignature (and to age reports against).
        rule: the execution-report rule, or None for a plain tlog-witness.

    Returns:
        The new state (to persist before answering) and the cosignature line.

    Raises:
        MalformedNoteError, WitnessRequestError, UnknownLogError, SignatureError,
        WitnessConflictError, ProofError, UnloggedExecutionError: see the module docstring.
    """
    checkpoint, _ = open_checkpoint(
        signed_checkpoint, origin=state.origin, log_verifier=log_verifier
    )
    if type(old_size) is not int or old_size < 0:
        raise WitnessRequestError("old size is a non-negative integer")
    if old_size > checkpoint.size:
        raise WitnessRequestError(
            f"old size {old_size} is larger than the checkpoint size {checkpoint.size}"
        )
    proof = list(consistency_proof)
    if len(proof) > MAX_PROOF_LINES:
        raise WitnessRequestError(f"more than {MAX_PROOF_LINES} consistency proof lines")
    if old_size != state.size:
        raise WitnessConflictError(
            f"witness last cosigned size {state.size}, not {old_size}", known_size=state.size
        )
    if old_size == checkpoint.size and checkpoint.root_hash != state.root_hash:
        raise WitnessConflictError(
            f"a different root for size {old_size} was already cosigned", known_size=state.size
        )
    if old_size == 0 and proof:
        raise ProofError("the consistency proof from size 0 must be empty")
    verify_consistency(
        size1=old_size,
        size2=checkpoint.size,
        proof=proof,
        root1=state.root_hash,
        root2=checkpoint.root_hash,
    )
    pending = state.pending_reports
    if rule is not None:
        remaining = []
        for report in pending:
            if rule.is_included(report.report_id, checkpoint.size):
                continue
            if report.received_at + rule.bound_seconds <= timestamp:
                raise UnloggedExecutionError(
                    f"execution {report.report_id} was reported at {report.received_at} and "
                    f"is not in the checkpoint of size {checkpoint.size}",
                    report_id=report.report_id,
                )
            remaining.append(report)
        pending = tuple(remaining)
    signature = cosign(checkpoint, cosigner=cosigner, timestamp=timestamp)
    new_state = WitnessState(
        origin=state.origin,
        size=checkpoint.size,
        root_hash=checkpoint.root_hash,
        checkpoint=add_signatures(signed_checkpoint, [signature]),
        pending_reports=pending,
    )
    return new_state, signature


def parse_add_checkpoint_body(body: bytes) -> tuple[int, list[bytes], bytes]:
    """Split a tlog-witness add-checkpoint request body into old size, proof and checkpoint.

    Raises:
        WitnessRequestError: not `old <n>\\n`, base64 hash lines, a blank line, a checkpoint.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WitnessRequestError("request body is not UTF-8") from None
    head, sep, checkpoint = text.partition("\n\n")
    if not sep:
        raise WitnessRequestError("request body has no blank line before the checkpoint")
    lines = head.split("\n")
    old = lines[0]
    digits = old.removeprefix("old ")
    if (
        old == digits
        or not digits.isascii()
        or not digits.isdigit()
        or (digits != "0" and digits.startswith("0"))
    ):
        raise WitnessRequestError("first line is 'old <size>'")
    proof: list[bytes] = []
    for line in lines[1:]:
        try:
            h = base64.b64decode(line.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError):
            raise WitnessRequestError("a consistency proof line is not base64") from None
        if len(h) != HASH_SIZE:
            raise WitnessRequestError("a consistency proof line is not a 32-byte hash")
        proof.append(h)
    if len(proof) > MAX_PROOF_LINES:
        raise WitnessRequestError(f"more than {MAX_PROOF_LINES} consistency proof lines")
    return int(digits), proof, checkpoint.encode()


def write_atomically(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace a file's contents atomically: a temporary file, fsync, rename, fsync the directory.

    Raises:
        StorageError: any step failed (the previous file is intact).
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise StorageError(f"cannot write {target}: {e.strerror}") from e


def save_state(path: str | os.PathLike[str], state: WitnessState) -> None:
    """Persist the state atomically (`write_atomically`).

    Raises:
        StorageError: it could not be written (the previous state file is intact).
    """
    write_atomically(path, state.to_bytes())


def load_state(path: str | os.PathLike[str]) -> WitnessState:
    """Read a state `save_state` wrote.

    Raises:
        StorageError: the file cannot be read.
        LogCorruptionError: it is not a valid state.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise StorageError(f"cannot read witness state {path}: {e.strerror}") from e
    return WitnessState.from_bytes(data)
