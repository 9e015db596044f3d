"""Merging 100,000 groups from each of three shards: correct, and the time is printed."""

from __future__ import annotations

import time

import duckdb
import pyarrow.compute as pc
import pytest

from dataisland.catalog import TableInfo
from enclave.engine import DuckDBMergeEngine, Lockdown, run_partial
from enclave.planner import merge_partials, plan_query
from policies.sqlfront import parse_query

DEPARTMENTS = ("qingpu", "wujiang", "jiashan")
CATALOG = {
    "claims": TableInfo(
        "claims",
        {"pid": "INTEGER", "g": "INTEGER", "amt": "DECIMAL(18,2)", "x": "DOUBLE"},
        "pid",
        frozenset(DEPARTMENTS),
    )
}
SQL = (
    "SELECT g, count(*) AS c, sum(amt) AS s, avg(x) AS a, min(amt) AS lo, "
    "stddev_samp(x) AS sd FROM claims GROUP BY g"
)


def test_merge_of_100k_groups_per_shard(capsys: pytest.CaptureFixture[str]) -> None:
    plan = plan_query(parse_query(SQL, catalog=CATALOG), CATALOG)
    union = duckdb.connect()
    union.execute("CREATE TABLE claims (pid INTEGER, g INTEGER, amt DECIMAL(18,2), x DOUBLE)")
    partials = {}
    for k, department in enumerate(DEPARTMENTS):
        con = duckdb.connect()
        # Two rows per group; groups overlap across shards by a shifting offset.
        con.execute(
            "CREATE TABLE claims AS SELECT (i % 50000)::INTEGER AS pid, "
            f"(i % 100000 + {k * 30000})::INTEGER AS g, "
            f"((i * 7 + {k}) % 100000 / 100.0)::DECIMAL(18,2) AS amt, "
            f"((i * 13 + {k}) % 1000)::DOUBLE / 7 AS x FROM range(200000) AS r(i)"
        )
        partials[department] = run_partial(plan, con).table
        assert partials[department].num_rows == 100_000
        union.register("shard", con.sql("SELECT * FROM claims").to_arrow_table())
        union.execute("INSERT INTO claims SELECT * FROM shard")
        union.unregister("shard")
        con.close()

    start = time.perf_counter()
    got = merge_partials(
        plan,
        partials,
        DuckDBMergeEngine(Lockdown(threads=2, memory_limit="2GB")),
        k=dict.fromkeys(plan.departments, 1),
    ).result
    elapsed = time.perf_counter() - start
    with capsys.disabled():
        print(f"\nmerge of 3 x 100,000 groups: {elapsed:.3f} s ({got.table.num_rows} groups out)")

    want = union.sql(SQL + " ORDER BY g").to_arrow_table()
    got_sorted = got.table.sort_by("g")
    assert got_sorted.num_rows == want.num_rows == 160_000
    for name in ("g", "c", "s", "lo"):
        assert got_sorted.column(name).equals(want.column(name)), name
    for name in ("a", "sd"):
        got_values, want_values = got_sorted.column(name), want.column(name)
        assert got_values.null_count == want_values.null_count == 0
        worst = pc.max(pc.abs(pc.subtract(got_values, want_values))).as_py()
        assert worst < 1e-9, name
