"""Write and read a log export: a C2SP tlog-tiles tree plus checkpoint history and keys.

Layout of an export directory:

- `checkpoint`: the latest cosigned checkpoint (a signed note);
- `tile/<L>/<N>[.p/<W>]`: Merkle tree tiles (c2sp.org/tlog-tiles): tile N at level L holds the
  hashes of 256 consecutive subtrees of 256**L leaves, 32 bytes each; a partial tile of width W
  holds the first W; `<N>` is written in 3-digit groups, all but the last prefixed `x`
  (1234067 is `x001/x234/067`);
- `tile/entries/<N>[.p/<W>]`: entry bundles, each entry as a big-endian uint16 length and its
  bytes, bundle N holding entries 256*N onwards;
- `checkpoints/<00000000>`...: every checkpoint the log recorded, oldest first, one signed note
  per file (numbered, since two notes of one size must both survive to show a fork);
- `keys`: verifier keys in vkey form, one per line: the log's (type 0x01) first, then the
  witnesses' (type 0x04).

Partial tiles are written for the exported size only (the spec lets a log drop partial tiles of
older checkpoints once the full tile exists; verifiers recompute older roots from the entries).

This module writes and reads files; it verifies nothing (ledger.verify does) and reads no clock.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ledger.entries import check_entry_size
from ledger.errors import LedgerError, VerificationError
from ledger.merkle import HASH_SIZE, MerkleTree

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
CHECKPOINT_FILE = "checkpoint"
CHECKPOINTS_DIR = "checkpoints"
KEYS_FILE = "keys"


def encode_tile_index(n: int) -> str:
    """Return the path form of a tile index: 3-digit groups, all but the last prefixed `x`."""
    if type(n) is not int or n < 0:
        raise LedgerError("a tile index is a non-negative integer")
    groups = [f"{n % 1000:03d}"]
    n //= 1000
    while n:
        groups.append(f"x{n % 1000:03d}")
        n //= 1000
    return "/".join(reversed(groups))


def tile_path(level: int | str, index: int, width: int) -> str:
    """Return `tile/<level>/<index>` (full, width 256) or `tile/<level>/<index>.p/<width>`.

    `level` is an integer 0..63 or "entries" for entry bundles.
    """
    if not 1 <= width <= TILE_WIDTH:
        raise LedgerError("a tile is 1 to 256 wide")
    suffix = "" if width == TILE_WIDTH else f".p/{width}"
    return f"tile/{level}/{encode_tile_index(index)}{suffix}"


def tiles_for_size(size: int) -> list[tuple[int, int, int]]:
    """Return (level, index, width) of every tile a tree of `size` leaves needs."""
    out: list[tuple[int, int, int]] = []
    level = 0
    while size >> (TILE_HEIGHT * level):
        hashes = size >> (TILE_HEIGHT * level)
        out.extend((level, n, TILE_WIDTH) for n in range(hashes // TILE_WIDTH))
        if hashes % TILE_WIDTH:
            out.append((level, hashes // TILE_WIDTH, hashes % TILE_WIDTH))
        level += 1
    return out


def bundles_for_size(size: int) -> list[tuple[int, int]]:
    """Return (index, width) of every entry bundle a log of `size` entries needs."""
    out = [(n, TILE_WIDTH) for n in range(size // TILE_WIDTH)]
    if size % TILE_WIDTH:
        out.append((size // TILE_WIDTH, size % TILE_WIDTH))
    return out


def tile_hashes(tree: MerkleTree, level: int, index: int, width: int) -> bytes:
    """The bytes of tile (level, index, width) of `tree`."""
    first = index * TILE_WIDTH
    return b"".join(tree.node(TILE_HEIGHT * level, first + i) for i in range(width))


def encode_bundle(entries: Sequence[bytes]) -> bytes:
    """Concatenate entries, each prefixed by its big-endian uint16 length."""
    return b"".join(len(check_entry_size(e)).to_bytes(2, "big") + e for e in entries)


def split_bundle(
    data: bytes, *, first_index: int, width: int
) -> tuple[list[bytes], VerificationError | None]:
    """Split an entry bundle that should hold `width` entries.

    Returns the entries that parse, in order, and the problem that stopped parsing (None when
    exactly `width` entries fill the bundle). Callers check the parsed entries first, so a
    dropped entry is reported where the hashes first disagree, not where the bundle runs out.
    """
    out: list[bytes] = []
    pos = 0
    while len(out) < width:
        index = first_index + len(out)
        if pos + 2 > len(data):
            return out, VerificationError("entry missing: the bundle ends early", index=index)
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length == 0 or pos + 2 + length > len(data):
            return out, VerificationError("entry truncated or empty in its bundle", index=index)
        out.append(data[pos + 2 : pos + 2 + length])
        pos += 2 + length
    if pos != len(data):
        return out, VerificationError(
            "the bundle holds more data than its entries", index=first_index + width
        )
    return out, None


def decode_bundle(data: bytes, *, first_index: int, width: int) -> list[bytes]:
    """Split an entry bundle into exactly `width` entries.

    Raises:
        VerificationError: fewer entries, a truncated one, or extra bytes; naming the index.
    """
    entries, problem = split_bundle(data, first_index=first_index, width=width)
    if problem is not None:
        raise problem
    return entries


def _write(root: Path, rel: str, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_export(
    out_dir: str | os.PathLike[str],
    *,
    size: int,
    entry: Callable[[int], bytes],
    tree: MerkleTree,
    checkpoint: bytes,
    history: Sequence[bytes],
    verifier_keys: Sequence[str],
) -> None:
    """Write an export of the first `size` entries.

    Args:
        out_dir: a directory that does not exist or is empty.
        size: how many entries (the checkpoint's size).
        entry: returns entry i's bytes (e.g. `LogStorage.entry`).
        tree: a tree holding at least `size` leaves (the entries' hashes).
        checkpoint: the cosigned checkpoint of `size`.
        history: every recorded checkpoint note, oldest first.
        verifier_keys: vkeys, the log's first, then the witnesses'.

    Raises:
        LedgerError: out_dir is not empty, or the tree is smaller than `size`.
    """
    root = Path(out_dir)
    if root.exists() and any(root.iterdir()):
        raise LedgerError(f"export directory {root} is not empty")
    if tree.size < size:
        raise LedgerError(f"the tree has {tree.size} leaves, fewer than {size}")
    root.mkdir(parents=True, exist_ok=True)
    for index, width in bundles_for_size(size):
        first = index * TILE_WIDTH
        bundle = encode_bundle([entry(first + i) for i in range(width)])
        _write(root, tile_path("entries", index, width), bundle)
    for level, index, width in tiles_for_size(size):
        _write(root, tile_path(level, index, width), tile_hashes(tree, level, index, width))
    for i, note in enumerate(history):
        _write(root, f"{CHECKPOINTS_DIR}/{i:08d}", note)
    _write(root, KEYS_FILE, "".join(k + "\n" for k in verifier_keys).encode())
    _write(root, CHECKPOINT_FILE, checkpoint)


class TileReader:
    """Reads an export directory; every missing or misshapen file is a `VerificationError`."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _read(self, rel: str, *, index: int | None) -> bytes:
        try:
            return (self.root / rel).read_bytes()
        except OSError:
            raise VerificationError(f"{rel} is missing or unreadable", index=index) from None

    def checkpoint(self) -> bytes:
        """The `checkpoint` file."""
        return self._read(CHECKPOINT_FILE, index=None)

    def history(self) -> list[bytes]:
        """The checkpoint history, oldest first."""
        directory = self.root / CHECKPOINTS_DIR
        if not directory.is_dir():
            raise VerificationError(f"{CHECKPOINTS_DIR}/ is missing")
        names = sorted(p.name for p in directory.iterdir())
        if names != [f"{i:08d}" for i in range(len(names))]:
            raise VerificationError(f"{CHECKPOINTS_DIR}/ is not numbered 00000000 onwards")
        return [self._read(f"{CHECKPOINTS_DIR}/{n}", index=None) for n in names]

    def keys(self) -> list[str]:
        """The vkeys in the `keys` file (blank lines and '#' comments skipped)."""
        try:
            text = self._read(KEYS_FILE, index=None).decode("utf-8")
        except UnicodeDecodeError:
            raise VerificationError("keys file is not UTF-8") from None
        return [
            line.strip()
            for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]

    def tile(self, level: int, index: int, width: int) -> bytes:
        """Tile bytes, exactly `width` hashes long."""
        first_leaf = index * TILE_WIDTH << (TILE_HEIGHT * level)
        data = self._read(tile_path(level, index, width), index=first_leaf)
        if len(data) != width * HASH_SIZE:
            raise VerificationError(
                f"tile {tile_path(level, index, width)} is {len(data)} bytes, not "
                f"{width * HASH_SIZE}",
                index=first_leaf,
            )
        return data

    def bundle(self, index: int, width: int) -> tuple[list[bytes], VerificationError | None]:
        """The entries of bundle `index` that parse, and what stopped parsing (see
        `split_bundle`)."""
        first = index * TILE_WIDTH
        data = self._read(tile_path("entries", index, width), index=first)
        return split_bundle(data, first_index=first, width=width)
