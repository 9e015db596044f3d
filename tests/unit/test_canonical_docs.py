"""The worked examples in docs/canonical-forms.md are what the code computes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb

from dataisland.canonical import (
    CanonicalResult,
    Dialect,
    QueryEnvelope,
    TypedParam,
    canonical_query_bytes,
    commit,
    encode_params,
    params_commitment,
    query_hash,
)

DOC = (Path(__file__).resolve().parents[2] / "docs" / "canonical-forms.md").read_text("utf-8")
SALT_A = bytes(range(32))
SALT_B = bytes.fromhex("a4ab6c32f63d0e65caf482b8a9f8d50ebf8601950322561311d16a6d91de70a3")


def _in_doc(*fragments: str) -> None:
    for fragment in fragments:
        assert fragment in DOC, fragment


def test_envelope_example() -> None:
    env = QueryEnvelope(
        sql="SELECT count(*) FROM claims",
        params_commitment=params_commitment([], salt=SALT_A),
        purpose="audit",
        request_id="r-1",
        issued_at=dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC),
    )
    _in_doc(env.to_bytes().decode(), env.digest().hex())


def test_params_examples() -> None:
    two = [
        TypedParam("year", "INTEGER", "2024"),
        TypedParam("subject", "VARCHAR", "310101199001011234"),
    ]
    _in_doc(
        encode_params([]).decode(),
        params_commitment([], salt=SALT_A).hex(),
        encode_params(two).decode(),
        params_commitment(two, salt=SALT_B).hex(),
    )


def test_query_hash_example() -> None:
    dialect = Dialect("2.0.1", "30.31.0")
    sql = "SELECT count(*) AS n FROM claims"
    _in_doc(
        canonical_query_bytes(sql, dialect=dialect).decode(), query_hash(sql, dialect=dialect).hex()
    )


def test_result_example() -> None:
    rel = duckdb.connect().sql(
        "SELECT DATE '2024-01-01' AS month, 'outpatient' AS category, 2::BIGINT AS claims,"
        " 200.75::DECIMAL(18,2) AS total, 100.375::DOUBLE AS mean,"
        " INTERVAL '1 month 2 days 3 seconds' AS span, NULL::TIMESTAMPTZ AS seen"
    )
    result = CanonicalResult.from_arrow(rel.to_arrow_table(), [str(t) for t in rel.types])
    _in_doc(
        result.to_bytes().decode(),
        result.digest().hex(),
        commit(result.to_bytes(), salt=SALT_A).hex(),
    )


def test_commitment_example() -> None:
    _in_doc(commit(b'{"version":1}', salt=SALT_A).hex())
