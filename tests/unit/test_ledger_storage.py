"""Durable log storage: group commit, torn-write recovery, checkpoint history, and kill -9."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.errors import EntryTooLargeError, LedgerError, LogCorruptionError, StorageError
from ledger.merkle import MerkleTree, hash_leaf, verify_consistency, verify_inclusion
from ledger.note import Ed25519Signer
from ledger.storage import ENTRIES_FILE, LogStorage, LogWriter

REPO = Path(__file__).resolve().parents[2]


def _entry(i: int) -> bytes:
    return b'{"i":%d,"pad":"%s"}' % (i, b"x" * (i % 50))


def test_append_read_reopen(tmp_path: Path) -> None:
    log = LogStorage.open(tmp_path / "log", create=True)
    assert log.append_many([_entry(i) for i in range(10)]) == 0
    assert log.append(_entry(10)) == 10
    root = log.root()
    log.close()
    log = LogStorage.open(tmp_path / "log", create=False)
    assert log.size == 11
    assert [log.entry(i) for i in range(11)] == [_entry(i) for i in range(11)]
    assert (
        log.root()
        == root
        == MerkleTree.from_leaf_hashes(hash_leaf(_entry(i)) for i in range(11)).root()
    )
    verify_inclusion(
        leaf_hash=hash_leaf(_entry(3)),
        index=3,
        size=11,
        proof=log.inclusion_proof(3, 11),
        root=root,
    )
    verify_consistency(
        size1=4, size2=11, proof=log.consistency_proof(4, 11), root1=log.root(4), root2=root
    )
    log.close()


def test_size_limits_and_single_opener(tmp_path: Path) -> None:
    log = LogStorage.open(tmp_path, create=True)
    with pytest.raises(EntryTooLargeError):
        log.append(b"x" * 65_536)
    with pytest.raises(EntryTooLargeError):
        log.append(b"")
    assert log.append(b"x" * 65_535) == 0
    with pytest.raises(StorageError):
        LogStorage.open(tmp_path, create=False)
    with pytest.raises(LedgerError):
        log.entry(1)
    log.close()
    with pytest.raises(StorageError):
        LogStorage.open(tmp_path / "missing", create=False)


@pytest.mark.parametrize(
    "tail",
    [b"\x00", b"\x00\x00\x00\x10\x00\x00", b"\x00\x00\x00\x05\x12\x34\x56\x78ab", b"\x00" * 64],
)
def test_torn_tail_is_cut_and_kept_aside(tmp_path: Path, tail: bytes) -> None:
    log = LogStorage.open(tmp_path, create=True)
    log.append_many([_entry(i) for i in range(5)])
    root = log.root()
    log.close()
    with (tmp_path / ENTRIES_FILE).open("ab") as f:
        f.write(tail)
    log = LogStorage.open(tmp_path, create=False)
    assert (log.size, log.root(), log.torn_bytes_cut) == (5, root, len(tail))
    assert log.append(_entry(5)) == 5
    log.close()
    assert list(tmp_path.glob(ENTRIES_FILE + ".torn-*"))
    assert LogStorage.open(tmp_path, create=False).size == 6


def _signer() -> Ed25519Signer:
    return Ed25519Signer("log.example/test", Ed25519PrivateKey.generate())


def test_checkpoint_history_must_match_entries(tmp_path: Path) -> None:
    signer = _signer()
    log = LogStorage.open(tmp_path, create=True)
    log.append_many([_entry(i) for i in range(8)])
    cp4 = sign_checkpoint(Checkpoint(signer.name, 4, log.root(4)), signer=signer)
    cp8 = sign_checkpoint(Checkpoint(signer.name, 8, log.root(8)), signer=signer)
    log.append_checkpoint(cp4)
    log.append_checkpoint(cp8)
    with pytest.raises(LedgerError):
        log.append_checkpoint(cp4)  # older than the latest
    with pytest.raises(LogCorruptionError):
        log.append_checkpoint(
            sign_checkpoint(
                Checkpoint(signer.name, 8, hashlib.sha256(b"x").digest()), signer=signer
            )
        )
    log.close()
    log = LogStorage.open(tmp_path, create=False)
    assert log.checkpoints() == [cp4, cp8]
    log.close()
    # Lose the last entry (as if a disk ate it): the checkpoint of size 8 no longer matches.
    path = tmp_path / ENTRIES_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 3])
    with pytest.raises(LogCorruptionError, match="index 7"):
        LogStorage.open(tmp_path, create=False)


def test_group_commit_batches_concurrent_callers(tmp_path: Path) -> None:
    log = LogStorage.open(tmp_path, create=True)
    writer = LogWriter(log)
    results: dict[int, int] = {}

    def worker(t: int) -> None:
        for j in range(50):
            results[t * 1000 + j] = writer.append(_entry(t * 1000 + j))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    with pytest.raises(EntryTooLargeError):
        writer.append(b"y" * 70_000)
    writer.close()
    assert sorted(results.values()) == list(range(400))
    for key, index in results.items():
        assert log.entry(index) == _entry(key)
    assert writer.batches < 400  # at least some callers shared an fsync
    with pytest.raises(StorageError):
        writer.append(_entry(0))
    log.close()


CHILD = r"""
import hashlib, sys, threading
from ledger.storage import LogStorage, LogWriter
log = LogStorage.open(sys.argv[1], create=True)
writer = LogWriter(log)
lock = threading.Lock()
def worker(t):
    j = 0
    while True:
        data = b'{"t":%d,"j":%d,"pad":"%s"}' % (t, j, b"z" * ((t * 7 + j) % 300))
        index = writer.append(data)
        line = "ACK %d %s\n" % (index, hashlib.sha256(data).hexdigest())
        with lock:
            sys.stdout.write(line)
            sys.stdout.flush()
        j += 1
for t in range(6):
    threading.Thread(target=worker, args=(t,), daemon=True).start()
threading.Event().wait()
"""


@pytest.mark.parametrize("round_", range(3))
def test_sigkill_loses_no_acknowledged_entry(tmp_path: Path, round_: int) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    acked: dict[int, str] = {}
    directory = tmp_path / "log"
    for attempt in range(2):  # kill, restart on the same log, kill again
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(directory)],
            stdout=subprocess.PIPE,
            env=env,
            cwd=REPO,
        )
        assert proc.stdout is not None
        target = 200 + 150 * round_ + 100 * attempt
        deadline = time.monotonic() + 60
        got = 0
        while got < target and time.monotonic() < deadline:
            raw = proc.stdout.readline()
            if not raw:
                break
            _, index_text, digest_text = raw.decode().split()
            acked[int(index_text)] = digest_text
            got += 1
        os.kill(proc.pid, signal.SIGKILL)
        # Lines the child wrote before dying were acknowledged too.
        for rest in proc.stdout.read().decode().splitlines():
            parts = rest.split()
            if len(parts) == 3:
                acked[int(parts[1])] = parts[2]
        proc.wait()
        assert got >= target, "child produced too few acknowledgements"

        log = LogStorage.open(directory, create=False)
        for index, digest in acked.items():
            assert index < log.size
            assert hashlib.sha256(log.entry(index)).hexdigest() == digest
        rebuilt = MerkleTree.from_leaf_hashes(hash_leaf(e) for e in log.entries())
        assert rebuilt.root() == log.root()
        log.close()
