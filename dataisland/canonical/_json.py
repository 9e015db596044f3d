"""RFC 8785 canonical JSON, the one serialisation every signed or hashed object uses.

This module only serialises and strictly parses JSON values; it does not know any schema. Floats
are refused on the way in and on the way out: every number that is not a small integer travels as
an exact string, so canonical bytes never depend on a float formatter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import rfc8785

from dataisland.errors import CanonicalEncodingError

MAX_SAFE_INTEGER = 2**53 - 1
"""Largest integer magnitude allowed in canonical JSON (I-JSON, RFC 7493)."""

_MAX_DEPTH = 64


def _check(obj: object, depth: int) -> bool:
    """Refuse what has no canonical form; return whether every object key is ASCII.

    Exact types are tested first: `isinstance` against the Mapping ABC costs microseconds, and
    this runs over every node of every entry and statement the log hashes or verifies.
    """
    if depth > _MAX_DEPTH:
        raise CanonicalEncodingError(f"JSON value nested deeper than {_MAX_DEPTH} levels")
    kind = type(obj)
    if kind is str or obj is None or kind is bool:
        return True
    if kind is int:
        if abs(obj) > MAX_SAFE_INTEGER:  # type: ignore[arg-type]
            raise CanonicalEncodingError("integer outside +-(2**53 - 1); encode it as a string")
        return True
    if kind is dict or (kind is not list and kind is not tuple and isinstance(obj, Mapping)):
        ascii_keys = True
        for key, value in obj.items():  # type: ignore[attr-defined]
            if type(key) is not str and not isinstance(key, str):
                raise CanonicalEncodingError("JSON object keys must be strings")
            if not (type(value) is str or _check(value, depth + 1)):
                ascii_keys = False
            if not key.isascii():
                ascii_keys = False
        return ascii_keys
    if kind is list or kind is tuple:
        ascii_keys = True
        for item in obj:  # type: ignore[attr-defined]
            if not (type(item) is str or _check(item, depth + 1)):
                ascii_keys = False
        return ascii_keys
    if isinstance(obj, (bool, str)):
        return True
    if isinstance(obj, int):
        if abs(obj) > MAX_SAFE_INTEGER:
            raise CanonicalEncodingError("integer outside +-(2**53 - 1); encode it as a string")
        return True
    if isinstance(obj, float):
        raise CanonicalEncodingError("floats are not allowed in canonical JSON; use exact strings")
    if isinstance(obj, (list, tuple)):
        ascii_keys = True
        for item in obj:
            if not _check(item, depth + 1):
                ascii_keys = False
        return ascii_keys
    raise CanonicalEncodingError(f"type {type(obj).__name__} has no canonical JSON form")


def _fast_canonical(obj: object) -> bytes | None:
    """RFC 8785 bytes from the standard library's C encoder, where they are the same.

    Without floats, the JCS form is JSON with no whitespace, keys sorted by UTF-16 code units,
    integers in decimal and strings escaped as ECMAScript's JSON.stringify escapes them
    (quote, backslash, \\b \\f \\n \\r \\t, other controls as lowercase \\u00xx, everything
    else as UTF-8), which is exactly what `json.dumps(ensure_ascii=False)` writes. Sorting by
    code point equals sorting by UTF-16 code units for ASCII keys, so the caller uses this only
    when every key is ASCII; a lone surrogate fails the UTF-8 encoding and returns None, for
    the reference implementation to refuse. A differential test checks it against rfc8785.
    """
    try:
        return _ENCODER.encode(obj).encode("utf-8")
    except (UnicodeEncodeError, ValueError, TypeError):
        return None


_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
)
"""One encoder for every call (json.dumps with options builds a new one each time)."""


def canonical_json(obj: object, *, shape_checked: bool = False) -> bytes:
    """Serialise `obj` as RFC 8785 (JCS) canonical JSON.

    Args:
        obj: None, bool, int (at most 2**53 - 1 in magnitude), str, lists or tuples, and
            mappings with string keys, nested at most 64 levels.
        shape_checked: the caller guarantees that shape (a strictly validated schema whose
            only numbers are bounded integers and whose only keys are ASCII field names, as
            every log entry model), so the walk over every node is skipped; anything the
            standard library's encoder cannot write exactly still goes to the reference.

    Returns:
        The UTF-8 canonical bytes.

    Raises:
        CanonicalEncodingError: a float, a large integer, a non-string key, a string that is
            not valid Unicode (lone surrogate) or any other type.
    """
    if shape_checked or _check(obj, 0):
        fast = _fast_canonical(obj)
        if fast is not None:
            return fast
    if shape_checked:
        _check(obj, 0)
    try:
        out: bytes = rfc8785.dumps(obj)  # type: ignore[arg-type]
        return out
    except (rfc8785.CanonicalizationError, ValueError, TypeError) as e:
        raise CanonicalEncodingError(f"cannot canonicalise: {e}") from None


def _reject_constant(name: str) -> NoReturn:
    raise CanonicalEncodingError(f"JSON constant {name} is not allowed")


def _reject_float(text: str) -> NoReturn:
    raise CanonicalEncodingError("JSON floats are not allowed in canonical JSON")


def _no_duplicates(pairs: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise CanonicalEncodingError("duplicate key in JSON object")
        out[key] = value
    return out


def parse_canonical_json(data: bytes) -> object:
    """Parse bytes that must already be exactly RFC 8785 canonical JSON.

    Accepting only canonical bytes means a parsed object re-serialises to the very bytes that
    were hashed or signed, so there is one byte string per value.

    Args:
        data: the received bytes.

    Returns:
        The parsed value (dicts, lists, str, int, bool, None).

    Raises:
        CanonicalEncodingError: not UTF-8, not JSON, duplicate keys, floats or NaN, or not the
            canonical serialisation of the value it parses to.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CanonicalEncodingError("canonical JSON must be given as bytes")
    raw = bytes(data)
    try:
        text = raw.decode("utf-8")
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_float=_reject_float,
            parse_constant=_reject_constant,
        )
    except CanonicalEncodingError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CanonicalEncodingError(f"not valid JSON: {type(e).__name__}") from None
    if canonical_json(value) != raw:
        raise CanonicalEncodingError("JSON is not in RFC 8785 canonical form")
    return value
