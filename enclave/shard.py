"""A department's shard: one DuckDB file opened read-only and locked down, plus a watchdog.

The lockdown is applied at connect time (no external access, no extension autoload or
autoinstall, no Python replacement scans, threads and memory from configuration), TimeZone is set
to UTC right after connecting (the connect-time config refuses it), and the configuration is then
locked so no later statement can loosen it. Each execution runs on its own cursor, which a timer
interrupts at the deadline.

This module does not parse, check or plan SQL: it runs SQL its caller regenerated from a checked
tree, and its errors never carry data values.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Mapping
from pathlib import Path

import duckdb

from dataisland.errors import ExecutionError, QueryDeadlineError
from dataisland.unitmasks import is_reserved, verify_unit_masks
from enclave.engine import EngineResult, Lockdown, execute_arrow, open_locked

log = logging.getLogger("dataisland.enclave.shard")


class Shard:
    """A locked-down, read-only shard that runs SQL under a deadline."""

    def __init__(self, path: Path, lockdown: Lockdown) -> None:
        self.path = path
        self.lockdown = lockdown
        self._con = open_locked(path, lockdown)

    def tables(self) -> dict[str, dict[str, str]]:
        """Table name to {column: DuckDB type}, in column order, without dataisland's own
        columns and tables (the unit masks: dataisland/unitmasks.py)."""
        rows = self._con.execute(
            "SELECT table_name, column_name, data_type FROM duckdb_columns() "
            "WHERE schema_name = 'main' AND NOT internal ORDER BY table_name, column_index"
        ).fetchall()
        out: dict[str, dict[str, str]] = {}
        for table, column, type_name in rows:
            if not is_reserved(str(table)) and not is_reserved(str(column)):
                out.setdefault(str(table), {})[str(column)] = str(type_name)
        return out

    def verify_unit_masks(self, units: Mapping[str, str]) -> frozenset[str]:
        """The tables (of `units`: table to privacy unit column) whose unit masks every row
        bears out, recomputed here from the units; the others' partials count exactly.

        Raises:
            SchemaMismatchError: a table's masks disagree with its units (refuse to serve).
        """
        return frozenset(t for t, unit in units.items() if verify_unit_masks(self._con, t, unit))

    def dense_columns(self, tables: Collection[str]) -> frozenset[tuple[str, str]]:
        """The (table, column) pairs of `tables` with no NULL in any row: a partial may give a
        cell over such a column its group's unit bound (the same rows). The shard is
        read-only, so what this finds at start stays true.
        """
        found: set[tuple[str, str]] = set()
        for table, columns in self.tables().items():
            if table not in tables or not columns:
                continue
            names = list(columns)
            quoted = ['"' + c.replace('"', '""') + '"' for c in [table, *names]]
            counts = ", ".join(f"count(*) - count({c})" for c in quoted[1:])
            nulls = self._con.execute(f"SELECT {counts} FROM {quoted[0]}").fetchall()[0]
            found.update((table, c) for c, n in zip(names, nulls, strict=True) if n == 0)
        return frozenset(found)

    def run(self, sql: str, *, timeout: float) -> EngineResult:
        """Run `sql` on a fresh cursor, interrupted after `timeout` seconds.

        Returns:
            The result as Arrow with the DuckDB type names of its columns.

        Raises:
            QueryDeadlineError: the watchdog interrupted it.
            ExecutionError: DuckDB refused it (the message names only the error class).
        """
        cursor = self._con.cursor()
        fired = threading.Event()

        def interrupt() -> None:
            fired.set()
            cursor.interrupt()

        watchdog = threading.Timer(max(timeout, 0.0), interrupt)
        watchdog.daemon = True
        watchdog.start()
        try:
            result = execute_arrow(cursor, sql)
        except duckdb.InterruptException:
            raise QueryDeadlineError(
                f"the partial ran past its deadline of {timeout:.1f}s"
            ) from None
        except duckdb.Error as exc:
            if fired.is_set():
                raise QueryDeadlineError(
                    f"the partial ran past its deadline of {timeout:.1f}s"
                ) from None
            # DuckDB's message can quote a value from the shard: neither logged nor sent.
            log.warning("partial failed with %s", type(exc).__name__)
            raise ExecutionError(
                f"the partial failed in the shard ({type(exc).__name__})"
            ) from None
        finally:
            watchdog.cancel()
            cursor.close()
        return result

    def close(self) -> None:
        """Close the connection."""
        self._con.close()
