"""Audit-log benchmarks: durable append throughput, inclusion proofs and export verification.

Usage: python bench/log_bench.py [--entries 1000000] [--seconds 3] [--threads 16]

1. Durable appends: `LogWriter` (group commit: one write + one fdatasync per batch) over a fresh
   `LogStorage` in a temporary directory, with 1 and with `--threads` concurrent appenders, each
   appending realistic ~600-byte query entries for `--seconds`; entries/s and entries per fsync.
2. Inclusion proofs at `--entries` leaves: build the tree, then time proof generation and RFC 9162
   verification of 2,000 random leaves.
3. Export verification of `--entries` entries: write a tlog-tiles export (one cosigned checkpoint,
   3-of-4 witnesses) and time `ledger.verify.verify_export`, without and with parsing every
   entry as a dataisland entry.

Prints a table and writes bench/results/log.json. Time is bounded by the arguments (about two
minutes at the defaults on a small machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.table import Table

from ledger.checkpoint import Checkpoint, add_signatures, cosign, sign_checkpoint
from ledger.entries import FailureEntry, QueryEntry
from ledger.merkle import MerkleTree, hash_leaf, verify_inclusion
from ledger.note import SIG_TYPE_COSIGNATURE_V1, Ed25519Signer
from ledger.storage import LogStorage, LogWriter
from ledger.tiles import write_export
from ledger.verify import verify_export

ORIGIN = "log.committee.bench.dataisland"
RESULTS = Path(__file__).resolve().parent / "results" / "log.json"
T = "2024-06-01T08:00:00.000000Z"


def query_entry(i: int) -> bytes:
    return QueryEntry(
        version=1,
        kind="query",
        query_id=f"q-{i:012d}",
        request_id=f"r-{i:012d}",
        requester="spiffe://bench/dept/qingpu/requester/analyst",
        purpose="statistics",
        sql=(
            "SELECT date_trunc('month', service_date) AS month, COUNT(*) AS n "
            "FROM claims GROUP BY 1"
        ),
        query_hash=f"{i:064x}",
        params_commitment="ab" * 32,
        envelope_digest="cd" * 32,
        envelope_signature="MEUCIQ" + "A" * 90,
        issued_at=T,
        policies=(),
        approvals=(),
        partials=(),
        result_commitment=None,
        aggregator_signature=None,
        suppressed_commitment=None,
        decision="allowed",
        submitted_at=T,
        decided_at=T,
    ).to_bytes()


def small_entry(i: int) -> bytes:
    return FailureEntry(
        version=1,
        kind="failure",
        query_id=f"q-{i:012d}",
        request_id=f"r-{i:012d}",
        stage="execution",
        code="CANCELLED",
        message="the query ended with CANCELLED",
        failed_at=T,
    ).to_bytes()


def bench_append(threads: int, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="log-bench-") as tmp:
        storage = LogStorage.open(Path(tmp) / "log", create=True)
        writer = LogWriter(storage)
        payload = query_entry(0)
        stop = threading.Event()
        counts = [0] * threads

        def worker(k: int) -> None:
            while not stop.is_set():
                writer.append(payload)
                counts[k] += 1

        workers = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        time.sleep(seconds)
        stop.set()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - start
        writer.close()
        total, batches = sum(counts), writer.batches
        storage.close()
    return {
        "appenders": threads,
        "entries": total,
        "seconds": elapsed,
        "entries_per_second": total / elapsed,
        "entries_per_fsync": total / max(batches, 1),
        "entry_bytes": len(payload),
    }


def bench_proofs(n: int) -> tuple[MerkleTree, dict[str, float]]:
    start = time.perf_counter()
    tree = MerkleTree.from_leaf_hashes(hash_leaf(i.to_bytes(8, "big")) for i in range(n))
    build = time.perf_counter() - start
    root = tree.root()
    rng = random.Random(7)
    samples = [rng.randrange(n) for _ in range(2_000)]
    gen, ver = [], []
    for index in samples:
        t0 = time.perf_counter()
        proof = tree.inclusion_proof(index, n)
        t1 = time.perf_counter()
        verify_inclusion(
            leaf_hash=hash_leaf(index.to_bytes(8, "big")),
            index=index,
            size=n,
            proof=proof,
            root=root,
        )
        t2 = time.perf_counter()
        gen.append(t1 - t0)
        ver.append(t2 - t1)
    return tree, {
        "leaves": n,
        "build_tree_seconds": build,
        "proof_median_us": statistics.median(gen) * 1e6,
        "proof_p99_us": sorted(gen)[int(len(gen) * 0.99)] * 1e6,
        "verify_median_us": statistics.median(ver) * 1e6,
        "proof_hashes": len(tree.inclusion_proof(samples[0], n)),
    }


def bench_verify(n: int) -> dict[str, float]:
    log = Ed25519Signer(ORIGIN, Ed25519PrivateKey.generate())
    witnesses = [
        Ed25519Signer(f"w{i}.bench", Ed25519PrivateKey.generate(), SIG_TYPE_COSIGNATURE_V1)
        for i in range(4)
    ]
    start = time.perf_counter()
    entries = [small_entry(i) for i in range(n)]
    tree = MerkleTree.from_leaf_hashes(hash_leaf(e) for e in entries)
    prepare = time.perf_counter() - start
    cp = Checkpoint(ORIGIN, n, tree.root())
    note = add_signatures(
        sign_checkpoint(cp, signer=log),
        [cosign(cp, cosigner=w, timestamp=1_700_000_000) for w in witnesses[:3]],
    )
    keys = [log.verifier().to_vkey(), *(w.verifier().to_vkey() for w in witnesses)]
    with tempfile.TemporaryDirectory(prefix="log-bench-export-") as tmp:
        out = Path(tmp) / "export"
        t0 = time.perf_counter()
        write_export(
            out,
            size=n,
            entry=entries.__getitem__,
            tree=tree,
            checkpoint=note,
            history=[note],
            verifier_keys=keys,
        )
        written = time.perf_counter() - t0
        size_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        t0 = time.perf_counter()
        verify_export(out, trusted_keys=keys, quorum=3, parse_entries=False)
        verify_plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        verify_export(out, trusted_keys=keys, quorum=3, parse_entries=True)
        verify_parsed = time.perf_counter() - t0
    return {
        "entries": n,
        "entry_bytes": len(entries[0]),
        "prepare_seconds": prepare,
        "export_write_seconds": written,
        "export_bytes": size_bytes,
        "verify_seconds": verify_plain,
        "verify_with_parsing_seconds": verify_parsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    console = Console()

    appends = [bench_append(1, args.seconds), bench_append(args.threads, args.seconds)]
    _, proofs = bench_proofs(args.entries)
    verify = bench_verify(args.entries)

    table = Table("measure", "value")
    for a in appends:
        table.add_row(
            f"durable appends, {a['appenders']} appender(s)",
            f"{a['entries_per_second']:,.0f} entries/s "
            f"({a['entries_per_fsync']:.1f} entries per fsync, {a['entry_bytes']} B each)",
        )
    table.add_row(
        f"build tree of {proofs['leaves']:,} leaves", f"{proofs['build_tree_seconds']:.1f} s"
    )
    table.add_row(
        f"inclusion proof at {proofs['leaves']:,}",
        f"median {proofs['proof_median_us']:.0f} µs, p99 {proofs['proof_p99_us']:.0f} µs "
        f"({proofs['proof_hashes']:.0f} hashes); verify median {proofs['verify_median_us']:.0f} µs",
    )
    table.add_row(
        f"write export of {verify['entries']:,} entries",
        f"{verify['export_write_seconds']:.1f} s ({verify['export_bytes'] / 1e6:,.0f} MB)",
    )
    table.add_row(
        f"verify export of {verify['entries']:,} entries", f"{verify['verify_seconds']:.1f} s"
    )
    table.add_row("  … also parsing every entry", f"{verify['verify_with_parsing_seconds']:.1f} s")
    console.print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": {"python": platform.python_version(), "platform": platform.platform()},
                "appends": appends,
                "inclusion_proofs": proofs,
                "export_verification": verify,
            },
            indent=2,
        )
        + "\n"
    )
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
