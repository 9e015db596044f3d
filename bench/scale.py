"""Scale benchmark: dataisland's full path against one plain DuckDB over the union, side by side.

Usage: python bench/scale.py [--sizes 1000000,10000000] [--full] [--repeats 3]
                             [--max-seconds 5400] [--work-dir DIR] [--keep]

For each total size (claims split evenly over three districts):

1. build a federation (`dataisland init` layout, every enclave at `--threads` DuckDB threads and
   a memory limit) and fill the shard files with `dataisland.synthetic` claims;
2. start every node as a real process (`FederationProcesses`: witnesses, enclaves, aggregator,
   coordinator) and open one plain DuckDB (`--threads`, `--plain-memory`) that ATTACHes the same
   three shard files read-only and reads them as one UNION ALL;
3. run each query, interleaved (the order rotates every round so machine noise hits every
   system alike), `--repeats` times after one warm-up:
   - dataisland: the Python client's submit, wait and every result page (10,000 rows a page),
     through the coordinator (signature, parse, policy check, durable log append), the three
     department enclaves (admission, policy, plan, partial on the shard) and the aggregator
     (re-plan, release rules, merge), result digest checked by the client;
   - (a) plain DuckDB doing the computation dataisland must do: the query's aggregates per group
     and per shard together with count(DISTINCT person_id) per group and per shard, then the
     merge and the release rule (every shard's share at least k people);
   - (b) plain DuckDB running the query alone.

The queries: a global sum; claims per month; per hospital level and category (the schema has no
district column: a district is a department, so this is the "district and category" stand-in);
and a high-cardinality group by (service date x age x category x sex: about 360,000 possible
groups). Medians are compared as dataisland/(a) and dataisland/(b).

`--max-seconds` bounds the whole run: once it has passed, no further measurement starts and the
script prints and writes what it has. Prints a table and writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
from rich.console import Console
from rich.table import Table

from dataisland.catalog import Catalog
from dataisland.client import Client, QueryFailedError
from dataisland.federation import load_federation
from dataisland.identity import Principal
from dataisland.supervisor import FederationProcesses
from policies.checker import Verdict, check
from policies.keeper import PolicyKeeper
from policies.sqlfront import parse_query

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as bench/scale.py
from bench.harness import (
    DEPARTMENTS,
    PURPOSE,
    QUERIES,
    REQUESTER,
    BenchQuery,
    NodeResources,
    Profiler,
    build_federation,
    client,
    code_state,
    cpu_per_query,
    cpu_snapshot,
    directory_bytes,
    load_average,
    machine_info,
    summary,
    timed_query,
)

RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"
DEFAULT_SIZES = (1_000_000, 10_000_000)
FULL_SIZE = 30_000_000
SYSTEMS = ("dataisland", "a", "b")

CODE_AT_START: dict[str, object] = {}
console = Console(width=max(Console().width, 150))


def release_k(directory: Path, catalog: Catalog) -> int:
    """The k every query must meet, from the owners' signed policies (and check they allow it).

    Raises:
        SystemExit: a policy does not allow a benchmark query outright.
    """
    federation = load_federation(directory / "federation.yaml")
    policies = {
        name: PolicyKeeper(
            department=name,
            officers=federation.officer_keys(name),
            required=entry.signatures_required,
        ).accept(*federation.read_policy(name))
        for name, entry in federation.departments.items()
    }
    department, role, name = REQUESTER.split("/")
    requester = Principal(
        federation=federation.federation, department=department, role=role, name=name
    )
    ks: set[int] = set()
    for query in QUERIES:
        decision = check(
            parse_query(query.sql(), catalog=catalog),
            requester=requester,
            purpose=PURPOSE,
            policies=policies,
            catalog=catalog,
            now=dt.datetime.now(dt.UTC),
        )
        if decision.verdict is not Verdict.ALLOW:
            raise SystemExit(f"the policies do not allow {query.name!r}: {decision.explain()}")
        ks.update(decision.k.values())
    if len(ks) != 1:
        raise SystemExit(f"(a) assumes one k for every owner; the policies give {sorted(ks)}")
    return ks.pop()


def union_connection(directory: Path, *, threads: int, memory: str) -> duckdb.DuckDBPyConnection:
    """One plain DuckDB over the three shard files, attached read-only, as one UNION ALL."""
    con = duckdb.connect(config={"threads": threads, "memory_limit": memory})
    con.execute("SET TimeZone = 'UTC'")
    for department in DEPARTMENTS:
        path = directory / "shards" / f"{department}.duckdb"
        con.execute(f"ATTACH '{path}' AS {department} (READ_ONLY)")
    con.execute(
        "CREATE VIEW claims AS "
        + " UNION ALL ".join(f"SELECT * FROM {d}.claims" for d in DEPARTMENTS)
    )
    con.execute(
        "CREATE VIEW claims_by_shard AS "
        + " UNION ALL ".join(f"SELECT '{d}' AS shard, * FROM {d}.claims" for d in DEPARTMENTS)
    )
    return con


def plain_run(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[float, int]:
    """Run `sql` and fetch the whole result as Arrow; seconds and rows."""
    start = time.perf_counter()
    rows = con.sql(sql).to_arrow_table().num_rows
    return time.perf_counter() - start, rows


@dataclass
class Measured:
    """Every run of one query at one size."""

    query: BenchQuery
    seconds: dict[str, list[float]]
    rows: dict[str, int]
    server: list[float]
    stages: dict[str, list[float]]
    cpu: list[dict[str, float]] = field(default_factory=list)
    suppressed: bool = False
    error: str | None = None

    def median(self, system: str) -> float | None:
        runs = self.seconds[system]
        return statistics.median(runs) if runs else None

    def ratio(self, baseline: str) -> float | None:
        ours, theirs = self.median("dataisland"), self.median(baseline)
        if ours is None or theirs is None or theirs <= 0:
            return None
        return ours / theirs


def measure_size(
    total_rows: int,
    *,
    work: Path,
    resources: NodeResources,
    plain_threads: int,
    plain_memory: str,
    repeats: int,
    deadline: float,
    keep: bool,
    profile: Path | None,
) -> dict[str, object]:
    """Build, start and measure one size; returns its JSON record (partial if out of time)."""
    per_department = [total_rows // len(DEPARTMENTS)] * len(DEPARTMENTS)
    per_department[0] += total_rows - sum(per_department)
    directory = work / f"federation-{total_rows}"
    record: dict[str, object] = {"rows": total_rows, "rows_per_department": per_department}
    console.print(f"[bold]{total_rows:,} rows[/]: building {directory}")
    started = time.monotonic()
    build_federation(directory, claims_per_department=per_department, resources=resources)
    record["build_seconds"] = round(time.monotonic() - started, 1)
    shard_bytes = directory_bytes(directory / "shards")
    record["shard_bytes"] = shard_bytes
    console.print(f"  built in {record['build_seconds']}s, shards {shard_bytes / 1e6:,.0f} MB")
    catalog = load_federation(directory / "federation.yaml").catalog()
    k = release_k(directory, catalog)
    record["k"] = k
    measured = [
        Measured(q, {s: [] for s in SYSTEMS}, {}, [], {"submit": [], "wait": [], "fetch": []})
        for q in QUERIES
    ]
    complete = True
    try:
        started = time.monotonic()
        with FederationProcesses(directory, startup_timeout=120) as nodes:
            record["start_seconds"] = round(time.monotonic() - started, 1)
            con = union_connection(directory, threads=plain_threads, memory=plain_memory)
            with client(directory, timeout=resources.query_timeout_seconds) as requester:
                complete = _rounds(nodes, measured, requester, con, k, repeats, deadline)
                if profile is not None and complete:
                    for m in measured:
                        slug = "".join(c if c.isalnum() else "-" for c in m.query.name)
                        with Profiler(profile, nodes, label=f"{total_rows}-{slug}"):
                            timed_query(requester, m.query.sql())
            con.close()
            dead = nodes.exited()
            if dead:
                record["exited_nodes"] = [n.spec.name for n in dead]
    finally:
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)
    record["complete"] = complete
    record["queries"] = [_query_record(m, k) for m in measured]
    return record


def _rounds(
    nodes: FederationProcesses,
    measured: list[Measured],
    requester: Client,
    con: duckdb.DuckDBPyConnection,
    k: int,
    repeats: int,
    deadline: float,
) -> bool:
    timed_round = False

    def ours(m: Measured) -> Callable[[], float]:
        def run() -> float:
            before = cpu_snapshot(nodes)
            timed = timed_query(requester, m.query.sql())
            if timed_round:
                m.cpu.append(cpu_per_query(before, cpu_snapshot(nodes), 1))
            m.rows["dataisland"] = timed.rows
            m.suppressed = timed.suppressed
            if timed_round:
                m.server.append(timed.server)
                m.stages["submit"].append(timed.submit)
                m.stages["wait"].append(timed.wait)
                m.stages["fetch"].append(timed.fetch)
            return timed.total

        return run

    def plain(m: Measured, system: str, sql: str) -> Callable[[], float]:
        def run() -> float:
            seconds, rows = plain_run(con, sql)
            m.rows[system] = rows
            return seconds

        return run

    # Round 0 is the warm-up (caches, first connections); its times are not kept.
    for round_ in range(repeats + 1):
        timed_round = round_ > 0
        for m in measured:
            if m.error is not None:
                continue
            runners = [
                ("dataisland", ours(m)),
                ("a", plain(m, "a", m.query.same_computation_sql(k))),
                ("b", plain(m, "b", m.query.sql())),
            ]
            shift = round_ % len(runners)
            for system, run in runners[shift:] + runners[:shift]:
                if time.monotonic() > deadline:
                    console.print("[yellow]time budget spent: stopping here[/]")
                    return False
                try:
                    seconds = run()
                except (QueryFailedError, duckdb.Error) as exc:
                    m.error = f"{system}: {type(exc).__name__}: {exc}"
                    console.print(f"[red]{m.query.name}: {m.error}[/]")
                    break
                if round_ > 0:
                    m.seconds[system].append(seconds)
            if round_ > 0 and m.error is None:
                console.print(
                    f"  round {round_} {m.query.name}: "
                    + ", ".join(f"{s} {m.seconds[s][-1]:.3f}s" for s in SYSTEMS)
                )
    return True


def _query_record(m: Measured, k: int) -> dict[str, object]:
    return {
        "name": m.query.name,
        "sql": m.query.sql(),
        "sql_a": m.query.same_computation_sql(k),
        "rows": m.rows,
        "suppressed": m.suppressed,
        "error": m.error,
        "seconds": {s: summary(m.seconds[s]) for s in SYSTEMS},
        "runs": {s: m.seconds[s] for s in SYSTEMS},
        "dataisland_server": summary(m.server),
        "dataisland_stages": {s: summary(v) for s, v in m.stages.items()},
        "dataisland_cpu_ms_median": {
            group: statistics.median(run[group] for run in m.cpu) for group in m.cpu[0]
        }
        if m.cpu
        else {},
        "ratio_a": m.ratio("a"),
        "ratio_b": m.ratio("b"),
    }


def _fmt(value: object, digits: int = 3) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.{digits}f}"


def print_table(sizes: list[dict[str, object]]) -> None:
    table = Table(title="dataisland vs one plain DuckDB over the union (median seconds)")
    for column in ("rows", "query", "groups", "released", "dataisland s", "(a) s", "(b) s"):
        table.add_column(column, justify="right" if column != "query" else "left")
    table.add_column("ratio/(a)", justify="right")
    table.add_column("ratio/(b)", justify="right")
    for size in sizes:
        queries = size.get("queries")
        assert isinstance(queries, list)
        for q in queries:
            seconds = q["seconds"]
            rows = q["rows"]
            table.add_row(
                f"{size['rows']:,}",
                q["name"],
                f"{rows.get('b', 0):,}",
                f"{rows.get('dataisland', 0):,}",
                _fmt(seconds["dataisland"].get("median")),
                _fmt(seconds["a"].get("median")),
                _fmt(seconds["b"].get("median")),
                _fmt(q["ratio_a"], 2),
                _fmt(q["ratio_b"], 2),
            )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", help="comma-separated total row counts (default 1M,10M)")
    parser.add_argument("--full", action="store_true", help="also 30M rows (with the default)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per query and system")
    parser.add_argument("--max-seconds", type=float, default=5400.0, help="time budget")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads of every node")
    parser.add_argument("--department-memory", default="3GB")
    parser.add_argument("--aggregator-memory", default="3GB")
    parser.add_argument("--plain-memory", default="8GB", help="the plain DuckDB's memory limit")
    parser.add_argument("--work-dir", type=Path, help="where to build (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the federation directories")
    parser.add_argument(
        "--profile",
        type=Path,
        help="after the timed rounds, run each query once more under py-spy into this directory",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.sizes:
        sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    else:
        sizes = [*DEFAULT_SIZES, *((FULL_SIZE,) if args.full else ())]
    resources = NodeResources(
        threads=args.threads,
        department_memory=args.department_memory,
        aggregator_memory=args.aggregator_memory,
    )
    CODE_AT_START.update(code_state())
    deadline = time.monotonic() + args.max_seconds
    started = time.monotonic()
    results: list[dict[str, object]] = []
    stopped_early = False
    work_parent = args.work_dir or Path(tempfile.mkdtemp(prefix="dataisland-scale-"))
    work_parent.mkdir(parents=True, exist_ok=True)
    try:
        for total in sizes:
            if time.monotonic() > deadline:
                console.print(f"[yellow]time budget spent: {total:,} rows not measured[/]")
                stopped_early = True
                break
            record = measure_size(
                total,
                work=work_parent,
                resources=resources,
                plain_threads=args.threads,
                plain_memory=args.plain_memory,
                repeats=args.repeats,
                deadline=deadline,
                keep=args.keep,
                profile=args.profile,
            )
            results.append(record)
            _write(args, results, sizes, stopped_early, started)
            if not record["complete"]:
                stopped_early = True
                break
    finally:
        if args.work_dir is None and not args.keep:
            shutil.rmtree(work_parent, ignore_errors=True)
    _write(args, results, sizes, stopped_early, started)
    print_table(results)
    console.print(f"wrote {args.output} in {time.monotonic() - started:.0f}s")


def _write(
    args: argparse.Namespace,
    results: list[dict[str, object]],
    sizes: list[int],
    stopped_early: bool,
    started: float,
) -> None:
    document = {
        "machine": machine_info(),
        "code": CODE_AT_START,
        "command": " ".join(["python", *sys.argv]),
        "config": {
            "sizes": sizes,
            "repeats": args.repeats,
            "threads_per_node": args.threads,
            "department_memory": args.department_memory,
            "aggregator_memory": args.aggregator_memory,
            "plain_threads": args.threads,
            "plain_memory": args.plain_memory,
            "max_seconds": args.max_seconds,
            "statistic": "median of --repeats interleaved runs after one warm-up",
        },
        "stopped_early": stopped_early,
        "elapsed_seconds": round(time.monotonic() - started, 1),
        "load_average_at_write": load_average(),
        "sizes": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
