"""Canonical forms: the one place that defines the bytes dataisland hashes, signs and commits.

- `canonical_json`: RFC 8785 JSON without floats;
- `QueryEnvelope`: what a requester signs; `TypedParam` and `params_commitment` for its
  parameters;
- `query_hash`: SHA-256 of the canonical SQL bound to the pinned `DIALECT`;
- `CanonicalResult`: typed, column-wise released results;
- `commit` / `Opening`: salted SHA-256 commitments.

docs/canonical-forms.md defines every form with worked examples. This package does no I/O,
reads no clock and no randomness except `new_salt`, and imports none of policies, enclave,
ledger or coordinator (nor DuckDB).
"""

from dataisland.canonical._json import MAX_SAFE_INTEGER, canonical_json, parse_canonical_json
from dataisland.canonical.commitments import (
    SALT_SIZE,
    CommitmentMismatchError,
    Opening,
    commit,
    new_salt,
)
from dataisland.canonical.envelope import (
    ENVELOPE_VERSION,
    QueryEnvelope,
    format_rfc3339,
    parse_rfc3339,
)
from dataisland.canonical.params import (
    TypedParam,
    decode_params,
    encode_params,
    params_commitment,
    params_opening,
)
from dataisland.canonical.query import DIALECT, Dialect, canonical_query_bytes, query_hash
from dataisland.canonical.result import CanonicalResult, ResultColumn
from dataisland.canonical.values import (
    Interval,
    canonical_type_name,
    check_value,
    decode_value,
    encode_value,
)

__all__ = [
    "DIALECT",
    "ENVELOPE_VERSION",
    "MAX_SAFE_INTEGER",
    "SALT_SIZE",
    "CanonicalResult",
    "CommitmentMismatchError",
    "Dialect",
    "Interval",
    "Opening",
    "QueryEnvelope",
    "ResultColumn",
    "TypedParam",
    "canonical_json",
    "canonical_query_bytes",
    "canonical_type_name",
    "check_value",
    "commit",
    "decode_params",
    "decode_value",
    "encode_params",
    "encode_value",
    "format_rfc3339",
    "new_salt",
    "params_commitment",
    "params_opening",
    "parse_canonical_json",
    "parse_rfc3339",
    "query_hash",
]
