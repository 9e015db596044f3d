"""tlog-tiles export and offline verification, including every tampering the audit issue lists."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.checkpoint import Checkpoint, add_signatures, cosign, sign_checkpoint
from ledger.entries import FailureEntry
from ledger.errors import VerificationError
from ledger.merkle import MerkleTree, hash_leaf
from ledger.note import SIG_TYPE_COSIGNATURE_V1, Ed25519Signer
from ledger.storage import LogStorage
from ledger.tiles import (
    TileReader,
    bundles_for_size,
    encode_bundle,
    encode_tile_index,
    tile_hashes,
    tile_path,
    tiles_for_size,
    write_export,
)
from ledger.verify import verify_export
from ledger.witness import WitnessState, add_checkpoint
from tests.unit.test_ledger_entries import sample_entries

ORIGIN = "log.example/dataisland"
QUORUM = 3


def test_tile_paths_and_shapes_follow_the_spec() -> None:
    assert encode_tile_index(1234067) == "x001/x234/067"
    assert encode_tile_index(5) == "005"
    assert encode_tile_index(1000) == "x001/000"
    assert tile_path(0, 1234067, 256) == "tile/0/x001/x234/067"
    assert tile_path("entries", 3, 17) == "tile/entries/003.p/17"
    # tlog-tiles: a tree of 70,000 has 273 full level-0 tiles, one partial of width 112,
    # one full level-1 tile, a partial level-1 tile of 17 and a partial level-2 tile of 1.
    tiles = tiles_for_size(70_000)
    assert sum(1 for lv, _, w in tiles if lv == 0 and w == 256) == 273
    assert (0, 273, 112) in tiles
    assert [t for t in tiles if t[0] == 1] == [(1, 0, 256), (1, 1, 17)]
    assert [t for t in tiles if t[0] == 2] == [(2, 0, 1)]
    assert tiles_for_size(256) == [(0, 0, 256), (1, 0, 1)]


@dataclass
class Fixture:
    export: Path
    keys: list[str]
    log: Ed25519Signer
    witnesses: list[Ed25519Signer]
    size: int


def _filler(i: int) -> bytes:
    return FailureEntry(
        version=1,
        kind="failure",
        query_id=f"q-{i}",
        request_id=None,
        stage="merge",
        code="TIMEOUT",
        message=f"department d{i % 3} did not answer",
        failed_at="2024-03-01T12:00:00.000000Z",
    ).to_bytes()


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    base = tmp_path_factory.mktemp("export")
    log = Ed25519Signer(ORIGIN, Ed25519PrivateKey.generate())
    witnesses = [
        Ed25519Signer(
            f"witness.example/w{i}", Ed25519PrivateKey.generate(), SIG_TYPE_COSIGNATURE_V1
        )
        for i in range(4)
    ]
    states = [WitnessState.initial(ORIGIN) for _ in witnesses]
    storage = LogStorage.open(base / "log", create=True)
    storage.append_many([e.to_bytes() for e in sample_entries()])
    clock = 1_700_000_000
    for target in (100, 300, 600):
        storage.append_many([_filler(i) for i in range(storage.size, target)])
        note = sign_checkpoint(Checkpoint(ORIGIN, target, storage.root()), signer=log)
        sigs = []
        for i, w in enumerate(witnesses[:3] if target != 300 else witnesses[1:]):
            k = witnesses.index(w)
            states[k], sig = add_checkpoint(
                states[k],
                old_size=states[k].size,
                consistency_proof=storage.consistency_proof(states[k].size, target),
                signed_checkpoint=note,
                log_verifier=log.verifier(),
                cosigner=w,
                timestamp=clock + i,
                rule=None,
            )
            sigs.append(sig)
        clock += 10
        storage.append_checkpoint(add_signatures(note, sigs))
    keys = [log.verifier().to_vkey(), *(w.verifier().to_vkey() for w in witnesses)]
    latest = storage.latest_checkpoint()
    assert latest is not None
    write_export(
        base / "export",
        size=storage.size,
        entry=storage.entry,
        tree=storage.tree,
        checkpoint=latest,
        history=storage.checkpoints(),
        verifier_keys=keys,
    )
    size = storage.size
    storage.close()
    return Fixture(base / "export", keys, log, witnesses, size)


def test_clean_export_verifies(fixture: Fixture) -> None:
    report = verify_export(
        fixture.export, trusted_keys=fixture.keys, quorum=QUORUM, parse_entries=True
    )
    assert (report.size, report.checkpoints, report.origin) == (600, 3, ORIGIN)
    assert len(report.latest.cosignatures) == 3
    same = verify_export(fixture.export, trusted_keys=None, quorum=QUORUM, parse_entries=True)
    assert same.root_hash == report.root_hash
    with pytest.raises(VerificationError, match="quorum"):
        verify_export(fixture.export, trusted_keys=fixture.keys, quorum=4, parse_entries=False)


def _copy(fixture: Fixture, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(fixture.export, out)
    return out


def _bundle_entries(root: Path, index: int, width: int) -> list[bytes]:
    entries, problem = TileReader(root).bundle(index, width)
    assert problem is None
    return entries


def _rewrite_bundle(
    root: Path, index: int, width: int, edit: Callable[[list[bytes]], list[bytes]]
) -> None:
    entries = edit(_bundle_entries(root, index, width))
    (root / tile_path("entries", index, width)).write_bytes(encode_bundle(entries))


def _expect(root: Path, fixture: Fixture, *, index: int | None, match: str) -> VerificationError:
    with pytest.raises(VerificationError, match=match) as info:
        verify_export(root, trusted_keys=fixture.keys, quorum=QUORUM, parse_entries=True)
    assert info.value.index == index, str(info.value)
    return info.value


def test_flipped_byte_in_an_entry(fixture: Fixture, tmp_path: Path) -> None:
    root = _copy(fixture, tmp_path)

    def flip(entries: list[bytes]) -> list[bytes]:
        e = bytearray(entries[450 - 256])
        e[20] ^= 0x01
        entries[450 - 256] = bytes(e)
        return entries

    _rewrite_bundle(root, 1, 256, flip)
    _expect(root, fixture, index=450, match="level-0 tile")


def test_dropped_entry(fixture: Fixture, tmp_path: Path) -> None:
    root = _copy(fixture, tmp_path)
    _rewrite_bundle(root, 1, 256, lambda es: es[:44] + es[45:])
    _expect(root, fixture, index=256 + 44, match="level-0 tile")


def test_swapped_entries(fixture: Fixture, tmp_path: Path) -> None:
    root = _copy(fixture, tmp_path)
    _rewrite_bundle(root, 0, 256, lambda es: [*es[:10], es[11], es[10], *es[12:]])
    _expect(root, fixture, index=10, match="level-0 tile")


def test_truncated_log(fixture: Fixture, tmp_path: Path) -> None:
    root = _copy(fixture, tmp_path)
    last, width = bundles_for_size(fixture.size)[-1]
    _rewrite_bundle(root, last, width, lambda es: es[:30])
    _expect(root, fixture, index=last * 256 + 30, match="ends early")
    (root / tile_path("entries", last, width)).unlink()
    _expect(root, fixture, index=last * 256, match="missing")


def test_older_checkpoint_presented_as_new(fixture: Fixture, tmp_path: Path) -> None:
    root = _copy(fixture, tmp_path)
    shutil.copy(root / "checkpoints" / "00000001", root / "checkpoint")
    _expect(root, fixture, index=300, match="older than the latest")


def test_two_checkpoints_of_one_size(fixture: Fixture, tmp_path: Path) -> None:
    root = _copy(fixture, tmp_path)
    other = MerkleTree.from_leaf_hashes(hash_leaf(b"fork %d" % i) for i in range(300))
    fork = Checkpoint(ORIGIN, 300, other.root())
    note = sign_checkpoint(fork, signer=fixture.log)
    note = add_signatures(
        note, [cosign(fork, cosigner=w, timestamp=1) for w in fixture.witnesses[:3]]
    )
    history = root / "checkpoints"
    (history / "00000003").write_bytes((history / "00000002").read_bytes())
    (history / "00000002").write_bytes(note)
    _expect(root, fixture, index=299, match="fork")


def test_rewritten_tiles_do_not_match_the_signed_root(fixture: Fixture, tmp_path: Path) -> None:
    # An attacker edits entry 400 and recomputes every tile: only the signed roots catch it,
    # and the checkpoint of size 300 still vouches for the first 300 entries.
    root = _copy(fixture, tmp_path)
    entries = [e for b, w in bundles_for_size(fixture.size) for e in _bundle_entries(root, b, w)]
    entries[400] = _filler(100_400)
    tree = MerkleTree.from_leaf_hashes(hash_leaf(e) for e in entries)
    for b, w in bundles_for_size(fixture.size):
        (root / tile_path("entries", b, w)).write_bytes(
            encode_bundle(entries[b * 256 : b * 256 + w])
        )
    for level, index, width in tiles_for_size(fixture.size):
        (root / tile_path(level, index, width)).write_bytes(tile_hashes(tree, level, index, width))
    _expect(root, fixture, index=300, match="do not reproduce the root")


def test_forged_cosignature_and_missing_history(fixture: Fixture, tmp_path: Path) -> None:
    root = _copy(fixture, tmp_path)
    text = (root / "checkpoint").read_bytes().decode()
    lines = text.split("\n")
    sig_line = lines[-2]  # the last cosignature
    name, b64 = sig_line.split(" ")[1:]
    forged = b64[:20] + ("A" if b64[20] != "A" else "B") + b64[21:]
    (root / "checkpoint").write_text(text.replace(b64, forged))
    _expect(root, fixture, index=None, match="checkpoint")
    root2 = tmp_path / "copy2"
    shutil.copytree(fixture.export, root2)
    shutil.rmtree(root2 / "checkpoints")
    _expect(root2, fixture, index=None, match="checkpoints/")
    assert name.startswith("witness.example/")
