"""A witness's replica of the log: entries kept only once they reproduce a log-signed root.

The coordinator pushes entries to every witness together with the log-signed checkpoint they
lead to (`Replica.extend`); the witness keeps them only if the replica's tree extended by them
has that checkpoint's root, so the replica is always a prefix of a tree the log signed. From it
the witness knows which execution reports a checkpoint includes (`report_index`), and its
department's enclave reads entries from it to rebuild its state after a restart (the enclave
verifies them again against a checkpoint a quorum cosigned: the witness runs on the enclave's
host and is not trusted alone).

This module does not verify signatures (the caller opens the checkpoint with the log's key),
cosign anything, or speak HTTP.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from ledger.checkpoint import Checkpoint
from ledger.entries import ExecutionReportEntry
from ledger.errors import LedgerError, ProofError, WitnessConflictError, WitnessRequestError
from ledger.merkle import hash_leaf
from ledger.storage import LogStorage

_REPORT_MARK = b'"kind":"execution_report"'


def _report_id(data: bytes) -> str | None:
    """The report id of an execution report entry, None for any other entry."""
    if _REPORT_MARK not in data:
        return None
    try:
        return ExecutionReportEntry.from_bytes(data).report_id
    except LedgerError:
        return None


class Replica:
    """A witness's verified copy of the log's entries; thread-safe.

    Args:
        storage: the replica's own log directory (this object closes it).
    """

    def __init__(self, storage: LogStorage) -> None:
        self.storage = storage
        self._lock = threading.Lock()
        self._reports: dict[str, int] = {}
        for index, data in enumerate(storage.entries()):
            self._note(index, data)

    def _note(self, index: int, data: bytes) -> None:
        report_id = _report_id(data)
        if report_id is not None:
            self._reports.setdefault(report_id, index)

    @property
    def size(self) -> int:
        """How many entries the replica holds."""
        return self.storage.size

    def root(self, size: int) -> bytes:
        """The root of the replica's first `size` entries.

        Raises:
            ProofError: `size` is beyond the replica.
        """
        return self.storage.root(size)

    @property
    def reports(self) -> dict[str, int]:
        """Report id to the index of its execution report entry (a snapshot)."""
        with self._lock:
            return dict(self._reports)

    def includes(self, report_id: str, size: int) -> bool:
        """Whether the replica's first `size` entries hold the report `report_id`."""
        index = self.report_index(report_id)
        return index is not None and index < size

    def report_index(self, report_id: str) -> int | None:
        """The index of the execution report `report_id`, if the replica holds it."""
        with self._lock:
            return self._reports.get(report_id)

    def extend(self, start: int, entries: Sequence[bytes], checkpoint: Checkpoint) -> int:
        """Append `entries` at `start` if they bring the replica to `checkpoint` exactly.

        Args:
            start: where the first entry goes; must be the replica's size.
            entries: the entries' exact bytes.
            checkpoint: a checkpoint the caller verified the log signed.

        Returns:
            The replica's new size.

        Raises:
            WitnessConflictError: `start` is not the replica's size (carries the size).
            WitnessRequestError: the entries do not end at the checkpoint's size.
            ProofError: the extended tree's root is not the checkpoint's.
            StorageError: they could not be made durable.
        """
        with self._lock:
            size = self.storage.size
            if start != size:
                raise WitnessConflictError(
                    f"the replica holds {size} entries, not {start}", known_size=size
                )
            if start + len(entries) != checkpoint.size:
                raise WitnessRequestError(
                    f"{len(entries)} entries from {start} do not end at the checkpoint's size "
                    f"{checkpoint.size}"
                )
            extended = self.storage.tree.compact_range()
            for data in entries:
                extended.append(hash_leaf(data))
            if extended.root() != checkpoint.root_hash:
                raise ProofError(
                    f"the entries pushed from {start} do not reproduce the root of the log's "
                    f"checkpoint of size {checkpoint.size}"
                )
            first = self.storage.append_many(entries)
            for offset, data in enumerate(entries):
                self._note(first + offset, data)
            return self.storage.size

    def entries(self, start: int, end: int) -> Iterator[bytes]:
        """Entries [start, end) of the replica.

        Raises:
            WitnessRequestError: the range is not within the replica.
        """
        if not 0 <= start <= end <= self.storage.size:
            raise WitnessRequestError(
                f"entries [{start}, {end}) are not within the replica of {self.storage.size}"
            )
        return self.storage.entries(start, end)

    def close(self) -> None:
        """Release the replica's directory."""
        self.storage.close()
