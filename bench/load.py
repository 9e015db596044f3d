"""Load test: many concurrent requesters, each with its own identity, against a local federation.

    .venv/bin/python bench/load.py [--clients 32] [--seconds 60] [--rows 30000]
        [--warmup 20] [--retention-max-queries 300]

Builds a demo-sized federation in a temporary directory (loopback only), issues one requester
certificate per client, runs every client for a bounded time, and prints errors, latency
percentiles, throughput and the coordinator's memory before and after (after a warm-up). Writes
bench/results/load.json.

The coordinator keeps finished queries by its retention rule (`retention_max_queries`, 10,000 by
default). Memory can be stable only once the book is full, so the run sets the coordinator's cap
to `--retention-max-queries` and warms up long enough to fill it; what is then measured is
whether anything else grows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dataisland.cli.federation import (
    DEFAULT_DEPARTMENTS,
    _populate_demo,
    free_base_port,
    init_federation,
    ports_needed,
)
from dataisland.cli.identity import issue_identity
from dataisland.client import Client, QueryFailedError
from dataisland.supervisor import FederationProcesses

SQL = (
    "SELECT category, count(*) AS claims, avg(amount) AS avg_amount FROM claims "
    "WHERE age BETWEEN 30 AND 60 GROUP BY category ORDER BY category"
)
RESULTS = Path(__file__).resolve().parent / "results"


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--retention-max-queries", type=int, default=300)
    parser.add_argument("--rows", type=int, default=30_000)
    args = parser.parse_args()
    console = Console()

    with tempfile.TemporaryDirectory(prefix="dataisland-load-") as temp:
        directory = Path(temp) / "fed"
        departments = list(DEFAULT_DEPARTMENTS)
        federation = init_federation(
            directory,
            departments,
            name="load",
            base_port=free_base_port(ports_needed(len(departments))),
        )
        _populate_demo(directory, federation, args.rows, 2024)
        coordinator_config = directory / "nodes" / "coordinator.yaml"
        coordinator_config.write_text(
            coordinator_config.read_text().replace(
                "retention_max_queries: 10000",
                f"retention_max_queries: {args.retention_max_queries}",
            )
        )
        identities = []
        for i in range(args.clients):
            department = departments[i % len(departments)]
            issue_identity(
                directory,
                federation=federation.federation,
                department=department,
                role="requester",
                name=f"load-{i}",
            )
            identities.append(f"{department}/requester/load-{i}")

        latencies: list[float] = []
        errors: list[str] = []
        finished = [0]
        lock = threading.Lock()
        start_measuring = threading.Event()
        stop = threading.Event()

        def client_loop(identity: str) -> None:
            with Client.from_federation(directory, identity=identity, timeout=30) as client:
                while not stop.is_set():
                    began = time.perf_counter()
                    try:
                        client.query(SQL, purpose="statistics")
                    except QueryFailedError as exc:
                        with lock:
                            errors.append(f"{exc.code}: {exc}")
                        continue
                    with lock:
                        finished[0] += 1
                        if start_measuring.is_set():
                            latencies.append(time.perf_counter() - began)

        with FederationProcesses(directory) as nodes:
            coordinator = next(n for n in nodes.nodes if n.spec.role == "coordinator")
            threads = [
                threading.Thread(target=client_loop, args=(identity,), daemon=True)
                for identity in identities
            ]
            for thread in threads:
                thread.start()
            time.sleep(args.warmup)
            rss_before = rss_kib(coordinator.pid)
            with lock:
                warmup_queries = finished[0]
            start_measuring.set()
            measured_from = time.perf_counter()
            time.sleep(args.seconds)
            stop.set()
            elapsed = time.perf_counter() - measured_from
            rss_after = rss_kib(coordinator.pid)
            for thread in threads:
                thread.join(timeout=60)

    ordered = sorted(latencies)
    figures = {
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "retention_max_queries": args.retention_max_queries,
        "queries_in_warmup": warmup_queries,
        "queries": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:5],
        "throughput_qps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(ordered), 1) if ordered else None,
        "p99_ms": round(1000 * ordered[int(0.99 * (len(ordered) - 1))], 1) if ordered else None,
        "coordinator_rss_kib_after_warmup": rss_before,
        "coordinator_rss_kib_at_end": rss_after,
        "rss_growth_percent": round(100 * (rss_after - rss_before) / max(rss_before, 1), 1),
    }
    table = Table("figure", "value", title="load test (loopback, every process on this machine)")
    for key, value in figures.items():
        table.add_row(key, str(value))
    console.print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "load.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
