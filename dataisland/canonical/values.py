"""Exact string forms of typed SQL values: the cells of canonical results and parameters.

Every non-NULL value is one string per value (NULL is JSON null), chosen so that any language can
produce it without a float formatter or a time-zone database. This module encodes and validates
such strings and converts them to and from Python values; it does not read Arrow (see `result`)
and does not talk to DuckDB.

Type names are DuckDB's own spellings (`str(duckdb_type)`), restricted to the supported set:
BOOLEAN, TINYINT, SMALLINT, INTEGER, BIGINT, HUGEINT, UTINYINT, USMALLINT, UINTEGER, UBIGINT,
UHUGEINT, DECIMAL(p,s), FLOAT, DOUBLE, VARCHAR, DATE, TIMESTAMP, TIMESTAMP WITH TIME ZONE,
INTERVAL and NULL. docs/canonical-forms.md defines each string form.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import struct
from decimal import Decimal
from fractions import Fraction
from typing import NamedTuple

from dataisland.errors import CanonicalEncodingError

INTEGER_RANGES: dict[str, tuple[int, int]] = {
    "TINYINT": (-(2**7), 2**7 - 1),
    "SMALLINT": (-(2**15), 2**15 - 1),
    "INTEGER": (-(2**31), 2**31 - 1),
    "BIGINT": (-(2**63), 2**63 - 1),
    "HUGEINT": (-(2**127), 2**127 - 1),
    "UTINYINT": (0, 2**8 - 1),
    "USMALLINT": (0, 2**16 - 1),
    "UINTEGER": (0, 2**32 - 1),
    "UBIGINT": (0, 2**64 - 1),
    "UHUGEINT": (0, 2**128 - 1),
}
"""Inclusive value range of each integer type."""

SIMPLE_TYPES: frozenset[str] = frozenset(
    {
        "BOOLEAN",
        *INTEGER_RANGES,
        "FLOAT",
        "DOUBLE",
        "VARCHAR",
        "DATE",
        "TIMESTAMP",
        "TIMESTAMP WITH TIME ZONE",
        "INTERVAL",
        "NULL",
    }
)
"""Supported type names other than DECIMAL(p,s)."""

_TYPE_ALIASES = {'"NULL"': "NULL", "TIMESTAMPTZ": "TIMESTAMP WITH TIME ZONE"}
_DECIMAL_RE = re.compile(r"DECIMAL\(([1-9][0-9]?),(0|[1-9][0-9]?)\)", re.ASCII)
_INT_RE = re.compile(r"-?(?:0|[1-9][0-9]*)", re.ASCII)
_MAX_DECIMAL_PRECISION = 38

# DuckDB's infinities: the extreme values of the storage integers.
_DATE_INFINITY = 2**31 - 1
_TIMESTAMP_INFINITY = 2**63 - 1
_MICROS_PER_DAY = 86_400_000_000
_EPOCH_DAY_OFFSET = 719_468  # days from 0000-03-01 to 1970-01-01, proleptic Gregorian

_DATE_RE = re.compile(r"(-[0-9]{4,}|[0-9]{4}|\+[0-9]{5,})-([0-9]{2})-([0-9]{2})", re.ASCII)
_TIME_RE = re.compile(r"T([0-9]{2}):([0-9]{2}):([0-9]{2})\.([0-9]{6})", re.ASCII)
_INTERVAL_RE = re.compile(
    r"(-?(?:0|[1-9][0-9]*))mo(-?(?:0|[1-9][0-9]*))d(-?(?:0|[1-9][0-9]*))us", re.ASCII
)


class Interval(NamedTuple):
    """A DuckDB INTERVAL: months, days and microseconds, kept apart as DuckDB keeps them."""

    months: int
    days: int
    micros: int


def _err(type_name: str, what: str) -> CanonicalEncodingError:
    return CanonicalEncodingError(f"{type_name}: {what}")


def canonical_type_name(name: str) -> str:
    """Return the canonical spelling of a supported DuckDB type name.

    Accepts DuckDB's `str()` of a type (which quotes NULL) and TIMESTAMPTZ.

    Raises:
        CanonicalEncodingError: the type is not supported.
    """
    if not isinstance(name, str):
        raise CanonicalEncodingError("a type name must be a string")
    name = _TYPE_ALIASES.get(name, name)
    check_type_name(name)
    return name


def check_type_name(name: str) -> None:
    """Raise unless `name` is a supported type in its canonical spelling.

    Raises:
        CanonicalEncodingError: unsupported or non-canonical type name.
    """
    if not isinstance(name, str):
        raise CanonicalEncodingError("a type name must be a string")
    if name in SIMPLE_TYPES:
        return
    if decimal_precision_scale(name) is None:
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise CanonicalEncodingError(f"unsupported type {shown!r}")


def decimal_precision_scale(name: str) -> tuple[int, int] | None:
    """Return (precision, scale) if `name` is a canonical DECIMAL(p,s) with 1<=p<=38, s<=p."""
    m = _DECIMAL_RE.fullmatch(name)
    if m is None:
        return None
    p, s = int(m.group(1)), int(m.group(2))
    if p > _MAX_DECIMAL_PRECISION or s > p:
        return None
    return p, s


# ----------------------------------------------------------------------------- integers, decimals


def encode_integer(type_name: str, value: int) -> str:
    """Encode an integer of an integer type (range-checked) as its decimal string."""
    lo, hi = INTEGER_RANGES[type_name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(type_name, "value is not an integer")
    if not lo <= value <= hi:
        raise _err(type_name, "value out of range")
    return str(value)


def _parse_integer(type_name: str, text: str) -> int:
    if len(text) > 41 or _INT_RE.fullmatch(text) is None or text == "-0":
        raise _err(type_name, "not a canonical integer string")
    value: int = int(text)
    lo, hi = INTEGER_RANGES[type_name]
    if not lo <= value <= hi:
        raise _err(type_name, "value out of range")
    return value


def decimal_unscaled(type_name: str, value: Decimal, scale: int) -> int:
    """Return value * 10**scale as an exact integer (no rounding, any Decimal exponent)."""
    if not value.is_finite():
        raise _err(type_name, "value is not finite")
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    n: int = int("".join(map(str, digits)) or "0")
    shift = exponent + scale
    if shift >= 0:
        n *= 10**shift
    else:
        n, rest = divmod(n, 10**-shift)
        if rest:
            raise _err(type_name, "value has more fraction digits than the scale")
    return -n if sign else n


def encode_decimal_unscaled(type_name: str, unscaled: int) -> str:
    """Encode a DECIMAL(p,s) given as its unscaled integer: exactly s fraction digits."""
    ps = decimal_precision_scale(type_name)
    if ps is None:
        raise _err(type_name, "not a DECIMAL type")
    precision, scale = ps
    if abs(unscaled) >= 10**precision:
        raise _err(type_name, "value exceeds the precision")
    sign = "-" if unscaled < 0 else ""
    if scale == 0:
        return f"{sign}{abs(unscaled)}"
    whole, frac = divmod(abs(unscaled), 10**scale)
    return f"{sign}{whole}.{frac:0{scale}d}"


def _parse_decimal(type_name: str, text: str) -> int:
    ps = decimal_precision_scale(type_name)
    assert ps is not None
    precision, scale = ps
    if len(text) > precision + 3:
        raise _err(type_name, "not a canonical decimal string")
    whole, dot, frac = text.partition(".")
    if (
        _INT_RE.fullmatch(whole) is None
        or (scale == 0 and dot)
        or (
            scale > 0
            and (not dot or len(frac) != scale or not frac.isdigit() or not frac.isascii())
        )
    ):
        raise _err(type_name, "not a canonical decimal string")
    negative = whole.startswith("-")
    unscaled: int = int(whole.lstrip("-")) * 10**scale + (int(frac) if scale else 0)
    if negative:
        if unscaled == 0:
            raise _err(type_name, "negative zero is not canonical")
        unscaled = -unscaled
    if abs(unscaled) >= 10**precision:
        raise _err(type_name, "value exceeds the precision")
    return unscaled


# ----------------------------------------------------------------------------- floating point


def format_shortest(negative: bool, digits: str, exponent: int) -> str:
    """Lay out shortest round-trip digits the way Python's repr() does.

    `digits` has no leading or trailing zeros and the value is d.ddd x 10**exponent. Positional
    notation with at least one fraction digit when -4 <= exponent < 16, otherwise
    d[.ddd]e+XX / e-XX with at least two exponent digits.
    """
    sign = "-" if negative else ""
    if -4 <= exponent < 16:
        if exponent >= 0:
            whole = digits[: exponent + 1].ljust(exponent + 1, "0")
            frac = digits[exponent + 1 :] or "0"
        else:
            whole, frac = "0", "0" * (-exponent - 1) + digits
        return f"{sign}{whole}.{frac}"
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{sign}{mantissa}e{'+' if exponent >= 0 else '-'}{abs(exponent):02d}"


def encode_double(value: float) -> str:
    """Encode a DOUBLE: shortest round-trip digits; NaN, Infinity, -Infinity; -0.0 kept."""
    if not isinstance(value, float):
        raise _err("DOUBLE", "value is not a float")
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def _special_float(text: str) -> float | None:
    return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(text)


def _parse_double(text: str) -> float:
    special = _special_float(text)
    if special is not None:
        return special
    if len(text) > 32:
        raise _err("DOUBLE", "not a canonical double string")
    try:
        value = float(text)
    except ValueError:
        raise _err("DOUBLE", "not a canonical double string") from None
    if encode_double(value) != text:
        raise _err("DOUBLE", "not a canonical double string")
    return value


def _f32_bits(value: float) -> int:
    bits: int = struct.unpack("<I", struct.pack("<f", value))[0]
    return bits


def _f32_from_bits(bits: int) -> float:
    value: float = struct.unpack("<f", struct.pack("<I", bits))[0]
    return value


def _f32_interval(bits: int) -> tuple[Fraction, Fraction, bool]:
    """Rounding interval of a positive finite float32: (low, high, endpoints included)."""
    x = Fraction(_f32_from_bits(bits))
    below = Fraction(_f32_from_bits(bits - 1)) if bits > 0 else -x
    # Above the largest float32 the next value would be infinity: mirror the gap below.
    above_bits = bits + 1
    above = x + (x - below) if above_bits >= 0x7F800000 else Fraction(_f32_from_bits(above_bits))
    return (below + x) / 2, (x + above) / 2, bits % 2 == 0


def _in_interval(v: Fraction, lo: Fraction, hi: Fraction, closed: bool) -> bool:
    return lo <= v <= hi if closed else lo < v < hi


def encode_float(value: float) -> str:
    """Encode a FLOAT (float32) with the shortest digits that round-trip through float32.

    The layout is that of `encode_double`, so 0.1 stored as FLOAT encodes as "0.1".
    """
    if not isinstance(value, float):
        raise _err("FLOAT", "value is not a float")
    if math.isnan(value) or math.isinf(value):
        return encode_double(value)
    try:
        bits = _f32_bits(value)
    except OverflowError:
        raise _err("FLOAT", "value out of range") from None
    if _f32_from_bits(bits) != value:
        raise _err("FLOAT", "value is not exactly a float32")
    negative = bool(bits >> 31)
    bits &= 0x7FFFFFFF
    if bits == 0:
        return "-0.0" if negative else "0.0"
    x = Fraction(_f32_from_bits(bits))
    lo, hi, closed = _f32_interval(bits)
    exponent = Decimal(_f32_from_bits(bits)).adjusted()
    for n in range(1, 10):
        scale = Fraction(10) ** (exponent - n + 1)
        m = x / scale
        # The nearest n-digit decimal may fall outside an asymmetric interval (at powers of
        # two) while the other neighbour falls inside, so try both and keep the nearer.
        best: int | None = None
        for c in (m.numerator // m.denominator, -(-m.numerator // m.denominator)):
            inside = c > 0 and _in_interval(c * scale, lo, hi, closed)
            if inside and (best is None or abs(c * scale - x) < abs(best * scale - x)):
                best = c
        if best is not None:
            digits = str(best)
            exp10 = exponent + len(digits) - n
            return format_shortest(negative, digits.rstrip("0"), exp10)
    raise AssertionError("nine digits always round-trip a float32")  # pragma: no cover


def _parse_float(text: str) -> float:
    special = _special_float(text)
    if special is not None:
        return special
    if len(text) > 32:
        raise _err("FLOAT", "not a canonical float string")
    try:
        approx = float(text)
        exact = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise _err("FLOAT", "not a canonical float string") from None
    try:
        bits = _f32_bits(approx) & 0x7FFFFFFF
    except OverflowError:
        raise _err("FLOAT", "not a canonical float string") from None
    # float(text) then narrowing can round twice; settle on the float32 whose interval holds it.
    if bits and bits < 0x7F800000:
        for b in (bits, bits - 1, bits + 1):
            lo, hi, closed = _f32_interval(b)
            if _in_interval(abs(exact), lo, hi, closed):
                bits = b
                break
    value = _f32_from_bits(bits | (0x80000000 if text.startswith("-") else 0))
    if math.isinf(value) or encode_float(value) != text:
        raise _err("FLOAT", "not a canonical float string")
    return value


# ----------------------------------------------------------------------------- dates and times


def _civil_from_days(days: int) -> tuple[int, int, int]:
    # Howard Hinnant's civil_from_days, exact for every proleptic Gregorian day.
    z = days + _EPOCH_DAY_OFFSET
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    return year, month, day


def _days_from_civil(year: int, month: int, day: int) -> int:
    year -= 1 if month <= 2 else 0
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - _EPOCH_DAY_OFFSET


def _format_year(year: int) -> str:
    if 0 <= year <= 9999:
        return f"{year:04d}"
    if year > 9999:
        return f"+{year}"
    return f"-{-year:04d}"


def encode_date_days(days: int) -> str:
    """Encode a DATE given as days since 1970-01-01 (DuckDB's storage, including infinities).

    Proleptic Gregorian, astronomical year numbering (year 0 is 1 BC): "2024-03-01",
    "-0044-03-15", "+10000-01-01"; DuckDB's infinities are "infinity" and "-infinity".
    """
    if isinstance(days, bool) or not isinstance(days, int) or abs(days) > _DATE_INFINITY:
        raise _err("DATE", "value out of range")
    if days == _DATE_INFINITY:
        return "infinity"
    if days == -_DATE_INFINITY:
        return "-infinity"
    if days == -_DATE_INFINITY - 1:
        raise _err("DATE", "value out of range")
    y, m, d = _civil_from_days(days)
    return f"{_format_year(y)}-{m:02d}-{d:02d}"


def _parse_date_days(type_name: str, text: str) -> int:
    m = _DATE_RE.fullmatch(text)
    if m is None or len(text) > 16:
        raise _err(type_name, "not a canonical date")
    year, month, day = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if not 1 <= month <= 12 or not 1 <= day <= 31:
        raise _err(type_name, "not a canonical date")
    days = _days_from_civil(year, month, day)
    if _civil_from_days(days) != (year, month, day) or _format_year(year) != m.group(1):
        raise _err(type_name, "not a canonical date")
    return days


def _parse_date(text: str) -> int:
    if text == "infinity":
        return _DATE_INFINITY
    if text == "-infinity":
        return -_DATE_INFINITY
    days = _parse_date_days("DATE", text)
    if abs(days) >= _DATE_INFINITY:
        raise _err("DATE", "value out of range")
    return days


def encode_timestamp_micros(micros: int, *, utc: bool) -> str:
    """Encode a TIMESTAMP (or, with `utc`, a TIMESTAMP WITH TIME ZONE) given as epoch micros.

    "2024-03-01T12:00:00.000000", always six fraction digits; with time zone the instant in
    UTC with "Z". DuckDB's infinities are "infinity" and "-infinity" in both types.
    """
    type_name = "TIMESTAMP WITH TIME ZONE" if utc else "TIMESTAMP"
    if isinstance(micros, bool) or not isinstance(micros, int) or abs(micros) > _TIMESTAMP_INFINITY:
        raise _err(type_name, "value out of range")
    if micros == _TIMESTAMP_INFINITY:
        return "infinity"
    if micros == -_TIMESTAMP_INFINITY:
        return "-infinity"
    days, rest = divmod(micros, _MICROS_PER_DAY)
    seconds, us = divmod(rest, 1_000_000)
    hh, rem = divmod(seconds, 3600)
    mm, ss = divmod(rem, 60)
    date = encode_date_days(days)
    return f"{date}T{hh:02d}:{mm:02d}:{ss:02d}.{us:06d}{'Z' if utc else ''}"


def _parse_timestamp(type_name: str, text: str) -> int:
    if text == "infinity":
        return _TIMESTAMP_INFINITY
    if text == "-infinity":
        return -_TIMESTAMP_INFINITY
    utc = type_name != "TIMESTAMP"
    if utc:
        if not text.endswith("Z"):
            raise _err(type_name, "not a canonical timestamp (UTC with Z)")
        text = text[:-1]
    date, sep, time = text.partition("T")
    tm = _TIME_RE.fullmatch(sep + time)
    if tm is None:
        raise _err(type_name, "not a canonical timestamp")
    hh, mm, ss, us = (int(g) for g in tm.groups())
    if hh > 23 or mm > 59 or ss > 59:
        raise _err(type_name, "not a canonical timestamp")
    days = _parse_date_days(type_name, date)
    micros = days * _MICROS_PER_DAY + ((hh * 60 + mm) * 60 + ss) * 1_000_000 + us
    if abs(micros) >= _TIMESTAMP_INFINITY:
        raise _err(type_name, "value out of range")
    return micros


def encode_interval(value: Interval) -> str:
    """Encode an INTERVAL as "<months>mo<days>d<micros>us", e.g. "14mo3d3600000000us".

    The three parts are never normalised into each other: DuckDB keeps them apart because a
    month has no fixed number of days and a day no fixed number of microseconds.
    """
    months, days, micros = value
    for part, bits in ((months, 32), (days, 32), (micros, 64)):
        if isinstance(part, bool) or not isinstance(part, int):
            raise _err("INTERVAL", "parts must be integers")
        if not -(2 ** (bits - 1)) <= part < 2 ** (bits - 1):
            raise _err("INTERVAL", "part out of range")
    return f"{months}mo{days}d{micros}us"


def _parse_interval(text: str) -> Interval:
    m = _INTERVAL_RE.fullmatch(text)
    if m is None or len(text) > 64:
        raise _err("INTERVAL", "not a canonical interval")
    value = Interval(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    if "-0" in (m.group(1), m.group(2), m.group(3)) or encode_interval(value) != text:
        raise _err("INTERVAL", "not a canonical interval")
    return value


# ----------------------------------------------------------------------------- dispatch

PyValue = bool | int | Decimal | float | str | _dt.date | _dt.datetime | Interval | None
"""Python values `decode_value` returns and `encode_value` accepts."""


def check_value(type_name: str, text: str | None) -> None:
    """Raise unless `text` is the canonical string of a value of `type_name` (or None).

    Raises:
        CanonicalEncodingError: wrong JSON type, not canonical or out of range (the message
            names the type, never the value).
    """
    _parse(type_name, text)


def _parse(type_name: str, text: str | None) -> PyValue:
    """Validate and parse; dates and timestamps come back as their storage integers."""
    check_type_name(type_name)
    if text is None:
        return None
    if not isinstance(text, str):
        raise _err(type_name, "a cell must be a string or null")
    if type_name == "NULL":
        raise _err(type_name, "a NULL-typed cell must be null")
    if type_name == "BOOLEAN":
        if text not in ("true", "false"):
            raise _err(type_name, 'not "true" or "false"')
        return text == "true"
    if type_name in INTEGER_RANGES:
        return _parse_integer(type_name, text)
    if type_name == "DOUBLE":
        return _parse_double(text)
    if type_name == "FLOAT":
        return _parse_float(text)
    if type_name == "VARCHAR":
        if any("\ud800" <= ch <= "\udfff" for ch in text):
            raise _err(type_name, "string is not valid Unicode")
        return text
    if type_name == "DATE":
        return _parse_date(text)
    if type_name in ("TIMESTAMP", "TIMESTAMP WITH TIME ZONE"):
        return _parse_timestamp(type_name, text)
    if type_name == "INTERVAL":
        return _parse_interval(text)
    ps = decimal_precision_scale(type_name)
    assert ps is not None
    unscaled = _parse_decimal(type_name, text)
    # Built from its parts: scaleb() would round to the context's 28 digits.
    digits = tuple(int(d) for d in str(abs(unscaled)))
    return Decimal((1 if unscaled < 0 else 0, digits, -ps[1]))


def decode_value(type_name: str, text: str | None) -> PyValue:
    """Parse a canonical cell string into a Python value.

    BOOLEAN -> bool; integer types -> int; DECIMAL -> Decimal (exactly s fraction digits);
    DOUBLE, FLOAT -> float; VARCHAR -> str; DATE -> datetime.date; TIMESTAMP -> naive
    datetime; TIMESTAMP WITH TIME ZONE -> datetime in UTC; INTERVAL -> Interval; NULL -> None.

    Raises:
        CanonicalEncodingError: as `check_value`, and for dates and timestamps (infinities
            included) outside Python's datetime range (years 1 to 9999).
    """
    parsed = _parse(type_name, text)
    if parsed is None:
        return None
    if type_name == "DATE":
        assert isinstance(parsed, int)
        try:
            return _dt.date(1970, 1, 1) + _dt.timedelta(days=parsed)
        except OverflowError:
            raise _err(type_name, "value outside Python's date range") from None
    if type_name in ("TIMESTAMP", "TIMESTAMP WITH TIME ZONE"):
        assert isinstance(parsed, int)
        tz = None if type_name == "TIMESTAMP" else _dt.UTC
        try:
            return _dt.datetime(1970, 1, 1, tzinfo=tz) + _dt.timedelta(microseconds=parsed)
        except OverflowError:
            raise _err(type_name, "value outside Python's datetime range") from None
    return parsed


def encode_value(type_name: str, value: PyValue) -> str | None:
    """Encode a Python value as the canonical string of `type_name` (None stays None).

    Accepts what `decode_value` returns; integers for DECIMAL, floats for DOUBLE and FLOAT,
    and aware datetimes of any offset for TIMESTAMP WITH TIME ZONE.

    Raises:
        CanonicalEncodingError: the value does not fit the type.
    """
    check_type_name(type_name)
    if value is None:
        return None
    if type_name == "NULL":
        raise _err(type_name, "a NULL-typed value must be None")
    if type_name == "BOOLEAN":
        if not isinstance(value, bool):
            raise _err(type_name, "value is not a bool")
        return "true" if value else "false"
    if type_name in INTEGER_RANGES:
        return encode_integer(type_name, value)  # type: ignore[arg-type]
    if type_name == "DOUBLE":
        return encode_double(value)  # type: ignore[arg-type]
    if type_name == "FLOAT":
        return encode_float(value)  # type: ignore[arg-type]
    if type_name == "VARCHAR":
        if not isinstance(value, str):
            raise _err(type_name, "value is not a str")
        decode_value(type_name, value)
        return value
    if type_name == "DATE":
        if isinstance(value, _dt.datetime) or not isinstance(value, _dt.date):
            raise _err(type_name, "value is not a datetime.date")
        return encode_date_days(value.toordinal() - _dt.date(1970, 1, 1).toordinal())
    if type_name in ("TIMESTAMP", "TIMESTAMP WITH TIME ZONE"):
        return _encode_datetime(type_name, value)
    if type_name == "INTERVAL":
        if not isinstance(value, Interval):
            raise _err(type_name, "value is not an Interval")
        return encode_interval(value)
    ps = decimal_precision_scale(type_name)
    assert ps is not None
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise _err(type_name, "value is not an int or Decimal")
    unscaled = decimal_unscaled(type_name, Decimal(value), ps[1])
    return encode_decimal_unscaled(type_name, unscaled)


def _encode_datetime(type_name: str, value: PyValue) -> str:
    if not isinstance(value, _dt.datetime):
        raise _err(type_name, "value is not a datetime.datetime")
    utc = type_name != "TIMESTAMP"
    if utc:
        offset = value.utcoffset()
        if offset is None:
            raise _err(type_name, "a naive datetime has no instant; give a time zone")
        naive = value.replace(tzinfo=None) - offset
    else:
        if value.tzinfo is not None:
            raise _err(type_name, "TIMESTAMP takes a naive datetime")
        naive = value
    delta = naive - _dt.datetime(1970, 1, 1)
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return encode_timestamp_micros(micros, utc=utc)
