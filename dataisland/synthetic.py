"""Realistic synthetic data for the demonstration zone's scenarios, and their table schemas.

Two logical tables, matching the scenarios in DESIGN.md:

- ``claims``: medical-insurance claims, one horizontal shard per district. People repeat across
  several claims (and a few are treated in more than one district); ages 0-95; service dates
  over 2024; six categories with plausible, log-normally distributed amounts.
- ``water_readings``: hourly readings for a few stations per district, upstream or downstream.

Generation is vectorised DuckDB SQL. Randomness comes from DuckDB's ``hash`` of one string
made of (row number, seed, salt) rather than ``random()``, so the output is the same for a given
seed whatever the thread count or row order: tests and the demo rely on that.

This module writes only into a shard file it is given (tables must already exist, typed as the
federation says); it does not create federations, check policies or start nodes.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

import duckdb

from dataisland.errors import ConfigError, InvalidInputError
from dataisland.unitmasks import add_unit_masks

CLAIMS_COLUMNS: Mapping[str, str] = MappingProxyType(
    {
        "claim_id": "VARCHAR",
        "person_id": "VARCHAR",
        "age": "INTEGER",
        "sex": "VARCHAR",
        "category": "VARCHAR",
        "hospital_level": "VARCHAR",
        "service_date": "DATE",
        "amount": "DECIMAL(12,2)",
        "reimbursed": "DECIMAL(12,2)",
        "length_of_stay": "INTEGER",
    }
)
"""The schema of the ``claims`` logical table (privacy unit: ``person_id``)."""

WATER_COLUMNS: Mapping[str, str] = MappingProxyType(
    {
        "station_id": "VARCHAR",
        "reading_at": "TIMESTAMP",
        "ph": "DOUBLE",
        "dissolved_oxygen": "DOUBLE",
        "turbidity": "DOUBLE",
        "ammonia_nitrogen": "DOUBLE",
    }
)
"""The schema of the ``water_readings`` logical table (privacy unit: ``station_id``)."""

UNITS: Mapping[str, str] = MappingProxyType({"claims": "person_id", "water_readings": "station_id"})
"""The privacy unit column of each table this module fills."""

CATEGORIES = ("outpatient", "pharmacy", "inpatient", "dental", "rehabilitation", "maternity")
"""Claim categories, most frequent first."""

HOSPITAL_LEVELS = ("primary", "secondary", "tertiary")

DEFAULT_CLAIMS_ROWS = 30_000
DEFAULT_WATER_STATIONS = 3
DEFAULT_WATER_DAYS = 21

_CLAIMS_PER_PERSON = 4
# Every district draws this share of its claims from a pool of people shared by all districts
# (commuters, referrals), so later cross-department linkage has something to find.
_SHARED_PEOPLE = 2_000
_SHARED_SHARE = 0.05
_MODULUS = 4_294_967_291  # a prime below 2**32: uniform enough for demo data


def _department_salt(department: str) -> int:
    # zlib.crc32 is stable across processes, unlike hash().
    return zlib.crc32(department.encode("utf-8"))


def _uniform(key: str, salt: int, seed: int) -> str:
    """SQL for a deterministic uniform double in (0, 1) keyed on `key`."""
    # One string per (key, seed, salt): DuckDB's multi-argument hash combines its arguments'
    # hashes weakly enough that adjacent salts correlate, a string hash does not.
    return f"((hash({key}::VARCHAR || ':{seed}:{salt}') % {_MODULUS})::DOUBLE + 0.5) / {_MODULUS}"


def _normal(key: str, salt: int, seed: int) -> str:
    """SQL for a deterministic standard normal (Box-Muller) keyed on `key`."""
    u1 = _uniform(key, salt, seed)
    u2 = _uniform(key, salt + 1, seed)
    return f"(sqrt(-2 * ln({u1})) * cos(2 * pi() * {u2}))"


def claims_sql(department: str, *, rows: int, seed: int) -> str:
    """SQL text of a query producing `rows` synthetic claims for `department`.

    The query's columns are exactly `CLAIMS_COLUMNS`, in order and typed as listed.

    Raises:
        InvalidInputError: `rows` is negative.
    """
    if rows < 0:
        raise InvalidInputError("rows must not be negative")
    d = _department_salt(department) % 1_000_003
    people = max(1, rows // _CLAIMS_PER_PERSON)
    # Person attributes hash the person's number only (not the district), so a shared person
    # has the same age and sex wherever they claim.
    # District-level variation: price levels differ by a few percent between districts.
    price_level = 0.9 + (d % 200) / 1000
    return f"""
WITH base AS (
    SELECT i,
        CASE WHEN {_uniform("i", d + 1, seed)} < {_SHARED_SHARE}
             THEN floor({_uniform("i", d + 2, seed)} * {_SHARED_PEOPLE})::BIGINT
             ELSE {_SHARED_PEOPLE} + {d}::BIGINT * 1000000
                  + floor(pow({_uniform("i", d + 3, seed)}, 1.3) * {people})::BIGINT
        END AS person,
        {_uniform("i", d + 4, seed)} AS u_cat,
        {_uniform("i", d + 5, seed)} AS u_level,
        {_uniform("i", d + 6, seed)} AS u_day,
        {_normal("i", d + 7, seed)} AS z_amount,
        {_uniform("i", d + 9, seed)} AS u_reimb,
        {_uniform("i", d + 10, seed)} AS u_stay
    FROM range({rows}) AS t(i)
), people AS (
    SELECT *,
        least(95, floor(96 * pow({_uniform("person", 101, seed)}, 0.75)))::INTEGER AS age,
        CASE WHEN {_uniform("person", 102, seed)} < 0.49 THEN 'M' ELSE 'F' END AS sex
    FROM base
), categorised AS (
    SELECT *,
        CASE
            WHEN u_cat < 0.44 THEN 'outpatient'
            WHEN u_cat < 0.68 THEN 'pharmacy'
            WHEN u_cat < 0.81 THEN 'inpatient'
            WHEN u_cat < 0.89 THEN 'dental'
            WHEN u_cat < 0.95 THEN 'rehabilitation'
            WHEN sex = 'F' AND age BETWEEN 18 AND 45 THEN 'maternity'
            ELSE 'outpatient'
        END AS category,
        CASE WHEN u_level < 0.45 THEN 'primary'
             WHEN u_level < 0.80 THEN 'secondary'
             ELSE 'tertiary' END AS hospital_level
    FROM people
), priced AS (
    SELECT *,
        least(9999999.0, exp(
            CASE category
                WHEN 'outpatient' THEN ln(260)
                WHEN 'pharmacy' THEN ln(180)
                WHEN 'inpatient' THEN ln(11000)
                WHEN 'dental' THEN ln(650)
                WHEN 'rehabilitation' THEN ln(4200)
                ELSE ln(8500)
            END
            + CASE hospital_level WHEN 'primary' THEN -0.25 WHEN 'secondary' THEN 0 ELSE 0.35 END
            + 0.004 * age
            + 0.55 * z_amount
        ) * {price_level}) AS raw_amount
    FROM categorised
)
SELECT
    '{department}-' || lpad(i::VARCHAR, 8, '0') AS claim_id,
    'P' || lpad(person::VARCHAR, 13, '0') AS person_id,
    age,
    sex,
    category,
    hospital_level,
    (DATE '2024-01-01' + floor(u_day * 366)::INTEGER) AS service_date,
    round(raw_amount, 2)::DECIMAL(12,2) AS amount,
    round(raw_amount * (
        CASE hospital_level WHEN 'primary' THEN 0.85 WHEN 'secondary' THEN 0.75 ELSE 0.65 END
        - 0.10 * u_reimb), 2)::DECIMAL(12,2) AS reimbursed,
    (CASE category
        WHEN 'inpatient' THEN 1 + floor(-ln(u_stay) * 6)
        WHEN 'maternity' THEN 2 + floor(-ln(u_stay) * 2)
        WHEN 'rehabilitation' THEN 5 + floor(-ln(u_stay) * 12)
        ELSE 0
    END)::INTEGER AS length_of_stay
FROM priced
ORDER BY i
"""


def water_sql(
    department: str,
    *,
    stations: int = DEFAULT_WATER_STATIONS,
    days: int = DEFAULT_WATER_DAYS,
    downstream: bool = False,
    seed: int,
) -> str:
    """SQL text of a query producing hourly readings for `stations` stations over `days` days.

    Readings start at 2024-06-01 00:00. Downstream districts see more turbidity and ammonia and
    less dissolved oxygen, with a daily cycle. The columns are exactly `WATER_COLUMNS`.

    Raises:
        InvalidInputError: `stations` or `days` is negative.
    """
    if stations < 0 or days < 0:
        raise InvalidInputError("stations and days must not be negative")
    d = _department_salt(department) % 1_000_003
    load = 1.0 if not downstream else 1.6
    return f"""
WITH grid AS (
    SELECT s, h, s::BIGINT * 1000000 + h AS k
    FROM range({stations}) AS st(s), range({days * 24}) AS hr(h)
), raw AS (
    SELECT s, h,
        sin(2 * pi() * ((h % 24) - 9) / 24) AS diurnal,
        {_normal("k", d + 21, seed)} AS z1,
        {_normal("k", d + 23, seed)} AS z2,
        {_normal("k", d + 25, seed)} AS z3,
        {_normal("k", d + 27, seed)} AS z4,
        ({_uniform("s", d + 29, seed)} - 0.5) AS station_bias
    FROM grid
)
SELECT
    '{department}-s' || (s + 1)::VARCHAR AS station_id,
    (TIMESTAMP '2024-06-01 00:00:00' + to_hours(h::BIGINT)) AS reading_at,
    round(7.4 + 0.25 * diurnal + 0.3 * station_bias + 0.08 * z1, 3)::DOUBLE AS ph,
    round(greatest(0.5, 8.6 / {load} + 1.2 * diurnal + 0.4 * station_bias + 0.3 * z2), 3)::DOUBLE
        AS dissolved_oxygen,
    round(exp(ln(12 * {load}) + 0.35 * z3 + 0.2 * station_bias), 3)::DOUBLE AS turbidity,
    round(greatest(0.01, 0.25 * {load} + 0.05 * station_bias + 0.04 * z4), 4)::DOUBLE
        AS ammonia_nitrogen
FROM raw
ORDER BY s, h
"""


def populate_shard(
    path: Path,
    department: str,
    tables: Iterable[str],
    *,
    rows: int = DEFAULT_CLAIMS_ROWS,
    seed: int = 0,
    downstream: bool = False,
    water_stations: int = DEFAULT_WATER_STATIONS,
    water_days: int = DEFAULT_WATER_DAYS,
    unit_masks: bool = True,
) -> dict[str, int]:
    """Append synthetic data for `department` to the named tables of the shard at `path`.

    Then recomputes the filled tables' privacy-unit masks (dataisland/unitmasks.py), as
    `dataisland shard load` does, unless `unit_masks` is False (their partials count exactly).

    Args:
        path: the department's DuckDB file; each named table must already exist there.
        department: the department's name (prefixes claim and station ids, varies the data).
        tables: which logical tables to fill: ``claims`` and/or ``water_readings``.
        rows: how many claims to generate.
        seed: the same seed gives the same data.
        downstream: for water readings, whether this district is downstream (more pollution).
        water_stations: stations per district.
        water_days: days of hourly readings.

    Returns:
        Rows appended, per table.

    Raises:
        ConfigError: a table is not one this module knows, or is missing from the shard, or the
            shard file cannot be opened for writing.
    """
    statements: dict[str, str] = {}
    for table in tables:
        if table == "claims":
            statements[table] = claims_sql(department, rows=rows, seed=seed)
        elif table == "water_readings":
            statements[table] = water_sql(
                department,
                stations=water_stations,
                days=water_days,
                downstream=downstream,
                seed=seed,
            )
        else:
            raise ConfigError(f"no synthetic data for table {table!r}")
    try:
        con = duckdb.connect(str(path))
    except duckdb.Error as exc:
        raise ConfigError(f"cannot open shard {path} for writing: {exc}") from None
    counts: dict[str, int] = {}
    try:
        existing = {
            str(row[0])
            for row in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
            ).fetchall()
        }
        for table in statements:
            if table not in existing:
                raise ConfigError(f"shard {path} has no table {table!r}")
        con.execute("BEGIN")
        try:
            for table, sql in statements.items():
                before = _count(con, table)
                con.execute(f'INSERT INTO "{table}" BY NAME {sql}')
                counts[table] = _count(con, table) - before
                if unit_masks:
                    add_unit_masks(con, table, UNITS[table])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    finally:
        con.close()
    return counts


def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return int(con.execute(f'SELECT count(*) FROM "{table}"').fetchall()[0][0])
