"""RFC 9162 Merkle tree maths: hashing, an in-memory tree with proofs, and pure proof verification.

- `hash_leaf` / `hash_children`: SHA-256 with the 0x00 / 0x01 domain-separation prefixes.
- `CompactRange`: the O(log n) state (the "peaks") that gives the root of a growing tree.
- `MerkleTree`: every complete subtree hash, one array per level (the stored-node approach of
  tlog-tiles), so the root at any size and inclusion and consistency proofs cost O(log^2 n)
  hashes at most, whatever the size.
- `verify_inclusion` / `verify_consistency`: the verification algorithms of RFC 9162 §2.1.3.2 and
  §2.1.4.2, written from the RFC text, with every input explicit.

This module does no I/O and keeps no entries: it sees leaf hashes only. It does not decide what a
leaf is (ledger.entries does), persist anything (ledger.storage does) or check signatures.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from ledger.errors import ProofError

HASH_SIZE = 32
"""Bytes in every hash (SHA-256)."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}) of RFC 9162 §2.1.1: the hash of the empty string."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def hash_leaf(data: bytes) -> bytes:
    """Return the leaf hash SHA-256(0x00 || data) of one entry's bytes."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def hash_children(left: bytes, right: bytes) -> bytes:
    """Return the interior node hash SHA-256(0x01 || left || right)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than n (n > 1), as RFC 9162 §2.1.1 defines k."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_size(value: object, name: str) -> int:
    if type(value) is not int or value < 0:
        raise ProofError(f"{name} must be a non-negative integer")
    return value


def _check_hash(value: object, name: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise ProofError(f"{name} must be {HASH_SIZE} bytes")
    return value


def _check_proof(proof: object) -> list[bytes]:
    if isinstance(proof, (bytes, str)) or not isinstance(proof, Sequence):
        raise ProofError("a proof is a sequence of hashes")
    return [_check_hash(p, f"proof[{i}]") for i, p in enumerate(proof)]


class CompactRange:
    """The compact range [0, size): one complete-subtree hash per set bit of size.

    Appending costs O(1) amortised and O(log n) at worst; `root` costs O(log n). It holds no
    leaves, so it suits a writer that only needs the current root.
    """

    def __init__(self) -> None:
        self._size = 0
        self._peaks: list[bytes] = []

    def copy(self) -> CompactRange:
        """An independent copy (appending to it leaves this one as it is)."""
        other = CompactRange()
        other._size, other._peaks = self._size, list(self._peaks)
        return other

    @property
    def size(self) -> int:
        """The number of leaves appended."""
        return self._size

    @property
    def peaks(self) -> tuple[bytes, ...]:
        """The complete-subtree hashes, largest (leftmost) first."""
        return tuple(self._peaks)

    def append(self, leaf_hash: bytes) -> None:
        """Append one leaf hash (32 bytes).

        Raises:
            ProofError: the leaf hash is not 32 bytes.
        """
        node = _check_hash(leaf_hash, "leaf_hash")
        n = self._size
        while n & 1:
            node = hash_children(self._peaks.pop(), node)
            n >>= 1
        self._peaks.append(node)
        self._size += 1

    def root(self) -> bytes:
        """Return MTH of the leaves appended so far (EMPTY_ROOT for none)."""
        if not self._peaks:
            return EMPTY_ROOT
        node = self._peaks[-1]
        for peak in reversed(self._peaks[:-1]):
            node = hash_children(peak, node)
        return node


class MerkleTree:
    """An append-only RFC 9162 tree holding every complete subtree hash.

    Level l holds the hashes of the complete, aligned subtrees of 2**l leaves, concatenated in a
    bytearray (32 bytes each), so a million leaves take about 64 MB. Any MTH the proofs need is
    either one stored node or O(log n) hashes over stored nodes.
    """

    def __init__(self) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0

    @classmethod
    def from_leaf_hashes(cls, leaf_hashes: Iterable[bytes]) -> MerkleTree:
        """Build a tree from leaf hashes, in order.

        Raises:
            ProofError: a leaf hash is not 32 bytes.
        """
        tree = cls()
        tree.extend(leaf_hashes)
        return tree

    @property
    def size(self) -> int:
        """The number of leaves."""
        return self._size

    def append(self, leaf_hash: bytes) -> int:
        """Append one leaf hash and return its index.

        Raises:
            ProofError: the leaf hash is not 32 bytes.
        """
        node = _check_hash(leaf_hash, "leaf_hash")
        index = self._size
        levels = self._levels
        levels[0] += node
        i, level = index, 0
        while i & 1:
            row = levels[level]
            node = hash_children(bytes(row[(i - 1) * 32 : i * 32]), node)
            level += 1
            if level == len(levels):
                levels.append(bytearray())
            levels[level] += node
            i >>= 1
        self._size = index + 1
        return index

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append leaf hashes in order."""
        for leaf_hash in leaf_hashes:
            self.append(leaf_hash)

    def compact_range(self) -> CompactRange:
        """The compact range of all the leaves, to compute roots of extensions without
        appending to this tree (a witness checks pushed entries this way before keeping them)."""
        out = CompactRange()
        start = 0
        for level in reversed(range(self._size.bit_length())):
            if self._size >> level & 1:
                out._peaks.append(self.node(level, start >> level))
                start += 1 << level
        out._size = self._size
        return out

    def leaf_hash(self, index: int) -> bytes:
        """Return the hash of leaf `index`.

        Raises:
            ProofError: index is not below the size.
        """
        if type(index) is not int or not 0 <= index < self._size:
            raise ProofError(f"leaf index {index} is outside the tree of size {self._size}")
        return bytes(self._levels[0][index * 32 : index * 32 + 32])

    def node(self, level: int, index: int) -> bytes:
        """Return the stored hash of the complete subtree of 2**level leaves at position index.

        Raises:
            ProofError: no such complete subtree exists yet.
        """
        if not 0 <= level < len(self._levels) or not 0 <= index < len(self._levels[level]) // 32:
            raise ProofError(f"no complete subtree at level {level}, index {index}")
        return bytes(self._levels[level][index * 32 : index * 32 + 32])

    def _mth(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for a range the RFC recursion produces (start aligned to a power of
        two at least end - start); end must not exceed the size."""
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0 and start % n == 0:
            level = n.bit_length() - 1
            i = start >> level
            return bytes(self._levels[level][i * 32 : i * 32 + 32])
        k = _split(n)
        return hash_children(self._mth(start, start + k), self._mth(start + k, end))

    def _check_tree_size(self, size: object, name: str) -> int:
        s = _check_size(size, name)
        if s > self._size:
            raise ProofError(f"{name} {s} is larger than the tree ({self._size} leaves)")
        return s

    def root(self, size: int | None = None) -> bytes:
        """Return MTH of the first `size` leaves (default: all of them).

        Raises:
            ProofError: size is negative or larger than the tree.
        """
        s = self._size if size is None else self._check_tree_size(size, "size")
        return self._mth(0, s)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """Return PATH(index, D[0:size]) of RFC 9162 §2.1.3.1.

        Preconditions: 0 <= index < size <= self.size.

        Raises:
            ProofError: the preconditions do not hold.
        """
        s = self._check_tree_size(size, "size")
        m = _check_size(index, "index")
        if m >= s:
            raise ProofError(f"index {m} is not below size {s}")
        path: list[bytes] = []
        start, end = 0, s
        while end - start > 1:
            k = _split(end - start)
            if m < k:
                path.append(self._mth(start + k, end))
                end = start + k
            else:
                path.append(self._mth(start, start + k))
                start += k
                m -= k
        path.reverse()
        return path

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """Return PROOF(size1, D[0:size2]) of RFC 9162 §2.1.4.1.

        Preconditions: 0 <= size1 <= size2 <= self.size. The proof is empty when size1 is 0 or
        equal to size2 (nothing to prove).

        Raises:
            ProofError: the preconditions do not hold.
        """
        s2 = self._check_tree_size(size2, "size2")
        m = _check_size(size1, "size1")
        if m > s2:
            raise ProofError(f"size1 {m} is larger than size2 {s2}")
        if m in (0, s2):
            return []
        proof: list[bytes] = []
        start, end, complete = 0, s2, True
        while True:
            n = end - start
            if m == n:
                if not complete:
                    proof.append(self._mth(start, end))
                break
            k = _split(n)
            if m <= k:
                proof.append(self._mth(start + k, end))
                end = start + k
            else:
                proof.append(self._mth(start, start + k))
                start += k
                m -= k
                complete = False
        proof.reverse()
        return proof


def root_from_inclusion_proof(
    *, leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]
) -> bytes:
    """Recompute the root that an inclusion proof leads to (RFC 9162 §2.1.3.2, steps 1 to 5).

    Preconditions: 0 <= index < size; every hash is 32 bytes.

    Raises:
        ProofError: the preconditions do not hold, or the proof has the wrong length for index
            and size.
    """
    _check_hash(leaf_hash, "leaf_hash")
    fn = _check_size(index, "index")
    size = _check_size(size, "size")
    path = _check_proof(proof)
    if fn >= size:
        raise ProofError(f"index {fn} is not below size {size}")
    sn = size - 1
    r = leaf_hash
    for p in path:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = hash_children(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = hash_children(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the tree is deep")
    return r


def verify_inclusion(
    *, leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Verify that `leaf_hash` is leaf `index` of the tree of `size` leaves with root `root`.

    The algorithm of RFC 9162 §2.1.3.2.

    Preconditions: 0 <= index < size; leaf_hash, root and every proof element are 32 bytes.

    Raises:
        ProofError: a precondition fails or the proof does not lead to `root`.
    """
    _check_hash(root, "root")
    computed = root_from_inclusion_proof(leaf_hash=leaf_hash, index=index, size=size, proof=proof)
    if computed != root:
        raise ProofError(f"inclusion proof for index {index} in size {size} gives another root")


def verify_consistency(
    *, size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Verify that the tree of `size1` leaves with root `root1` is a prefix of the tree of `size2`
    leaves with root `root2`.

    The algorithm of RFC 9162 §2.1.4.2 for 0 < size1 < size2, plus the cases the RFC leaves to
    the caller: size1 == size2 needs an empty proof and root1 == root2; size1 == 0 needs an
    empty proof and root1 == EMPTY_ROOT (every tree extends the empty tree).

    Preconditions: 0 <= size1 <= size2; root1, root2 and every proof element are 32 bytes.

    Raises:
        ProofError: a precondition fails or the proof does not verify.
    """
    s1 = _check_size(size1, "size1")
    s2 = _check_size(size2, "size2")
    _check_hash(root1, "root1")
    _check_hash(root2, "root2")
    path = _check_proof(proof)
    if s1 > s2:
        raise ProofError(f"size1 {s1} is larger than size2 {s2}")
    if s1 == s2:
        if path:
            raise ProofError("a consistency proof between equal sizes must be empty")
        if root1 != root2:
            raise ProofError(f"two different roots for size {s1}")
        return
    if s1 == 0:
        if path:
            raise ProofError("a consistency proof from the empty tree must be empty")
        if root1 != EMPTY_ROOT:
            raise ProofError("root1 is not the empty tree's root")
        return
    # RFC 9162 §2.1.4.2 from here on: 0 < s1 < s2.
    if not path:
        raise ProofError("empty consistency proof")
    if s1 & (s1 - 1) == 0:
        path = [root1, *path]
    fn, sn = s1 - 1, s2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr = hash_children(c, fr)
            sr = hash_children(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = hash_children(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than the tree is deep")
    if fr != root1:
        raise ProofError(f"consistency proof does not lead to root1 at size {s1}")
    if sr != root2:
        raise ProofError(f"consistency proof does not lead to root2 at size {s2}")
