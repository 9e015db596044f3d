"""Regenerate the canonical-form known-answer vectors in tests/vectors/.

Run `.venv/bin/python scripts/make_vectors.py` after a deliberate change to a canonical form
(which is a breaking change: every signature and log entry over the old bytes stops matching),
then review the diff. Tests never call this script: they check the committed files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

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

VECTORS = Path(__file__).resolve().parent.parent / "tests" / "vectors"
SALT_A = bytes(range(32))
SALT_B = hashlib.sha256(b"dataisland test salt B").digest()
FIXED_DIALECT = Dialect(duckdb="2.0.1", sqlglot="30.31.0")

RESULT_QUERIES: dict[str, str] = {
    "boolean": "SELECT * FROM (VALUES (true), (false), (NULL::BOOLEAN)) t(b)",
    "signed_integers": """
        SELECT * FROM (VALUES
          ((-128)::TINYINT, (-32768)::SMALLINT, (-2147483648)::INTEGER,
           (-9223372036854775808)::BIGINT),
          (127::TINYINT, 32767::SMALLINT, 2147483647::INTEGER, 9223372036854775807::BIGINT),
          (0::TINYINT, 0::SMALLINT, 0::INTEGER, 0::BIGINT),
          (NULL::TINYINT, NULL::SMALLINT, NULL::INTEGER, NULL::BIGINT)
        ) t(tiny, small, int, big)""",
    "unsigned_integers": """
        SELECT * FROM (VALUES
          (255::UTINYINT, 65535::USMALLINT, 4294967295::UINTEGER,
           18446744073709551615::UBIGINT),
          (0::UTINYINT, 0::USMALLINT, 0::UINTEGER, 0::UBIGINT),
          (NULL::UTINYINT, NULL::USMALLINT, NULL::UINTEGER, NULL::UBIGINT)
        ) t(utiny, usmall, uint, ubig)""",
    "huge_integers": """
        SELECT * FROM (VALUES
          (170141183460469231731687303715884105727::HUGEINT,
           340282366920938463463374607431768211455::UHUGEINT),
          ((-170141183460469231731687303715884105727 - 1)::HUGEINT,
           170141183460469231731687303715884105728::UHUGEINT),
          ((-1)::HUGEINT, 0::UHUGEINT),
          (NULL::HUGEINT, NULL::UHUGEINT)
        ) t(huge, uhuge)""",
    "decimals": """
        SELECT * FROM (VALUES
          ('9999999999999999999999999999.9999999999'::DECIMAL(38,10), 1.5::DECIMAL(4,1),
           '-999999999999999999'::DECIMAL(18,0), 0.123456789::DECIMAL(9,9)),
          ('-0.0000000001'::DECIMAL(38,10), (-1.5)::DECIMAL(4,1), 0::DECIMAL(18,0),
           (-0.000000001)::DECIMAL(9,9)),
          (0::DECIMAL(38,10), 0::DECIMAL(4,1), 7::DECIMAL(18,0), 0::DECIMAL(9,9)),
          (NULL::DECIMAL(38,10), NULL::DECIMAL(4,1), NULL::DECIMAL(18,0), NULL::DECIMAL(9,9))
        ) t(d38_10, d4_1, d18_0, d9_9)""",
    "doubles": """
        SELECT * FROM (VALUES ('0.1'::DOUBLE), ('-0.0'::DOUBLE), ('0.0'::DOUBLE),
          ('nan'::DOUBLE), ('inf'::DOUBLE), ('-inf'::DOUBLE), ('1e16'::DOUBLE),
          ('1e15'::DOUBLE), ('0.0001'::DOUBLE), ('0.00001'::DOUBLE), ('5e-324'::DOUBLE),
          ('1.7976931348623157e308'::DOUBLE), ('123'::DOUBLE), ('-2.5e-7'::DOUBLE),
          (1.0 / 3), (NULL::DOUBLE)) t(x)""",
    "floats": """
        SELECT * FROM (VALUES ('0.1'::FLOAT), ('16777216'::FLOAT), ('3.4028235e38'::FLOAT),
          ('1.4e-45'::FLOAT), ('1.1754944e-38'::FLOAT), ('-0.0'::FLOAT), ('nan'::FLOAT),
          ('-inf'::FLOAT), ('1e16'::FLOAT), ('0.3'::FLOAT), (NULL::FLOAT)) t(x)""",
    "varchar": """
        SELECT * FROM (VALUES (''), ('plain'), ('é'), ('青浦 吴江 嘉善'), ('🏞️💧'),
          ('quote " backslash \\ slash /'), ('line' || chr(10) || 'tab' || chr(9) || chr(1)),
          ('€'), (NULL::VARCHAR)) t(s)""",
    "dates": """
        SELECT * FROM (VALUES (DATE '1970-01-01'), (DATE '1969-12-31'), (DATE '2024-02-29'),
          (DATE '0001-01-01'), (DATE '0001-01-01' - 1), (DATE '0044-03-15 (BC)'),
          (DATE '9999-12-31'), (DATE '10000-01-01'), (DATE '5877642-06-25 (BC)'),
          (DATE '5881580-07-10'), (DATE 'infinity'), (DATE '-infinity'), (NULL::DATE)) t(d)""",
    "timestamps": """
        SELECT * FROM (VALUES (TIMESTAMP '2024-03-01 12:00:00'),
          (TIMESTAMP '2024-03-01 12:00:00.123456'), (TIMESTAMP '1969-12-31 23:59:59.999999'),
          (TIMESTAMP '1900-02-28 00:00:00.000001'), (TIMESTAMP '0044-03-15 (BC) 12:00:00'),
          (TIMESTAMP '294247-01-10 04:00:54.775806'), (TIMESTAMP '290309-12-22 (BC) 00:00:00'),
          (TIMESTAMP 'infinity'), (TIMESTAMP '-infinity'), (NULL::TIMESTAMP)) t(ts)""",
    "timestamps_with_time_zone": """
        SELECT * FROM (VALUES (TIMESTAMPTZ '2024-03-01 12:00:00+00'),
          (TIMESTAMPTZ '2024-03-01 12:00:00.5+05:30'), (TIMESTAMPTZ '2024-03-01 00:30:00-08'),
          (TIMESTAMPTZ '1969-12-31 23:59:59.999999+00'), (TIMESTAMPTZ 'infinity'),
          (NULL::TIMESTAMPTZ)) t(tz)""",
    "intervals": """
        SELECT * FROM (VALUES (INTERVAL '14 months 3 days 1 hour'),
          (INTERVAL '1 year' - INTERVAL '2 days' + INTERVAL '3 microseconds'),
          (INTERVAL '0 seconds'), (- INTERVAL '1 month 1 day 1 microsecond'),
          (INTERVAL '36 hours'), (to_months(2147483647)), (NULL::INTERVAL)) t(i)""",
    "null": "SELECT NULL AS nothing",
    "empty": "SELECT 1::INTEGER AS one, 'x' AS two WHERE false",
    "aggregate": """
        SELECT month, category, count(*) AS claims, sum(amount) AS total,
               avg(amount::DOUBLE) AS mean
        FROM (VALUES (DATE '2024-01-01', 'outpatient', 120.50::DECIMAL(18,2)),
                     (DATE '2024-01-01', 'outpatient', 80.25::DECIMAL(18,2)),
                     (DATE '2024-02-01', 'inpatient', 9100.00::DECIMAL(18,2)))
             t(month, category, amount)
        GROUP BY ALL ORDER BY ALL""",
    "unicode_column_names": 'SELECT 1::INTEGER AS "区县", 2::INTEGER AS "naïve ""quoted"""',
}


def _hex(data: bytes) -> str:
    return data.hex()


def envelopes() -> list[dict[str, Any]]:
    empty = params_commitment([], salt=SALT_A)
    two = params_commitment(
        [
            TypedParam("subject", "VARCHAR", "310101199001011234"),
            TypedParam("year", "INTEGER", "2024"),
        ],
        salt=SALT_B,
    )
    cases = [
        (
            "minimal",
            "SELECT count(*) FROM claims",
            empty,
            "audit",
            "r-1",
            dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.UTC),
        ),
        (
            "unicode_purpose_and_sql",
            "SELECT district, sum(amount) AS 合计\nFROM claims\t"
            "WHERE note = 'é \"x\" \\'\nGROUP BY 1",
            empty,
            "跨省医保统计 / cross-province 🏥",
            "qingpu.svc:2024-03-01.0001",
            dt.datetime(2024, 3, 1, 20, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=8))),
        ),
        (
            "template_with_params",
            "SELECT exists(SELECT 1 FROM certificates WHERE subject = $subject AND year = $year)",
            two,
            "certificate-verification",
            "jiashan-svc_7.A-Z",
            dt.datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
        ),
    ]
    out = []
    for name, sql, pc, purpose, rid, at in cases:
        env = QueryEnvelope(
            sql=sql, params_commitment=pc, purpose=purpose, request_id=rid, issued_at=at
        )
        out.append(
            {
                "name": name,
                "input": {
                    "sql": sql,
                    "params_commitment": pc.hex(),
                    "purpose": purpose,
                    "request_id": rid,
                    "issued_at": at.isoformat(),
                },
                "canonical": env.to_bytes().decode("utf-8"),
                "sha256": env.digest().hex(),
            }
        )
    return out


def params() -> list[dict[str, Any]]:
    cases: list[tuple[str, list[tuple[str, str, str | None]], bytes]] = [
        ("empty", [], SALT_A),
        ("empty_other_salt", [], SALT_B),
        (
            "two_given_out_of_order",
            [("year", "INTEGER", "2024"), ("subject", "VARCHAR", "310101199001011234")],
            SALT_B,
        ),
        (
            "every_kind",
            [
                ("b", "BOOLEAN", "false"),
                ("h", "HUGEINT", "-170141183460469231731687303715884105728"),
                ("d", "DECIMAL(18,2)", "-0.05"),
                ("x", "DOUBLE", "-0.0"),
                ("f", "FLOAT", "0.1"),
                ("s", "VARCHAR", "嘉善"),
                ("day", "DATE", "2024-02-29"),
                ("ts", "TIMESTAMP", "2024-03-01T12:00:00.000001"),
                ("tz", "TIMESTAMP WITH TIME ZONE", "2024-03-01T04:00:00.000000Z"),
                ("i", "INTERVAL", "1mo-2d3us"),
                ("n", "INTEGER", None),
                ("1", "BIGINT", "7"),
            ],
            SALT_A,
        ),
    ]
    out = []
    for name, items, salt in cases:
        ps = [TypedParam(*p) for p in items]
        out.append(
            {
                "name": name,
                "input": {
                    "params": [{"name": n, "type": t, "value": v} for n, t, v in items],
                    "salt": salt.hex(),
                },
                "canonical": encode_params(ps).decode("utf-8"),
                "commitment": params_commitment(ps, salt=salt).hex(),
            }
        )
    return out


def query_hashes() -> list[dict[str, Any]]:
    sqls = [
        "SELECT count(*) AS n FROM claims",
        "SELECT date_trunc('month', claim_date) AS month, sum(amount) AS total\n"
        "FROM claims\nWHERE district IN ('青浦', '吴江')\nGROUP BY date_trunc('month', claim_date)",
    ]
    out = []
    for sql in sqls:
        out.append(
            {
                "input": {"sql": sql, "dialect": FIXED_DIALECT.to_json()},
                "canonical": canonical_query_bytes(sql, dialect=FIXED_DIALECT).decode("utf-8"),
                "sha256": query_hash(sql, dialect=FIXED_DIALECT).hex(),
            }
        )
    return out


def results() -> list[dict[str, Any]]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    out = []
    for name, sql in RESULT_QUERIES.items():
        rel = con.sql(sql)
        types = [str(t) for t in rel.types]
        res = CanonicalResult.from_arrow(rel.to_arrow_table(), types)
        out.append(
            {
                "name": name,
                "duckdb_sql": " ".join(sql.split()) if "chr(" not in sql else sql.strip(),
                "duckdb_types": types,
                "canonical": res.to_bytes().decode("utf-8"),
                "sha256": res.digest().hex(),
            }
        )
    return out


def commitments() -> list[dict[str, Any]]:
    cases = [(SALT_A, b""), (SALT_A, b'{"version":1}'), (SALT_B, "嘉善".encode())]
    return [
        {"salt": s.hex(), "data_hex": d.hex(), "commitment": commit(d, salt=s).hex()}
        for s, d in cases
    ]


def main() -> None:
    VECTORS.mkdir(parents=True, exist_ok=True)
    files = {
        "canonical_envelopes.json": envelopes(),
        "canonical_params.json": params(),
        "canonical_query_hashes.json": query_hashes(),
        "canonical_results.json": results(),
        "canonical_commitments.json": commitments(),
    }
    for name, vectors in files.items():
        text = json.dumps({"vectors": vectors}, ensure_ascii=False, indent=2) + "\n"
        (VECTORS / name).write_text(text, encoding="utf-8")
        print(f"wrote {name}: {len(vectors)} vectors")


if __name__ == "__main__":
    main()
