"""The logical tables of a federation, as the SQL front, planner and nodes need them.

A catalog is plain data read from the federation file; it does not open shards or check that a
department's DuckDB file matches it (the shard loader does that).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class TableInfo:
    """One logical table: its schema, its privacy unit column and who holds shards of it.

    Attributes:
        name: the logical table name queries use (lower case).
        columns: column name to DuckDB type name, in schema order.
        privacy_unit: the column whose distinct values count as people for the release rules.
        holders: the departments holding a shard of this table.
    """

    name: str
    columns: Mapping[str, str]
    privacy_unit: str
    holders: frozenset[str]


Catalog = Mapping[str, TableInfo]
"""Logical table name to its `TableInfo`."""
