"""The canonical form of a released result: typed columns of exact value strings.

A result is encoded column by column with explicit DuckDB type names, every non-NULL cell an
exact string (see `values`), so a requester can recompute its bytes and its commitment from what
it received. This module converts Arrow tables (DuckDB's `to_arrow_table()`) in Python loops over
cells: released results are small. It does not apply release rules or limit result sizes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from dataisland.canonical._json import canonical_json, parse_canonical_json
from dataisland.canonical.values import (
    INTEGER_RANGES,
    Interval,
    canonical_type_name,
    check_type_name,
    check_value,
    decimal_precision_scale,
    decimal_unscaled,
    encode_date_days,
    encode_decimal_unscaled,
    encode_double,
    encode_float,
    encode_integer,
    encode_interval,
    encode_timestamp_micros,
)
from dataisland.errors import CanonicalEncodingError

if TYPE_CHECKING:
    import pyarrow as pa

RESULT_VERSION = 1
Cell = str | None


@dataclass(frozen=True)
class ResultColumn:
    """One result column.

    Attributes:
        name: the output column name.
        type: the DuckDB type name in canonical spelling, e.g. "DECIMAL(18,2)".
        values: one canonical cell string per row, None for NULL.
    """

    name: str
    type: str
    values: tuple[Cell, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise CanonicalEncodingError("a column name must be a string")
        try:
            self.name.encode("utf-8")
        except UnicodeEncodeError:
            raise CanonicalEncodingError("a column name is not valid Unicode") from None
        check_type_name(self.type)
        if isinstance(self.values, (str, bytes)) or not isinstance(self.values, Sequence):
            raise CanonicalEncodingError(f"column {self.name!r}: values must be a sequence")
        values = tuple(self.values)
        object.__setattr__(self, "values", values)
        try:
            for cell in values:
                check_value(self.type, cell)
        except CanonicalEncodingError as e:
            raise CanonicalEncodingError(f"column {self.name!r}: {e}") from None


@dataclass(frozen=True)
class CanonicalResult:
    """A released result in canonical form.

    Attributes:
        columns: at least one column, all of the same length.
    """

    columns: tuple[ResultColumn, ...]

    def __post_init__(self) -> None:
        if isinstance(self.columns, (str, bytes)) or not isinstance(self.columns, Sequence):
            raise CanonicalEncodingError("columns must be a sequence of ResultColumn")
        columns = tuple(self.columns)
        object.__setattr__(self, "columns", columns)
        if not columns:
            raise CanonicalEncodingError("a result has at least one column")
        for column in columns:
            if not isinstance(column, ResultColumn):
                raise CanonicalEncodingError("columns must be ResultColumn values")
        if len({len(c.values) for c in columns}) != 1:
            raise CanonicalEncodingError("result columns differ in length")

    @property
    def num_rows(self) -> int:
        """The number of rows."""
        return len(self.columns[0].values)

    def rows(self) -> tuple[tuple[Cell, ...], ...]:
        """Return the cells row by row, for display."""
        return tuple(zip(*(c.values for c in self.columns), strict=True))

    def to_json(self) -> dict[str, object]:
        """Return the JSON object whose RFC 8785 bytes are the canonical result."""
        return {
            "version": RESULT_VERSION,
            "columns": [
                {"name": c.name, "type": c.type, "values": list(c.values)} for c in self.columns
            ],
        }

    def to_bytes(self) -> bytes:
        """Return RFC 8785 JSON of {"columns": [{"name", "type", "values"}...], "version": 1}."""
        return canonical_json(self.to_json())

    def digest(self) -> bytes:
        """Return SHA-256 of `to_bytes()`."""
        return hashlib.sha256(self.to_bytes()).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> CanonicalResult:
        """Parse canonical result bytes strictly (the inverse of `to_bytes`).

        Raises:
            CanonicalEncodingError: not canonical JSON, missing or unknown fields, wrong JSON
                types, unsupported types, non-canonical cells or ragged columns.
        """
        obj = parse_canonical_json(data)
        if not isinstance(obj, dict) or set(obj) != {"version", "columns"}:
            raise CanonicalEncodingError('a result must be exactly {"columns", "version"}')
        version = obj["version"]
        if type(version) is not int or version != RESULT_VERSION:
            raise CanonicalEncodingError(f"unsupported result version (expected {RESULT_VERSION})")
        items = obj["columns"]
        if not isinstance(items, list):
            raise CanonicalEncodingError("columns must be a list")
        columns: list[ResultColumn] = []
        for item in items:
            if not isinstance(item, dict) or set(item) != {"name", "type", "values"}:
                raise CanonicalEncodingError('a column must be exactly {"name", "type", "values"}')
            name, type_name, values = item["name"], item["type"], item["values"]
            if not isinstance(name, str) or not isinstance(type_name, str):
                raise CanonicalEncodingError("column name and type must be strings")
            if not isinstance(values, list):
                raise CanonicalEncodingError(f"column {name!r}: values must be a list")
            columns.append(ResultColumn(name, type_name, tuple(values)))
        return cls(tuple(columns))

    @classmethod
    def from_arrow(cls, table: pa.Table, types: Sequence[str]) -> CanonicalResult:
        """Encode an Arrow table whose columns have the given DuckDB types.

        The DuckDB types come separately because Arrow loses them (HUGEINT and UHUGEINT
        arrive as decimal128(38, 0)). Pass `[str(t) for t in relation.types]`.

        Args:
            table: e.g. `con.sql(q).to_arrow_table()`.
            types: one DuckDB type name per column, in order.

        Raises:
            CanonicalEncodingError: a type is unsupported or does not match the Arrow type, or
                a value does not fit its type; the message names the type and the column.
        """
        # Imported here so that envelope and parameter users do not pay for pyarrow.
        import pyarrow as pa

        if not isinstance(table, pa.Table):
            raise CanonicalEncodingError("from_arrow takes a pyarrow.Table")
        if isinstance(types, str) or len(types) != table.num_columns:
            raise CanonicalEncodingError("give exactly one DuckDB type name per column")
        columns = []
        for name, column, raw_type in zip(table.column_names, table.columns, types, strict=True):
            try:
                type_name = canonical_type_name(raw_type)
            except CanonicalEncodingError as e:
                raise CanonicalEncodingError(f"column {name!r}: {e}") from None
            try:
                cells = _encode_arrow_column(type_name, column)
            except CanonicalEncodingError as e:
                raise CanonicalEncodingError(f"column {name!r}: {e}") from None
            except (pa.ArrowException, ValueError, TypeError, OverflowError) as e:
                raise CanonicalEncodingError(
                    f"column {name!r}: cannot convert {type_name} ({type(e).__name__})"
                ) from None
            columns.append(ResultColumn(name, type_name, cells))
        return cls(tuple(columns))


_ARROW_INTEGER_TYPES: dict[str, str] = {
    "TINYINT": "int8",
    "SMALLINT": "int16",
    "INTEGER": "int32",
    "BIGINT": "int64",
    "UTINYINT": "uint8",
    "USMALLINT": "uint16",
    "UINTEGER": "uint32",
    "UBIGINT": "uint64",
}


def _mismatch(type_name: str, arrow_type: pa.DataType) -> CanonicalEncodingError:
    return CanonicalEncodingError(f"{type_name} does not match Arrow type {arrow_type}")


def _map(values: list[Any], fn: Callable[[Any], str]) -> tuple[Cell, ...]:
    return tuple(None if v is None else fn(v) for v in values)


def _encode_arrow_column(type_name: str, column: pa.ChunkedArray) -> tuple[Cell, ...]:
    import pyarrow as pa
    import pyarrow.compute as pc

    at = column.type
    if type_name == "NULL":
        if not pa.types.is_null(at):
            raise _mismatch(type_name, at)
        return (None,) * len(column)
    if type_name == "BOOLEAN" or type_name in _ARROW_INTEGER_TYPES:
        expected = (
            pa.bool_()
            if type_name == "BOOLEAN"
            else pa.type_for_alias(_ARROW_INTEGER_TYPES[type_name])
        )
        if at != expected:
            raise _mismatch(type_name, at)
        # Arrow's own cast already yields the canonical strings: "true"/"false", "-12".
        return tuple(pc.cast(column, pa.string()).to_pylist())
    if type_name in ("HUGEINT", "UHUGEINT"):
        if not pa.types.is_decimal128(at) or at.scale != 0:
            raise _mismatch(type_name, at)
        # The 128 storage bits are exact; UHUGEINT above 2**127 reads back negative.
        wrap = 2**128 if type_name == "UHUGEINT" else 0

        def huge(v: Decimal) -> str:
            n = decimal_unscaled(type_name, v, 0)
            return encode_integer(type_name, n + wrap if n < 0 else n)

        return _map(column.to_pylist(), huge)
    if type_name == "DOUBLE":
        if at != pa.float64():
            raise _mismatch(type_name, at)
        return _map(column.to_pylist(), encode_double)
    if type_name == "FLOAT":
        if at != pa.float32():
            raise _mismatch(type_name, at)
        return _map(column.to_pylist(), encode_float)
    if type_name == "VARCHAR":
        if not (pa.types.is_string(at) or pa.types.is_large_string(at) or _is_string_view(at)):
            raise _mismatch(type_name, at)
        return tuple(column.to_pylist())
    if type_name == "DATE":
        if not pa.types.is_date32(at):
            raise _mismatch(type_name, at)
        return _map(column.cast(pa.int32()).to_pylist(), encode_date_days)
    if type_name in ("TIMESTAMP", "TIMESTAMP WITH TIME ZONE"):
        utc = type_name != "TIMESTAMP"
        if not pa.types.is_timestamp(at) or at.unit != "us" or (at.tz is not None) != utc:
            raise _mismatch(type_name, at)
        micros = column.cast(pa.int64()).to_pylist()
        return _map(micros, lambda v: encode_timestamp_micros(v, utc=utc))
    if type_name == "INTERVAL":
        if at != pa.month_day_nano_interval():
            raise _mismatch(type_name, at)

        def interval(v: Any) -> str:
            if v.nanoseconds % 1000:
                raise CanonicalEncodingError("INTERVAL: sub-microsecond part")
            return encode_interval(Interval(v.months, v.days, v.nanoseconds // 1000))

        return _map(column.to_pylist(), interval)
    ps = decimal_precision_scale(type_name)
    assert ps is not None, type_name
    if not pa.types.is_decimal(at) or at.scale != ps[1]:
        raise _mismatch(type_name, at)
    scale = ps[1]
    return _map(
        column.to_pylist(),
        lambda v: encode_decimal_unscaled(type_name, decimal_unscaled(type_name, v, scale)),
    )


def _is_string_view(at: pa.DataType) -> bool:
    import pyarrow as pa

    is_view = getattr(pa.types, "is_string_view", None)
    return bool(is_view is not None and is_view(at))


assert set(INTEGER_RANGES) == {*_ARROW_INTEGER_TYPES, "HUGEINT", "UHUGEINT"}
