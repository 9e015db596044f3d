"""Synthetic demo data: deterministic for a seed, the declared schema, plausible shapes."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from dataisland.errors import ConfigError, InvalidInputError
from dataisland.synthetic import (
    CATEGORIES,
    CLAIMS_COLUMNS,
    WATER_COLUMNS,
    claims_sql,
    populate_shard,
    water_sql,
)


def _rows(sql: str) -> list[tuple[object, ...]]:
    con = duckdb.connect()
    # More threads must not change the output: randomness is hashed from row numbers.
    con.execute("SET threads = 4")
    return con.execute(sql).fetchall()


def _types(sql: str) -> dict[str, str]:
    con = duckdb.connect()
    return {str(r[0]): str(r[1]) for r in con.execute(f"DESCRIBE {sql}").fetchall()}


def test_claims_are_deterministic_for_a_seed_and_differ_across_seeds_and_districts() -> None:
    first = _rows(claims_sql("qingpu", rows=2_000, seed=7))
    assert first == _rows(claims_sql("qingpu", rows=2_000, seed=7))
    assert first != _rows(claims_sql("qingpu", rows=2_000, seed=8))
    assert first != _rows(claims_sql("wujiang", rows=2_000, seed=7))


def test_claims_have_the_declared_schema() -> None:
    assert _types(claims_sql("qingpu", rows=10, seed=1)) == dict(CLAIMS_COLUMNS)


def test_claims_shape_is_plausible() -> None:
    con = duckdb.connect()
    con.execute(f"CREATE TABLE c AS {claims_sql('jiashan', rows=30_000, seed=3)}")
    summary = con.execute(
        """
        SELECT count(*), count(DISTINCT claim_id), count(DISTINCT person_id),
               min(age), max(age), min(service_date), max(service_date),
               min(amount), bool_and(reimbursed <= amount), bool_and(reimbursed >= 0),
               count(DISTINCT date_trunc('month', service_date))
        FROM c
        """
    ).fetchall()[0]
    rows, claims, people, min_age, max_age, first, last, min_amount, capped, positive, months = (
        summary
    )
    assert rows == claims == 30_000
    assert 3_000 < people < 15_000  # people repeat across several claims
    assert min_age >= 0
    assert max_age <= 95
    assert str(first).startswith("2024-01")
    assert str(last).startswith("2024-12")
    assert min_amount > 0
    assert capped
    assert positive
    assert months == 12
    categories = {r[0] for r in con.execute("SELECT DISTINCT category FROM c").fetchall()}
    assert categories == set(CATEGORIES)
    # Maternity claims only for women of child-bearing age; stays only for stays.
    odd = con.execute(
        "SELECT count(*) FROM c WHERE category = 'maternity' AND (sex <> 'F' OR age > 45)"
    ).fetchall()[0][0]
    assert odd == 0
    stays = con.execute(
        "SELECT max(length_of_stay) FROM c WHERE category IN ('outpatient', 'pharmacy', 'dental')"
    ).fetchall()[0][0]
    assert stays == 0
    # The same person has the same age and sex on every claim.
    inconsistent = con.execute(
        "SELECT count(*) FROM (SELECT person_id FROM c GROUP BY person_id "
        "HAVING count(DISTINCT age) > 1 OR count(DISTINCT sex) > 1)"
    ).fetchall()[0][0]
    assert inconsistent == 0


def test_water_readings_are_hourly_per_station_and_deterministic() -> None:
    sql = water_sql("wujiang", stations=2, days=3, downstream=True, seed=5)
    assert _types(sql) == dict(WATER_COLUMNS)
    rows = _rows(sql)
    assert rows == _rows(sql)
    assert len(rows) == 2 * 3 * 24
    assert {r[0] for r in rows} == {"wujiang-s1", "wujiang-s2"}
    assert all(6.0 < float(str(r[2])) < 9.0 for r in rows)  # pH


def test_downstream_is_more_polluted() -> None:
    con = duckdb.connect()

    def ammonia(downstream: bool) -> float:
        sql = water_sql("x", stations=3, days=7, downstream=downstream, seed=1)
        return float(con.execute(f"SELECT avg(ammonia_nitrogen) FROM ({sql})").fetchall()[0][0])

    assert ammonia(True) > ammonia(False)


def test_negative_sizes_are_refused() -> None:
    with pytest.raises(InvalidInputError):
        claims_sql("qingpu", rows=-1, seed=0)
    with pytest.raises(InvalidInputError):
        water_sql("qingpu", days=-1, seed=0)


def _shard(path: Path, tables: dict[str, dict[str, str]]) -> None:
    con = duckdb.connect(str(path))
    for name, columns in tables.items():
        ddl = ", ".join(f"{c} {t}" for c, t in columns.items())
        con.execute(f"CREATE TABLE {name} ({ddl})")
    con.close()


def test_populate_shard_appends_into_existing_tables(tmp_path: Path) -> None:
    path = tmp_path / "qingpu.duckdb"
    _shard(path, {"claims": dict(CLAIMS_COLUMNS), "water_readings": dict(WATER_COLUMNS)})
    counts = populate_shard(
        path, "qingpu", ["claims", "water_readings"], rows=500, seed=1, water_days=2
    )
    assert counts == {"claims": 500, "water_readings": 3 * 2 * 24}
    con = duckdb.connect(str(path))
    assert con.execute("SELECT count(*) FROM claims").fetchall()[0][0] == 500
    con.close()


def test_populate_shard_refuses_missing_or_unknown_tables(tmp_path: Path) -> None:
    path = tmp_path / "jiashan.duckdb"
    _shard(path, {"claims": dict(CLAIMS_COLUMNS)})
    with pytest.raises(ConfigError, match="water_readings"):
        populate_shard(path, "jiashan", ["water_readings"], seed=1)
    with pytest.raises(ConfigError, match="prescriptions"):
        populate_shard(path, "jiashan", ["prescriptions"], seed=1)
