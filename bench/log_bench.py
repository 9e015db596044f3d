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
4. Export verification with every enclave signature (`audit verify --federation`'s check):
   four attestation entries (simulated TEE evidence of three departments and the aggregator),
   then `--signed-entries` released query entries, each with three signed partials and the
   aggregator's signature; `verify_export` with `SignatureChecker.check` against the time of
   the same Ed25519 checks alone (the target: at most 1.2 times).

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

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from rich.console import Console
from rich.table import Table

from ledger.checkpoint import Checkpoint, add_signatures, cosign, sign_checkpoint
from ledger.entries import ExecutionReportEntry, FailureEntry, QueryEntry
from ledger.merkle import MerkleTree, hash_leaf, verify_inclusion
from ledger.note import SIG_TYPE_COSIGNATURE_V1, Ed25519Signer
from ledger.signatures import SignatureChecker
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


def _write_signed_export(out: Path, entries: list[bytes]) -> list[str]:
    """Write `entries` as an export with one cosigned checkpoint; return the trusted keys."""
    log = Ed25519Signer(ORIGIN, Ed25519PrivateKey.generate())
    witnesses = [
        Ed25519Signer(f"w{i}.bench", Ed25519PrivateKey.generate(), SIG_TYPE_COSIGNATURE_V1)
        for i in range(4)
    ]
    tree = MerkleTree.from_leaf_hashes(hash_leaf(e) for e in entries)
    cp = Checkpoint(ORIGIN, len(entries), tree.root())
    note = add_signatures(
        sign_checkpoint(cp, signer=log),
        [cosign(cp, cosigner=w, timestamp=1_700_000_000) for w in witnesses[:3]],
    )
    keys = [log.verifier().to_vkey(), *(w.verifier().to_vkey() for w in witnesses)]
    write_export(
        out,
        size=len(entries),
        entry=entries.__getitem__,
        tree=tree,
        checkpoint=note,
        history=[note],
        verifier_keys=keys,
    )
    return keys


def bench_signatures(n: int) -> dict[str, float]:
    """Verify an export of `n` released queries with every enclave signature (see the doc)."""
    import base64
    import datetime as dt
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    import enclave.attestation as tee
    from coordinator.attestation import attestation_entry
    from dataisland import attestation as verdicts
    from dataisland.canonical import format_rfc3339

    now = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)
    when = format_rfc3339(now)
    measured = tee.Measurement(measurement="ab" * 32, config="cd" * 32)
    departments = ("qingpu", "wujiang", "jiashan")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    with tempfile.TemporaryDirectory(prefix="log-bench-signed-") as tmp:
        # The log opens with the evidence of the three departments and the aggregator, as the
        # coordinator logs it; the checker pins the keys that evidence proves.
        vendor = Path(tmp) / "vendor"
        tee.create_vendor(vendor, now=now - dt.timedelta(days=1))
        root_pem = tee.vendor_paths(vendor)[0].read_bytes()
        expected = verdicts.ReferenceValues(
            measurement=measured.measurement, signer=tee.SIGNER, minimum_svn=1, debug_allowed=False
        )
        anchors = verdicts.TrustAnchors(
            root=x509.load_pem_x509_certificate(root_pem),
            references={"department": expected, "aggregator": expected},
        )
        entries: list[bytes] = []
        keys: dict[str, tee.EnclaveKeys] = {}
        nodes: list[tuple[str, verdicts.Role]] = [(d, "department") for d in departments]
        for node, role in [*nodes, ("committee", "aggregator")]:
            tee.certify_platform(vendor, node, now=now - dt.timedelta(days=1))
            certificate_path, key_path = tee.platform_paths(vendor, node)
            loaded = serialization.load_pem_private_key(key_path.read_bytes(), None)
            assert isinstance(loaded, Ed25519PrivateKey)
            keys[node] = tee.EnclaveKeys.generate()
            evidence = tee.SimulatedEvidenceProvider(
                platform_key=loaded,
                platform_certificate=x509.load_pem_x509_certificate(certificate_path.read_bytes()),
                node=node,
                role=role,
                measured=measured,
                debug=False,
                clock=lambda: now,
                svn=1,
            ).evidence(
                signing_key=keys[node].signing_public,
                hpke_key=keys[node].hpke_public,
                nonce=b"n" * 32,
            )
            attested = anchors.verify(evidence, node=node, role=role, now=now)
            entries.append(attestation_entry(attested, verified_at=now).to_bytes())
        partial_statement, result_statement = verdicts.partial_statement, verdicts.result_statement
        public = {
            node: Ed25519PublicKey.from_public_bytes(k.signing_public) for node, k in keys.items()
        }
        checks: list[tuple[Ed25519PublicKey, bytes, bytes]] = []  # (key, signature, statement)
        start = time.perf_counter()
        for i in range(n):
            query_id, query_hash = f"q-{i:012d}", f"{i:064x}"
            policies = tuple({"department": d, "policy_hash": "f" * 64} for d in departments)
            partials = []
            for d in departments:
                statement = partial_statement(
                    department=d,
                    query_id=query_id,
                    query_hash=query_hash,
                    ciphertext_sha256="e" * 64,
                    k=5,
                    policy_hashes={d: "f" * 64},
                )
                signature = keys[d].sign(statement)
                checks.append((public[d], signature, statement))
                # Its enclave's execution report comes first, as the coordinator logs it.
                report = ExecutionReportEntry(
                    version=1,
                    kind="execution_report",
                    report_id=f"{d}-{i:012d}",
                    department=d,
                    enclave=d,
                    query_id=query_id,
                    request_id=f"r-{i:012d}",
                    requester="spiffe://bench/dept/qingpu/requester/analyst",
                    query_hash=query_hash,
                    envelope_digest="cd" * 32,
                    partial_hash="e" * 64,
                    policy_hash="f" * 64,
                    policy_version=1,
                    reported_at=when,
                    signature="AA==",
                )
                report_signature = keys[d].sign(report.signed_bytes())
                checks.append((public[d], report_signature, report.signed_bytes()))
                entries.append(
                    report.model_copy(update={"signature": b64(report_signature)}).to_bytes()
                )
                partials.append(
                    {
                        "department": d,
                        "payload_hash": "e" * 64,
                        "k": 5,
                        "policies": ({"department": d, "policy_hash": "f" * 64},),
                        "signature": b64(signature),
                    }
                )
            commitment = hashlib.sha256(query_id.encode()).digest()
            statement = result_statement(
                query_id=query_id, query_hash=query_hash, result_commitment=commitment
            )
            signature = keys["committee"].sign(statement)
            checks.append((public["committee"], signature, statement))
            entries.append(
                QueryEntry.model_validate(
                    {
                        "version": 1,
                        "kind": "query",
                        "query_id": query_id,
                        "request_id": f"r-{i:012d}",
                        "requester": "spiffe://bench/dept/qingpu/requester/analyst",
                        "purpose": "statistics",
                        "sql": "SELECT category, count(*) AS n FROM claims GROUP BY category",
                        "query_hash": query_hash,
                        "params_commitment": "ab" * 32,
                        "envelope_digest": "cd" * 32,
                        "envelope_signature": "MEUCIQ" + "A" * 90,
                        "issued_at": when,
                        "policies": policies,
                        "approvals": (),
                        "partials": tuple(partials),
                        "result_commitment": commitment.hex(),
                        "aggregator_signature": b64(signature),
                        "suppressed_commitment": None,
                        "decision": "released",
                        "submitted_at": when,
                        "decided_at": when,
                    }
                ).to_bytes()
            )
        prepare = time.perf_counter() - start
        out = Path(tmp) / "export"
        trusted = _write_signed_export(out, entries)
        checker = SignatureChecker(anchors, batch=1024)  # as `audit verify` runs it
        start, cpu = time.perf_counter(), time.process_time()
        verify_export(
            out,
            trusted_keys=trusted,
            quorum=3,
            parse_entries=True,
            check_entry=checker.check,
            flush_checks=checker.flush,
        )
        verified, verified_cpu = time.perf_counter() - start, time.process_time() - cpu
        assert checker.results == n
        assert checker.partials == 3 * n
        assert checker.reports == 3 * n
        start, cpu = time.perf_counter(), time.process_time()
        for signer, signature, statement in checks:
            signer.verify(signature, statement)
        alone, alone_cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "released_entries": n,
        "signatures": len(checks),
        "entry_bytes": len(entries[-1]),
        "prepare_seconds": prepare,
        "verify_with_signatures_seconds": verified,
        "signature_checks_alone_seconds": alone,
        "verify_with_signatures_cpu_seconds": verified_cpu,
        "signature_checks_alone_cpu_seconds": alone_cpu,
        "ratio": verified / alone,
        "ratio_cpu": verified_cpu / alone_cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--signed-entries", type=int, default=100_000)
    args = parser.parse_args()
    console = Console()

    appends = [bench_append(1, args.seconds), bench_append(args.threads, args.seconds)]
    _, proofs = bench_proofs(args.entries)
    verify = bench_verify(args.entries)
    signed = bench_signatures(args.signed_entries)

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
    table.add_row(
        f"verify export of {signed['released_entries']:,} released queries with every "
        f"signature ({signed['signatures']:,})",
        f"{signed['verify_with_signatures_seconds']:.1f} s; the signature checks alone "
        f"{signed['signature_checks_alone_seconds']:.1f} s: {signed['ratio']:.2f}x "
        f"(CPU: {signed['ratio_cpu']:.2f}x)",
    )
    console.print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": {"python": platform.python_version(), "platform": platform.platform()},
                "appends": appends,
                "inclusion_proofs": proofs,
                "export_verification": verify,
                "export_verification_with_signatures": signed,
            },
            indent=2,
        )
        + "\n"
    )
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
