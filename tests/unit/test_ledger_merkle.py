"""RFC 9162 Merkle maths against the transparency-dev/merkle known answers and a naive reference.

Vectors: tests/vectors/merkle/ (see its README for the source files and commits:
transparency-dev/merkle testonly/constants.go, proof/verify_test.go and testdata/). The
corruption list mirrors `corruptInclusionProof` and `corruptConsistencyProof` of
proof/verify_test.go. The naive reference below is RFC 9162 §2.1.1 (MTH), §2.1.3.1 (PATH) and
§2.1.4.1 (PROOF / SUBPROOF) transcribed as recursion.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.errors import ProofError
from ledger.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MerkleTree,
    hash_children,
    hash_leaf,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).parent.parent / "vectors" / "merkle"
TD: dict[str, Any] = json.loads((VECTORS / "transparency_dev.json").read_text())
SAMPLES: dict[str, Any] = json.loads((VECTORS / "testdata_samples.json").read_text())

LEAVES = [bytes.fromhex(x) for x in TD["leaf_inputs"]]
ROOTS = [bytes.fromhex(x) for x in TD["root_hashes"]]
NODES = [[bytes.fromhex(x) for x in level] for level in TD["node_hashes"]]
SOME_HASH = bytes.fromhex(TD["some_hash"])
EMPTY_HASH = bytes.fromhex(TD["empty_tree_hash"])


def _h(xs: list[str]) -> list[bytes]:
    return [bytes.fromhex(x) for x in xs]


def _tree(n: int) -> MerkleTree:
    return MerkleTree.from_leaf_hashes(hash_leaf(d) for d in LEAVES[:n])


# --- naive reference (RFC 9162 §2.1) -------------------------------------------------------


def ref_mth(d: list[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m: int, d: list[bytes]) -> list[bytes]:
    return ref_subproof(m, d, True)


# --- known answers -------------------------------------------------------------------------


def test_hashing_prefixes() -> None:
    assert hash_leaf(b"") == bytes.fromhex(TD["node_hashes"][0][0])
    assert hash_children(NODES[0][0], NODES[0][1]) == NODES[1][0]
    assert EMPTY_ROOT == EMPTY_HASH


def test_node_hashes_and_roots_for_sizes_0_to_8() -> None:
    tree = _tree(8)
    for level, row in enumerate(NODES):
        for index, node in enumerate(row):
            assert tree.node(level, index) == node
    for size in range(9):
        assert tree.root(size) == ROOTS[size]
        assert _tree(size).root() == ROOTS[size]


def test_compact_range_matches_compact_trees() -> None:
    cr = CompactRange()
    assert cr.root() == ROOTS[0]
    for size in range(1, 9):
        cr.append(hash_leaf(LEAVES[size - 1]))
        assert cr.size == size
        want = [NODES[level][index] for level, index in TD["compact_trees"][size]]
        assert list(cr.peaks) == want
        assert cr.root() == ROOTS[size]


@pytest.mark.parametrize("vector", TD["inclusion_proofs"], ids=lambda v: f"{v['leaf']}-{v['size']}")
def test_known_inclusion_proofs(vector: dict[str, Any]) -> None:
    index, size, proof = vector["leaf"] - 1, vector["size"], _h(vector["proof"])
    assert _tree(8).inclusion_proof(index, size) == proof
    leaf_hash = hash_leaf(LEAVES[index])
    root = ROOTS[size]
    assert (
        root_from_inclusion_proof(leaf_hash=leaf_hash, index=index, size=size, proof=proof) == root
    )
    verify_inclusion(leaf_hash=leaf_hash, index=index, size=size, proof=proof, root=root)
    accepted = []
    for desc, probe in _inclusion_corruptions(index, size, proof, root, leaf_hash):
        try:
            verify_inclusion(**probe)
        except ProofError:
            continue
        accepted.append(desc)
    assert accepted == [], "verified corrupted proofs"


@pytest.mark.parametrize(
    "vector", TD["consistency_proofs"], ids=lambda v: f"{v['size1']}-{v['size2']}"
)
def test_known_consistency_proofs(vector: dict[str, Any]) -> None:
    size1, size2, proof = vector["size1"], vector["size2"], _h(vector["proof"])
    assert _tree(8).consistency_proof(size1, size2) == proof
    root1, root2 = ROOTS[size1], ROOTS[size2]
    verify_consistency(size1=size1, size2=size2, proof=proof, root1=root1, root2=root2)
    if not proof:
        return
    accepted = []
    for desc, probe in _consistency_corruptions(size1, size2, root1, root2, proof):
        try:
            verify_consistency(**probe)
        except ProofError:
            continue
        accepted.append(desc)
    assert accepted == [], "verified corrupted proofs"


def _flip(h: bytes, mask: int) -> bytes:
    return bytes([h[0] ^ mask]) + h[1:]


def _inclusion_corruptions(
    index: int, size: int, proof: list[bytes], root: bytes, leaf: bytes
) -> list[tuple[str, dict[str, Any]]]:
    def p(**kw: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "leaf_hash": leaf,
            "index": index,
            "size": size,
            "proof": proof,
            "root": root,
        }
        base.update(kw)
        return base

    out = [
        ("index - 1", p(index=index - 1)),
        ("index + 1", p(index=index + 1)),
        ("index ^ 2", p(index=index ^ 2)),
        ("size * 2", p(size=size * 2)),
        ("size / 2", p(size=size // 2)),
        ("wrong leaf", p(leaf_hash=b"WrongLeaf")),
        ("wrong leaf, right length", p(leaf_hash=SOME_HASH)),
        ("empty root", p(root=EMPTY_HASH)),
        ("random root", p(root=SOME_HASH)),
        ("trailing garbage", p(proof=[*proof, b""])),
        ("trailing root", p(proof=[*proof, root])),
        ("preceding garbage", p(proof=[b"", *proof])),
        ("preceding root", p(proof=[root, *proof])),
    ]
    for i in range(len(proof)):
        wrong = list(proof)
        wrong[i] = _flip(wrong[i], 8)
        out.append((f"modified proof[{i}] bit 3", p(proof=wrong)))
    if proof:
        out.append(("removed component", p(proof=proof[:-1])))
    if len(proof) > 1:
        out.append(("inserted component", p(proof=[proof[0], SOME_HASH, *proof[1:]])))
    return out


def _consistency_corruptions(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: list[bytes]
) -> list[tuple[str, dict[str, Any]]]:
    def p(**kw: Any) -> dict[str, Any]:
        base: dict[str, Any] = {
            "size1": size1,
            "size2": size2,
            "root1": root1,
            "root2": root2,
            "proof": proof,
        }
        base.update(kw)
        return base

    out = [
        ("size1 - 1", p(size1=size1 - 1)),
        ("size1 + 1", p(size1=size1 + 1)),
        ("size1 ^ 2", p(size1=size1 ^ 2)),
        ("size2 * 2", p(size2=size2 * 2)),
        ("size2 / 2", p(size2=size2 // 2)),
        ("wrong root1", p(root1=b"WrongRoot")),
        ("wrong root2", p(root2=b"WrongRoot")),
        ("other root1", p(root1=SOME_HASH)),
        ("other root2", p(root2=SOME_HASH)),
        ("swapped roots", p(root1=root2, root2=root1)),
        ("empty proof", p(proof=[])),
        ("trailing garbage", p(proof=[*proof, b""])),
        ("trailing root1", p(proof=[*proof, root1])),
        ("trailing root2", p(proof=[*proof, root2])),
        ("preceding garbage", p(proof=[b"", *proof])),
        ("preceding root1", p(proof=[root1, *proof])),
        ("preceding root2", p(proof=[root2, *proof])),
        ("preceding proof[0]", p(proof=[proof[0], *proof])),
        ("truncated proof", p(proof=proof[:-1])),
    ]
    for i in range(len(proof)):
        wrong = list(proof)
        wrong[i] = _flip(wrong[i], 16)
        out.append((f"modified proof[{i}] bit 4", p(proof=wrong)))
    return out


def _b64(xs: list[str]) -> list[bytes]:
    return [base64.b64decode(x) for x in xs]


@pytest.mark.parametrize("name", sorted(SAMPLES["inclusion"]))
def test_testdata_inclusion_samples(name: str) -> None:
    v = SAMPLES["inclusion"][name]

    def call() -> None:
        verify_inclusion(
            leaf_hash=base64.b64decode(v["leafHash"]),
            index=v["leafIdx"],
            size=v["treeSize"],
            proof=_b64(v["proof"]),
            root=base64.b64decode(v["root"]),
        )

    _expect(call, want_err=v["wantErr"])


@pytest.mark.parametrize("name", sorted(SAMPLES["consistency"]))
def test_testdata_consistency_samples(name: str) -> None:
    v = SAMPLES["consistency"][name]

    def call() -> None:
        verify_consistency(
            size1=v["size1"],
            size2=v["size2"],
            proof=_b64(v["proof"]),
            root1=base64.b64decode(v["root1"]),
            root2=base64.b64decode(v["root2"]),
        )

    _expect(call, want_err=v["wantErr"])


def _expect(call: Callable[[], None], *, want_err: bool) -> None:
    if want_err:
        with pytest.raises(ProofError):
            call()
    else:
        call()


def test_single_entry_inclusion() -> None:
    # TestVerifyInclusionSingleEntry: root and leaf hash coincide, the proof is empty.
    h = hash_leaf(b"data")
    verify_inclusion(leaf_hash=h, index=0, size=1, proof=[], root=h)
    for leaf, root in [(h, b""), (b"", h), (b"", b"")]:
        with pytest.raises(ProofError):
            verify_inclusion(leaf_hash=leaf, index=0, size=1, proof=[], root=root)


@pytest.mark.parametrize(("index", "size"), [(0, 0), (0, 1), (1, 0), (2, 1)])
def test_inclusion_bad_probes(index: int, size: int) -> None:
    # TestVerifyInclusion's probes: empty proof against mismatched or empty roots.
    for leaf, root in [(SOME_HASH, b""), (b"", EMPTY_HASH), (SOME_HASH, EMPTY_HASH)]:
        with pytest.raises(ProofError):
            verify_inclusion(leaf_hash=leaf, index=index, size=size, proof=[], root=root)


R1 = hashlib.sha256(b"don't care 1").digest()
R2 = hashlib.sha256(b"don't care 2").digest()


@pytest.mark.parametrize(
    ("size1", "size2", "root1", "root2", "proof", "ok"),
    [
        (0, 0, R1, R2, [], False),
        (1, 1, R1, R2, [], False),
        (0, 0, R1, R1, [], True),
        (0, 1, EMPTY_HASH, R2, [], True),
        (0, 1, R1, R2, [], False),  # stricter than Go: root1 must be the empty root
        (1, 1, R2, R2, [], True),
        (1, 0, R1, R2, [], False),
        (2, 1, R1, R2, [], False),
        (1, 2, R1, R2, [], False),
        (0, 0, EMPTY_HASH, R2, [], False),
        (1, 1, EMPTY_HASH, R2, [], False),
        (0, 0, EMPTY_HASH, EMPTY_HASH, [EMPTY_HASH], False),
        (0, 1, EMPTY_HASH, EMPTY_HASH, [EMPTY_HASH], False),
        (1, 1, EMPTY_HASH, EMPTY_HASH, [EMPTY_HASH], False),
    ],
)
def test_consistency_trivial_cases(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: list[bytes], ok: bool
) -> None:
    # TestVerifyConsistency's table, with 32-byte stand-ins for its "don't care" roots.
    def call() -> None:
        verify_consistency(size1=size1, size2=size2, proof=proof, root1=root1, root2=root2)

    _expect(call, want_err=not ok)


def test_bad_input_types_raise_proof_error() -> None:
    h = hash_leaf(b"x")
    with pytest.raises(ProofError):
        verify_inclusion(leaf_hash=h, index=True, size=1, proof=[], root=h)
    with pytest.raises(ProofError):
        verify_inclusion(leaf_hash=h, index=-1, size=1, proof=[], root=h)
    with pytest.raises(ProofError):
        verify_inclusion(leaf_hash=h, index=0, size=1, proof=h, root=h)  # type: ignore[arg-type]
    with pytest.raises(ProofError):
        verify_consistency(size1=1, size2=2, proof=[h], root1=h, root2="x" * 32)  # type: ignore[arg-type]
    tree = _tree(4)
    with pytest.raises(ProofError):
        tree.inclusion_proof(4, 4)
    with pytest.raises(ProofError):
        tree.inclusion_proof(0, 5)
    with pytest.raises(ProofError):
        tree.consistency_proof(3, 2)
    with pytest.raises(ProofError):
        tree.root(5)
    with pytest.raises(ProofError):
        tree.append(b"short")


# --- properties against the naive reference ------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(size=st.integers(min_value=1, max_value=300), data=st.data())
def test_against_naive_reference(size: int, data: st.DataObject) -> None:
    leaves = [i.to_bytes(4, "big") for i in range(size)]
    tree = MerkleTree.from_leaf_hashes(hash_leaf(d) for d in leaves)
    cr = CompactRange()
    for d in leaves:
        cr.append(hash_leaf(d))
    root = ref_mth(leaves)
    assert tree.root() == root
    assert cr.root() == root

    smaller = data.draw(st.integers(min_value=1, max_value=size), label="smaller")
    assert tree.root(smaller) == ref_mth(leaves[:smaller])

    index = data.draw(st.integers(min_value=0, max_value=smaller - 1), label="index")
    proof = tree.inclusion_proof(index, smaller)
    assert proof == ref_path(index, leaves[:smaller])
    verify_inclusion(
        leaf_hash=hash_leaf(leaves[index]),
        index=index,
        size=smaller,
        proof=proof,
        root=ref_mth(leaves[:smaller]),
    )
    if smaller < size or index != 0:
        with pytest.raises(ProofError):
            verify_inclusion(
                leaf_hash=hash_leaf(leaves[index]),
                index=index,
                size=size if smaller < size else smaller,
                proof=proof,
                root=root if smaller < size else hashlib.sha256(root).digest(),
            )

    size1 = data.draw(st.integers(min_value=1, max_value=size), label="size1")
    cproof = tree.consistency_proof(size1, size)
    assert cproof == ([] if size1 == size else ref_proof(size1, leaves))
    verify_consistency(
        size1=size1, size2=size, proof=cproof, root1=ref_mth(leaves[:size1]), root2=root
    )
    if cproof:
        bad = list(cproof)
        i = data.draw(st.integers(min_value=0, max_value=len(bad) - 1), label="flip")
        bad[i] = _flip(bad[i], 1)
        with pytest.raises(ProofError):
            verify_consistency(
                size1=size1, size2=size, proof=bad, root1=ref_mth(leaves[:size1]), root2=root
            )


def test_every_proof_up_to_64_verifies() -> None:
    leaves = [bytes([i]) for i in range(64)]
    tree = MerkleTree.from_leaf_hashes(hash_leaf(d) for d in leaves)
    roots = [tree.root(s) for s in range(65)]
    for size in range(1, 65):
        for index in range(size):
            verify_inclusion(
                leaf_hash=tree.leaf_hash(index),
                index=index,
                size=size,
                proof=tree.inclusion_proof(index, size),
                root=roots[size],
            )
        for size1 in range(size + 1):
            verify_consistency(
                size1=size1,
                size2=size,
                proof=tree.consistency_proof(size1, size),
                root1=roots[size1],
                root2=roots[size],
            )
