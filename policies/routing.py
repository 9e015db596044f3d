"""Which departments must answer a query: one placement rule for coordinator and enclaves.

A query over one logical table needs a partial from every department holding a shard of it. A
query joining several tables is answered only when one department holds all of them entirely
(a join across departments' shards would need rows to leave an enclave). Pure: reads the catalog.
"""

from __future__ import annotations

from collections.abc import Iterable

from dataisland.catalog import Catalog
from dataisland.errors import UnknownTableError, UnsupportedQueryError


def required_departments(tables: Iterable[str], catalog: Catalog) -> frozenset[str]:
    """The departments that must each send a partial for a query over `tables`.

    Raises:
        UnknownTableError: a table is not in the catalog.
        UnsupportedQueryError: the query joins tables not all held entirely by one department.
    """
    names = sorted(set(tables))
    holders: dict[str, frozenset[str]] = {}
    for name in names:
        info = catalog.get(name)
        if info is None:
            raise UnknownTableError(
                f"unknown table {name!r}; the federation defines {sorted(catalog)}"
            )
        holders[name] = info.holders
    if not names:
        raise UnsupportedQueryError("a query must read at least one table")
    if len(names) == 1:
        return holders[names[0]]
    placements = set(holders.values())
    if len(placements) != 1 or len(next(iter(placements))) != 1:
        described = ", ".join(f"{n} held by {sorted(h)}" for n, h in holders.items())
        raise UnsupportedQueryError(
            f"joins across departments are not supported ({described}); "
            "a join is answered only when one department holds every joined table"
        )
    return next(iter(placements))
