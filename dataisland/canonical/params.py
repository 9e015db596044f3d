"""Typed query parameters, their canonical bytes and the salted commitment a requester signs.

The envelope carries only the commitment; the parameters and the salt travel beside it, and an
enclave recomputes the commitment before binding them. This module does not bind parameters to
SQL or check them against a template.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dataisland.canonical._json import canonical_json, parse_canonical_json
from dataisland.canonical.commitments import Opening, commit
from dataisland.canonical.values import PyValue, check_type_name, check_value, decode_value
from dataisland.canonical.values import encode_value as _encode_value
from dataisland.errors import CanonicalEncodingError

PARAMS_VERSION = 1
_NAME_RE = re.compile(r"[A-Za-z0-9_]{1,64}", re.ASCII)
MAX_PARAMS = 256


@dataclass(frozen=True)
class TypedParam:
    """One named query parameter with an explicit DuckDB type and its canonical value string.

    Attributes:
        name: 1 to 64 of [A-Za-z0-9_] (a `$name` or a positional `$1` without the `$`).
        type: a supported type name in canonical spelling (see `values`).
        value: the canonical string of the value, as in result cells; None for NULL.
    """

    name: str
    type: str
    value: str | None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or _NAME_RE.fullmatch(self.name) is None:
            raise CanonicalEncodingError("parameter name must be 1..64 of [A-Za-z0-9_]")
        check_type_name(self.type)
        try:
            check_value(self.type, self.value)
        except CanonicalEncodingError as e:
            raise CanonicalEncodingError(f"parameter {self.name}: {e}") from None

    @classmethod
    def of(cls, name: str, type: str, value: PyValue) -> TypedParam:
        """Build a parameter from a Python value (see `values.encode_value`).

        Raises:
            CanonicalEncodingError: the value does not fit the type or the name is invalid.
        """
        return cls(name, type, _encode_value(type, value))

    def python_value(self) -> PyValue:
        """Return the value as Python (see `values.decode_value`)."""
        return decode_value(self.type, self.value)


def _sorted_params(params: Iterable[TypedParam]) -> tuple[TypedParam, ...]:
    items = tuple(params)
    if len(items) > MAX_PARAMS:
        raise CanonicalEncodingError(f"more than {MAX_PARAMS} parameters")
    for p in items:
        if not isinstance(p, TypedParam):
            raise CanonicalEncodingError("parameters must be TypedParam values")
    ordered = tuple(sorted(items, key=lambda p: p.name))
    for a, b in itertools.pairwise(ordered):
        if a.name == b.name:
            raise CanonicalEncodingError(f"parameter {a.name} given twice")
    return ordered


def encode_params(params: Iterable[TypedParam]) -> bytes:
    """Return the canonical bytes of a parameter list.

    RFC 8785 JSON of {"params": [{"name", "type", "value"}...], "version": 1} with the
    parameters sorted by name (so the order they were given in does not matter) and names unique.

    Raises:
        CanonicalEncodingError: duplicate names, too many parameters, or not TypedParam values.
    """
    ordered = _sorted_params(params)
    return canonical_json(
        {
            "version": PARAMS_VERSION,
            "params": [{"name": p.name, "type": p.type, "value": p.value} for p in ordered],
        }
    )


def decode_params(data: bytes) -> tuple[TypedParam, ...]:
    """Parse canonical parameter bytes strictly (the inverse of `encode_params`).

    Raises:
        CanonicalEncodingError: not canonical JSON, unknown or missing fields, wrong types,
            unsorted or duplicate names, or a value that is not canonical for its type.
    """
    obj = parse_canonical_json(data)
    if not isinstance(obj, dict) or set(obj) != {"version", "params"}:
        raise CanonicalEncodingError('parameters must be exactly {"params", "version"}')
    version = obj["version"]
    if type(version) is not int or version != PARAMS_VERSION:
        raise CanonicalEncodingError(f"unsupported parameters version (expected {PARAMS_VERSION})")
    items = obj["params"]
    if not isinstance(items, list):
        raise CanonicalEncodingError("params must be a list")
    out: list[TypedParam] = []
    for item in items:
        if not isinstance(item, dict) or set(item) != {"name", "type", "value"}:
            raise CanonicalEncodingError('a parameter must be exactly {"name", "type", "value"}')
        name, type_name, value = item["name"], item["type"], item["value"]
        if not isinstance(name, str) or not isinstance(type_name, str):
            raise CanonicalEncodingError("parameter name and type must be strings")
        out.append(TypedParam(name, type_name, value))
    params = tuple(out)
    if _sorted_params(params) != params:
        raise CanonicalEncodingError("parameters must be sorted by name")
    return params


def params_commitment(params: Sequence[TypedParam], *, salt: bytes) -> bytes:
    """Return the 32-byte commitment SHA-256(salt || encode_params(params)).

    An empty list has a commitment too: every envelope carries one.

    Raises:
        CanonicalEncodingError: as `encode_params`.
        InvalidInputError: the salt is not 32 bytes.
    """
    return commit(encode_params(params), salt=salt)


def params_opening(params: Sequence[TypedParam], *, salt: bytes) -> Opening:
    """Return the opening of `params_commitment(params, salt=salt)`.

    Raises:
        CanonicalEncodingError: as `encode_params`.
        InvalidInputError: the salt is not 32 bytes.
    """
    return Opening(salt=salt, canonical_bytes=encode_params(params))
