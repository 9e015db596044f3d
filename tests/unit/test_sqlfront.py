"""The SQL front refuses what it cannot answer with the project's own errors, naming what."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataisland.catalog import TableInfo
from dataisland.errors import (
    DataislandError,
    MalformedQueryError,
    UnknownTableError,
    UnsupportedQueryError,
)
from policies.sqlfront import ParseCache, parse_query

CATALOG = {
    "claims": TableInfo(
        "claims",
        {"pid": "INTEGER", "cat": "VARCHAR", "d": "DATE", "n": "INTEGER", "amt": "DECIMAL(18,2)"},
        "pid",
        frozenset({"qingpu", "wujiang"}),
    ),
    "people": TableInfo(
        "people", {"pid": "INTEGER", "age": "INTEGER"}, "pid", frozenset({"qingpu"})
    ),
}

REFUSED: list[tuple[str, type[DataislandError], str]] = [
    ("SELECT sum(n) OVER () FROM claims", UnsupportedQueryError, "window functions"),
    ("SELECT count(*) FROM (SELECT * FROM claims)", UnsupportedQueryError, "subqueries"),
    (
        "SELECT count(*) FROM claims WHERE n IN (SELECT n FROM claims)",
        UnsupportedQueryError,
        "IN is supported only over a list of literals",
    ),
    ("SELECT count(*) FROM claims WHERE n > (SELECT 1)", UnsupportedQueryError, "subqueries"),
    ("SELECT (SELECT 1) AS one, count(*) FROM claims", UnsupportedQueryError, "subqueries"),
    ("SELECT count(*) FROM claims WHERE EXISTS (SELECT 1)", UnsupportedQueryError, "EXISTS"),
    (
        "SELECT count(*) FROM claims UNION SELECT count(*) FROM claims",
        UnsupportedQueryError,
        "UNION",
    ),
    (
        "SELECT count(*) FROM claims UNION ALL SELECT count(*) FROM claims",
        UnsupportedQueryError,
        "UNION",
    ),
    (
        "SELECT count(*) FROM claims INTERSECT SELECT count(*) FROM claims",
        UnsupportedQueryError,
        "INTERSECT",
    ),
    (
        "SELECT count(*) FROM claims EXCEPT SELECT count(*) FROM claims",
        UnsupportedQueryError,
        "EXCEPT",
    ),
    ("WITH c AS (SELECT * FROM claims) SELECT count(*) FROM c", UnsupportedQueryError, "WITH"),
    ("SELECT count(*) FROM read_csv('/etc/passwd')", UnsupportedQueryError, "table functions"),
    ("SELECT count(*) FROM read_parquet('x.parquet')", UnsupportedQueryError, "table functions"),
    ("SELECT count(*) FROM glob('*')", UnsupportedQueryError, "table functions"),
    ("SELECT count(*) FROM 'data.csv'", UnsupportedQueryError, "file reads"),
    ('SELECT count(*) FROM "x.parquet"', UnsupportedQueryError, "file reads"),
    ("COPY claims TO 'out.csv'", MalformedQueryError, "COPY"),
    ("ATTACH 'other.db'", MalformedQueryError, "ATTACH"),
    ("PRAGMA database_list", MalformedQueryError, "PRAGMA"),
    ("SET enable_external_access = true", MalformedQueryError, "SET"),
    ("INSTALL httpfs", MalformedQueryError, "INSTALL"),
    ("LOAD httpfs", MalformedQueryError, "LOAD"),
    ("DROP TABLE claims", MalformedQueryError, "DROP"),
    ("SUMMARIZE claims", MalformedQueryError, "SUMMARIZE"),
    ("SELECT * FROM claims", UnsupportedQueryError, "SELECT *"),
    ("FROM claims", UnsupportedQueryError, "SELECT *"),
    ("SELECT * EXCLUDE (pid) FROM claims", UnsupportedQueryError, "SELECT *"),
    ("SELECT COLUMNS('n') FROM claims", UnsupportedQueryError, "COLUMNS"),
    ("SELECT cat, count(*) FROM claims GROUP BY ALL", UnsupportedQueryError, "GROUP BY ALL"),
    (
        "SELECT cat, count(*) FROM claims GROUP BY cat ORDER BY ALL",
        UnsupportedQueryError,
        "ORDER BY ALL",
    ),
    (
        "SELECT cat, count(*) FROM claims",
        UnsupportedQueryError,
        "non-aggregate output column 'cat' is not a GROUP BY key",
    ),
    ("SELECT n FROM claims", UnsupportedQueryError, "must aggregate"),
    ("SELECT DISTINCT cat FROM claims", UnsupportedQueryError, "DISTINCT"),
    ("SELECT count(DISTINCT pid) FROM claims", UnsupportedQueryError, "COUNT(DISTINCT"),
    ("SELECT string_agg(cat) FROM claims", UnsupportedQueryError, "aggregate function"),
    ("SELECT list(cat) FROM claims", UnsupportedQueryError, "aggregate function"),
    ("SELECT array_agg(cat) FROM claims", UnsupportedQueryError, "aggregate function"),
    ("SELECT mode(n) FROM claims", UnsupportedQueryError, "'mode'"),
    ("SELECT first(n) FROM claims", UnsupportedQueryError, "'first'"),
    ("SELECT any_value(n) FROM claims", UnsupportedQueryError, "any_value"),
    ("SELECT arg_min(pid, n) FROM claims", UnsupportedQueryError, "arg_min"),
    ("SELECT histogram(n) FROM claims", UnsupportedQueryError, "histogram"),
    ("SELECT quantile(n, 0.5) FROM claims", UnsupportedQueryError, "quantile"),
    ("SELECT median(n) FROM claims", UnsupportedQueryError, "median"),
    ("SELECT count(*) FROM nowhere", UnknownTableError, "nowhere"),
    (
        "SELECT count(*) FROM claims JOIN ghosts ON claims.pid = ghosts.pid",
        UnknownTableError,
        "ghosts",
    ),
    ("SELECT sum(nope) FROM claims", UnsupportedQueryError, "unknown column 'nope'"),
    (
        "SELECT count(*) FROM claims; SELECT count(*) FROM claims",
        MalformedQueryError,
        "one statement",
    ),
    ("", MalformedQueryError, "empty"),
    ("   ;  ", MalformedQueryError, "empty"),
    ("SELECT count(* FROM claims", MalformedQueryError, "does not parse"),
    ("SELECT count(*) FROM claims QUALIFY n > 1", UnsupportedQueryError, "QUALIFY"),
    ("SELECT count(*) FROM claims LIMIT 1 OFFSET 1", UnsupportedQueryError, "OFFSET"),
    ("SELECT count(*) FROM claims LIMIT -1", UnsupportedQueryError, "LIMIT"),
    ("SELECT count(*) FROM main.claims", UnsupportedQueryError, "schema"),
    ("SELECT sum(sum(n)) FROM claims", UnsupportedQueryError, "nested aggregates"),
    ("SELECT count(*) FROM claims WHERE sum(n) > 0", UnsupportedQueryError, "WHERE"),
    ("SELECT sum(n) FROM claims GROUP BY sum(n)", UnsupportedQueryError, "GROUP BY"),
    ("SELECT count(*) FROM claims, people", UnsupportedQueryError, "without ON"),
    ("SELECT count(*) FROM claims JOIN people USING (pid)", UnsupportedQueryError, "USING"),
    (
        "SELECT count(*) FROM claims FULL JOIN people ON claims.pid = people.pid",
        UnsupportedQueryError,
        "FULL",
    ),
    ("SELECT count(*) FROM claims WHERE cat = $1", UnsupportedQueryError, "parameters"),
    (
        "SELECT CAST(cat AS INTEGER) AS c, count(*) FROM claims GROUP BY 1",
        UnsupportedQueryError,
        "TRY_CAST",
    ),
    (
        "SELECT read_csv('x') AS r, count(*) FROM claims",
        UnsupportedQueryError,
        "function 'read_csv' is not allowed",
    ),
    ("SELECT count(*) AS __units FROM claims", UnsupportedQueryError, "reserved"),
    ("SELECT count(*) FROM claims WHERE regexp_matches(cat, 'a')", UnsupportedQueryError, "regexp"),
]


@pytest.mark.parametrize(("sql", "error", "names"), REFUSED)
def test_refused_constructs_raise_named_errors(
    sql: str, error: type[DataislandError], names: str
) -> None:
    with pytest.raises(error) as caught:
        parse_query(sql, catalog=CATALOG)
    assert names.lower() in str(caught.value).lower()


SUPPORTED = [
    "SELECT count(*) FROM claims",
    "SELECT cat, count(*), sum(amt) FILTER (WHERE n > 1) AS s, mean(n) FROM claims GROUP BY cat",
    "SELECT date_trunc('month', d) AS m, CASE WHEN n < 18 THEN 'child' ELSE 'adult' END AS band,"
    " avg(amt) * 2 + 1 AS r FROM claims WHERE d >= DATE '2020-01-01' + INTERVAL 1 DAY"
    " GROUP BY 1, band HAVING count(*) > 5 ORDER BY m DESC NULLS LAST, 2 LIMIT 10",
    "SELECT var_samp(n), variance(n), var_pop(n), stddev(n), stddev_samp(n), stddev_pop(n),"
    " min(d), max(cat) FROM claims WHERE cat IN ('a', 'b') AND cat LIKE 'a%' AND n IS NOT NULL"
    " AND n BETWEEN -1 AND 10 AND NOT cat ILIKE 'x'",
    "SELECT people.age, count(*) FROM claims AS c JOIN people ON c.pid = people.pid"
    " GROUP BY people.age",
    "FROM claims SELECT count(*)",
    "SELECT year(d) AS y, count() FROM claims GROUP BY y ORDER BY y",
    "SELECT TRY_CAST(cat AS INTEGER) AS k, count(*) FROM claims GROUP BY k",
]


@pytest.mark.parametrize("sql", SUPPORTED)
def test_supported_queries_parse_and_canonical_form_is_a_fixed_point(sql: str) -> None:
    parsed = parse_query(sql, catalog=CATALOG)
    again = parse_query(parsed.canonical_sql, catalog=CATALOG)
    assert again.canonical_sql == parsed.canonical_sql
    assert again.output_names == parsed.output_names
    assert parsed.tables == tuple(sorted(set(parsed.tables)))


def test_tables_are_lower_cased_and_sorted() -> None:
    parsed = parse_query(
        "SELECT count(*) FROM PEOPLE JOIN Claims ON people.pid = claims.pid", catalog=CATALOG
    )
    assert parsed.tables == ("claims", "people")


def test_canonical_form_names_outputs_explicitly() -> None:
    parsed = parse_query("SELECT cat, count(*), sum(n) + 1 FROM claims GROUP BY cat")
    assert parsed.output_names == ("cat", "count_star()", "(sum(n) + 1)")
    assert 'AS "count_star()"' in parsed.canonical_sql


SQL_WORDS = [
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP",
    "BY",
    "HAVING",
    "ORDER",
    "LIMIT",
    "JOIN",
    "ON",
    "AS",
    "count(*)",
    "sum(n)",
    "avg(",
    ")",
    "(",
    ",",
    "*",
    "+",
    "-",
    "/",
    "=",
    "<",
    ">",
    "AND",
    "OR",
    "NOT",
    "IN",
    "LIKE",
    "IS",
    "NULL",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "OVER",
    "FILTER",
    "UNION",
    "WITH",
    "DISTINCT",
    "claims",
    "people",
    "n",
    "cat",
    "d",
    "'a'",
    "1",
    "-1",
    "0.5",
    "DATE",
    "INTERVAL",
    "CAST",
    "read_csv",
    "PRAGMA",
    ";",
    "::",
    "[",
    "]",
    "{",
    "}",
    "$1",
    "?",
    "EXCLUDE",
    "COLUMNS",
    "ALL",
    "QUALIFY",
    "OFFSET",
    '"x"',
    "`",
    "--",
    "/*",
    "e",
    "'",
]


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_arbitrary_text_raises_only_project_errors(text: str) -> None:
    with contextlib.suppress(DataislandError):
        parse_query(text, catalog=CATALOG)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(SQL_WORDS), max_size=30))
def test_fuzz_token_soup_raises_only_project_errors(words: list[str]) -> None:
    sql = " ".join(words)
    try:
        parsed = parse_query(sql, catalog=CATALOG)
    except DataislandError:
        return
    assert parse_query(parsed.canonical_sql, catalog=CATALOG).canonical_sql == (
        parsed.canonical_sql
    )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(SQL_WORDS), min_size=1, max_size=12).map(
        lambda w: "SELECT count(*) FROM claims WHERE " + " ".join(w)
    )
)
def test_fuzz_where_clauses_raise_only_project_errors(sql: str) -> None:
    try:
        parsed = parse_query(sql, catalog=CATALOG)
    except DataislandError:
        return
    assert parse_query(parsed.canonical_sql, catalog=CATALOG).canonical_sql == (
        parsed.canonical_sql
    )


def test_deeply_nested_text_is_malformed_not_a_crash() -> None:
    with pytest.raises(DataislandError):
        parse_query("SELECT " + "(" * 5000 + "1" + ")" * 5000 + " FROM claims")


def test_parse_cache_answers_repeats_from_memory_and_refuses_every_time() -> None:
    parse = ParseCache(CATALOG)
    sql = "SELECT cat, count(*) FROM claims GROUP BY cat"
    first = parse(sql)
    assert parse(sql) is first
    assert first == parse_query(sql, catalog=CATALOG)
    for _ in range(2):
        with pytest.raises(UnknownTableError):
            parse("SELECT count(*) FROM secrets")
