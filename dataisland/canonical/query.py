"""The canonical query's hash, bound to the pinned versions of DuckDB and the SQL library.

This module hashes canonical SQL; it does not produce it (the SQL front in policies/ regenerates
it from the checked tree) and does not import DuckDB or sqlglot: the versions come from the
installed distributions' metadata.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import metadata

from dataisland.canonical._json import canonical_json
from dataisland.errors import CanonicalEncodingError, ConfigError


@dataclass(frozen=True)
class Dialect:
    """The versions that give canonical SQL its meaning.

    The same text can parse, regenerate or run differently under another DuckDB or sqlglot, so
    the query hash changes with either version.

    Attributes:
        duckdb: DuckDB's version string, e.g. "2.0.1".
        sqlglot: sqlglot's version string, e.g. "30.31.0".
    """

    duckdb: str
    sqlglot: str

    def __post_init__(self) -> None:
        for name in ("duckdb", "sqlglot"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise CanonicalEncodingError(f"dialect {name} version must be a non-empty string")

    @classmethod
    def installed(cls) -> Dialect:
        """Read the versions of the installed duckdb and sqlglot distributions.

        Raises:
            ConfigError: either is not installed.
        """
        try:
            return cls(duckdb=metadata.version("duckdb"), sqlglot=metadata.version("sqlglot"))
        except metadata.PackageNotFoundError as e:
            raise ConfigError(
                f"cannot read the pinned dialect: {e.name} is not installed"
            ) from None

    def to_json(self) -> dict[str, str]:
        """Return the JSON object hashed into query hashes."""
        return {"duckdb": self.duckdb, "sqlglot": self.sqlglot}


DIALECT: Dialect = Dialect.installed()
"""The dialect of this installation (pinned exactly in pyproject.toml)."""


def canonical_query_bytes(canonical_sql: str, *, dialect: Dialect = DIALECT) -> bytes:
    """Return RFC 8785 JSON of {"dialect": {"duckdb", "sqlglot"}, "sql": canonical_sql}.

    Raises:
        CanonicalEncodingError: the SQL is not a non-empty valid Unicode string.
    """
    if not isinstance(canonical_sql, str) or not canonical_sql:
        raise CanonicalEncodingError("canonical SQL must be a non-empty string")
    if not isinstance(dialect, Dialect):
        raise CanonicalEncodingError("dialect must be a Dialect")
    return canonical_json({"sql": canonical_sql, "dialect": dialect.to_json()})


def query_hash(canonical_sql: str, *, dialect: Dialect = DIALECT) -> bytes:
    """Return the 32-byte SHA-256 of `canonical_query_bytes`.

    Args:
        canonical_sql: SQL regenerated from the checked tree, exactly as officers read it.
        dialect: the versions to bind; this installation's pinned ones unless replaying
            another node's hash.

    Raises:
        CanonicalEncodingError: as `canonical_query_bytes`.
    """
    return hashlib.sha256(canonical_query_bytes(canonical_sql, dialect=dialect)).digest()
