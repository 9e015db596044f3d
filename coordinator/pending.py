"""Queries waiting for officers' approvals, kept in the coordinator's own state directory.

A query that needs approval may wait for hours; a coordinator restarted meanwhile must still
hold it, so officers can approve it and it then runs. Each such query is one file,
``<state_dir>/pending/<query id>.json``, written atomically (temporary file, fsync, rename,
directory fsync) when the query is added and when an approval arrives, and removed when the
query reaches a final state. The file holds the requester's signed envelope as it arrived, with
its parameter opening (template parameters are the requester's secret: they live here and with
the enclaves, never in the audit log), and the approvals so far.

This directory is the coordinator's, on the coordinator's host: it is trusted for nothing. The
enclaves verify the envelope, the approvals and freshness themselves when the query runs, and
the audit log (not this directory) is the record of what was decided.

A query that was running when the coordinator died is not resumed (an enclave may already have
run it and would refuse the replay): `settle_interrupted` ends it FAILED with UNAVAILABLE, in the
log and in the book, so its requester learns what happened instead of NOT_FOUND.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from coordinator.audit import AuditLog
from coordinator.book import QueryBook, QueryRecord
from dataisland.canonical import parse_rfc3339
from dataisland.errors import ConfigError, DataislandError
from dataisland.v1 import common_pb2, coordinator_pb2
from ledger.entries import DenialEntry, Entry, FailureEntry, QueryEntry
from ledger.errors import LedgerError

log = logging.getLogger("dataisland.coordinator.pending")

_ID = re.compile(r"^[0-9a-f-]{1,64}$")
FORMAT = 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise TypeError("not base64 text")
    return base64.b64decode(text, validate=True)


def record_to_json(record: QueryRecord) -> bytes:
    """What the store writes for `record` (a pending or approved, unfinished query)."""
    return json.dumps(
        {
            "format": FORMAT,
            "query_id": record.query_id,
            "requester": record.requester,
            "request_id": record.request_id,
            "envelope_digest": record.envelope_digest.hex(),
            "envelope": _b64(record.envelope.SerializeToString()),
            "purpose": record.purpose,
            "canonical_sql": record.canonical_sql,
            "query_hash": record.query_hash,
            "departments": list(record.departments),
            "submitted_at": record.submitted_at,
            "state": record.state,
            "decision": record.decision,
            "reasons": [_b64(r.SerializeToString()) for r in record.reasons],
            "policy_hashes": record.policy_hashes,
            "waiting_for": sorted(record.waiting_for),
            "template_hashes": record.template_hashes,
            "approvals": {d: _b64(a.SerializeToString()) for d, a in record.approvals.items()},
        },
        sort_keys=True,
    ).encode()


def record_from_json(data: bytes) -> QueryRecord:
    """The record a store file holds.

    Raises:
        ValueError: the file is not one this module wrote.
    """
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError("not a pending-query file of this format")
    envelope = common_pb2.SignedEnvelope.FromString(_unb64(doc["envelope"]))
    reasons = [common_pb2.Reason.FromString(_unb64(r)) for r in doc["reasons"]]
    approvals = {
        str(d): common_pb2.Approval.FromString(_unb64(a)) for d, a in doc["approvals"].items()
    }
    return QueryRecord(
        query_id=str(doc["query_id"]),
        requester=str(doc["requester"]),
        request_id=str(doc["request_id"]),
        envelope_digest=bytes.fromhex(doc["envelope_digest"]),
        envelope=envelope,
        purpose=str(doc["purpose"]),
        canonical_sql=str(doc["canonical_sql"]),
        query_hash=str(doc["query_hash"]),
        departments=tuple(str(d) for d in doc["departments"]),
        submitted_at=float(doc["submitted_at"]),
        state=int(doc["state"]),
        decision=int(doc["decision"]),
        reasons=reasons,
        policy_hashes={str(k): str(v) for k, v in doc["policy_hashes"].items()},
        waiting_for={str(d) for d in doc["waiting_for"]},
        template_hashes={str(k): str(v) for k, v in doc["template_hashes"].items()},
        approvals=approvals,
    )


class PendingStore:
    """One file per unfinished query that waited for approval, under `directory/pending`.

    Raises:
        ConfigError: the directory cannot be created.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory / "pending"
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(f"cannot create {self.directory}: {exc.strerror}") from None

    def _path(self, query_id: str) -> Path:
        if not _ID.match(query_id):
            raise ValueError(f"not a query id: {query_id!r}")
        return self.directory / f"{query_id}.json"

    def save(self, record: QueryRecord) -> None:
        """Write `record` durably, replacing its previous file.

        Raises:
            OSError: it could not be written (the caller refuses the step).
        """
        target = self._path(record.query_id)
        handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(record_to_json(record))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self._sync_directory()

    def remove(self, query_id: str) -> None:
        """Forget a query that reached a final state (best effort: a leftover is harmless,
        `load` skips queries the log shows finished)."""
        try:
            self._path(query_id).unlink(missing_ok=True)
            self._sync_directory()
        except OSError as exc:
            log.warning("could not remove the pending file of %s: %s", query_id, exc)

    def load(self) -> list[QueryRecord]:
        """Every stored query, oldest first; unreadable files are logged and skipped."""
        records = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                records.append(record_from_json(path.read_bytes()))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("skipping unreadable pending file %s: %s", path.name, exc)
        return sorted(records, key=lambda r: (r.submitted_at, r.query_id))

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _finished_in_log(audit: AuditLog, query_id: str) -> bool:
    for index in audit.indexes(query_id):
        try:
            entry = Entry.from_bytes(audit.storage.entry(index))
        except LedgerError:
            continue
        if isinstance(entry, (DenialEntry, FailureEntry)) or (
            isinstance(entry, QueryEntry) and entry.decision == "released"
        ):
            return True
    return False


def restore_pending(
    store: PendingStore,
    book: QueryBook,
    *,
    audit: AuditLog | None,
    start: Callable[[QueryRecord], None],
) -> list[QueryRecord]:
    """Put the queries kept in `store` back into `book` after a restart; start those whose
    approvals were all in. Return what was restored.

    With an audit log, a kept query the log never acknowledged (no entry: the coordinator died
    before answering) or already shows finished is dropped, and the others get their log index.
    """
    restored = []
    for record in store.load():
        if audit is not None:
            record.log_index = audit.first_index(record.query_id)
            if record.log_index is None or _finished_in_log(audit, record.query_id):
                store.remove(record.query_id)
                continue
        book.restore(record)
        restored.append(record)
        log.info(
            "kept query %s across the restart (waiting for %s)",
            record.query_id,
            ", ".join(sorted(record.waiting_for)) or "nobody",
            extra={"query_id": record.query_id},
        )
    for record in restored:
        if record.state == coordinator_pb2.QUERY_STATE_RUNNING:
            start(record)
    return restored


INTERRUPTED = (
    "the coordinator restarted while this query was running; nothing was released; "
    "submit it again with a new request id"
)


def settle_interrupted(audit: AuditLog, book: QueryBook) -> list[str]:
    """End every query the log shows submitted, neither finished nor kept in `book`, as FAILED
    (UNAVAILABLE) in the log and the book; return their ids.

    Runs once at start, after `restore_pending`: such a query was running (or waiting without a
    state directory to keep it) when the coordinator died.
    """
    submitted: dict[str, QueryEntry] = {}
    finished: set[str] = set()
    for data in audit.storage.entries():
        try:
            entry = Entry.from_bytes(data)
        except LedgerError:
            continue
        if isinstance(entry, QueryEntry) and entry.decision in ("allowed", "pending"):
            submitted.setdefault(entry.query_id, entry)
        elif isinstance(entry, (DenialEntry, FailureEntry, QueryEntry)) and entry.query_id:
            finished.add(entry.query_id)
    settled = []
    for query_id, entry in submitted.items():
        if query_id in finished or _kept(book, query_id):
            continue
        record = QueryRecord(
            query_id=query_id,
            requester=entry.requester,
            request_id=entry.request_id,
            envelope_digest=bytes.fromhex(entry.envelope_digest),
            envelope=common_pb2.SignedEnvelope(),
            purpose=entry.purpose,
            canonical_sql=entry.sql,
            query_hash=entry.query_hash,
            departments=(),
            submitted_at=parse_rfc3339(entry.submitted_at).timestamp(),
            decision=coordinator_pb2.DECISION_NEEDS_APPROVAL
            if entry.decision == "pending"
            else coordinator_pb2.DECISION_ALLOW,
        )
        record.log_index = audit.first_index(query_id)
        book.restore(record)
        book.finish(
            record,
            coordinator_pb2.QUERY_STATE_FAILED,
            error=common_pb2.ErrorDetail(code="UNAVAILABLE", message=INTERRUPTED),
        )
        settled.append(query_id)
    if settled:
        log.warning("%d queries were running when the coordinator stopped; failed", len(settled))
    return settled


def _kept(book: QueryBook, query_id: str) -> bool:
    try:
        book.get_any(query_id)
    except DataislandError:
        return False
    return True
