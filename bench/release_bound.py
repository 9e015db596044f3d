"""Prototype of a cheaper release-rule input: a proven lower bound of the distinct units per group.

Usage: python bench/release_bound.py [--rows 30000,333334,3333334] [--repeats 3] [--k 5]

The release rule needs, per group and per department, to know whether the share reaches k
people, never the exact count beyond that. Today each department's partial computes
count(DISTINCT person_id) for the group and again for every cell whose argument may be NULL
(`enclave/planner.py`). This script measures, on one department's shard (synthetic claims from
`dataisland.synthetic`, the same generator as the federation benchmarks) and with the same
DuckDB settings as an enclave (read-only, `--threads`):

- plain: the query alone (what plain DuckDB does for (b));
- current: the partial SQL `enclave.planner.plan_query` writes for the query today;
- one distinct: the query plus a single count(DISTINCT person_id) per group;
- bound: the query plus, per group and per cell, the population count of a 64-bit OR of
  ``1 << (hash(person_id) & 63)``: a person sets exactly one bit, so the bits set are a proven
  lower bound of the distinct people (never an overcount, whatever the hash). A group is decided
  without further work when the bound reaches k (passes) or its row count is below k (fails:
  never more people than rows); only the undecided groups get an exact count, in a second pass
  over the rows of those groups alone (a semi-join), and only when there are any.

It checks that the bound never exceeds the exact count and that the release decisions (group and
cell) are the same as with exact counts, and prints the times. No federation is started; nothing
here is used by the product. Writes bench/results/release_bound.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import duckdb
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

from dataisland.catalog import TableInfo
from dataisland.synthetic import CLAIMS_COLUMNS, populate_shard
from enclave.planner import plan_query
from policies.sqlfront import parse_query

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as bench/release_bound.py
from bench.harness import QUERIES, BenchQuery, code_state, load_average, machine_info

RESULTS = Path(__file__).resolve().parent / "results" / "release_bound.json"
CATALOG = {
    "claims": TableInfo(
        name="claims",
        columns=dict(CLAIMS_COLUMNS),
        privacy_unit="person_id",
        holders=frozenset({"qingpu"}),
    )
}
BIT = "(1::UBIGINT << (hash(person_id) & 63))"
console = Console(width=max(Console().width, 140))


def _keys(query: BenchQuery) -> tuple[str, str, str]:
    """(select items, GROUP BY clause, key column list) for the group keys as __g0, __g1, ..."""
    items = "".join(f"{expr} AS __g{j}, " for j, (expr, _) in enumerate(query.keys))
    group_by = (" GROUP BY " + ", ".join(e for e, _ in query.keys)) if query.keys else ""
    columns = ", ".join(f"__g{j}" for j in range(len(query.keys)))
    return items, group_by, columns


def one_distinct_sql(query: BenchQuery) -> str:
    items, group_by, _ = _keys(query)
    return (
        f"SELECT {items}count(*) AS n, sum(amount) AS s, count(DISTINCT person_id) AS u "
        f"FROM claims{group_by}"
    )


def bound_sql(query: BenchQuery) -> str:
    """Pass 1: the aggregates, row counts and the lower bounds, per group."""
    items, group_by, _ = _keys(query)
    return (
        f"SELECT {items}count(*) AS n, sum(amount) AS s, count(amount) AS n_amount, "
        f"bit_count(bit_or({BIT})) AS lb, "
        f"bit_count(bit_or(CASE WHEN amount IS NOT NULL THEN {BIT} ELSE 0::UBIGINT END)) AS lb0 "
        f"FROM claims{group_by}"
    )


def undecided_sql(k: int) -> str:
    return f"SELECT * FROM pass1 WHERE (n >= {k} AND lb < {k}) OR (n_amount >= {k} AND lb0 < {k})"


def exact_sql(query: BenchQuery, *, only_undecided: bool) -> str:
    """Pass 2: exact counts, for the undecided groups only (or for every group, to check)."""
    items, _, columns = _keys(query)
    rows = f"SELECT {items}person_id, amount FROM claims"
    source = f"({rows}) AS r"
    if only_undecided and query.keys:
        on = " AND ".join(f"r.__g{j} IS NOT DISTINCT FROM u.__g{j}" for j in range(len(query.keys)))
        source += f" SEMI JOIN undecided AS u ON {on}"
    select = f"{columns}, " if columns else ""
    group_by = f" GROUP BY {columns}" if columns else ""
    return (
        f"SELECT {select}count(DISTINCT person_id) AS u, "
        f"count(DISTINCT person_id) FILTER (WHERE amount IS NOT NULL) AS u0 "
        f"FROM {source}{group_by}"
    )


def run_bound(con: duckdb.DuckDBPyConnection, query: BenchQuery, k: int) -> tuple[float, int]:
    """Both passes as an enclave would run them; seconds and the number of undecided groups."""
    start = time.perf_counter()
    pass1 = con.sql(bound_sql(query)).to_arrow_table()
    undecided = pass1.filter(
        pc.or_(
            pc.and_(pc.greater_equal(pass1["n"], k), pc.less(pass1["lb"], k)),
            pc.and_(pc.greater_equal(pass1["n_amount"], k), pc.less(pass1["lb0"], k)),
        )
    )
    if undecided.num_rows:
        con.register("undecided", undecided)
        con.sql(exact_sql(query, only_undecided=True)).to_arrow_table()
        con.unregister("undecided")
    return time.perf_counter() - start, undecided.num_rows


def bound_seconds(con: duckdb.DuckDBPyConnection, query: BenchQuery, k: int) -> float:
    return run_bound(con, query, k)[0]


def check_decisions(con: duckdb.DuckDBPyConnection, query: BenchQuery, k: int) -> dict[str, int]:
    """Compare the bound-based decisions with exact counts for every group (not timed)."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE pass1 AS {bound_sql(query)}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE undecided AS {undecided_sql(k)}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE fallback AS {exact_sql(query, only_undecided=True)}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE exact AS {exact_sql(query, only_undecided=False)}")
    join = (
        " AND ".join(f"p.__g{j} IS NOT DISTINCT FROM {{t}}.__g{j}" for j in range(len(query.keys)))
        or "true"
    )
    row = con.execute(
        f"""
        SELECT count(*) AS groups,
               count(*) FILTER (WHERE p.lb > e.u OR p.lb0 > e.u0) AS bound_above_exact,
               count(*) FILTER (WHERE (e.u >= {k}) <> (p.lb >= {k} OR coalesce(f.u, 0) >= {k}))
                   AS group_decisions_differ,
               count(*) FILTER (
                   WHERE (e.u0 >= {k}) <> (p.lb0 >= {k} OR coalesce(f.u0, 0) >= {k})
               ) AS cell_decisions_differ,
               count(*) FILTER (WHERE e.u >= {k}) AS groups_passing
        FROM pass1 AS p
        JOIN exact AS e ON {join.format(t="e")}
        LEFT JOIN fallback AS f ON {join.format(t="f")}
        """
    ).fetchall()[0]
    for table in ("pass1", "undecided", "fallback", "exact"):
        con.execute(f"DROP TABLE {table}")
    names = (
        "groups",
        "bound_above_exact",
        "group_decisions_differ",
        "cell_decisions_differ",
        "groups_passing",
    )
    return dict(zip(names, (int(v) for v in row), strict=True))


def timed(con: duckdb.DuckDBPyConnection, sql: str) -> float:
    start = time.perf_counter()
    con.sql(sql).to_arrow_table()
    return time.perf_counter() - start


def measure(
    path: Path, rows: int, *, threads: int, repeats: int, k: int
) -> list[dict[str, object]]:
    con = duckdb.connect(str(path), read_only=True, config={"threads": threads})
    out: list[dict[str, object]] = []
    try:
        for query in QUERIES:
            current = plan_query(parse_query(query.sql(), catalog=CATALOG), CATALOG).partial_sql
            runners: dict[str, Callable[[], float]] = {
                "plain": partial(timed, con, query.sql()),
                "current": partial(timed, con, current),
                "one distinct": partial(timed, con, one_distinct_sql(query)),
                "bound": partial(bound_seconds, con, query, k),
            }
            seconds: dict[str, list[float]] = {name: [] for name in runners}
            for round_ in range(repeats + 1):
                names = list(runners)
                shift = round_ % len(names)
                for name in names[shift:] + names[:shift]:
                    value = runners[name]()
                    if round_ > 0:
                        seconds[name].append(value)
            _, undecided = run_bound(con, query, k)
            con.execute("SET threads = 2")  # the check is not timed
            checked = check_decisions(con, query, k)
            con.execute(f"SET threads = {threads}")
            medians = {name: statistics.median(v) for name, v in seconds.items()}
            out.append(
                {
                    "rows": rows,
                    "query": query.name,
                    "seconds": medians,
                    "runs": seconds,
                    "undecided_groups": undecided,
                    **checked,
                }
            )
            console.print(
                f"  {rows:,} {query.name}: "
                + ", ".join(f"{n} {v * 1000:.1f} ms" for n, v in medians.items())
                + f"; undecided {undecided:,} of {checked['groups']:,}"
            )
    finally:
        con.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rows", default="30000,333334,3333334", help="rows of the one shard")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    code = code_state()
    started = time.monotonic()
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="release-bound-") as tmp:
        for rows in (int(r) for r in args.rows.split(",") if r.strip()):
            path = Path(tmp) / f"shard-{rows}.duckdb"
            con = duckdb.connect(str(path))
            columns = ", ".join(f'"{c}" {t}' for c, t in CLAIMS_COLUMNS.items())
            con.execute(f"CREATE TABLE claims ({columns})")
            con.close()
            populate_shard(path, "qingpu", ["claims"], rows=rows, seed=2024)
            results += measure(path, rows, threads=args.threads, repeats=args.repeats, k=args.k)
            path.unlink()
    table = Table(title="one department's partial: median ms (bound = both passes)")
    for column in ("rows", "query", "groups", "plain", "current", "one distinct", "bound"):
        table.add_column(column, justify="left" if column == "query" else "right")
    table.add_column("undecided", justify="right")
    table.add_column("current/plain", justify="right")
    table.add_column("bound/plain", justify="right")
    table.add_column("same decisions", justify="right")
    for r in results:
        s = r["seconds"]
        assert isinstance(s, dict)
        same = r["group_decisions_differ"] == 0 and r["cell_decisions_differ"] == 0
        sound = r["bound_above_exact"] == 0
        table.add_row(
            f"{r['rows']:,}",
            str(r["query"]),
            f"{r['groups']:,}",
            *(f"{s[n] * 1000:.1f}" for n in ("plain", "current", "one distinct", "bound")),
            f"{r['undecided_groups']:,}",
            f"{s['current'] / s['plain']:.1f}",
            f"{s['bound'] / s['plain']:.1f}",
            "yes" if same and sound else "NO",
        )
    console.print(table)
    document = {
        "machine": machine_info(),
        "code": code,
        "command": " ".join(["python", *sys.argv]),
        "config": {"threads": args.threads, "repeats": args.repeats, "k": args.k},
        "results": results,
        "load_average_at_end": load_average(),
        "elapsed_seconds": round(time.monotonic() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
