"""Property tests: round trips, agreement with independent references, and fuzzed input."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import struct
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataisland.canonical import (
    CanonicalResult,
    Interval,
    QueryEnvelope,
    ResultColumn,
    TypedParam,
    canonical_json,
    check_value,
    decode_params,
    decode_value,
    encode_params,
    encode_value,
    parse_canonical_json,
)
from dataisland.canonical.values import (
    INTEGER_RANGES,
    encode_date_days,
    encode_float,
    encode_timestamp_micros,
)
from dataisland.errors import DataislandError

# Unicode scalar values only: lone surrogates cannot be UTF-8 and are refused on purpose.
unicode_text = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=200)
request_ids = st.from_regex(r"\A[A-Za-z0-9._:-]{1,128}\Z")
aware_datetimes = st.datetimes(
    min_value=dt.datetime(2, 1, 1),
    max_value=dt.datetime(9998, 12, 31),
    timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=8)),
                               dt.timezone(dt.timedelta(hours=-5, minutes=-30))]),
)  # fmt: skip


@given(
    sql=unicode_text,
    purpose=unicode_text,
    request_id=request_ids,
    commitment=st.binary(min_size=32, max_size=32),
    issued_at=aware_datetimes,
)
def test_envelope_round_trip(
    sql: str, purpose: str, request_id: str, commitment: bytes, issued_at: dt.datetime
) -> None:
    env = QueryEnvelope(
        sql=sql,
        params_commitment=commitment,
        purpose=purpose,
        request_id=request_id,
        issued_at=issued_at,
    )
    data = env.to_bytes()
    back = QueryEnvelope.from_bytes(data)
    assert back == env
    assert back.to_bytes() == data
    assert back.issued_at == issued_at
    assert json.loads(data)["sql"] == sql


F32_MAX = 3.4028234663852886e38


def _f32(x: float) -> float:
    value: float = struct.unpack("<f", struct.pack("<f", x))[0]
    return value


float32s = st.floats(width=32, allow_nan=True, allow_infinity=True)


def _python_values(type_name: str) -> st.SearchStrategy[Any]:
    if type_name == "BOOLEAN":
        return st.booleans()
    if type_name in INTEGER_RANGES:
        lo, hi = INTEGER_RANGES[type_name]
        return st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi, 0]))
    if type_name == "DOUBLE":
        return st.floats(allow_nan=True, allow_infinity=True)
    if type_name == "FLOAT":
        return float32s
    if type_name == "VARCHAR":
        return st.text(st.characters(blacklist_categories=["Cs"]), max_size=30)
    if type_name == "DATE":
        return st.dates()
    if type_name == "TIMESTAMP":
        return st.datetimes()
    if type_name == "TIMESTAMP WITH TIME ZONE":
        return st.datetimes(timezones=st.just(dt.UTC))
    if type_name == "INTERVAL":
        return st.builds(
            Interval,
            st.integers(-(2**31), 2**31 - 1),
            st.integers(-(2**31), 2**31 - 1),
            st.integers(-(2**63), 2**63 - 1),
        )
    if type_name == "NULL":
        return st.none()
    precision, scale = (int(x) for x in type_name[len("DECIMAL(") : -1].split(","))
    bound = 10**precision - 1
    return st.integers(-bound, bound).map(lambda n: Decimal(f"{n}e-{scale}"))


decimal_types = st.integers(1, 38).flatmap(
    lambda p: st.integers(0, p).map(lambda s: f"DECIMAL({p},{s})")
)
type_names = st.one_of(
    st.sampled_from(
        [*INTEGER_RANGES, "BOOLEAN", "DOUBLE", "FLOAT", "VARCHAR", "DATE", "TIMESTAMP",
         "TIMESTAMP WITH TIME ZONE", "INTERVAL", "NULL"]
    ),
    decimal_types,
)  # fmt: skip


@st.composite
def columns(draw: st.DrawFn, rows: int) -> ResultColumn:
    type_name = draw(type_names)
    values = draw(
        st.lists(st.one_of(st.none(), _python_values(type_name)), min_size=rows, max_size=rows)
    )
    name = draw(st.text(st.characters(blacklist_categories=["Cs"]), max_size=20))
    return ResultColumn(name, type_name, tuple(encode_value(type_name, v) for v in values))


results = st.integers(0, 6).flatmap(
    lambda rows: st.lists(columns(rows), min_size=1, max_size=5).map(
        lambda cols: CanonicalResult(tuple(cols))
    )
)


@given(results)
@settings(max_examples=200)
def test_result_round_trip(result: CanonicalResult) -> None:
    data = result.to_bytes()
    assert CanonicalResult.from_bytes(data) == result
    assert len(result.rows()) == result.num_rows


@given(type_names.flatmap(lambda t: st.tuples(st.just(t), _python_values(t))))
@settings(max_examples=500)
def test_value_round_trip(case: tuple[str, Any]) -> None:
    type_name, value = case
    text = encode_value(type_name, value)
    check_value(type_name, text)
    back = decode_value(type_name, text)
    assert encode_value(type_name, back) == text
    if isinstance(value, float) and math.isnan(value):
        assert isinstance(back, float)
        assert math.isnan(back)
    elif isinstance(value, float):
        assert struct.pack("<d", value) == struct.pack("<d", back)
    else:
        assert back == value


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_double_is_python_repr(x: float) -> None:
    text = encode_value("DOUBLE", x)
    assert text == repr(x)
    assert float(text) == x


@given(float32s.filter(lambda x: math.isfinite(x) and x != 0))
@settings(max_examples=1000)
def test_float32_shortest_against_brute_force(x: float) -> None:
    text = encode_float(x)
    assert _f32(float(text)) == x
    mantissa = text.lstrip("-").split("e")[0].replace(".", "").strip("0")
    digits = len(mantissa)
    # No decimal with one digit fewer (nearest candidates either side) rounds back to x.
    if digits > 1:
        k = digits - 1
        nearest = f"{x:.{k - 1}e}"
        m, e = nearest.split("e")
        step = 10.0 ** (int(e) - (k - 1))
        for candidate in (float(m) * 10 ** int(e), float(m) * 10 ** int(e) - step,
                          float(m) * 10 ** int(e) + step):  # fmt: skip
            shorter = float(f"{candidate:.{k - 1}e}")
            assert abs(shorter) > F32_MAX or _f32(shorter) != x


@given(st.integers(-(2**31) + 1, 2**31 - 1))
def test_dates_round_trip_whole_duckdb_range(days: int) -> None:
    text = encode_date_days(days)
    check_value("DATE", text)
    if dt.date.min.toordinal() <= days + 719_163 <= dt.date.max.toordinal():
        assert text == (dt.date(1970, 1, 1) + dt.timedelta(days=days)).isoformat()


@given(st.integers(-(2**63) + 1, 2**63 - 1))
def test_timestamps_round_trip_whole_duckdb_range(micros: int) -> None:
    for utc in (False, True):
        text = encode_timestamp_micros(micros, utc=utc)
        check_value("TIMESTAMP WITH TIME ZONE" if utc else "TIMESTAMP", text)
    try:
        moment = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=micros)
    except OverflowError:
        return
    assert encode_timestamp_micros(micros, utc=False) == moment.isoformat(timespec="microseconds")


@given(st.lists(st.builds(TypedParam.of, st.from_regex(r"\A[a-z0-9_]{1,8}\Z"),
                          st.just("BIGINT"), st.integers(-(2**63), 2**63 - 1)),
                unique_by=lambda p: p.name, max_size=8))  # fmt: skip
def test_params_round_trip_any_order(params: list[TypedParam]) -> None:
    data = encode_params(params)
    assert encode_params(list(reversed(params))) == data
    assert set(decode_params(data)) == set(params)


# Fuzzing: malformed input raises the project's errors and nothing else.

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | unicode_text,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)


fuzz_bytes = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    json_values.flatmap(lambda v: st.just(canonical_json(v)) if _fits(v) else st.just(b"")),
    st.builds(
        lambda cols, version: canonical_json({"columns": cols, "version": version}),
        st.lists(
            st.dictionaries(st.sampled_from(["name", "type", "values"]), json_values), max_size=3
        ),
        st.sampled_from([1, 2, "1", None]),
    ),
)


def _fits(value: object) -> bool:
    try:
        canonical_json(value)
    except DataislandError:
        return False
    return True


@given(fuzz_bytes)
@settings(max_examples=500)
def test_parsers_raise_only_project_errors(data: bytes) -> None:
    for parse in (CanonicalResult.from_bytes, QueryEnvelope.from_bytes, decode_params):
        with contextlib.suppress(DataislandError):
            parse(data)


@given(type_names | st.text(max_size=20), st.text(max_size=40) | st.none())
@settings(max_examples=1000)
def test_check_value_raises_only_project_errors(type_name: str, text: str | None) -> None:
    with contextlib.suppress(DataislandError):
        check_value(type_name, text)
        decode_value(type_name, text)


_JSON_TEXT = st.text(
    alphabet=st.one_of(
        st.characters(max_codepoint=0x7F),  # ASCII, controls and DEL included
        st.characters(min_codepoint=0x80, exclude_categories=["Cs"]),  # up to astral planes
    ),
    max_size=12,
)
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53 - 1), 2**53 - 1) | _JSON_TEXT,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.one_of(_JSON_TEXT, st.sampled_from(["a", "B", "\ufb01", "😀"])), inner)
    ),
    max_leaves=20,
)


@settings(max_examples=600)
@given(value=_JSON_VALUES)
def test_canonical_json_equals_the_reference_rfc8785(value: Any) -> None:
    """The fast path (the standard library's encoder) writes the reference implementation's
    bytes for every value; keys outside ASCII take the reference path."""
    import rfc8785

    assert canonical_json(value) == rfc8785.dumps(value)
    assert parse_canonical_json(canonical_json(value)) == json.loads(rfc8785.dumps(value))


def test_canonical_json_refuses_lone_surrogates() -> None:
    for value in ({"a": "\ud800"}, ["\udfff"], {"\ud800": 1}):
        with pytest.raises(DataislandError):
            canonical_json(value)
