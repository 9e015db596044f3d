"""Offline verification of a log export (ledger.tiles layout), naming the first bad index.

`verify_export` checks, in this order:

1. the keys: exactly one log key (type 0x01; its name is the origin) and the witness keys
   (type 0x04), from the caller or from the export's `keys` file;
2. the checkpoint history: every checkpoint's log signature and witness quorum, sizes never
   going down, no two checkpoints of one size with different roots (a fork), and the exported
   `checkpoint` being the latest one (not an older one presented as new);
3. every entry: each bundle entry hashes to its level-0 tile hash, bundles hold exactly the
   entries the size calls for, and (with `parse_entries`) each is a valid dataisland entry;
4. the tree: every tile at every level equals the tree rebuilt from the entries, and the root
   at every checkpoint's size equals that checkpoint's root; successive checkpoints are also
   checked with RFC 9162 consistency proofs built from the rebuilt tree.

The first failure raises `VerificationError` with the first leaf index known to be bad (None for
failures about keys or signatures) and the reason. Trusting the export's own `keys` file shows
only that the export is self-consistent; an auditor passes keys it obtained independently.

This module reads the export and nothing else: no network, no clock. It does not check the
signatures carried inside entries (envelopes, partials, approvals): that needs the federation's
keys and the other packages' formats.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dataisland.errors import DataislandError
from ledger.checkpoint import Checkpoint, CosignedCheckpoint, verify_cosigned
from ledger.entries import Entry
from ledger.errors import LedgerError, VerificationError
from ledger.merkle import MerkleTree, hash_leaf, verify_consistency
from ledger.note import SIG_TYPE_COSIGNATURE_V1, SIG_TYPE_ED25519, Ed25519Verifier
from ledger.tiles import (
    TILE_HEIGHT,
    TILE_WIDTH,
    TileReader,
    bundles_for_size,
    tile_hashes,
    tile_path,
    tiles_for_size,
)


@dataclass(frozen=True)
class ExportReport:
    """What a successful verification established.

    Attributes:
        origin: the log's origin.
        size: entries verified.
        root_hash: the verified root at that size.
        checkpoints: how many history checkpoints verified (signatures, quorum, consistency).
        latest: the exported checkpoint with its verified cosignatures.
    """

    origin: str
    size: int
    root_hash: bytes
    checkpoints: int
    latest: CosignedCheckpoint


def _verifiers(vkeys: Sequence[str]) -> tuple[Ed25519Verifier, list[Ed25519Verifier]]:
    parsed = []
    for i, vkey in enumerate(vkeys):
        try:
            parsed.append(Ed25519Verifier.from_vkey(vkey))
        except LedgerError as e:
            raise VerificationError(f"key {i + 1}: {e}") from None
    logs = [v for v in parsed if v.sig_type == SIG_TYPE_ED25519]
    witnesses = [v for v in parsed if v.sig_type == SIG_TYPE_COSIGNATURE_V1]
    if len(logs) != 1:
        raise VerificationError(f"expected exactly one log key (type 0x01), found {len(logs)}")
    return logs[0], witnesses


def _cosigned(
    note: bytes, what: str, log: Ed25519Verifier, witnesses: list[Ed25519Verifier], quorum: int
) -> CosignedCheckpoint:
    try:
        return verify_cosigned(
            note,
            origin=log.name,
            log_verifier=log,
            witness_verifiers=witnesses,
            quorum=quorum,
        )
    except LedgerError as e:
        raise VerificationError(f"{what}: {e}") from None


def verify_export(
    path: str | os.PathLike[str],
    *,
    trusted_keys: Sequence[str] | None,
    quorum: int,
    parse_entries: bool,
    check_entry: Callable[[int, bytes], None] | None = None,
    flush_checks: Callable[[], None] | None = None,
) -> ExportReport:
    """Verify an export directory completely, offline.

    Args:
        path: the export directory.
        trusted_keys: vkeys (one type 0x01 log key, the witnesses' type 0x04 keys); None to
            use the export's own `keys` file (self-consistency only).
        quorum: how many distinct witnesses must cosign every checkpoint.
        parse_entries: also require every entry to parse as a dataisland entry.
        check_entry: called with each entry's index and bytes once it matches its tile hash,
            in log order (ledger/signatures.py checks signatures this way); it raises
            VerificationError to fail the export. It parses the entry itself, so
            `parse_entries` is not applied when it is given.
        flush_checks: called before any failure this function finds among the entries and
            after the last entry, so a `check_entry` that queues work (SignatureChecker with a
            batch) raises its own failures first when their index is lower.

    Returns:
        What was verified.

    Raises:
        VerificationError: the first problem found, with the first bad index when there is one.
    """
    reader = TileReader(Path(path))
    log, witnesses = _verifiers(reader.keys() if trusted_keys is None else trusted_keys)

    # 1. Checkpoints: signatures, quorum, order, forks, staleness.
    latest = _cosigned(reader.checkpoint(), "checkpoint", log, witnesses, quorum)
    history = [
        _cosigned(note, f"history checkpoint #{i}", log, witnesses, quorum).checkpoint
        for i, note in enumerate(reader.history())
    ]
    if not history:
        raise VerificationError("the checkpoint history is empty")
    roots_by_size: dict[int, bytes] = {}
    for i, cp in enumerate(history):
        if i and cp.size < history[i - 1].size:
            raise VerificationError(
                f"history checkpoint #{i} (size {cp.size}) is smaller than #{i - 1} "
                f"(size {history[i - 1].size})",
                index=cp.size,
            )
        known = roots_by_size.setdefault(cp.size, cp.root_hash)
        if known != cp.root_hash:
            raise VerificationError(
                f"the log signed two different checkpoints of size {cp.size} (a fork)",
                index=cp.size - 1 if cp.size else None,
            )
    size = latest.checkpoint.size
    newest = history[-1]
    if newest.size > size:
        raise VerificationError(
            f"the exported checkpoint (size {size}) is older than the latest recorded "
            f"checkpoint (size {newest.size}): an old checkpoint presented as new",
            index=size,
        )
    if (newest.size, newest.root_hash) != (size, latest.checkpoint.root_hash):
        if roots_by_size.get(size, latest.checkpoint.root_hash) != latest.checkpoint.root_hash:
            raise VerificationError(
                f"the log signed two different checkpoints of size {size} (a fork)",
                index=size - 1 if size else None,
            )
        raise VerificationError("the exported checkpoint is not the latest recorded one")

    def flushed(error: VerificationError) -> VerificationError:
        if flush_checks is not None:
            flush_checks()
        return error

    # 2. Entries against level-0 tiles, and bundle shapes.
    tree = MerkleTree()
    for bundle_index, width in bundles_for_size(size):
        first = bundle_index * TILE_WIDTH
        level0 = reader.tile(0, bundle_index, width)
        entries, problem = reader.bundle(bundle_index, width)
        for i, data in enumerate(entries):
            index = first + i
            leaf = hash_leaf(data)
            if leaf != level0[i * 32 : i * 32 + 32]:
                raise flushed(
                    VerificationError(
                        "the entry does not hash to its level-0 tile hash "
                        "(altered, dropped, reordered or inserted)",
                        index=index,
                    )
                )
            if check_entry is not None:
                check_entry(index, data)
            elif parse_entries:
                try:
                    Entry.from_bytes(data)
                except DataislandError as e:
                    raise VerificationError(f"not a valid entry: {e}", index=index) from None
            tree.append(leaf)
        if problem is not None:
            raise flushed(problem)
    if flush_checks is not None:
        flush_checks()

    # 3. Every tile against the rebuilt tree; then every checkpoint root.
    for level, index, width in tiles_for_size(size):
        if level == 0:
            continue  # compared hash by hash above
        got = reader.tile(level, index, width)
        want = tile_hashes(tree, level, index, width)
        if got != want:
            bad = next(
                j for j in range(width) if got[j * 32 : j * 32 + 32] != want[j * 32 : j * 32 + 32]
            )
            first_leaf = (index * TILE_WIDTH + bad) << (TILE_HEIGHT * level)
            raise VerificationError(
                f"tile {tile_path(level, index, width)} hash {bad} differs from the entries",
                index=first_leaf,
            )
    good = 0
    for i, cp in enumerate([*history, latest.checkpoint]):
        if tree.root(cp.size) != cp.root_hash:
            what = "the exported checkpoint" if i == len(history) else f"history checkpoint #{i}"
            raise VerificationError(
                f"the entries do not reproduce the root of {what} (size {cp.size}); the first "
                f"{good} entries match an earlier checkpoint",
                index=good,
            )
        good = max(good, cp.size)
    for i in range(1, len(history)):
        _consistent(tree, history[i - 1], history[i], i)
    return ExportReport(
        origin=log.name,
        size=size,
        root_hash=latest.checkpoint.root_hash,
        checkpoints=len(history),
        latest=latest,
    )


def _consistent(tree: MerkleTree, old: Checkpoint, new: Checkpoint, i: int) -> None:
    try:
        verify_consistency(
            size1=old.size,
            size2=new.size,
            proof=tree.consistency_proof(old.size, new.size),
            root1=old.root_hash,
            root2=new.root_hash,
        )
    except LedgerError as e:
        raise VerificationError(
            f"history checkpoints #{i - 1} and #{i} are not consistent: {e}", index=old.size
        ) from None
