"""Cell strings, strict parsing and the project's errors for malformed canonical input."""

from __future__ import annotations

import datetime as dt
import math
import struct
from decimal import Decimal

import pyarrow as pa
import pytest

from dataisland.canonical import (
    CanonicalResult,
    Interval,
    Opening,
    QueryEnvelope,
    ResultColumn,
    TypedParam,
    canonical_json,
    canonical_type_name,
    check_value,
    commit,
    decode_params,
    decode_value,
    encode_params,
    encode_value,
    parse_canonical_json,
)
from dataisland.canonical.values import encode_float
from dataisland.errors import CanonicalEncodingError, DataislandError, InvalidInputError

GOOD_ENVELOPE = QueryEnvelope(
    sql="SELECT 1",
    params_commitment=bytes(32),
    purpose="audit",
    request_id="r-1",
    issued_at=dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC),
)


# ---------------------------------------------------------------- canonical_json


@pytest.mark.parametrize(
    "obj",
    [1.5, {"a": 0.0}, [math.nan], 2**53, -(2**53), {1: "x"}, b"bytes", {"s": "\ud800"}, object()],
)
def test_canonical_json_refuses(obj: object) -> None:
    with pytest.raises(CanonicalEncodingError):
        canonical_json(obj)


def test_canonical_json_sorts_keys_by_utf16() -> None:
    # RFC 8785 orders keys by UTF-16 code units: U+1F600 (surrogates D83D...) sorts before U+FB01.
    assert canonical_json({"\ufb01": 1, "\U0001f600": 2, "a": 3}) == (
        '{"a":3,"\U0001f600":2,"\ufb01":1}'.encode()
    )


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1, "b":2}',
        b'{"b":1,"a":2}',
        b'{"a":1,"a":1}',
        b'{"a":1.0}',
        b'{"a":NaN}',
        b'{"a":"\\u00e9"}',
        b"\xff",
        b"[" * 10000 + b"]" * 10000,
        b'{"a":1}\n',
        b"",
        b"1" * 5000,
        b'"\\ud800"',
    ],
)
def test_parse_canonical_json_rejects(data: bytes) -> None:
    with pytest.raises(CanonicalEncodingError):
        parse_canonical_json(data)


# ---------------------------------------------------------------- values

CANONICAL = [
    ("BOOLEAN", "true"),
    ("TINYINT", "-128"),
    ("UBIGINT", "18446744073709551615"),
    ("HUGEINT", "-170141183460469231731687303715884105728"),
    ("UHUGEINT", "340282366920938463463374607431768211455"),
    ("DECIMAL(4,1)", "-0.5"),
    ("DECIMAL(38,0)", "99999999999999999999999999999999999999"),
    ("DECIMAL(3,3)", "0.001"),
    ("DOUBLE", "1e+16"),
    ("DOUBLE", "5e-324"),
    ("DOUBLE", "-0.0"),
    ("DOUBLE", "NaN"),
    ("FLOAT", "0.1"),
    ("FLOAT", "3.4028235e+38"),
    ("FLOAT", "-Infinity"),
    ("VARCHAR", ""),
    ("DATE", "2024-02-29"),
    ("DATE", "-0043-03-15"),
    ("DATE", "+10000-01-01"),
    ("DATE", "infinity"),
    ("TIMESTAMP", "1969-12-31T23:59:59.999999"),
    ("TIMESTAMP WITH TIME ZONE", "2024-03-01T12:00:00.000000Z"),
    ("TIMESTAMP WITH TIME ZONE", "-infinity"),
    ("INTERVAL", "-1mo2d-3us"),
    ("NULL", None),
]

NOT_CANONICAL = [
    ("BOOLEAN", "True"),
    ("BOOLEAN", "1"),
    ("TINYINT", "128"),
    ("TINYINT", "-0"),
    ("INTEGER", "007"),
    ("INTEGER", "+1"),
    ("INTEGER", " 1"),
    ("INTEGER", "1_000"),
    ("INTEGER", "\u0661"),  # Arabic-Indic digit one: int() would take it
    ("UINTEGER", "-1"),
    ("HUGEINT", "170141183460469231731687303715884105728"),
    ("HUGEINT", "9" * 5000),
    ("UHUGEINT", "340282366920938463463374607431768211456"),
    ("DECIMAL(4,1)", "-0.0"),
    ("DECIMAL(4,1)", "1.50"),
    ("DECIMAL(4,1)", "1"),
    ("DECIMAL(4,1)", ".5"),
    ("DECIMAL(4,1)", "1000.0"),
    ("DECIMAL(4,0)", "1.0"),
    ("DECIMAL(4,1)", "1.\u0665"),
    ("DOUBLE", "nan"),
    ("DOUBLE", "inf"),
    ("DOUBLE", "1.0e16"),
    ("DOUBLE", "1e16"),
    ("DOUBLE", "0.10"),
    ("DOUBLE", "1"),
    ("DOUBLE", "0.1000000000000000055511151231257827"),
    ("FLOAT", "0.10000000149011612"),
    ("FLOAT", "1e+39"),
    ("FLOAT", "1/2"),
    ("VARCHAR", "\ud800"),
    ("DATE", "2023-02-29"),
    ("DATE", "2024-2-1"),
    ("DATE", "10000-01-01"),
    ("DATE", "+9999-01-01"),
    ("DATE", "-0000-01-01"),
    ("DATE", "+5881580-07-11"),
    ("DATE", "Infinity"),
    ("TIMESTAMP", "2024-03-01 12:00:00.000000"),
    ("TIMESTAMP", "2024-03-01T12:00:00"),
    ("TIMESTAMP", "2024-03-01T12:00:00.000000Z"),
    ("TIMESTAMP", "2024-03-01T24:00:00.000000"),
    ("TIMESTAMP WITH TIME ZONE", "2024-03-01T12:00:00.000000"),
    ("TIMESTAMP WITH TIME ZONE", "2024-03-01T12:00:00.000000+00:00"),
    ("INTERVAL", "P1M"),
    ("INTERVAL", "1mo2d"),
    ("INTERVAL", "-0mo0d0us"),
    ("INTERVAL", "2147483648mo0d0us"),
    ("NULL", "null"),
]


@pytest.mark.parametrize(("type_name", "text"), CANONICAL)
def test_canonical_cells_accepted(type_name: str, text: str | None) -> None:
    check_value(type_name, text)


@pytest.mark.parametrize(("type_name", "text"), NOT_CANONICAL)
def test_non_canonical_cells_rejected(type_name: str, text: str) -> None:
    with pytest.raises(CanonicalEncodingError) as info:
        check_value(type_name, text)
    assert type_name in str(info.value)


@pytest.mark.parametrize("cell", [1, 1.5, True, ["1"], {"a": "1"}])
def test_cells_must_be_strings(cell: object) -> None:
    with pytest.raises(CanonicalEncodingError):
        check_value("INTEGER", cell)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    ["BLOB", "UUID", "TIME", "TIMESTAMP_NS", "INTEGER[]", "DECIMAL(39,0)", "DECIMAL(4,5)",
     "DECIMAL(04,1)", "DECIMAL(4, 1)", "integer", "STRUCT(a INTEGER)", ""],
)  # fmt: skip
def test_unsupported_types(name: str) -> None:
    with pytest.raises(CanonicalEncodingError):
        canonical_type_name(name)


def test_type_aliases() -> None:
    assert canonical_type_name('"NULL"') == "NULL"
    assert canonical_type_name("TIMESTAMPTZ") == "TIMESTAMP WITH TIME ZONE"


@pytest.mark.parametrize(
    ("type_name", "value", "text"),
    [
        ("BOOLEAN", False, "false"),
        ("DECIMAL(5,2)", Decimal("1.5"), "1.50"),
        ("DECIMAL(5,2)", 3, "3.00"),
        ("DOUBLE", -0.0, "-0.0"),
        ("DOUBLE", math.inf, "Infinity"),
        ("DATE", dt.date(1, 1, 1), "0001-01-01"),
        ("TIMESTAMP", dt.datetime(1969, 12, 31, 23, 59, 59, 1), "1969-12-31T23:59:59.000001"),
        (
            "TIMESTAMP WITH TIME ZONE",
            dt.datetime(2024, 3, 1, 20, tzinfo=dt.timezone(dt.timedelta(hours=8))),
            "2024-03-01T12:00:00.000000Z",
        ),
        ("INTERVAL", Interval(14, 3, 3_600_000_000), "14mo3d3600000000us"),
        ("VARCHAR", "嘉善", "嘉善"),
    ],
)
def test_encode_decode_python_values(type_name: str, value: object, text: str) -> None:
    assert encode_value(type_name, value) == text  # type: ignore[arg-type]
    decoded = decode_value(type_name, text)
    assert encode_value(type_name, decoded) == text


@pytest.mark.parametrize(
    ("type_name", "value"),
    [
        ("DECIMAL(5,2)", Decimal("1.005")),
        ("DECIMAL(5,2)", Decimal("1000")),
        ("DECIMAL(5,2)", Decimal("NaN")),
        ("INTEGER", True),
        ("INTEGER", 2**31),
        ("BOOLEAN", 1),
        ("TIMESTAMP", dt.datetime(2024, 1, 1, tzinfo=dt.UTC)),
        ("TIMESTAMP WITH TIME ZONE", dt.datetime(2024, 1, 1)),
        ("DATE", dt.datetime(2024, 1, 1)),
        ("FLOAT", 0.1),
        ("FLOAT", 1e300),
        ("INTERVAL", (1, 2, 3)),
        ("NULL", 1),
    ],
)
def test_encode_value_refuses(type_name: str, value: object) -> None:
    with pytest.raises(CanonicalEncodingError):
        encode_value(type_name, value)  # type: ignore[arg-type]


def test_decode_outside_python_range_raises_project_error() -> None:
    for type_name, text in [("DATE", "infinity"), ("DATE", "+10000-01-01"),
                            ("TIMESTAMP", "-0043-03-15T12:00:00.000000")]:  # fmt: skip
        with pytest.raises(CanonicalEncodingError):
            decode_value(type_name, text)


def _f32(x: float) -> float:
    value: float = struct.unpack("<f", struct.pack("<f", x))[0]
    return value


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.1, "0.1"),
        (16777216.0, "16777216.0"),
        (1.4e-45, "1e-45"),
        (3.4028234663852886e38, "3.4028235e+38"),
        (2.0**-126, "1.1754944e-38"),
        (1e16, "1e+16"),
        (2.0**24 + 2, "16777218.0"),
        (1 / 3, "0.33333334"),
        (2.0**90, "1.2379401e+27"),
    ],
)
def test_float32_shortest(value: float, text: str) -> None:
    assert encode_float(_f32(value)) == text
    assert decode_value("FLOAT", text) == _f32(value)


# ---------------------------------------------------------------- arrow


def test_from_arrow_type_mismatch_names_column() -> None:
    table = pa.table({"amount": pa.array([1, 2], pa.int64())})
    with pytest.raises(CanonicalEncodingError, match="amount"):
        CanonicalResult.from_arrow(table, ["INTEGER"])
    with pytest.raises(CanonicalEncodingError, match=r"amount.*BLOB"):
        CanonicalResult.from_arrow(table, ["BLOB"])
    with pytest.raises(CanonicalEncodingError):
        CanonicalResult.from_arrow(table, ["BIGINT", "BIGINT"])
    with pytest.raises(CanonicalEncodingError):
        CanonicalResult.from_arrow(table, "BIGINT")
    with pytest.raises(CanonicalEncodingError):
        CanonicalResult.from_arrow({"amount": [1]}, ["BIGINT"])


def test_from_arrow_rejects_out_of_range_and_sub_micro() -> None:
    big = pa.table({"h": pa.array([Decimal(10**37)], pa.decimal128(38, 0))})
    with pytest.raises(CanonicalEncodingError, match="'h'"):
        CanonicalResult.from_arrow(big, ["UBIGINT"])
    small = pa.table({"n": pa.array([300], pa.int64())})
    with pytest.raises(CanonicalEncodingError, match="'n'"):
        CanonicalResult.from_arrow(small, ["TINYINT"])
    decimals = pa.table({"d": pa.array([Decimal("1.25")], pa.decimal128(5, 2))})
    with pytest.raises(CanonicalEncodingError, match="'d'"):
        CanonicalResult.from_arrow(decimals, ["DECIMAL(5,1)"])
    nanos = pa.array([pa.MonthDayNano([0, 0, 1])], pa.month_day_nano_interval())
    with pytest.raises(CanonicalEncodingError, match="sub-microsecond"):
        CanonicalResult.from_arrow(pa.table({"i": nanos}), ["INTERVAL"])
    ns = pa.array([1], pa.timestamp("ns"))
    with pytest.raises(CanonicalEncodingError):
        CanonicalResult.from_arrow(pa.table({"t": ns}), ["TIMESTAMP"])


def test_from_arrow_accepts_large_string_and_chunks() -> None:
    col = pa.chunked_array(
        [pa.array(["a"], pa.large_string()), pa.array([None], pa.large_string())]
    )
    result = CanonicalResult.from_arrow(pa.table({"s": col}), ["VARCHAR"])
    assert result.rows() == (("a",), (None,))


# ---------------------------------------------------------------- results, params, envelopes


@pytest.mark.parametrize(
    "data",
    [
        b'{"columns":[],"version":1}',
        b'{"columns":[{"name":"a","type":"INTEGER","values":["1"]},'
        b'{"name":"b","type":"INTEGER","values":[]}],"version":1}',
        b'{"columns":[{"name":"a","type":"INTEGER","values":[1]}],"version":1}',
        b'{"columns":[{"name":"a","type":"INTEGER","values":["01"]}],"version":1}',
        b'{"columns":[{"name":"a","type":"BLOB","values":[]}],"version":1}',
        b'{"columns":[{"name":"a","type":"INTEGER","values":[],"x":1}],"version":1}',
        b'{"columns":[{"name":"a","type":"INTEGER"}],"version":1}',
        b'{"columns":[{"name":1,"type":"INTEGER","values":[]}],"version":1}',
        b'{"columns":[{"name":"a","type":"INTEGER","values":"1"}],"version":1}',
        b'{"columns":{},"version":1}',
        b'{"columns":[],"version":2}',
        b'{"columns":[],"version":true}',
        b'{"columns":[]}',
        b"[]",
        b"null",
    ],
)
def test_result_from_bytes_rejects(data: bytes) -> None:
    with pytest.raises(CanonicalEncodingError):
        CanonicalResult.from_bytes(data)


def test_result_constructor_validates() -> None:
    with pytest.raises(CanonicalEncodingError):
        ResultColumn("a", "INTEGER", ("x",))
    with pytest.raises(CanonicalEncodingError):
        ResultColumn("a", "INTEGER", "1")  # type: ignore[arg-type]
    with pytest.raises(CanonicalEncodingError):
        CanonicalResult(())
    with pytest.raises(CanonicalEncodingError):
        CanonicalResult(("a",))  # type: ignore[arg-type]
    column = ResultColumn("a", "INTEGER", ["1", None])  # type: ignore[arg-type]
    assert column.values == ("1", None)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sql": ""},
        {"sql": "x" * 16385},
        {"sql": "\ud800"},
        {"sql": 1},
        {"purpose": ""},
        {"purpose": "é" * 513},
        {"request_id": ""},
        {"request_id": "a" * 129},
        {"request_id": "has space"},
        {"request_id": "é"},
        {"params_commitment": bytes(31)},
        {"params_commitment": "00" * 32},
        {"issued_at": dt.datetime(2024, 1, 1)},
        {"issued_at": "2024-01-01T00:00:00.000000Z"},
        {"version": 2},
        {"version": True},
    ],
)
def test_envelope_constructor_rejects(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "sql": "SELECT 1",
        "params_commitment": bytes(32),
        "purpose": "audit",
        "request_id": "r-1",
        "issued_at": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    }
    fields.update(kwargs)
    with pytest.raises(InvalidInputError):
        QueryEnvelope(**fields)  # type: ignore[arg-type]


def _envelope_with(**changes: object) -> bytes:
    obj = GOOD_ENVELOPE.to_json()
    obj.update(changes)
    return canonical_json({k: v for k, v in obj.items() if v is not ...})


@pytest.mark.parametrize(
    "data",
    [
        _envelope_with(extra="x"),
        _envelope_with(purpose=...),
        _envelope_with(version=2),
        _envelope_with(version="1"),
        _envelope_with(sql=None),
        _envelope_with(sql=["SELECT 1"]),
        _envelope_with(params_commitment="AB" * 32),
        _envelope_with(params_commitment="00" * 31),
        _envelope_with(issued_at="2024-03-01T12:00:00Z"),
        _envelope_with(issued_at="2024-03-01T12:00:00.000000+00:00"),
        _envelope_with(issued_at="2024-02-30T12:00:00.000000Z"),
        _envelope_with(issued_at="2024-03-01T24:00:00.000000Z"),
        _envelope_with(request_id="a/b"),
        GOOD_ENVELOPE.to_bytes().replace(b'"purpose"', b' "purpose"'),
        GOOD_ENVELOPE.to_bytes() + b" ",
        b'{"version":1.0}',
        b"[1]",
    ],
)
def test_envelope_from_bytes_rejects(data: bytes) -> None:
    with pytest.raises((InvalidInputError, CanonicalEncodingError)):
        QueryEnvelope.from_bytes(data)


def test_envelope_normalises_time_zone() -> None:
    east = dt.datetime(2024, 3, 1, 20, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    env = QueryEnvelope(
        sql="SELECT 1", params_commitment=bytes(32), purpose="p", request_id="r", issued_at=east
    )
    assert env.issued_at.tzinfo is dt.UTC
    assert b'"issued_at":"2024-03-01T12:00:00.000000Z"' in env.to_bytes()
    assert env == QueryEnvelope.from_bytes(env.to_bytes())


def test_params_rules() -> None:
    with pytest.raises(CanonicalEncodingError):
        TypedParam("$x", "INTEGER", "1")
    with pytest.raises(CanonicalEncodingError, match="year"):
        TypedParam("year", "INTEGER", "2024.0")
    with pytest.raises(CanonicalEncodingError, match="twice"):
        encode_params([TypedParam("a", "INTEGER", "1"), TypedParam("a", "INTEGER", "2")])
    unsorted = (
        b'{"params":[{"name":"b","type":"INTEGER","value":"1"},'
        b'{"name":"a","type":"INTEGER","value":"1"}],"version":1}'
    )
    with pytest.raises(CanonicalEncodingError, match="sorted"):
        decode_params(unsorted)
    for bad in [b'{"params":[],"version":2}', b'{"params":{},"version":1}',
                b'{"params":[{"name":"a","type":"INTEGER"}],"version":1}',
                b'{"params":[{"name":"a","type":"INTEGER","value":1}],"version":1}']:  # fmt: skip
        with pytest.raises(CanonicalEncodingError):
            decode_params(bad)
    assert TypedParam.of("d", "DATE", dt.date(2024, 2, 29)).python_value() == dt.date(2024, 2, 29)


@pytest.mark.parametrize("salt", [b"", bytes(31), bytes(33), "00" * 32, None])
def test_salt_must_be_32_bytes(salt: object) -> None:
    with pytest.raises(InvalidInputError):
        commit(b"x", salt=salt)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        Opening(salt, b"x")  # type: ignore[arg-type]


def test_errors_are_project_errors() -> None:
    assert issubclass(CanonicalEncodingError, DataislandError)
    assert issubclass(InvalidInputError, DataislandError)


def test_decimal_decodes_exactly_beyond_28_digits() -> None:
    text = "-9999999999999999999999999999.9999999999"
    value = decode_value("DECIMAL(38,10)", text)
    assert value == Decimal(text)
    assert str(value) == text


def test_new_salt_is_fresh_32_bytes() -> None:
    from dataisland.canonical import new_salt

    salts = {new_salt() for _ in range(8)}
    assert len(salts) == 8
    assert all(len(s) == 32 for s in salts)
