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


def _check(obj: object, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise CanonicalEncodingError(f"JSON value nested deeper than {_MAX_DEPTH} levels")
    if obj is None or isinstance(obj, (bool, str)):
        return
    if isinstance(obj, int):
        if abs(obj) > MAX_SAFE_INTEGER:
            raise CanonicalEncodingError("integer outside +-(2**53 - 1); encode it as a string")
        return
    if isinstance(obj, float):
        raise CanonicalEncodingError("floats are not allowed in canonical JSON; use exact strings")
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise CanonicalEncodingError("JSON object keys must be strings")
            _check(value, depth + 1)
        return
    if isinstance(obj, (list, tuple)):
        for item in obj:
            _check(item, depth + 1)
        return
    raise CanonicalEncodingError(f"type {type(obj).__name__} has no canonical JSON form")


def canonical_json(obj: object) -> bytes:
    """Serialise `obj` as RFC 8785 (JCS) canonical JSON.

    Args:
        obj: None, bool, int (at most 2**53 - 1 in magnitude), str, lists or tuples, and
            mappings with string keys, nested at most 64 levels.

    Returns:
        The UTF-8 canonical bytes.

    Raises:
        CanonicalEncodingError: a float, a large integer, a non-string key, a string that is
            not valid Unicode (lone surrogate) or any other type.
    """
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
