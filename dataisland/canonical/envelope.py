"""The query envelope a requester signs: what it asked, why, when, and a parameter commitment.

The envelope holds the raw SQL as the requester wrote it (enclaves parse and check it
themselves) and only a commitment to the parameters. Its bytes are RFC 8785 JSON, so a client in
any language can build and sign them. This module does not sign or verify signatures, check
freshness against a clock, or remember request ids.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import re
from dataclasses import dataclass

from dataisland.canonical._json import canonical_json, parse_canonical_json
from dataisland.errors import CanonicalEncodingError, InvalidInputError

ENVELOPE_VERSION = 1
MAX_SQL_BYTES = 16_384
"""Largest raw SQL text, in UTF-8 bytes (log entries are at most 65,535 bytes)."""
MAX_PURPOSE_BYTES = 1_024

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}", re.ASCII)
_TIMESTAMP_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})\.([0-9]{6})Z", re.ASCII
)
_HEX64_RE = re.compile(r"[0-9a-f]{64}", re.ASCII)
_FIELDS = frozenset({"version", "sql", "params_commitment", "purpose", "request_id", "issued_at"})


def format_rfc3339(moment: _dt.datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with microseconds: "2024-03-01T12:00:00.000000Z".

    Raises:
        InvalidInputError: `moment` is naive.
    """
    if not isinstance(moment, _dt.datetime) or moment.utcoffset() is None:
        raise InvalidInputError("issued_at must be an aware datetime")
    try:
        u = moment.astimezone(_dt.UTC)
    except OverflowError:
        raise InvalidInputError("issued_at is outside years 1 to 9999 in UTC") from None
    return (
        f"{u.year:04d}-{u.month:02d}-{u.day:02d}T"
        f"{u.hour:02d}:{u.minute:02d}:{u.second:02d}.{u.microsecond:06d}Z"
    )


def parse_rfc3339(text: str) -> _dt.datetime:
    """Parse exactly the form `format_rfc3339` produces (no other offsets or precisions).

    Raises:
        InvalidInputError: anything else.
    """
    m = _TIMESTAMP_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise InvalidInputError("issued_at must be RFC 3339 UTC: YYYY-MM-DDTHH:MM:SS.ffffffZ")
    try:
        y, mo, d, h, mi, s, us = (int(g) for g in m.groups())
        return _dt.datetime(y, mo, d, h, mi, s, us, tzinfo=_dt.UTC)
    except ValueError:
        raise InvalidInputError("issued_at is not a valid date and time") from None


def _utf8_size(text: str, field: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInputError(f"{field} is not valid Unicode") from None


@dataclass(frozen=True)
class QueryEnvelope:
    """What a requester signs.

    Attributes:
        sql: the raw SQL text as written (1 to 16,384 UTF-8 bytes, any Unicode).
        params_commitment: the 32-byte `params_commitment` of the typed parameters (of the
            empty list when there are none), salted by the client.
        purpose: the declared purpose (1 to 1,024 UTF-8 bytes).
        request_id: client-chosen, 1 to 128 of [A-Za-z0-9._:-]; Submit is idempotent on it.
        issued_at: when the requester built it; an aware datetime, held in UTC at microsecond
            precision.
        version: the envelope format, 1.
    """

    sql: str
    params_commitment: bytes
    purpose: str
    request_id: str
    issued_at: _dt.datetime
    version: int = ENVELOPE_VERSION

    def __post_init__(self) -> None:
        if type(self.version) is not int or self.version != ENVELOPE_VERSION:
            raise InvalidInputError(f"unsupported envelope version (expected {ENVELOPE_VERSION})")
        if not isinstance(self.sql, str) or not self.sql:
            raise InvalidInputError("sql must be a non-empty string")
        if _utf8_size(self.sql, "sql") > MAX_SQL_BYTES:
            raise InvalidInputError(f"sql is longer than {MAX_SQL_BYTES} bytes")
        if not isinstance(self.params_commitment, bytes) or len(self.params_commitment) != 32:
            raise InvalidInputError("params_commitment must be 32 bytes")
        if not isinstance(self.purpose, str) or not self.purpose:
            raise InvalidInputError("purpose must be a non-empty string")
        if _utf8_size(self.purpose, "purpose") > MAX_PURPOSE_BYTES:
            raise InvalidInputError(f"purpose is longer than {MAX_PURPOSE_BYTES} bytes")
        if (
            not isinstance(self.request_id, str)
            or _REQUEST_ID_RE.fullmatch(self.request_id) is None
        ):
            raise InvalidInputError("request_id must be 1..128 of [A-Za-z0-9._:-]")
        # Normalise to UTC so equal instants compare and serialise equal.
        object.__setattr__(self, "issued_at", parse_rfc3339(format_rfc3339(self.issued_at)))

    def to_json(self) -> dict[str, object]:
        """Return the JSON object whose RFC 8785 bytes are signed."""
        return {
            "version": self.version,
            "sql": self.sql,
            "params_commitment": self.params_commitment.hex(),
            "purpose": self.purpose,
            "request_id": self.request_id,
            "issued_at": format_rfc3339(self.issued_at),
        }

    def to_bytes(self) -> bytes:
        """Return the RFC 8785 bytes the requester signs."""
        try:
            return canonical_json(self.to_json())
        except CanonicalEncodingError as e:  # pragma: no cover - fields are validated
            raise InvalidInputError(str(e)) from None

    def digest(self) -> bytes:
        """Return SHA-256 of `to_bytes()` (what approvals and log entries bind)."""
        return hashlib.sha256(self.to_bytes()).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> QueryEnvelope:
        """Parse signed envelope bytes strictly.

        The bytes must be exactly canonical, so `from_bytes(b).to_bytes() == b` and the digest
        of what was signed is the digest of what is used.

        Raises:
            CanonicalEncodingError: not canonical JSON (duplicate keys, floats, whitespace...).
            InvalidInputError: missing, unknown or ill-typed fields, or invalid values.
        """
        obj = parse_canonical_json(data)
        if not isinstance(obj, dict):
            raise InvalidInputError("an envelope is a JSON object")
        if set(obj) != _FIELDS:
            missing = sorted(_FIELDS - set(obj))
            unknown = len(set(obj) - _FIELDS)
            raise InvalidInputError(
                f"envelope fields: missing {missing}, {unknown} unknown"
                if missing
                else f"envelope has {unknown} unknown field(s)"
            )
        for name in ("sql", "params_commitment", "purpose", "request_id", "issued_at"):
            if not isinstance(obj[name], str):
                raise InvalidInputError(f"envelope field {name} must be a string")
        if _HEX64_RE.fullmatch(obj["params_commitment"]) is None:
            raise InvalidInputError("params_commitment must be 64 lowercase hex digits")
        return cls(
            version=obj["version"],
            sql=obj["sql"],
            params_commitment=bytes.fromhex(obj["params_commitment"]),
            purpose=obj["purpose"],
            request_id=obj["request_id"],
            issued_at=parse_rfc3339(obj["issued_at"]),
        )
