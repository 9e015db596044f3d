"""Property: the federated answer (three shards' partials, merged) equals DuckDB over the union."""

from __future__ import annotations

import datetime as dt
import math
import re
from decimal import Decimal
from typing import Any

import duckdb
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataisland.catalog import TableInfo
from dataisland.unitmasks import add_unit_masks
from enclave.engine import DuckDBMergeEngine, EngineResult, Lockdown
from enclave.planner import FederatedPlan, merge_partials, plan_query
from policies.sqlfront import parse_query

COLUMNS = {
    "pid": "INTEGER",
    "cat": "VARCHAR",
    "d": "DATE",
    "n": "INTEGER",
    "amt": "DECIMAL(18,2)",
    "x": "DOUBLE",
}
SCHEMA = pa.schema(
    [
        ("pid", pa.int32()),
        ("cat", pa.string()),
        ("d", pa.date32()),
        ("n", pa.int32()),
        ("amt", pa.decimal128(18, 2)),
        ("x", pa.float64()),
    ]
)
DEPARTMENTS = ("qingpu", "wujiang", "jiashan")
CATALOG = {"claims": TableInfo("claims", COLUMNS, "pid", frozenset(DEPARTMENTS))}

# (SQL, how to compare, input expression for the tolerance bound)
AGGREGATES: list[tuple[str, str, str | None]] = [
    ("count(*)", "exact", None),
    ("count(n)", "exact", None),
    ("count(cat)", "exact", None),
    ("sum(n)", "exact", None),
    ("sum(amt)", "exact", None),
    ("sum(n * 2 - pid)", "exact", None),
    ("sum(CASE WHEN cat = 'a' THEN amt ELSE 0 END)", "exact", None),
    ("sum(x)", "avg", "x"),
    ("min(d)", "exact", None),
    ("max(d)", "exact", None),
    ("min(amt)", "exact", None),
    ("max(n)", "exact", None),
    ("min(cat)", "exact", None),
    ("max(x)", "exact", None),
    ("avg(n)", "avg", "n"),
    ("avg(amt)", "avg", "amt"),
    ("avg(x)", "avg", "x"),
    ("avg(x - n)", "avg", "x - n"),
    ("variance(x)", "var", "x"),
    ("variance(n)", "var", "n"),
    ("var_pop(amt)", "var", "amt"),
    ("var_pop(x)", "var", "x"),
    ("stddev(amt)", "std", "amt"),
    ("stddev_samp(n)", "std", "n"),
    ("stddev_pop(x)", "std", "x"),
    ("sum(n) + count(*)", "exact", None),
    ("count(*) * 2 - count(n)", "exact", None),
]
FILTERS = [
    "n > 0",
    "cat IN ('a', 'b')",
    "d BETWEEN DATE '2020-03-01' AND DATE '2020-09-30'",
    "x IS NOT NULL AND amt < 0",
    "cat LIKE 'a%' OR n IS NULL",
]
GROUP_KEYS = [
    "cat",
    "date_trunc('month', d)",
    "CASE WHEN n < 0 THEN 'neg' WHEN n < 20 THEN 'low' ELSE 'high' END",
    "n % 7",
    "pid",
    "year(d)",
]
WHERES = [
    "n >= -10",
    "d >= DATE '2020-01-01' + INTERVAL 2 MONTH",
    "cat IS NOT NULL",
    "amt BETWEEN -500 AND 500",
    "NOT (x < 0)",
]
HAVINGS = ["count(*) > 1", "sum(n) > 0", "count(*) >= 1 AND min(pid) < 10"]


def _mostly(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # NULL in about one value of five: enough NULL groups and NULL inputs, enough data left.
    return st.one_of(values, values, values, values, st.none())


dates = _mostly(st.dates(dt.date(2019, 11, 1), dt.date(2021, 2, 28)))
doubles = st.one_of(
    st.integers(-(10**6), 10**6).map(lambda v: v / 64),
    st.floats(-1e4, 1e4, allow_nan=False),
)
rows = st.tuples(
    st.integers(1, 15),
    _mostly(st.sampled_from(["a", "a", "a", "b", "c", "ab"])),
    dates,
    _mostly(st.integers(-100, 100)),
    _mostly(st.integers(-(10**8), 10**8).map(lambda v: Decimal(v) / 100)),
    _mostly(doubles),
)
# Empty shards, small shards, and larger ones that put many rows in the same groups.
shard = st.one_of(
    st.just([]), st.lists(rows, min_size=1, max_size=8), st.lists(rows, min_size=8, max_size=40)
)


def _table(data: list[tuple[Any, ...]]) -> pa.Table:
    columns: list[tuple[Any, ...]] = list(zip(*data, strict=True)) if data else [() for _ in SCHEMA]
    return pa.table(
        [pa.array(list(c), type=f.type) for c, f in zip(columns, SCHEMA, strict=True)],
        schema=SCHEMA,
    )


def _connection(table: pa.Table, *, masks: bool = False) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone='UTC'")
    con.register("__load", table)
    con.execute("CREATE TABLE claims AS SELECT * FROM __load")
    con.unregister("__load")
    if masks:
        add_unit_masks(con, "claims", "pid")
    return con


def _partial(plan: FederatedPlan, table: pa.Table, *, k: int, masks: bool) -> EngineResult:
    """A department's partial: the bound form on a shard with unit masks (giving cells over a
    column without NULLs their group's bound where this shard has none), else the exact one."""
    con = _connection(table, masks=masks)
    nulls = con.execute(
        "SELECT " + ", ".join(f"count(*) - count({c})" for c in COLUMNS) + " FROM claims"
    ).fetchall()[0]
    dense = {("claims", c) for c, n in zip(COLUMNS, nulls, strict=True) if n == 0}
    sql = plan.partial_sql_for(k=k, masked={"claims"} if masks else set(), dense=dense)
    assert (sql in (plan.bound_partial_sql, plan.bound_dense_partial_sql)) == masks
    relation = con.sql(sql)
    result = EngineResult(relation.to_arrow_table(), tuple(str(t) for t in relation.types))
    con.close()
    return result


def _released_count(text: str) -> str:
    """The reference for a released count cell at k = 1: NULL when no unit entered it."""
    return re.sub(r"count\((?!\*\))([^)]*)\)", r"NULLIF(count(\1), 0)", text)


@st.composite
def queries(draw: st.DrawFn) -> tuple[str, str, list[tuple[str, str | None]], bool]:
    """A query, and the reference query giving its released answer at k = 1 over the union.

    The reference differs only where the release rules act at k = 1: a cell with no unit in it
    (a FILTER or argument that keeps no row) is NULL, and a global aggregate over no row gives
    no row.
    """
    keys = draw(st.lists(st.sampled_from(GROUP_KEYS), max_size=2, unique=True))
    aggs = draw(st.lists(st.sampled_from(AGGREGATES), min_size=1, max_size=5))
    outputs: list[str] = []
    references: list[str] = []
    specs: list[tuple[str, str | None]] = []
    for j, key in enumerate(keys):
        outputs.append(f"{key} AS k{j}" if draw(st.booleans()) or "(" in key else key)
        references.append(outputs[-1])
        specs.append(("key", None))
    for i, (sql, kind, bound) in enumerate(aggs):
        filt = draw(st.one_of(st.none(), st.sampled_from(FILTERS)))
        text = sql
        reference = _released_count(sql)
        if filt is not None and "+" not in sql and "*" not in sql.replace("count(*)", ""):
            text = f"{sql} FILTER (WHERE {filt})"
            reference = f"NULLIF({text}, 0)" if sql.startswith("count(") else text
        alias = f" AS v{i}" if draw(st.booleans()) else ""
        outputs.append(text + alias)
        references.append(reference + alias)
        specs.append((kind, bound))
    body = " FROM claims"
    where = draw(st.one_of(st.none(), st.sampled_from(WHERES)))
    if where:
        body += f" WHERE {where}"
    if keys:
        body += " GROUP BY " + ", ".join(
            str(j + 1) if draw(st.booleans()) else key for j, key in enumerate(keys)
        )
    having = draw(st.one_of(st.none(), st.sampled_from(HAVINGS)))
    query = f"SELECT {', '.join(outputs)}{body}"
    reference = f"SELECT {', '.join(references)}{body}"
    if having:
        query += f" HAVING {having}"
    reference_having = [] if keys else ["count(*) > 0"]
    if having:
        reference_having.append(f"({_released_count(having)})")
    if reference_having:
        reference += " HAVING " + " AND ".join(reference_having)
    tail = ""
    ordered = bool(keys) and draw(st.booleans())
    if ordered:
        direction = draw(st.sampled_from(["", " DESC", " NULLS FIRST", " DESC NULLS LAST"]))
        tail += " ORDER BY " + ", ".join(f"{j + 1}{direction}" for j in range(len(keys)))
        if draw(st.booleans()):
            tail += f" LIMIT {draw(st.integers(0, 6))}"
    elif not keys and draw(st.booleans()):
        tail += " LIMIT 1"
    return query + tail, reference + tail, specs, ordered or not keys


def _bounds(union: duckdb.DuckDBPyConnection, expr: str, where: str) -> tuple[float, float]:
    row = union.sql(
        f"SELECT COALESCE(sum(abs(CAST({expr} AS DOUBLE))), 0), "
        f"COALESCE(sum(CAST({expr} AS DOUBLE) * CAST({expr} AS DOUBLE)), 0) FROM claims{where}"
    ).fetchall()[0]
    return float(row[0]), float(row[1])


def _close(got: Any, want: Any, kind: str, bound: tuple[float, float]) -> bool:
    if got is None or want is None:
        return got is None and want is None
    if kind in ("exact", "key"):
        if isinstance(want, float) and math.isnan(want):
            return isinstance(got, float) and math.isnan(got)
        return bool(got == want) and type(got) is type(want)
    tolerance = 1e-9 * (bound[0] if kind == "avg" else bound[1]) + 1e-12
    if kind == "std":
        return abs(float(got) ** 2 - float(want) ** 2) <= tolerance
    return abs(float(got) - float(want)) <= tolerance


@settings(max_examples=90, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shards=st.tuples(shard, shard, shard),
    query=queries(),
    masked=st.tuples(st.booleans(), st.booleans(), st.booleans()),
)
def test_federated_answer_equals_duckdb_over_the_union(
    shards: tuple[list[Any], list[Any], list[Any]],
    query: tuple[str, str, list[tuple[str, str | None]], bool],
    masked: tuple[bool, bool, bool],
) -> None:
    """At k = 1 the lower bound is exact for release (it is 0 only for no rows), so any mix of
    departments counting exactly and by their unit masks gives the union's answer."""
    sql, reference, specs, ordered = query
    tables = [_table(s) for s in shards]
    union = _connection(pa.concat_tables(tables))
    parsed = parse_query(sql, catalog=CATALOG)
    plan = plan_query(parsed, CATALOG)
    partials = {
        department: _partial(plan, table, k=1, masks=masks).table
        for department, table, masks in zip(DEPARTMENTS, tables, masked, strict=True)
    }
    got = merge_partials(
        plan,
        partials,
        DuckDBMergeEngine(Lockdown(threads=2, memory_limit="2GB")),
        k=dict.fromkeys(plan.departments, 1),
    ).result
    # Names and types come from the query itself; released values from the reference query.
    named = union.sql(sql)
    expected_types = tuple(str(t) for t in named.types)
    expected = union.sql(reference).to_arrow_table()

    assert got.table.column_names == named.columns
    assert got.types == expected_types
    # Column-wise: outputs may share a name (SELECT count(*), count(*)).
    got_rows = list(zip(*(c.to_pylist() for c in got.table.columns), strict=True))
    want_rows = list(zip(*(c.to_pylist() for c in expected.columns), strict=True))
    assert len(got_rows) == len(want_rows)
    if not ordered:
        key_positions = [i for i, (kind, _) in enumerate(specs) if kind == "key"]

        def sort_key(row: tuple[Any, ...]) -> tuple[tuple[bool, str], ...]:
            return tuple((row[i] is None, repr(row[i])) for i in key_positions)

        got_rows.sort(key=sort_key)
        want_rows.sort(key=sort_key)
    # Bounds over all rows are at least the bounds over any group or filter: still valid.
    bounds = {i: _bounds(union, b, "") for i, (_, b) in enumerate(specs) if b is not None}
    for got_row, want_row in zip(got_rows, want_rows, strict=True):
        for i, (kind, _) in enumerate(specs):
            assert _close(got_row[i], want_row[i], kind, bounds.get(i, (0.0, 0.0))), (
                sql,
                expected.column_names[i],
                got_row,
                want_row,
            )
    union.close()


def test_global_aggregate_over_empty_shards_is_suppressed_with_duckdbs_types() -> None:
    empty = _table([])
    sql = "SELECT count(*), sum(n), avg(x), variance(x), min(d) FROM claims"
    plan = plan_query(parse_query(sql, catalog=CATALOG), CATALOG)
    partials = {
        department: _partial(plan, empty, k=1, masks=department == "qingpu").table
        for department in DEPARTMENTS
    }
    outcome = merge_partials(
        plan,
        partials,
        DuckDBMergeEngine(Lockdown(threads=2, memory_limit="2GB")),
        k=dict.fromkeys(plan.departments, 1),
    )
    # No unit stands behind the one row DuckDB would give: it is withheld like a small one.
    assert outcome.result.table.num_rows == 0
    assert outcome.suppressed_rows == 1
    assert outcome.result.table.column_names == [
        "count_star()",
        "sum(n)",
        "avg(x)",
        "variance(x)",
        "min(d)",
    ]
    assert outcome.result.types == ("BIGINT", "HUGEINT", "DOUBLE", "DOUBLE", "DATE")


def test_variance_merge_includes_the_between_shard_term() -> None:
    # Known answer: shards {1, 2} and {10, 20}; var_samp over {1, 2, 10, 20} = 77.58333...
    day = dt.date(2020, 1, 1)
    shards = [
        [(1, "a", day, 1, Decimal(1), 1.0), (2, "a", day, 2, Decimal(2), 2.0)],
        [(3, "a", day, 10, Decimal(10), 10.0), (4, "a", day, 20, Decimal(20), 20.0)],
        [],
    ]
    sql = "SELECT variance(x), stddev_pop(amt), var_pop(n) FROM claims"
    plan = plan_query(parse_query(sql, catalog=CATALOG), CATALOG)
    partials = {}
    for department, rows_ in zip(DEPARTMENTS, shards, strict=True):
        partials[department] = _partial(plan, _table(rows_), k=1, masks=False).table
    got = merge_partials(
        plan,
        partials,
        DuckDBMergeEngine(Lockdown(threads=2, memory_limit="2GB")),
        k=dict.fromkeys(plan.departments, 1),
    ).result.table.to_pylist()[0]
    assert abs(got["variance(x)"] - 77.58333333333333) < 1e-9
    assert abs(got["stddev_pop(amt)"] ** 2 - 58.1875) < 1e-9
    assert abs(got["var_pop(n)"] - 58.1875) < 1e-9


_KS = st.integers(1, 7)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shards=st.tuples(shard, shard, shard),
    query=queries(),
    ks=st.tuples(_KS, _KS, _KS),
    masked=st.tuples(st.booleans(), st.booleans(), st.booleans()),
)
def test_the_lower_bound_releases_a_subset_of_the_exact_rule(
    shards: tuple[list[Any], list[Any], list[Any]],
    query: tuple[str, str, list[tuple[str, str | None]], bool],
    ks: tuple[int, int, int],
    masked: tuple[bool, bool, bool],
) -> None:
    """With any k and any mix of counting forms, every unit column is a lower bound that is 0
    exactly where the exact count is, and every released row and cell is one the exact rule
    releases, with the same value: the bound errs only towards suppression."""
    sql = re.sub(r" LIMIT \d+$", "", query[0])  # LIMIT picks other rows once rows drop out
    tables = [_table(s) for s in shards]
    plan = plan_query(parse_query(sql, catalog=CATALOG), CATALOG)
    k = dict(zip(DEPARTMENTS, ks, strict=True))
    exact, bound = {}, {}

    def by_key(t: pa.Table) -> dict[str, tuple[Any, ...]]:
        return {
            repr([r[g] for g in plan.group_columns]): tuple(r[c] for c in plan.unit_columns)
            for r in t.to_pylist()
        }

    for department, table, masks in zip(DEPARTMENTS, tables, masked, strict=True):
        exact[department] = _partial(plan, table, k=k[department], masks=False).table
        bound[department] = _partial(plan, table, k=k[department], masks=masks).table
        want, got = by_key(exact[department]), by_key(bound[department])
        assert want.keys() == got.keys()
        for key, units in want.items():
            for w, g in zip(units, got[key], strict=True):
                assert 0 <= g <= w, (sql, key, units, got[key])
                assert (g == 0) == (w == 0), (sql, key, units, got[key])
    engine = DuckDBMergeEngine(Lockdown(threads=2, memory_limit="2GB"))
    released = merge_partials(plan, exact, engine, k=k).result.table
    lower = merge_partials(plan, bound, engine, k=k).result.table
    specs = query[2]
    keys = [i for i, (kind, _) in enumerate(specs) if kind == "key"]
    union = _connection(pa.concat_tables(tables))
    bounds = {i: _bounds(union, b, "") for i, (_, b) in enumerate(specs) if b is not None}
    union.close()

    def rows(t: pa.Table) -> dict[str, tuple[Any, ...]]:
        out = list(zip(*(c.to_pylist() for c in t.columns), strict=True))
        return {repr([row[i] for i in keys]): row for row in out}

    exact_rows = rows(released)
    for key, row in rows(lower).items():
        assert key in exact_rows, (sql, k, row)
        for i, (kind, _) in enumerate(specs):
            if row[i] is not None:  # a cell the bound withheld is NULL; any other agrees
                assert _close(row[i], exact_rows[key][i], kind, bounds.get(i, (0.0, 0.0))), (
                    sql,
                    row,
                    exact_rows[key],
                )
