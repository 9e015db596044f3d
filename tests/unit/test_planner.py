"""Planner and merge: who must answer, what is refused, and the merge's checks."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataisland.catalog import TableInfo
from dataisland.errors import (
    ExecutionError,
    InvalidInputError,
    MissingPartialError,
    SchemaMismatchError,
    UnknownTableError,
    UnsupportedQueryError,
)
from enclave.engine import DuckDBMergeEngine, EngineResult, Lockdown, run_partial
from enclave.planner import FederatedPlan, MergeOutcome, PlanCache, merge_partials, plan_query
from policies.sqlfront import parse_query

CATALOG = {
    "claims": TableInfo(
        "claims",
        {"pid": "INTEGER", "cat": "VARCHAR", "n": "INTEGER"},
        "pid",
        frozenset({"qingpu", "wujiang", "jiashan"}),
    ),
    "people": TableInfo(
        "people", {"pid": "INTEGER", "age": "INTEGER"}, "pid", frozenset({"qingpu"})
    ),
    "visits": TableInfo(
        "visits", {"pid": "INTEGER", "site": "VARCHAR"}, "pid", frozenset({"qingpu"})
    ),
    "orphan": TableInfo("orphan", {"pid": "INTEGER"}, "pid", frozenset()),
}


def _plan(sql: str):  # type: ignore[no-untyped-def]
    return plan_query(parse_query(sql, catalog=CATALOG), CATALOG)


def test_departments_are_the_holders() -> None:
    plan = _plan("SELECT count(*) FROM claims")
    assert plan.departments == frozenset({"qingpu", "wujiang", "jiashan"})
    assert plan.unit_columns == ("__units",)


def test_filter_cells_carry_their_own_unit_counts() -> None:
    plan = _plan("SELECT cat, count(*) FILTER (WHERE n > 1), sum(n) FROM claims GROUP BY cat")
    # The FILTER cell and the SUM (rows with n not NULL) each stand for their own units.
    assert plan.unit_columns == ("__units", "__units_0", "__units_1")
    assert "GROUP BY cat, claims.pid) AS __by_unit" in plan.partial_sql
    assert "count(*) FILTER (WHERE __entered0 > 0) AS __units_0" in plan.partial_sql
    assert "count(*) FILTER (WHERE (n) IS NOT NULL) AS __entered1" in plan.partial_sql


def test_variances_count_units_with_distinct() -> None:
    """Variance pieces do not re-combine across units, so their partial counts distinct units."""
    plan = _plan("SELECT cat, var_pop(n) FROM claims GROUP BY cat")
    assert "count(DISTINCT claims.pid) FILTER (WHERE (n) IS NOT NULL) +" in plan.partial_sql
    assert "__by_unit" not in plan.partial_sql


_UNIT_ROWS = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.one_of(st.none(), st.integers(-3, 3)),
        st.one_of(st.none(), st.integers(0, 6)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(rows=_UNIT_ROWS)
def test_both_partial_forms_count_the_same_units(rows: Rows) -> None:
    """The per-unit partial counts exactly the units `count(DISTINCT ...)` counts, NULL unit
    included, for the group and for every cell."""
    by_unit = _plan(
        "SELECT cat, count(*) FILTER (WHERE n > 1) AS f, sum(n) AS s FROM claims GROUP BY cat"
    )
    distinct = _plan(
        "SELECT cat, count(*) FILTER (WHERE n > 1) AS f, sum(n) AS s, var_pop(n) AS v "
        "FROM claims GROUP BY cat"
    )
    assert "__by_unit" in by_unit.partial_sql
    assert "__by_unit" not in distinct.partial_sql
    con = duckdb.connect()
    con.execute("CREATE TABLE claims (cat VARCHAR, n INTEGER, pid INTEGER)")
    if rows:
        con.executemany("INSERT INTO claims VALUES (?, ?, ?)", rows)

    def units(plan: FederatedPlan) -> list[dict[str, object]]:
        table = run_partial(plan, con).table
        wanted = ["__g0", "__a0_n", "__a1_s", *plan.unit_columns]
        return sorted(table.select(wanted).to_pylist(), key=lambda r: str(r["__g0"]))

    assert units(by_unit) == units(distinct)


def _release(
    sql: str, shards: dict[str, list[tuple[str, int | None, int | None]]], k: dict[str, int]
) -> MergeOutcome:
    """Run a query over in-memory shards of claims(cat, n, pid) with thresholds `k`."""
    plan = _plan(sql)
    partials = {}
    for department, rows in shards.items():
        con = duckdb.connect()
        con.execute("CREATE TABLE claims (cat VARCHAR, n INTEGER, pid INTEGER)")
        if rows:
            con.executemany("INSERT INTO claims VALUES (?, ?, ?)", rows)
        partials[department] = run_partial(plan, con).table
    engine = DuckDBMergeEngine(Lockdown(threads=1, memory_limit="1GB"))
    return merge_partials(plan, partials, engine, k=k)


Rows = list[tuple[str, int | None, int | None]]


def _people(cat: str, count: int, base: int) -> Rows:
    """`count` people in category `cat`, with ids from `base`."""
    return [(cat, 1, base + i) for i in range(count)]


K3 = {"qingpu": 3, "wujiang": 3, "jiashan": 3}


def test_small_group_is_dropped_key_and_all() -> None:
    shards = {
        "qingpu": _people("big", 5, 100) + _people("rare", 2, 100),
        "wujiang": _people("big", 4, 200),
        "jiashan": [],
    }
    outcome = _release("SELECT cat, count(*) AS n FROM claims GROUP BY cat", shards, K3)
    assert outcome.result.table.to_pylist() == [{"cat": "big", "n": 9}]
    assert (outcome.suppressed_rows, outcome.suppressed_cells) == (1, 0)


def test_each_non_empty_share_must_reach_its_owners_k() -> None:
    # Together 7 people, but wujiang's share of 'mixed' is 2 < its k = 3.
    shards = {
        "qingpu": _people("mixed", 5, 100),
        "wujiang": _people("mixed", 2, 200),
        "jiashan": [],
    }
    outcome = _release("SELECT cat, sum(n) AS s FROM claims GROUP BY cat", shards, K3)
    assert outcome.result.table.num_rows == 0
    assert outcome.suppressed


def test_strictest_k_applies_to_the_total() -> None:
    shards = {"qingpu": _people("g", 4, 100), "wujiang": [], "jiashan": []}
    strict = {"qingpu": 3, "wujiang": 5, "jiashan": 1}
    outcome = _release("SELECT cat, count(*) AS n FROM claims GROUP BY cat", shards, strict)
    assert outcome.result.table.num_rows == 0


def test_filter_cell_below_k_is_null_and_flagged_and_invisible_to_having() -> None:
    shards = {
        "qingpu": [*_people("g", 6, 100), ("g", 99, 999)],
        "wujiang": [],
        "jiashan": [],
    }
    sql = (
        "SELECT cat, count(*) AS n, sum(n) FILTER (WHERE n > 50) AS probe FROM claims "
        "GROUP BY cat HAVING sum(n) FILTER (WHERE n > 50) IS NULL OR true"
    )
    outcome = _release(sql, shards, K3)
    assert outcome.result.table.to_pylist() == [{"cat": "g", "n": 7, "probe": None}]
    assert (outcome.suppressed_rows, outcome.suppressed_cells) == (0, 1)
    probing = (
        "SELECT cat, count(*) AS n FROM claims GROUP BY cat "
        "HAVING sum(n) FILTER (WHERE n > 50) > 90"
    )
    assert _release(probing, shards, K3).result.table.num_rows == 0


def test_empty_filter_cell_answers_exactly_like_a_suppressed_one() -> None:
    sql = "SELECT cat, sum(n) FILTER (WHERE n > 50) AS probe FROM claims GROUP BY cat"
    empty = {"qingpu": _people("g", 6, 100), "wujiang": [], "jiashan": []}
    small = {"qingpu": [*_people("g", 6, 100), ("g", 99, 999)], "wujiang": [], "jiashan": []}
    a, b = _release(sql, empty, K3), _release(sql, small, K3)
    assert a.result.table.to_pylist() == b.result.table.to_pylist() == [{"cat": "g", "probe": None}]
    assert a.suppressed
    assert b.suppressed


def test_case_cell_counts_only_the_units_it_keeps() -> None:
    shards = {"qingpu": [*_people("g", 6, 100), ("g", 99, 999)], "wujiang": [], "jiashan": []}
    sql = "SELECT cat, sum(CASE WHEN n > 50 THEN n END) AS probe FROM claims GROUP BY cat"
    assert _release(sql, shards, K3).result.table.to_pylist() == [{"cat": "g", "probe": None}]


def test_empty_global_aggregate_is_suppressed_not_zero() -> None:
    shards: dict[str, Rows] = {"qingpu": [], "wujiang": [], "jiashan": []}
    outcome = _release("SELECT count(*) AS n FROM claims", shards, K3)
    assert outcome.result.table.num_rows == 0
    assert outcome.suppressed_rows == 1


def test_rows_without_a_unit_count_as_one_unit_not_as_an_empty_share() -> None:
    shards: dict[str, Rows] = {
        "qingpu": _people("g", 5, 100),
        "wujiang": [("g", 7, None), ("g", 8, None)],
        "jiashan": [],
    }
    outcome = _release("SELECT cat, sum(n) AS s FROM claims GROUP BY cat", shards, K3)
    assert outcome.result.table.num_rows == 0


def test_limit_and_order_run_only_on_released_groups() -> None:
    shards = {
        "qingpu": _people("a", 3, 100) + _people("b", 3, 300) + [("tiny", 1000, 998)],
        "wujiang": [],
        "jiashan": [],
    }
    sql = "SELECT cat, sum(n) AS s FROM claims GROUP BY cat ORDER BY s DESC LIMIT 1"
    assert _release(sql, shards, K3).result.table.to_pylist() == [{"cat": "a", "s": 3}]


def test_cross_department_join_is_refused_naming_tables_and_departments() -> None:
    with pytest.raises(UnsupportedQueryError) as caught:
        _plan("SELECT count(*) FROM claims JOIN people ON claims.pid = people.pid")
    message = str(caught.value)
    assert "'claims' held by jiashan, qingpu, wujiang" in message
    assert "'people' held by qingpu" in message


def test_table_without_holders_is_refused() -> None:
    with pytest.raises(UnsupportedQueryError, match="orphan"):
        _plan("SELECT count(*) FROM orphan")


def test_unknown_table_at_plan_time() -> None:
    parsed = parse_query("SELECT count(*) FROM claims")
    with pytest.raises(UnknownTableError, match="claims"):
        plan_query(parsed, {})


def test_single_department_join_runs_whole_query_on_that_department() -> None:
    plan = _plan(
        "SELECT v.site, count(*) AS c, avg(p.age) AS a FROM visits AS v "
        "JOIN people AS p ON v.pid = p.pid WHERE p.age > 1 GROUP BY v.site ORDER BY v.site"
    )
    assert plan.departments == frozenset({"qingpu"})
    assert "GROUP BY v.site, v.pid) AS __by_unit" in plan.partial_sql
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE people AS SELECT * FROM (VALUES (1, 30), (2, 40), (3, 0)) AS t(pid, age)"
    )
    con.execute(
        "CREATE TABLE visits AS SELECT * FROM (VALUES (1, 'x'), (1, 'y'), (2, 'x'), "
        "(3, 'x')) AS t(pid, site)"
    )
    partial = run_partial(plan, con)
    got = merge_partials(
        plan,
        {"qingpu": partial.table},
        DuckDBMergeEngine(Lockdown(threads=2, memory_limit="2GB")),
        k=dict.fromkeys(plan.departments, 1),
    ).result
    want = con.sql(
        "SELECT v.site, count(*) AS c, avg(p.age) AS a FROM visits AS v "
        "JOIN people AS p ON v.pid = p.pid WHERE p.age > 1 GROUP BY v.site ORDER BY v.site"
    ).to_arrow_table()
    assert got.table.equals(want)
    assert partial.table.column("__units").to_pylist() == [2, 1]


def _partials(plan: FederatedPlan, departments: list[str]) -> dict[str, pa.Table]:
    con = duckdb.connect()
    con.execute("CREATE TABLE claims (pid INTEGER, cat VARCHAR, n INTEGER)")
    table = run_partial(plan, con).table
    return dict.fromkeys(departments, table)


def test_missing_partial_is_named() -> None:
    plan = _plan("SELECT count(*) FROM claims")
    with pytest.raises(MissingPartialError, match="wujiang"):
        merge_partials(
            plan,
            _partials(plan, ["qingpu", "jiashan"]),
            DuckDBMergeEngine(Lockdown(threads=2, memory_limit="2GB")),
            k=dict.fromkeys(plan.departments, 1),
        )


def test_unexpected_partial_is_refused() -> None:
    plan = _plan("SELECT count(*) FROM claims")
    partials = _partials(plan, ["qingpu", "jiashan", "wujiang", "mallory"])
    with pytest.raises(InvalidInputError, match="mallory"):
        merge_partials(
            plan,
            partials,
            DuckDBMergeEngine(Lockdown(threads=2, memory_limit="2GB")),
            k=dict.fromkeys(plan.departments, 1),
        )


def test_partial_with_wrong_columns_is_refused() -> None:
    plan = _plan("SELECT count(*) FROM claims")
    partials = _partials(plan, ["qingpu", "jiashan", "wujiang"])
    partials["qingpu"] = pa.table({"x": [1]})
    with pytest.raises(SchemaMismatchError, match="qingpu"):
        merge_partials(
            plan,
            partials,
            DuckDBMergeEngine(Lockdown(threads=2, memory_limit="2GB")),
            k=dict.fromkeys(plan.departments, 1),
        )


def test_partials_with_different_types_are_refused() -> None:
    plan = _plan("SELECT count(*) FROM claims")
    partials = _partials(plan, ["qingpu", "jiashan", "wujiang"])
    partials["qingpu"] = pa.table({"__a0_n": ["one"], "__units": [1]})
    with pytest.raises(SchemaMismatchError):
        merge_partials(
            plan,
            partials,
            DuckDBMergeEngine(Lockdown(threads=2, memory_limit="2GB")),
            k=dict.fromkeys(plan.departments, 1),
        )


def test_merge_engine_is_locked_down_and_hides_duckdb_messages() -> None:
    engine = DuckDBMergeEngine(Lockdown(threads=2, memory_limit="2GB"))
    with pytest.raises(ExecutionError) as caught:
        engine.run("SELECT * FROM read_csv('/etc/hostname')")
    assert "hostname" not in str(caught.value)
    with pytest.raises(ExecutionError):
        engine.run("SET enable_external_access = true")
    result = engine.run("SELECT 1::HUGEINT AS h, 1.5::DECIMAL(38,2) AS d")
    assert isinstance(result, EngineResult)
    assert result.types == ("HUGEINT", "DECIMAL(38,2)")


def test_merges_on_one_engine_never_see_each_others_partials() -> None:
    """The engine reuses one database; each merge's registered partials must die with it."""
    engine = DuckDBMergeEngine(Lockdown(threads=1, memory_limit="1GB"))
    first = engine.run("SELECT sum(x) AS s FROM p_secret", {"p_secret": pa.table({"x": [41, 1]})})
    assert first.table.column("s").to_pylist() == [42]
    with pytest.raises(ExecutionError):
        engine.run("SELECT * FROM p_secret")
    with pytest.raises(ExecutionError):
        engine.run("SET enable_external_access = true")
    setting = engine.run("SELECT current_setting('enable_external_access') AS e")
    assert setting.table.to_pylist() == [{"e": False}]


def test_order_by_aggregate_expression_and_having_alias() -> None:
    sql = (
        "SELECT cat, sum(n) AS total FROM claims GROUP BY cat HAVING total > 1 "
        "ORDER BY count(*) DESC, cat LIMIT 2"
    )
    plan = _plan(sql)
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE claims AS SELECT * FROM (VALUES (1, 'a', 1), (2, 'a', 5), "
        "(3, 'b', 2), (4, 'c', 9), (5, 'c', 1), (6, 'c', 1)) AS t(pid, cat, n)"
    )
    partial = run_partial(plan, con).table
    empty = partial.slice(0, 0)
    got = merge_partials(
        plan,
        {"qingpu": partial, "wujiang": empty, "jiashan": partial},
        DuckDBMergeEngine(Lockdown(threads=2, memory_limit="2GB")),
        k=dict.fromkeys(plan.departments, 1),
    ).result
    con.execute("INSERT INTO claims SELECT * FROM claims")
    want = con.sql(sql).to_arrow_table()
    assert got.table.to_pylist() == want.to_pylist()
    assert got.table.to_pylist()[0]["cat"] == "c"


def test_aggregates_differing_only_in_string_case_are_not_merged() -> None:
    sql = (
        "SELECT count(*) FILTER (WHERE cat = 'A') AS upper_a, "
        "count(*) FILTER (WHERE cat = 'a') AS lower_a, COUNT(*) AS c1, count(*) AS c2 FROM claims"
    )
    plan = _plan(sql)
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE claims AS SELECT * FROM (VALUES (1, 'a', 1), (2, 'A', 5), "
        "(3, 'a', 2)) AS t(pid, cat, n)"
    )
    partial = run_partial(plan, con).table
    got = merge_partials(
        plan,
        dict.fromkeys(("qingpu", "wujiang", "jiashan"), partial),
        DuckDBMergeEngine(Lockdown(threads=2, memory_limit="2GB")),
        k=dict.fromkeys(plan.departments, 1),
    ).result
    assert got.table.to_pylist() == [{"upper_a": 3, "lower_a": 6, "c1": 9, "c2": 9}]
    assert plan.partial_sql.count("count(*) AS __a") == 1  # identical aggregates share one piece


def test_plan_cache_reuses_plans_by_canonical_sql_and_evicts_the_oldest() -> None:
    cache = PlanCache(CATALOG, size=2)
    first = parse_query("SELECT cat, count(*) FROM claims GROUP BY cat", catalog=CATALOG)
    same = parse_query("select cat, COUNT(*) from claims group by cat", catalog=CATALOG)
    assert first.canonical_sql == same.canonical_sql
    plan = cache.plan(first)
    assert cache.plan(same) is plan
    assert plan == plan_query(first, CATALOG)
    for sql in ("SELECT sum(n) FROM claims", "SELECT max(n) FROM claims"):
        cache.plan(parse_query(sql, catalog=CATALOG))
    assert cache.plan(first) is not plan  # evicted, planned again
    assert cache.plan(first) == plan
