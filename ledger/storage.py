"""Durable, append-only storage of log entries and checkpoint history, with group commit.

Layout of a log directory:

- `entries.log`: the 17-byte magic `DATAISLAND-LOG-1\\n`, then one record per entry:
  length (uint32, big-endian) || CRC-32 of the data (uint32, big-endian) || the entry bytes.
- `checkpoints.log`: the magic `DATAISLAND-CKP-1\\n`, then records in the same framing, each a
  signed checkpoint note as the log produced it (cosignatures may be added in later records).

Leaf hashes are not stored: opening the log re-hashes every entry and rebuilds the tree, which
also proves the stored bytes are the ones whose hashes the checkpoints commit to. `append_many`
writes a batch with one write and one fdatasync; it returns only after both. `LogWriter` batches
concurrent callers (group commit, the caller at the head of the queue writing for everyone
behind it): each caller blocks until the batch holding its entries is on disk, then gets its
index.

Recovery on open: the first record that is incomplete, has length 0, or fails its CRC ends the
log; everything from there is copied to `entries.log.torn-<offset>` and cut off. Acknowledged
records were fsynced before that point, so only unacknowledged data is cut. The tree is rebuilt
and every stored checkpoint must match it (size within the log, same root), otherwise the log is
refused with `LogCorruptionError`: a checkpointed entry was lost or altered.

This module does not verify signatures, parse entries beyond their framing, hold an index by
query id, or sign checkpoints; it trusts nothing it reads until the tree rebuild agrees.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import zlib
from array import array
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ledger.checkpoint import Checkpoint
from ledger.entries import check_entry_size
from ledger.errors import LedgerError, LogCorruptionError, MalformedNoteError, StorageError
from ledger.merkle import MerkleTree, hash_leaf
from ledger.note import Note

ENTRIES_FILE = "entries.log"
CHECKPOINTS_FILE = "checkpoints.log"
ENTRIES_MAGIC = b"DATAISLAND-LOG-1\n"
CHECKPOINTS_MAGIC = b"DATAISLAND-CKP-1\n"
_HEADER = 8
_MAX_RECORD = 1 << 20


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync(fd: int) -> None:
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # pragma: no cover - macOS
        os.fsync(fd)


def _write_all(fd: int, blob: bytes, offset: int) -> None:
    view = memoryview(blob)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(0, "write made no progress")
        view = view[written:]
        offset += written


def _frame(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + zlib.crc32(data).to_bytes(4, "big") + data


@dataclass
class _Scan:
    records: list[tuple[int, int]] = field(default_factory=list)  # (data offset, length)
    end: int = 0
    torn: int = 0


def _scan(path: Path, magic: bytes, max_len: int) -> _Scan:
    """Find the valid records of a framed file; `end` is where the valid prefix stops."""
    scan = _Scan()
    with path.open("rb") as f:
        head = f.read(len(magic))
        if head != magic:
            raise LogCorruptionError(f"{path.name} does not start with its magic")
        offset = len(magic)
        while True:
            header = f.read(_HEADER)
            if len(header) < _HEADER:
                break
            length = int.from_bytes(header[:4], "big")
            crc = int.from_bytes(header[4:], "big")
            if not 0 < length <= max_len:
                break
            data = f.read(length)
            if len(data) < length or zlib.crc32(data) != crc:
                break
            scan.records.append((offset + _HEADER, length))
            offset += _HEADER + length
        scan.end = offset
        f.seek(0, os.SEEK_END)
        scan.torn = f.tell() - offset
    return scan


def _cut_torn_tail(path: Path, end: int) -> None:
    """Copy the bytes after `end` aside for forensics, then truncate the file at `end`."""
    aside = path.with_name(f"{path.name}.torn-{end}")
    n = 0
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.torn-{end}.{n}")
    with path.open("rb") as src, aside.open("wb") as dst:
        src.seek(end)
        dst.write(src.read())
        dst.flush()
        os.fsync(dst.fileno())
    with path.open("r+b") as f:
        f.truncate(end)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(path.parent)


def _create(path: Path, magic: bytes) -> None:
    with path.open("xb") as f:
        f.write(magic)
        f.flush()
        os.fsync(f.fileno())


class LogStorage:
    """An opened log directory: entries, the tree over them, and checkpoint history.

    Thread-safe: appends are serialised; reads may run beside them. One process at a time may
    open a directory (an exclusive lock on `entries.log`).
    """

    def __init__(self, directory: Path, fd: int, ckp_fd: int) -> None:
        self._dir = directory
        self._fd = fd
        self._ckp_fd = ckp_fd
        self._lock = threading.Lock()
        self._offsets = array("Q")
        self._lengths = array("I")
        self._end = 0
        self._ckp_end = 0
        self._tree = MerkleTree()
        self._checkpoints: list[bytes] = []
        self._failed = False
        self.torn_bytes_cut = 0

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, create: bool) -> LogStorage:
        """Open (and with `create`, create if missing) a log directory, recovering from a crash.

        Raises:
            StorageError: the directory cannot be opened, or another process holds it.
            LogCorruptionError: damage beyond a torn final write, or a stored checkpoint that
                the entries do not reproduce.
        """
        path = Path(directory)
        entries, ckps = path / ENTRIES_FILE, path / CHECKPOINTS_FILE
        try:
            if create:
                path.mkdir(parents=True, exist_ok=True)
                if not entries.exists():
                    _create(entries, ENTRIES_MAGIC)
                if not ckps.exists():
                    _create(ckps, CHECKPOINTS_MAGIC)
                _fsync_dir(path)
            fd = os.open(entries, os.O_RDWR)
        except OSError as e:
            raise StorageError(f"cannot open log at {path}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            raise StorageError(f"log at {path} is open in another process") from e
        try:
            ckp_fd = os.open(ckps, os.O_RDWR)
        except OSError as e:
            os.close(fd)
            raise StorageError(f"cannot open {ckps}: {e.strerror}") from e
        storage = cls(path, fd, ckp_fd)
        try:
            storage._recover()
        except BaseException:
            storage.close()
            raise
        return storage

    def _recover(self) -> None:
        entries = self._dir / ENTRIES_FILE
        scan = _scan(entries, ENTRIES_MAGIC, 65_535)
        if scan.torn:
            _cut_torn_tail(entries, scan.end)
            self.torn_bytes_cut += scan.torn
        self._end = scan.end
        for offset, length in scan.records:
            self._offsets.append(offset)
            self._lengths.append(length)
        for i in range(len(scan.records)):
            self._tree.append(hash_leaf(self._read(i)))

        ckps = self._dir / CHECKPOINTS_FILE
        cscan = _scan(ckps, CHECKPOINTS_MAGIC, _MAX_RECORD)
        if cscan.torn:
            _cut_torn_tail(ckps, cscan.end)
            self.torn_bytes_cut += cscan.torn
        self._ckp_end = cscan.end
        for offset, length in cscan.records:
            note = os.pread(self._ckp_fd, length, offset)
            self._check_checkpoint(note)
            self._checkpoints.append(note)

    def _check_checkpoint(self, note: bytes) -> Checkpoint:
        try:
            checkpoint = Checkpoint.from_text(Note.from_bytes(note).text)
        except MalformedNoteError as e:
            raise LogCorruptionError(f"stored checkpoint does not parse: {e}") from None
        if checkpoint.size > self._tree.size:
            raise LogCorruptionError(
                f"a checkpoint covers {checkpoint.size} entries but the log holds "
                f"{self._tree.size}: entries from index {self._tree.size} are lost"
            )
        if self._tree.root(checkpoint.size) != checkpoint.root_hash:
            raise LogCorruptionError(
                f"entries do not reproduce the root of the checkpoint of size {checkpoint.size}"
            )
        return checkpoint

    @property
    def directory(self) -> Path:
        """The log directory."""
        return self._dir

    @property
    def size(self) -> int:
        """The number of durable entries."""
        return self._tree.size

    @property
    def tree(self) -> MerkleTree:
        """The Merkle tree over the durable entries (do not append to it)."""
        return self._tree

    def _read(self, index: int) -> bytes:
        length = self._lengths[index]
        data = os.pread(self._fd, length, self._offsets[index])
        if len(data) != length:
            raise LogCorruptionError(f"entry {index} is shorter on disk than recorded")
        return data

    def entry(self, index: int) -> bytes:
        """Return the exact bytes of entry `index`.

        Raises:
            LedgerError: index out of range.
            StorageError: the read failed.
        """
        if type(index) is not int or not 0 <= index < self.size:
            raise LedgerError(f"no entry {index} in a log of {self.size}")
        try:
            return self._read(index)
        except OSError as e:
            raise StorageError(f"cannot read entry {index}: {e.strerror}") from e

    def entries(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Yield entries [start, end) (end defaults to the size when called)."""
        stop = self.size if end is None else end
        for i in range(start, stop):
            yield self.entry(i)

    def append_many(self, entries: Sequence[bytes]) -> int:
        """Append entries durably (one write, one fdatasync) and return the first index.

        Raises:
            EntryTooLargeError: an entry is empty or longer than 65,535 bytes (nothing written).
            StorageError: the write or sync failed; the storage refuses further appends until
                reopened, and the entries may or may not be on disk.
        """
        batch = [check_entry_size(e) for e in entries]
        if not batch:
            return self.size
        blob = b"".join(_frame(e) for e in batch)
        with self._lock:
            if self._failed:
                raise StorageError("an earlier write failed; reopen the log to recover")
            try:
                _write_all(self._fd, blob, self._end)
                _sync(self._fd)
            except OSError as e:
                self._failed = True
                raise StorageError(f"cannot append to the log: {e.strerror}") from e
            first = self._tree.size
            offset = self._end
            for item in batch:
                self._offsets.append(offset + _HEADER)
                self._lengths.append(len(item))
                self._tree.append(hash_leaf(item))
                offset += _HEADER + len(item)
            self._end = offset
            return first

    def append(self, entry: bytes) -> int:
        """Append one entry durably and return its index (see `append_many`)."""
        return self.append_many([entry])

    def root(self, size: int | None = None) -> bytes:
        """The tree root at `size` (default: now)."""
        return self._tree.root(size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of entry `index` in the tree of `size` entries."""
        return self._tree.inclusion_proof(index, size)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """RFC 9162 consistency proof from `size1` to `size2`."""
        return self._tree.consistency_proof(size1, size2)

    def append_checkpoint(self, note: bytes) -> None:
        """Durably record a signed checkpoint (possibly with cosignatures) in the history.

        Raises:
            LogCorruptionError: the note does not parse or does not match the entries.
            LedgerError: its size is below the latest recorded checkpoint's.
            StorageError: the write failed.
        """
        with self._lock:
            checkpoint = self._check_checkpoint(note)
            latest = self.latest_checkpoint()
            if latest is not None:
                prev = Checkpoint.from_text(Note.from_bytes(latest).text)
                if checkpoint.size < prev.size:
                    raise LedgerError(
                        f"checkpoint of size {checkpoint.size} is older than the latest "
                        f"({prev.size})"
                    )
            blob = _frame(note)
            try:
                _write_all(self._ckp_fd, blob, self._ckp_end)
                _sync(self._ckp_fd)
            except OSError as e:
                raise StorageError(f"cannot append a checkpoint: {e.strerror}") from e
            self._ckp_end += len(blob)
            self._checkpoints.append(note)

    def checkpoints(self) -> list[bytes]:
        """Every recorded checkpoint note, oldest first."""
        return list(self._checkpoints)

    def latest_checkpoint(self) -> bytes | None:
        """The most recently recorded checkpoint note, if any."""
        return self._checkpoints[-1] if self._checkpoints else None

    def close(self) -> None:
        """Release the files and the directory lock."""
        for fd in (self._fd, self._ckp_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fd = self._ckp_fd = -1


@dataclass
class _Request:
    entries: list[bytes]
    wake: threading.Event = field(default_factory=threading.Event)
    done: bool = False
    first: int = -1
    error: BaseException | None = None


class LogWriter:
    """Group commit over a `LogStorage`: concurrent appends share one write and one fsync.

    Leader and followers, as LevelDB's writer queue: callers queue their requests; the caller at
    the head of the queue leads, takes every request queued behind it (up to `max_batch`
    entries), appends them as one batch in its own thread and wakes each caller with its own
    index once the batch is durable, then hands the lead to the new head. A lone caller writes
    at once, with no thread hand-off (each hand-off costs a wake-up, milliseconds on a loaded
    machine); under load every caller that queued during one fsync shares the next. Entry
    sizes are checked in the caller, so one oversized entry never fails its batch-mates.
    """

    def __init__(self, storage: LogStorage, *, max_batch: int = 4096) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be positive")
        self._storage = storage
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._queue: deque[_Request] = deque()
        self._closed = False
        self.batches = 0

    def append(self, entry: bytes) -> int:
        """Append one entry; return its index once it is on disk.

        Raises:
            EntryTooLargeError: the entry is empty or longer than 65,535 bytes.
            StorageError: the batch could not be made durable, or the writer is closed.
        """
        return self.append_many([entry])

    def append_many(self, entries: Sequence[bytes]) -> int:
        """Append entries contiguously; return the first index once they are on disk."""
        request = _Request([check_entry_size(e) for e in entries])
        with self._lock:
            if self._closed:
                raise StorageError("the log writer is closed")
            self._queue.append(request)
            leads = self._queue[0] is request
        if not leads:
            request.wake.wait()  # our batch is durable, or we are the new head
        # Lead this caller's batch, and the next one if callers queued during it: a hand-off
        # to the next head costs a wake-up that the fsync would otherwise hide.
        if not request.done and self._lead(hand_off=False):
            self._lead(hand_off=True)
        if request.error is not None:
            raise request.error
        return request.first

    def _lead(self, *, hand_off: bool) -> bool:
        """Write the batch at the head of the queue; return whether requests wait behind it
        (with `hand_off`, the new head is woken to lead them)."""
        with self._lock:
            taken: list[_Request] = []
            count = 0
            for queued in self._queue:
                if taken and count + len(queued.entries) > self._max_batch:
                    break
                taken.append(queued)
                count += len(queued.entries)
        try:
            first = self._storage.append_many([e for r in taken for e in r.entries])
            self.batches += 1
            for r in taken:
                r.first = first
                first += len(r.entries)
        except LedgerError as e:
            for r in taken:
                r.error = e
        except Exception as e:
            for r in taken:
                r.error = StorageError(f"log writer failed: {type(e).__name__}")
        with self._lock:
            for r in taken:
                self._queue.popleft()
                r.done = True
                r.wake.set()
            if not self._queue:
                self._drained.notify_all()
                return False
            if hand_off:
                self._queue[0].wake.set()
            return True

    def close(self) -> None:
        """Refuse new appends and wait until every queued one is durable (or failed)."""
        with self._lock:
            self._closed = True
            while self._queue:
                self._drained.wait()
