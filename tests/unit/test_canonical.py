"""Known-answer vectors for every canonical form (tests/vectors/canonical_*.json)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

from dataisland.canonical import (
    DIALECT,
    CanonicalResult,
    CommitmentMismatchError,
    Dialect,
    Opening,
    QueryEnvelope,
    TypedParam,
    canonical_query_bytes,
    commit,
    decode_params,
    encode_params,
    params_commitment,
    params_opening,
    query_hash,
)

VECTORS = Path(__file__).resolve().parent.parent / "vectors"


def _load(name: str) -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads((VECTORS / name).read_text("utf-8"))["vectors"]
    assert vectors
    return vectors


def _ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [str(v.get("name", i)) for i, v in enumerate(vectors)]


ENVELOPES = _load("canonical_envelopes.json")
PARAMS = _load("canonical_params.json")
QUERIES = _load("canonical_query_hashes.json")
RESULTS = _load("canonical_results.json")
COMMITMENTS = _load("canonical_commitments.json")


@pytest.mark.parametrize("vector", ENVELOPES, ids=_ids(ENVELOPES))
def test_envelope_vectors(vector: dict[str, Any]) -> None:
    given = vector["input"]
    env = QueryEnvelope(
        sql=given["sql"],
        params_commitment=bytes.fromhex(given["params_commitment"]),
        purpose=given["purpose"],
        request_id=given["request_id"],
        issued_at=dt.datetime.fromisoformat(given["issued_at"]),
    )
    expected = vector["canonical"].encode("utf-8")
    assert env.to_bytes() == expected
    assert env.digest().hex() == vector["sha256"] == hashlib.sha256(expected).hexdigest()
    assert QueryEnvelope.from_bytes(expected) == env


@pytest.mark.parametrize("vector", PARAMS, ids=_ids(PARAMS))
def test_params_vectors(vector: dict[str, Any]) -> None:
    params = [TypedParam(p["name"], p["type"], p["value"]) for p in vector["input"]["params"]]
    salt = bytes.fromhex(vector["input"]["salt"])
    expected = vector["canonical"].encode("utf-8")
    assert encode_params(params) == expected
    assert params_commitment(params, salt=salt).hex() == vector["commitment"]
    assert hashlib.sha256(salt + expected).hexdigest() == vector["commitment"]
    assert set(decode_params(expected)) == set(params)
    params_opening(params, salt=salt).verify(bytes.fromhex(vector["commitment"]))


@pytest.mark.parametrize("vector", QUERIES, ids=_ids(QUERIES))
def test_query_hash_vectors(vector: dict[str, Any]) -> None:
    dialect = Dialect(**vector["input"]["dialect"])
    sql = vector["input"]["sql"]
    expected = vector["canonical"].encode("utf-8")
    assert canonical_query_bytes(sql, dialect=dialect) == expected
    assert query_hash(sql, dialect=dialect).hex() == vector["sha256"]
    assert hashlib.sha256(expected).hexdigest() == vector["sha256"]


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    c = duckdb.connect()
    c.execute("SET TimeZone = 'UTC'")
    return c


@pytest.mark.parametrize("vector", RESULTS, ids=_ids(RESULTS))
def test_result_vectors_from_duckdb(vector: dict[str, Any], con: duckdb.DuckDBPyConnection) -> None:
    rel = con.sql(vector["duckdb_sql"])
    types = [str(t) for t in rel.types]
    assert types == vector["duckdb_types"]
    result = CanonicalResult.from_arrow(rel.to_arrow_table(), types)
    expected = vector["canonical"].encode("utf-8")
    assert result.to_bytes() == expected
    assert result.digest().hex() == vector["sha256"]
    assert CanonicalResult.from_bytes(expected) == result


def test_result_vectors_do_not_depend_on_session_time_zone() -> None:
    vector = next(v for v in RESULTS if v["name"] == "timestamps_with_time_zone")
    c = duckdb.connect()
    c.execute("SET TimeZone = 'Asia/Shanghai'")
    rel = c.sql(vector["duckdb_sql"])
    result = CanonicalResult.from_arrow(rel.to_arrow_table(), [str(t) for t in rel.types])
    assert result.to_bytes() == vector["canonical"].encode("utf-8")


@pytest.mark.parametrize("vector", COMMITMENTS)
def test_commitment_vectors(vector: dict[str, Any]) -> None:
    salt = bytes.fromhex(vector["salt"])
    data = bytes.fromhex(vector["data_hex"])
    assert commit(data, salt=salt).hex() == vector["commitment"]
    Opening(salt, data).verify(bytes.fromhex(vector["commitment"]))


def test_vectors_cover_every_supported_type() -> None:
    seen = {t for v in RESULTS for t in v["duckdb_types"]}
    simple = {
        "BOOLEAN", "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT",
        "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "VARCHAR", "DATE",
        "TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "INTERVAL", '"NULL"',
    }  # fmt: skip
    assert simple <= seen
    assert any(t.startswith("DECIMAL(38,") for t in seen)


# Hand-checked answers, independent of the vector files.


def test_hand_checked_cells(con: duckdb.DuckDBPyConnection) -> None:
    rel = con.sql(
        "SELECT 1.5::DECIMAL(5,2) AS d, '-0.0'::DOUBLE AS z, 0.1::FLOAT AS f,"
        " TIMESTAMPTZ '2024-03-01 20:00:00+08' AS tz, INTERVAL '14 months 3 days 1 hour' AS i,"
        " DATE '0044-03-15 (BC)' AS bc"
    )
    result = CanonicalResult.from_arrow(rel.to_arrow_table(), [str(t) for t in rel.types])
    assert result.rows() == (
        ("1.50", "-0.0", "0.1", "2024-03-01T12:00:00.000000Z", "14mo3d3600000000us", "-0043-03-15"),
    )
    assert result.to_bytes().startswith(b'{"columns":[{"name":"d","type":"DECIMAL(5,2)"')


def test_empty_params_commitment_is_salted_sha256_of_fixed_bytes() -> None:
    salt = bytes(32)
    assert encode_params([]) == b'{"params":[],"version":1}'
    assert (
        params_commitment([], salt=salt)
        == hashlib.sha256(salt + b'{"params":[],"version":1}').digest()
    )


def test_query_hash_binds_dialect() -> None:
    sql = "SELECT 1"
    assert canonical_query_bytes(sql, dialect=Dialect("2.0.1", "30.31.0")) == (
        b'{"dialect":{"duckdb":"2.0.1","sqlglot":"30.31.0"},"sql":"SELECT 1"}'
    )
    assert query_hash(sql, dialect=Dialect("2.0.1", "30.31.0")) != query_hash(
        sql, dialect=Dialect("2.0.2", "30.31.0")
    )
    assert Dialect(duckdb=duckdb.__version__, sqlglot="30.31.0") == DIALECT


def test_opening_mismatch_raises_specific_error() -> None:
    opening = Opening(bytes(32), b"x")
    with pytest.raises(CommitmentMismatchError):
        opening.verify(commit(b"y", salt=bytes(32)))
    with pytest.raises(CommitmentMismatchError):
        opening.verify(commit(b"x", salt=b"\x01" * 32))
    with pytest.raises(CommitmentMismatchError):
        opening.verify(b"short")
    opening.verify(opening.commitment())
