"""Engines that run planned SQL: the thin I/O shell around DuckDB for partials and merges.

`DuckDBMergeEngine` runs a merge in a fresh, locked-down in-memory DuckDB over Arrow tables it is
handed; `run_partial` runs a plan's partial on a department's shard connection. Both return the
Arrow result together with DuckDB's type names, because Arrow loses some (HUGEINT arrives as
DECIMAL(38,0)) and the canonical result encoding needs the DuckDB types.

This module does not: plan or check SQL (it runs only what the planner wrote from a checked
tree), open or lock down a department's shard (the shard loader does that), apply release rules,
or let DuckDB's error text (which can quote values) reach the caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import duckdb
import pyarrow as pa

from dataisland.errors import ExecutionError

if TYPE_CHECKING:
    from enclave.planner import FederatedPlan

LOCKDOWN_CONFIG: Mapping[str, str] = {
    "enable_external_access": "false",
    "autoload_known_extensions": "false",
    "autoinstall_known_extensions": "false",
    "python_enable_replacements": "false",
}
"""The connect-time configuration of every merge connection (part of the measurement)."""


@dataclass(frozen=True)
class EngineResult:
    """A query result and the DuckDB type name of each of its columns.

    Attributes:
        table: the result as Arrow.
        types: DuckDB type names, e.g. 'HUGEINT', 'DECIMAL(38,2)', in column order.
    """

    table: pa.Table
    types: tuple[str, ...]


class ShardEngine(Protocol):
    """Runs a partial's SQL on one department's shard."""

    def run(self, sql: str, tables: Mapping[str, pa.Table] | None = None) -> EngineResult:
        """Run `sql` (with `tables` registered under their names) and return its result."""
        ...


class MergeEngine(Protocol):
    """Runs a merge's SQL over registered Arrow tables."""

    def run(self, sql: str, tables: Mapping[str, pa.Table] | None = None) -> EngineResult:
        """Run `sql` (with `tables` registered under their names) and return its result."""
        ...


def _result(con: duckdb.DuckDBPyConnection, sql: str, what: str) -> EngineResult:
    try:
        relation = con.sql(sql)
        types = tuple(str(t) for t in relation.types)
        table = relation.to_arrow_table()
    except duckdb.Error as error:
        # DuckDB's message may quote data values; only the error kind leaves.
        raise ExecutionError(f"{what} failed ({type(error).__name__})") from None
    return EngineResult(table=table, types=types)


class DuckDBMergeEngine:
    """A merge engine: each run gets a fresh in-memory DuckDB with external access off."""

    def run(self, sql: str, tables: Mapping[str, pa.Table] | None = None) -> EngineResult:
        """Run `sql` over `tables` in a fresh locked-down connection.

        Args:
            sql: the merge SQL (written by the planner).
            tables: Arrow tables to register, by relation name.

        Returns:
            The result and its DuckDB types.

        Raises:
            ExecutionError: DuckDB failed (the message names only the error kind).
        """
        con = duckdb.connect(":memory:", config=dict(LOCKDOWN_CONFIG))
        try:
            con.execute("SET TimeZone='UTC'")
            # Nothing the merge SQL does may loosen the settings above.
            con.execute("SET lock_configuration=true")
            for name, table in (tables or {}).items():
                con.register(name, table)
            return _result(con, sql, "the merge")
        finally:
            con.close()


class DuckDBShardEngine:
    """A shard engine over a connection its owner opened and locked down."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        """Wrap `con`, which stays owned (and closed) by the caller."""
        self._con = con

    def run(self, sql: str, tables: Mapping[str, pa.Table] | None = None) -> EngineResult:
        """Run `sql` on the shard.

        Raises:
            ExecutionError: DuckDB failed (the message names only the error kind).
        """
        for name, table in (tables or {}).items():
            self._con.register(name, table)
        return _result(self._con, sql, "the partial")


def run_partial(plan: FederatedPlan, con: duckdb.DuckDBPyConnection) -> EngineResult:
    """Run a plan's partial on a department's shard connection.

    Args:
        plan: the federated plan.
        con: the department's (locked-down, read-only) shard connection.

    Returns:
        The partial and its DuckDB types.

    Raises:
        ExecutionError: DuckDB failed (the message names only the error kind).
    """
    return _result(con, plan.partial_sql, "the partial")
