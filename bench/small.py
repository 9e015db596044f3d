"""Small-query benchmark: latency, throughput, time per stage and the gRPC floor on the demo data.

Usage: python bench/small.py [--serial 200] [--clients 16] [--seconds 20] [--threads N]

Builds the demo-size federation (30,000 synthetic claims per district, water readings upstream
and downstream) in a temporary directory, starts every node as a real process and measures a
small grouped query (six groups) through the Python client's full path:

1. serially: `--serial` queries one after another, p50/p99/mean latency, and the client-side
   split of each query (SubmitQuery; WaitResult until final; GetResult and the digest check);
2. concurrently: `--clients` threads, each with its own `Client`, for `--seconds`: p50/p99 and
   throughput (queries per second);
3. the floor: a bare mutual-TLS gRPC round trip through the same hops (standard health Check,
   no work): requester to coordinator, coordinator's certificate to each enclave and to the
   aggregator; the path of one query (three client calls, the fan-out, the merge call) composed
   of such round trips; and ListQueries, the cheapest authenticated coordinator call;
4. the time per stage, in this process with the same code, data and policies (the nodes
   stopped): envelope signing, envelope verification, parse (SQL front), policy check, plan,
   the partial on a shard, Arrow IPC, the merge with the release rules, the canonical result and
   its digest, and one durable log append (the coordinator makes two per query).

Prints tables and writes bench/results/small.json. Bounded: about a minute at the defaults.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.table import Table

from dataisland.canonical import CanonicalResult, QueryEnvelope, new_salt, params_commitment
from dataisland.client import QueryFailedError
from dataisland.envelopes import check_signed_envelope, sign
from dataisland.federation import Federation, load_federation, load_node_config
from dataisland.identity import (
    credential_paths,
    load_certificate,
    load_private_key,
    principal_of,
)
from dataisland.supervisor import NODES_DIR, FederationProcesses
from dataisland.tls import KeyPair, secure_channel
from dataisland.v1 import coordinator_pb2, coordinator_pb2_grpc
from enclave.engine import DuckDBMergeEngine, Lockdown
from enclave.planner import merge_partials, plan_query
from enclave.shard import Shard
from ledger.storage import LogStorage, LogWriter
from policies.checker import check
from policies.keeper import PolicyKeeper
from policies.sqlfront import parse_query

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as bench/small.py
from bench.harness import (
    DEPARTMENTS,
    PURPOSE,
    REQUESTER,
    NodeResources,
    Profiler,
    Timed,
    build_federation,
    client,
    code_state,
    cpu_per_query,
    cpu_snapshot,
    load_average,
    machine_info,
    percentile,
    timed_query,
)

Json = dict[str, Any]
"""A JSON object of results."""

RESULTS = Path(__file__).resolve().parent / "results" / "small.json"
SQL = "SELECT category, count(*) AS claims, sum(amount) AS total FROM claims GROUP BY category"
DEMO_ROWS = 30_000
TARGETS = {"serial_p50_ms": 8.0, "serial_p99_ms": 30.0, "concurrent_qps": 250.0}
# A requester that never submits, so ListQueries returns nothing (pure round trip).
IDLE_REQUESTER = "wujiang/requester/analyst"

console = Console(width=max(Console().width, 120))


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def latency(values: list[float]) -> Json:
    """Count, p50, p99, mean and max of latencies, in milliseconds."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_ms": ms(percentile(values, 50)),
        "p99_ms": ms(percentile(values, 99)),
        "mean_ms": ms(statistics.fmean(values)),
        "max_ms": ms(max(values)),
    }


# --- 1 and 2: the full path ------------------------------------------------------------------


def run_serial(nodes: FederationProcesses, count: int, warmup: int) -> Json:
    with client(nodes.directory, timeout=60) as requester:
        for _ in range(warmup):
            timed_query(requester, SQL)
        before = cpu_snapshot(nodes)
        runs: list[Timed] = [timed_query(requester, SQL) for _ in range(count)]
        after = cpu_snapshot(nodes)
    return {
        "queries": count,
        "cpu_ms_per_query": cpu_per_query(before, after, count),
        "latency": latency([r.total for r in runs]),
        "client_split_p50_ms": {
            "submit": ms(percentile([r.submit for r in runs], 50)),
            "wait": ms(percentile([r.wait for r in runs], 50)),
            "fetch": ms(percentile([r.fetch for r in runs], 50)),
        },
        "coordinator_submitted_to_finished": latency([r.server for r in runs]),
        "rows": runs[-1].rows if runs else 0,
    }


def run_concurrent(nodes: FederationProcesses, clients: int, seconds: float) -> Json:
    directory = nodes.directory
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)
    stop = threading.Event()
    requesters = [client(directory, timeout=60) for _ in range(clients)]

    def worker(i: int) -> None:
        requester = requesters[i]
        timed_query(requester, SQL)  # warm this client's channel
        start_gate.wait()
        while not stop.is_set():
            begin = time.perf_counter()
            try:
                requester.query(SQL, purpose=PURPOSE)
            except QueryFailedError as exc:
                with lock:
                    errors.append(f"{exc.code}: {exc}")
                continue
            latencies[i].append(time.perf_counter() - begin)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    start_gate.wait()
    before = cpu_snapshot(nodes)
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    elapsed = time.perf_counter() - began
    after = cpu_snapshot(nodes)
    for requester in requesters:
        requester.close()
    flat = [v for values in latencies for v in values]
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "queries": len(flat),
        "queries_per_second": round(len(flat) / elapsed, 1),
        "cpu_ms_per_query": cpu_per_query(before, after, len(flat)),
        "cpu_utilisation_of_machine": round(
            sum(after[k] - before.get(k, 0.0) for k in after) / elapsed / (os.cpu_count() or 1),
            2,
        ),
        "latency": latency(flat),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
    }


# --- 3: the floor ----------------------------------------------------------------------------


def _channel(
    federation: Federation, address: str, own: KeyPair, role: str, node: str
) -> grpc.Channel:
    department = federation.committee.name if node in ("coordinator", "aggregator") else node
    return secure_channel(
        address,
        own=own,
        server_ca_pem=(
            federation.committee.ca
            if department == federation.committee.name
            else federation.departments[department].ca
        ).read_bytes(),
        server_name=federation.dns_name(role, department),
    )


def run_floor(directory: Path, count: int) -> dict[str, Json]:
    federation = load_federation(directory / "federation.yaml")
    department, role, name = REQUESTER.split("/")
    requester_keys = KeyPair.load(
        *credential_paths(directory, department=department, role=role, name=name)
    )
    coordinator_keys = KeyPair.of_node(load_node_config(directory / NODES_DIR / "coordinator.yaml"))
    health = health_pb2.HealthCheckRequest()
    to_coordinator = health_pb2_grpc.HealthStub(
        _channel(
            federation,
            federation.committee.coordinator,
            requester_keys,
            "coordinator",
            "coordinator",
        )
    )
    to_enclaves = [
        health_pb2_grpc.HealthStub(
            _channel(federation, federation.departments[d].enclave, coordinator_keys, "enclave", d)
        )
        for d in DEPARTMENTS
    ]
    to_aggregator = health_pb2_grpc.HealthStub(
        _channel(
            federation,
            federation.committee.aggregator,
            coordinator_keys,
            "aggregator",
            "aggregator",
        )
    )
    idle_department, idle_role, idle_name = IDLE_REQUESTER.split("/")
    idle_channel = _channel(
        federation,
        federation.committee.coordinator,
        KeyPair.load(
            *credential_paths(directory, department=idle_department, role=idle_role, name=idle_name)
        ),
        "coordinator",
        "coordinator",
    )
    list_queries = coordinator_pb2_grpc.CoordinatorServiceStub(idle_channel)

    def timed(call: Callable[[], object]) -> list[float]:
        for _ in range(20):  # connections up, TLS handshakes done
            call()
        out = []
        for _ in range(count):
            begin = time.perf_counter()
            call()
            out.append(time.perf_counter() - begin)
        return out

    def fan_out() -> None:
        futures = [stub.Check.future(health, timeout=10) for stub in to_enclaves]
        for future in futures:
            future.result()

    def query_path() -> None:
        # submit, the fan-out to every enclave, the merge, wait, result: the hops of one query.
        to_coordinator.Check(health, timeout=10)
        fan_out()
        to_aggregator.Check(health, timeout=10)
        to_coordinator.Check(health, timeout=10)
        to_coordinator.Check(health, timeout=10)

    return {
        "requester_to_coordinator": latency(
            timed(lambda: to_coordinator.Check(health, timeout=10))
        ),
        "coordinator_to_enclave": latency(timed(lambda: to_enclaves[0].Check(health, timeout=10))),
        "coordinator_to_three_enclaves_parallel": latency(timed(fan_out)),
        "coordinator_to_aggregator": latency(
            timed(lambda: to_aggregator.Check(health, timeout=10))
        ),
        "query_path_of_round_trips": latency(timed(query_path)),
        "list_queries_empty": latency(
            timed(
                lambda: list_queries.ListQueries(coordinator_pb2.ListQueriesRequest(), timeout=10)
            )
        ),
    }


# --- 4: stages in this process ---------------------------------------------------------------


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def _from_ipc(payload: bytes) -> pa.Table:
    with pa.ipc.open_stream(pa.py_buffer(payload)) as reader:
        return reader.read_all()


def run_stages(directory: Path, count: int, resources: NodeResources | None) -> dict[str, Json]:
    """Median and p99 of each stage of one query, run in this process (nodes stopped)."""
    federation = load_federation(directory / "federation.yaml")
    catalog = federation.catalog()
    department, role, name = REQUESTER.split("/")
    keys = KeyPair.load(*credential_paths(directory, department=department, role=role, name=name))
    private_key = load_private_key(keys.key_pem)
    certificate = load_certificate(keys.certificate_pem)
    principal = principal_of(certificate)
    policies = {
        d: PolicyKeeper(
            department=d, officers=federation.officer_keys(d), required=entry.signatures_required
        ).accept(*federation.read_policy(d))
        for d, entry in federation.departments.items()
    }
    threads = (
        resources.threads
        if resources
        else load_node_config(directory / NODES_DIR / f"{DEPARTMENTS[0]}.yaml").threads
    )
    memory = resources.department_memory if resources else "512MB"
    lockdown = Lockdown(threads=threads, memory_limit=memory)
    shards = {d: Shard(directory / "shards" / f"{d}.duckdb", lockdown) for d in DEPARTMENTS}
    units = {name: info.privacy_unit for name, info in catalog.items()}
    masked = {
        d: shard.verify_unit_masks({t: u for t, u in units.items() if t in shard.tables()})
        for d, shard in shards.items()
    }
    engine = DuckDBMergeEngine(lockdown)
    times: dict[str, list[float]] = {}

    def clock(stage: str, begin: float) -> float:
        now = time.perf_counter()
        times.setdefault(stage, []).append(now - begin)
        return now

    try:
        for _ in range(count + 5):
            t = time.perf_counter()
            salt = new_salt()
            envelope = QueryEnvelope(
                sql=SQL,
                params_commitment=params_commitment([], salt=salt),
                purpose=PURPOSE,
                request_id=uuid.uuid4().hex,
                issued_at=dt.datetime.now(dt.UTC),
            )
            signed = sign(envelope, key=private_key, params=(), salt=salt)
            t = clock("client: build and sign envelope", t)
            checked = check_signed_envelope(signed, signer=certificate, now=dt.datetime.now(dt.UTC))
            t = clock("verify envelope signature (each node)", t)
            parsed = parse_query(checked.envelope.sql, catalog=catalog)
            t = clock("parse: SQL front (first sight; services cache it)", t)
            check(
                parsed,
                requester=principal,
                purpose=PURPOSE,
                policies=policies,
                catalog=catalog,
                now=dt.datetime.now(dt.UTC),
            )
            t = clock("policy check, every owner (coordinator)", t)
            plan = plan_query(parsed, catalog)
            t = clock("plan (first sight; enclaves and aggregator cache it)", t)
            payloads = {}
            for d, shard in shards.items():
                # The partial the enclave runs: bounded by the unit masks at k = 5.
                partial = shard.run(plan.partial_sql_for(k=5, masked=masked[d]), timeout=30)
                t = clock(f"partial on the shard ({d})", t)
                payloads[d] = _ipc(partial.table)
                t = clock(f"Arrow IPC of the partial ({d})", t)
            tables = {d: _from_ipc(p) for d, p in payloads.items()}
            t = clock("read the three partials (aggregator)", t)
            outcome = merge_partials(plan, tables, engine, k=dict.fromkeys(DEPARTMENTS, 5))
            t = clock("merge with release rules (aggregator)", t)
            CanonicalResult.from_arrow(outcome.result.table, outcome.result.types).digest()
            clock("canonical result and digest (aggregator)", t)
    finally:
        for shard in shards.values():
            shard.close()
    times["durable log append (coordinator, twice per query)"] = _log_appends(count)
    return {
        stage: {
            "p50_ms": ms(percentile(values[5:] if len(values) > 5 else values, 50)),
            "p99_ms": ms(percentile(values[5:] if len(values) > 5 else values, 99)),
        }
        for stage, values in times.items()
    }


def _log_appends(count: int) -> list[float]:
    entry = b"x" * 900  # about a query entry's size
    out = []
    with tempfile.TemporaryDirectory(prefix="small-bench-log-") as tmp:
        storage = LogStorage.open(Path(tmp) / "log", create=True)
        writer = LogWriter(storage)
        try:
            for _ in range(count + 5):
                begin = time.perf_counter()
                writer.append(entry)
                out.append(time.perf_counter() - begin)
        finally:
            writer.close()
            storage.close()
    return out


# --- output ----------------------------------------------------------------------------------


def print_tables(
    serial: Json, concurrent: Json, floor: dict[str, Json], stages: dict[str, Json]
) -> None:
    table = Table(title=f"small grouped query, full path ({SQL})")
    for column in ("run", "queries", "p50 ms", "p99 ms", "mean ms", "queries/s", "target"):
        table.add_column(column, justify="left" if column in ("run", "target") else "right")
    s_lat, c_lat = serial["latency"], concurrent["latency"]
    table.add_row(
        "serial",
        str(serial["queries"]),
        f"{s_lat['p50_ms']:.1f}",
        f"{s_lat['p99_ms']:.1f}",
        f"{s_lat['mean_ms']:.1f}",
        f"{1000 / s_lat['mean_ms']:.1f}",
        f"p50 <= {TARGETS['serial_p50_ms']:g}, p99 <= {TARGETS['serial_p99_ms']:g} ms",
    )
    table.add_row(
        f"{concurrent['clients']} clients",
        str(concurrent["queries"]),
        f"{c_lat['p50_ms']:.1f}",
        f"{c_lat['p99_ms']:.1f}",
        f"{c_lat['mean_ms']:.1f}",
        f"{concurrent['queries_per_second']:.1f}",
        f">= {TARGETS['concurrent_qps']:g} queries/s",
    )
    console.print(table)
    split = serial["client_split_p50_ms"]
    console.print(
        f"serial split (p50): submit {split['submit']:.1f} ms, wait {split['wait']:.1f} ms, "
        f"fetch {split['fetch']:.1f} ms; errors under load: {concurrent['errors']}"
    )
    cpu_table = Table(title="CPU milliseconds per query, by process (from /proc)")
    cpu_table.add_column("process")
    cpu_table.add_column("serial", justify="right")
    cpu_table.add_column(f"{concurrent['clients']} clients", justify="right")
    for group, value in serial["cpu_ms_per_query"].items():
        cpu_table.add_row(
            group, f"{value:.1f}", f"{concurrent['cpu_ms_per_query'].get(group, 0.0):.1f}"
        )
    console.print(cpu_table)
    floor_table = Table(title="floor: bare mutual-TLS gRPC round trips (health Check)")
    for column in ("hop", "p50 ms", "p99 ms"):
        floor_table.add_column(column, justify="left" if column == "hop" else "right")
    for hop, values in floor.items():
        floor_table.add_row(hop, f"{values['p50_ms']:.2f}", f"{values['p99_ms']:.2f}")
    console.print(floor_table)
    stage_table = Table(title="time per stage, in this process (same code, data, policies)")
    for column in ("stage", "p50 ms", "p99 ms"):
        stage_table.add_column(column, justify="left" if column == "stage" else "right")
    for stage, values in stages.items():
        stage_table.add_row(stage, f"{values['p50_ms']:.2f}", f"{values['p99_ms']:.2f}")
    console.print(stage_table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--serial", type=int, default=200, help="serial queries")
    parser.add_argument("--warmup", type=int, default=20, help="untimed queries first")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=20.0, help="concurrent run length")
    parser.add_argument("--floor", type=int, default=300, help="round trips per floor figure")
    parser.add_argument("--stages", type=int, default=100, help="in-process runs per stage")
    parser.add_argument(
        "--threads",
        type=int,
        help="DuckDB threads of every enclave (default: as `dataisland init` writes them)",
    )
    parser.add_argument(
        "--profile", type=Path, help="also sample every process with py-spy into this directory"
    )
    parser.add_argument("--profile-seconds", type=float, default=15.0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    code = code_state()
    started = time.monotonic()
    resources = (
        NodeResources(
            threads=args.threads,
            department_memory="1GB",
            aggregator_memory="1GB",
            query_timeout_seconds=30,
        )
        if args.threads
        else None
    )
    with tempfile.TemporaryDirectory(prefix="dataisland-small-") as tmp:
        directory = Path(tmp) / "federation"
        build_federation(
            directory,
            claims_per_department=[DEMO_ROWS] * len(DEPARTMENTS),
            resources=resources,
            water=True,
        )
        with FederationProcesses(directory) as nodes:
            console.print("serial ...")
            serial = run_serial(nodes, args.serial, args.warmup)
            console.print(f"{args.clients} concurrent clients for {args.seconds:g}s ...")
            concurrent = run_concurrent(nodes, args.clients, args.seconds)
            console.print("floor ...")
            floor = run_floor(directory, args.floor)
            if args.profile is not None:
                console.print(f"profiling {args.profile_seconds:g}s of serial queries ...")
                with (
                    Profiler(args.profile, nodes, label="small-serial"),
                    client(directory, timeout=60) as requester,
                ):
                    end = time.monotonic() + args.profile_seconds
                    while time.monotonic() < end:
                        timed_query(requester, SQL)
        console.print("stages in process ...")
        stages = run_stages(directory, args.stages, resources)
    serial_latency = serial["latency"]
    concurrent_qps = concurrent["queries_per_second"]
    document: dict[str, object] = {
        "machine": machine_info(),
        "code": code,
        "command": " ".join(["python", *sys.argv]),
        "config": {
            "claims_per_department": DEMO_ROWS,
            "sql": SQL,
            "enclave_threads": args.threads or "as dataisland init writes (1)",
            "serial": args.serial,
            "warmup": args.warmup,
            "clients": args.clients,
            "seconds": args.seconds,
        },
        "serial": serial,
        "concurrent": concurrent,
        "floor": floor,
        "stages": stages,
        "targets": {
            "serial_p50_ms": {
                "target": TARGETS["serial_p50_ms"],
                "measured": serial_latency["p50_ms"],
                "met": serial_latency["p50_ms"] <= TARGETS["serial_p50_ms"],
            },
            "serial_p99_ms": {
                "target": TARGETS["serial_p99_ms"],
                "measured": serial_latency["p99_ms"],
                "met": serial_latency["p99_ms"] <= TARGETS["serial_p99_ms"],
            },
            "concurrent_qps": {
                "target": TARGETS["concurrent_qps"],
                "measured": concurrent_qps,
                "met": concurrent_qps >= TARGETS["concurrent_qps"],
            },
        },
        "load_average_at_end": load_average(),
        "elapsed_seconds": round(time.monotonic() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print_tables(serial, concurrent, floor, stages)
    console.print(f"wrote {args.output} in {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
