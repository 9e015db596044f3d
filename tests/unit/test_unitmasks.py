"""Unit masks: the lower bound's maths, its false-suppression rate, and the enclave's checks."""

from __future__ import annotations

import math
from pathlib import Path

import duckdb
import pytest

from dataisland.catalog import TableInfo
from dataisland.errors import SchemaMismatchError, UnsupportedQueryError
from dataisland.unitmasks import (
    MASK_COLUMNS,
    MAX_FALSE_SUPPRESSION,
    SALTS_TABLE,
    add_unit_masks,
    bound_reaches,
    false_suppression,
    verify_unit_masks,
)
from enclave.engine import Lockdown
from enclave.planner import plan_query
from enclave.shard import Shard
from policies.sqlfront import parse_query

CATALOG = {
    "claims": TableInfo(
        "claims", {"pid": "VARCHAR", "grp": "INTEGER", "n": "INTEGER"}, "pid", frozenset({"q"})
    )
}


def _birthday(units: int, bins: int = 64) -> float:
    """P(units uniform choices of `bins` are all different)."""
    return math.prod((bins - i) / bins for i in range(units))


def test_false_suppression_is_every_mask_colliding() -> None:
    # Exactly k units show k only when some mask has no collision at all.
    for k in range(1, 12):
        assert false_suppression(k, k) == pytest.approx((1 - _birthday(k)) ** 4, rel=1e-9)
    assert (1 - _birthday(5)) == pytest.approx(0.148, abs=0.001)  # one mask at k = 5
    assert false_suppression(5, 5) == pytest.approx(4.78e-4, rel=0.01)  # four masks
    # More units than k fall short far more rarely; no rows never reach k >= 1.
    assert false_suppression(6, 5) < 1e-7
    assert false_suppression(10, 5) < 1e-15
    assert false_suppression(0, 1) == 1.0
    assert false_suppression(3, 1) == 0.0


def test_the_bound_is_used_only_where_it_reaches_k_reliably() -> None:
    assert [k for k in range(1, 100) if bound_reaches(k)] == list(range(1, 8))
    assert false_suppression(7, 7) <= MAX_FALSE_SUPPRESSION < false_suppression(8, 8)
    assert not bound_reaches(0)


def _shard(con: duckdb.DuckDBPyConnection, groups: int, units_per_group: int) -> None:
    con.execute("CREATE TABLE claims (pid VARCHAR, grp INTEGER, n INTEGER)")
    # Every group has exactly `units_per_group` people, each with three rows.
    con.execute(
        "INSERT INTO claims SELECT 'u' || (g * 100 + u), g, r FROM range(?) a(g), "
        "range(?) b(u), range(3) c(r)",
        [groups, units_per_group],
    )
    add_unit_masks(con, "claims", "pid")


def test_false_suppression_rate_on_shares_of_exactly_k_units() -> None:
    """20,000 groups of exactly 5 people: the bound shows fewer than 5 for about 0.048% of
    them (about 10 groups; more than 40 has a chance below 1e-12 if the maths is right), never
    more than 5, and is exact for k = 1."""
    k, groups = 5, 20_000
    con = duckdb.connect()
    _shard(con, groups, k)
    plan = plan_query(
        parse_query("SELECT grp, count(*) AS c FROM claims GROUP BY grp", catalog=CATALOG),
        CATALOG,
    )
    short, over, empty = con.execute(
        f"SELECT count(*) FILTER (WHERE __units < {k}), count(*) FILTER (WHERE __units > {k}), "
        f"count(*) FILTER (WHERE __units = 0) FROM ({plan.bound_partial_sql})"
    ).fetchall()[0]
    assert over == 0
    assert empty == 0
    expected = groups * false_suppression(k, k)
    assert 9 < expected < 10
    assert short <= 40
    con.close()


def test_masks_are_verified_against_the_units(tmp_path: Path) -> None:
    path = tmp_path / "shard.duckdb"
    con = duckdb.connect(str(path))
    _shard(con, 10, 3)
    assert verify_unit_masks(con, "claims", "pid")
    con.close()
    shard = Shard(path, Lockdown(threads=1, memory_limit="256MB"))
    assert shard.verify_unit_masks({"claims": "pid"}) == {"claims"}
    # The masks and the salt are not part of the table's schema.
    assert shard.tables() == {"claims": {"pid": "VARCHAR", "grp": "INTEGER", "n": "INTEGER"}}
    shard.close()
    con = duckdb.connect(str(path))
    # One person's rows given another's mask bits would let their popcount overcount.
    mask = MASK_COLUMNS[1]
    # Another bit than the row's own (a fixed one would match it one time in 64).
    con.execute(
        f"UPDATE claims SET {mask} = CASE WHEN {mask} = 1 THEN 2 ELSE 1 END "
        "WHERE pid = 'u1' AND n = 0"
    )
    con.close()
    shard = Shard(path, Lockdown(threads=1, memory_limit="256MB"))
    with pytest.raises(SchemaMismatchError, match="do not match"):
        shard.verify_unit_masks({"claims": "pid"})
    shard.close()


def test_missing_or_partial_masks(tmp_path: Path) -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE claims (pid VARCHAR, grp INTEGER, n INTEGER)")
    assert not verify_unit_masks(con, "claims", "pid")  # no masks: partials count exactly
    add_unit_masks(con, "claims", "pid")
    con.execute(f"ALTER TABLE claims DROP COLUMN {MASK_COLUMNS[3]}")
    with pytest.raises(SchemaMismatchError, match="incomplete"):
        verify_unit_masks(con, "claims", "pid")
    con.execute(f"DELETE FROM {SALTS_TABLE}")
    with pytest.raises(SchemaMismatchError, match="incomplete"):
        verify_unit_masks(con, "claims", "pid")


def test_masks_follow_a_reload_and_null_units_count_once() -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE claims (pid VARCHAR, grp INTEGER, n INTEGER)")
    con.execute("INSERT INTO claims VALUES ('a', 1, 1), (NULL, 1, 2), (NULL, 1, 3)")
    add_unit_masks(con, "claims", "pid")
    salt = con.execute(f"SELECT salt FROM {SALTS_TABLE}").fetchall()
    con.execute("INSERT INTO claims BY NAME SELECT 'b' AS pid, 1 AS grp, 4 AS n")
    add_unit_masks(con, "claims", "pid")  # the salt stays; the new row gets its masks
    assert con.execute(f"SELECT salt FROM {SALTS_TABLE}").fetchall() == salt
    assert verify_unit_masks(con, "claims", "pid")
    plan = plan_query(parse_query("SELECT count(*) AS c FROM claims", catalog=CATALOG), CATALOG)
    (units,) = con.execute(f"SELECT __units FROM ({plan.bound_partial_sql})").fetchall()[0]
    assert units <= 3  # 'a', 'b' and the NULL unit
    assert units >= 2  # two masks differ unless every mask collides (about 1e-7)


def test_requesters_cannot_name_the_masks() -> None:
    # The SQL front reserves every identifier beginning with '__'.
    for column in MASK_COLUMNS:
        with pytest.raises(UnsupportedQueryError, match="reserved"):
            parse_query(f"SELECT sum({column}) AS s FROM claims", catalog=CATALOG)
    with pytest.raises(UnsupportedQueryError, match="reserved"):
        parse_query(f"SELECT count(*) AS c FROM {SALTS_TABLE}", catalog=CATALOG)


def test_cells_over_columns_without_nulls_share_their_groups_bound(tmp_path: Path) -> None:
    """A cell whose rows are its group's wherever its column holds no NULL gets the group's
    bound, computed once; the answer is the same, and a column with a NULL keeps the cell's own."""
    path = tmp_path / "shard.duckdb"
    con = duckdb.connect(str(path))
    _shard(con, 200, 5)
    con.close()
    shard = Shard(path, Lockdown(threads=1, memory_limit="256MB"))
    dense = shard.dense_columns({"claims"})
    assert dense == {("claims", "pid"), ("claims", "grp"), ("claims", "n")}
    plan = plan_query(
        parse_query(
            "SELECT grp, sum(n) AS s, avg(n) AS a, count(*) FILTER (WHERE n > 0) AS c "
            "FROM claims GROUP BY grp",
            catalog=CATALOG,
        ),
        CATALOG,
    )
    assert plan.dense_columns == {"n"}
    sql = plan.partial_sql_for(k=5, masked={"claims"}, dense=dense)
    assert sql == plan.bound_dense_partial_sql
    assert plan.partial_sql_for(k=5, masked={"claims"}, dense=set()) == plan.bound_partial_sql
    assert plan.partial_sql_for(k=8, masked={"claims"}, dense=dense) == plan.partial_sql
    same = shard.run(sql, timeout=30).table.sort_by("__g0")
    own = shard.run(plan.bound_partial_sql, timeout=30).table.sort_by("__g0")
    assert same == own
    shard.close()
