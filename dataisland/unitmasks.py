"""Per-row privacy-unit masks: the columns that let a partial bound its units as cheaply as a SUM.

The release rules need, per group and per cell, whether each department's share reaches k
distinct privacy units. Counting them exactly costs a hash aggregation per unit (ADR 0010), a
hundred times a plain aggregate on large shards. ADR 0016 replaces it, where it can, by a proven
lower bound: every row carries `MASKS` masks, each a single bit (of 64) chosen by `MASK_BITS`
bits of a keyed SHA-256 of the row's unit; a group's OR of a mask has at most one bit per
distinct unit, so its popcount, and the largest popcount of the masks, never exceeds the
group's distinct units. The bound can only err towards suppression.

The masks are computed once, when a shard is loaded (`add_unit_masks`), because hashing a
VARCHAR per row and query cost more than the whole aggregate. The key is a random salt per shard
table, kept in the shard (`SALTS_TABLE`), so a requester cannot compute which units share a bit
and learn from a suppression which people a group holds beyond its count. NULL units hash to one
value of their own: together they count as one unit, as the exact counts have them.

An enclave does not trust the stored masks: `verify_unit_masks` recomputes every row's masks
from its unit at start, and a shard whose masks disagree is refused. Columns and table are named
with the reserved `__dataisland_` prefix; the SQL front knows only the federation's columns, so
no query can name them, and shard schema checks leave them out.

This module does not decide which partial an enclave runs (enclave/planner.py does, with
`bound_reaches`), and does not import DuckDB or open shard files: callers pass connections,
so the pure planner can use its names and maths.
"""

from __future__ import annotations

import secrets
from functools import cache
from typing import TYPE_CHECKING

from dataisland.errors import ConfigError, SchemaMismatchError

if TYPE_CHECKING:
    import duckdb

MASKS = 4
"""Independent masks per row: a group with exactly k units is falsely suppressed only when
every one of them has a collision."""

MASK_BITS = 6
"""Bits of the unit's hash choosing the one bit set in each 64-bit mask."""

RESERVED_PREFIX = "__dataisland_"
"""Columns and tables of a shard with this prefix are dataisland's own, not the federation's."""

MASK_COLUMNS = tuple(f"{RESERVED_PREFIX}unit_mask{i}" for i in range(MASKS))
"""The per-row mask columns, UBIGINT, appended to every logical table of a shard."""

SALTS_TABLE = f"{RESERVED_PREFIX}unit_salts"
"""(table_name, salt): the key of each table's unit hash."""

MAX_FALSE_SUPPRESSION = 0.01
"""The largest false-suppression rate, for a share of exactly k units, at which an enclave
uses the bound for threshold k; above it (k >= 8 with four masks) it counts exactly."""


def is_reserved(name: str) -> bool:
    """Whether a shard column or table name is dataisland's own (hidden from every schema)."""
    return name.lower().startswith(RESERVED_PREFIX)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def mask_expressions(unit_sql: str, salt_sql: str) -> tuple[str, ...]:
    """SQL computing each of a row's masks from its unit (an expression) and its table's salt.

    The hash is SHA-256 of salt, then 'v' and the unit as text, or 'n' for a NULL unit (so a
    NULL unit never shares its input with a unit's text); its first 64 bits, `MASK_BITS` of them
    per mask, choose one bit of each mask.
    """
    digest = f"sha256({salt_sql} || COALESCE('v' || CAST({unit_sql} AS VARCHAR), 'n'))"
    hashed = f"CAST('0x' || substr({digest}, 1, 16) AS UBIGINT)"
    mask = (1 << MASK_BITS) - 1
    return tuple(
        f"(CAST(1 AS UBIGINT) << (({hashed} >> {MASK_BITS * i}) & {mask}))" for i in range(MASKS)
    )


def _salt(con: duckdb.DuckDBPyConnection, table: str) -> str | None:
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_schema = 'main' AND table_name = ?",
        [SALTS_TABLE],
    ).fetchall()[0][0]
    if not exists:
        return None
    rows = con.execute(
        f"SELECT salt FROM {_quote(SALTS_TABLE)} WHERE table_name = ?", [table]
    ).fetchall()
    return str(rows[0][0]) if rows else None


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str]]:
    return [
        (str(name), str(type_name))
        for name, type_name in con.execute(
            "SELECT column_name, data_type FROM duckdb_columns() "
            "WHERE schema_name = 'main' AND table_name = ? ORDER BY column_index",
            [table],
        ).fetchall()
    ]


def add_unit_masks(con: duckdb.DuckDBPyConnection, table: str, unit: str) -> None:
    """(Re)compute the mask columns of every row of `table` on a writable shard connection.

    Creates the table's salt on first use (32 random bytes) and rewrites the table with its
    logical columns first and the masks after them. Run after every load, inside the load's
    transaction when there is one.

    Raises:
        ConfigError: the table or its unit column does not exist.
    """
    columns = [name for name, _ in _columns(con, table) if not is_reserved(name)]
    if not columns:
        raise ConfigError(f"shard has no table {table!r}")
    if unit not in columns:
        raise ConfigError(f"table {table!r} has no privacy unit column {unit!r}")
    salt = _salt(con, table)
    if salt is None:
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {_quote(SALTS_TABLE)} "
            "(table_name VARCHAR PRIMARY KEY, salt VARCHAR NOT NULL)"
        )
        salt = secrets.token_hex(32)
        con.execute(f"INSERT INTO {_quote(SALTS_TABLE)} VALUES (?, ?)", [table, salt])
    masks = mask_expressions(_quote(unit), f"'{salt}'")
    items = [_quote(c) for c in columns] + [
        f"{sql} AS {_quote(name)}" for sql, name in zip(masks, MASK_COLUMNS, strict=True)
    ]
    con.execute(
        f"CREATE OR REPLACE TABLE {_quote(table)} AS SELECT {', '.join(items)} FROM {_quote(table)}"
    )


def verify_unit_masks(con: duckdb.DuckDBPyConnection, table: str, unit: str) -> bool:
    """Whether `table` carries unit masks, after recomputing every row's masks from its unit.

    Returns:
        True when every mask column is present and every row's masks are those of its unit;
        False when the table has no mask columns or no salt (its partials count exactly).

    Raises:
        SchemaMismatchError: the masks are present but some row's differ from its unit's (or
            are NULL, or typed otherwise): a stale or altered shard, which the enclave refuses.
    """
    present = {name: type_name for name, type_name in _columns(con, table) if is_reserved(name)}
    salt = _salt(con, table)
    if not present and salt is None:
        return False
    if salt is None or any(present.get(name) != "UBIGINT" for name in MASK_COLUMNS):
        raise SchemaMismatchError(
            f"table {table!r} has incomplete unit masks; reload the shard to recompute them"
        )
    masks = mask_expressions(_quote(unit), f"'{salt}'")
    differs = " OR ".join(
        f"{_quote(name)} IS DISTINCT FROM {sql}"
        for name, sql in zip(MASK_COLUMNS, masks, strict=True)
    )
    wrong = con.execute(f"SELECT count(*) FROM {_quote(table)} WHERE {differs}").fetchall()
    if wrong[0][0]:
        raise SchemaMismatchError(
            f"table {table!r} has unit masks that do not match its {unit!r} column; "
            "reload the shard to recompute them"
        )
    return True


@cache
def _distinct_bits(n: int) -> tuple[float, ...]:
    """P(exactly d of 64 bits set) after n units each set one uniformly random bit, d = 0..64."""
    bits = 1 << MASK_BITS
    p = [1.0] + [0.0] * bits
    for _ in range(n):
        q = [0.0] * (bits + 1)
        for d, mass in enumerate(p):
            if mass:
                q[d] += mass * d / bits
                if d < bits:
                    q[d + 1] += mass * (bits - d) / bits
        p = q
    return tuple(p)


def false_suppression(units: int, k: int) -> float:
    """The chance that a share of exactly `units` distinct units shows fewer than `k`.

    Each mask's popcount is the number of distinct bits `units` uniform choices set; the masks
    use disjoint bits of one SHA-256, so they are independent and the bound (their largest
    popcount) falls short only when every mask does.
    """
    if units >= k and k <= 1:
        return 0.0
    short = sum(_distinct_bits(units)[: max(0, min(k, (1 << MASK_BITS) + 1))])
    return float(short**MASKS)


def bound_reaches(k: int) -> bool:
    """Whether a share of exactly k units reaches k by the bound often enough to use it for k.

    True for 1 <= k <= 7 with four 64-bit masks (at most 0.7% of shares of exactly 7 units, and
    0.05% of exactly 5, falsely suppressed; fewer the more units above k); larger k is counted
    exactly.
    """
    return 1 <= k <= (1 << MASK_BITS) and false_suppression(k, k) <= MAX_FALSE_SUPPRESSION
