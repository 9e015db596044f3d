"""Engines that run planned SQL: the thin I/O shell around DuckDB for partials and merges.

`open_locked` opens a DuckDB database with the lockdown every enclave applies; `DuckDBMergeEngine`
runs a merge on a fresh cursor of a locked-down in-memory DuckDB over Arrow tables it is handed;
`run_partial` runs a plan's partial on a department's shard connection. Both return the
Arrow result together with DuckDB's type names, because Arrow loses some (HUGEINT arrives as
DECIMAL(38,0)) and the canonical result encoding needs the DuckDB types.

This module does not: plan or check SQL (it runs only what the planner wrote from a checked
tree), keep a shard open or enforce deadlines (enclave/shard.py does), apply release rules,
or let DuckDB's error text (which can quote values) reach the caller.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import duckdb
import pyarrow as pa

from dataisland.errors import ConfigError, ExecutionError

if TYPE_CHECKING:
    from enclave.planner import FederatedPlan


@dataclass(frozen=True)
class EngineResult:
    """A query result and the DuckDB type name of each of its columns.

    Attributes:
        table: the result as Arrow.
        types: DuckDB type names, e.g. 'HUGEINT', 'DECIMAL(38,2)', in column order.
    """

    table: pa.Table
    types: tuple[str, ...]


@dataclass(frozen=True)
class Lockdown:
    """The resource limits of a shard connection (part of what the enclave measures)."""

    threads: int
    memory_limit: str

    def connect_config(self) -> dict[str, str | bool | int | float | list[str]]:
        """The DuckDB config applied when the connection opens."""
        return {
            "access_mode": "READ_ONLY",
            "enable_external_access": False,
            "autoload_known_extensions": False,
            "autoinstall_known_extensions": False,
            "python_enable_replacements": False,
            "threads": self.threads,
            "memory_limit": self.memory_limit,
        }


LOCK_STATEMENTS = ("SET TimeZone = 'UTC'", "SET lock_configuration = true")
"""Run right after connecting (the connect-time config refuses TimeZone); the second locks the
configuration so no later statement can loosen it. Part of the measurement."""


def open_locked(database: str | Path, lockdown: Lockdown) -> duckdb.DuckDBPyConnection:
    """Open `database` with the lockdown applied and the configuration locked.

    `database` may be ":memory:" for the aggregator's merge engine (read-only is then dropped).

    Raises:
        ConfigError: the file is missing or is not a DuckDB database.
    """
    config = lockdown.connect_config()
    if str(database) == ":memory:":
        config.pop("access_mode")
    elif not Path(database).is_file():
        raise ConfigError(f"shard file {database} does not exist")
    try:
        con = duckdb.connect(str(database), config=config)
    except duckdb.Error as exc:
        raise ConfigError(f"cannot open shard {database}: {type(exc).__name__}") from None
    for statement in LOCK_STATEMENTS:
        con.execute(statement)
    return con


class MergeEngine(Protocol):
    """Runs a merge's SQL over registered Arrow tables."""

    def run(self, sql: str, tables: Mapping[str, pa.Table] | None = None) -> EngineResult:
        """Run `sql` (with `tables` registered under their names) and return its result."""
        ...


# execute() binds and runs a statement once; con.sql() binds it to build a relation, then again
# to run it: about 1 ms more per statement, a fifth of a small partial. The copy execute()'s
# Arrow output makes (the reason for DuckDB's warning) is cheap next to that for results of the
# size partials and merges have.
warnings.filterwarnings(
    "ignore", message="Arrow output on a DB-API result makes an extra copy", category=UserWarning
)


def execute_arrow(con: duckdb.DuckDBPyConnection, sql: str) -> EngineResult:
    """Run one statement on `con` and return its Arrow result with DuckDB's type names.

    Raises:
        duckdb.Error: as DuckDB raises it (callers turn it into a value-free error).
    """
    result = con.execute(sql)
    types = tuple(str(column[1]) for column in result.description)
    return EngineResult(table=result.to_arrow_table(), types=types)


def _result(con: duckdb.DuckDBPyConnection, sql: str, what: str) -> EngineResult:
    try:
        return execute_arrow(con, sql)
    except duckdb.Error as error:
        # DuckDB's message may quote data values; only the error kind leaves.
        raise ExecutionError(f"{what} failed ({type(error).__name__})") from None


class DuckDBMergeEngine:
    """A merge engine: one locked-down in-memory DuckDB, a fresh cursor for every merge.

    Opening a DuckDB database costs about 30 ms, twice a small query's whole budget; a cursor
    costs well under one. A cursor shares the database's locked configuration, and the Arrow
    tables a merge registers are views of that cursor alone, gone when it closes, so merges
    never see each other's partials.
    """

    def __init__(self, lockdown: Lockdown) -> None:
        self.lockdown = lockdown
        self._database = open_locked(":memory:", lockdown)

    def run(self, sql: str, tables: Mapping[str, pa.Table] | None = None) -> EngineResult:
        """Run `sql` over `tables` on a fresh cursor of the locked-down database.

        Args:
            sql: the merge SQL (written by the planner).
            tables: Arrow tables to register, by relation name.

        Returns:
            The result and its DuckDB types.

        Raises:
            ExecutionError: DuckDB failed (the message names only the error kind).
        """
        con = self._database.cursor()
        try:
            for name, table in (tables or {}).items():
                con.register(name, table)
            return _result(con, sql, "the merge")
        finally:
            con.close()


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
