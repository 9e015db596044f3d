"""The policy checker: exfiltration attempts are denied with reasons naming what; the demo's
scenarios are allowed; several owners' rules combine (every owner must allow, strictest k)."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import sqlglot
from sqlglot import exp

from dataisland.catalog import TableInfo
from dataisland.errors import DataislandError, InvalidInputError
from dataisland.identity import Principal
from dataisland.synthetic import CLAIMS_COLUMNS, WATER_COLUMNS
from policies.checker import Decision, Verdict, check
from policies.document import Policy, load_policy_mapping
from policies.sqlfront import ParsedQuery, parse_query
from policies.templates import bind_parameters

ROOT = Path(__file__).resolve().parents[2]
DEPARTMENTS = ("qingpu", "wujiang", "jiashan")
CATALOG = {
    "claims": TableInfo("claims", dict(CLAIMS_COLUMNS), "person_id", frozenset(DEPARTMENTS)),
    "water_readings": TableInfo(
        "water_readings", dict(WATER_COLUMNS), "station_id", frozenset(DEPARTMENTS[:2])
    ),
}
NOW = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
ALICE = Principal("dataisland", "qingpu", "requester", "alice")


def example_raw(department: str) -> dict[str, Any]:
    return load_policy_mapping((ROOT / "policies" / "examples" / f"{department}.yaml").read_bytes())


def example_policies() -> dict[str, Policy]:
    return {d: Policy.from_mapping(example_raw(d)) for d in DEPARTMENTS}


def test_policies() -> dict[str, Policy]:
    """The examples with `sex` as a filter column, so filter-column rules are exercised."""
    out = {}
    for department in DEPARTMENTS:
        raw = example_raw(department)
        raw["tables"]["claims"]["columns"]["sex"] = "filter"
        out[department] = Policy.from_mapping(raw)
    return out


test_policies.__test__ = False  # type: ignore[attr-defined]

POLICIES = test_policies()


def raw_parsed(sql: str) -> ParsedQuery | None:
    """The query as sqlglot parses it, without the SQL front: the checker must stand alone."""
    try:
        tree = sqlglot.parse_one(sql, dialect="duckdb")
    except Exception:
        return None
    if not isinstance(tree, exp.Select):
        return None
    outputs = []
    for index, output in enumerate(tree.expressions):
        outputs.append(output if isinstance(output, exp.Alias) else exp.alias_(output, f"c{index}"))
    tree.set("expressions", outputs)
    tables = sorted({str(t.name).lower() for t in tree.find_all(exp.Table)})
    if not tables or any(t not in CATALOG for t in tables):
        return None
    return ParsedQuery(
        tree=tree, canonical_sql=tree.sql("duckdb"), tables=tuple(tables), output_names=()
    )


def decide(
    sql: str,
    *,
    requester: Principal = ALICE,
    purpose: str = "statistics",
    policies: Mapping[str, Policy] | None = None,
    now: dt.datetime = NOW,
) -> Decision:
    parsed = parse_query(sql, catalog=CATALOG)
    return check(
        parsed,
        requester=requester,
        purpose=purpose,
        policies=POLICIES if policies is None else policies,
        catalog=CATALOG,
        now=now,
    )


# --- exfiltration attempts ------------------------------------------------------------------

# (id, sql, rule, column, function): the reason must carry that rule and, when given, column
# and function.
ATTEMPTS: list[tuple[str, str, str, str | None, str | None]] = [
    # hidden columns, directly and inside expressions
    ("hidden-output", "SELECT claim_id, count(*) AS n FROM claims GROUP BY claim_id",
     "column.hidden", "claim_id", None),
    ("hidden-in-case", "SELECT CASE WHEN claim_id = 'c1' THEN 'a' ELSE 'b' END AS x, count(*) AS n "
     "FROM claims GROUP BY 1", "column.hidden", "claim_id", None),
    ("hidden-in-try-cast", "SELECT TRY_CAST(claim_id AS INTEGER) AS x, count(*) AS n FROM claims "
     "GROUP BY 1", "column.hidden", "claim_id", None),
    ("hidden-in-filter", "SELECT count(*) FILTER (WHERE claim_id LIKE 'qingpu-0001%') AS n "
     "FROM claims", "column.hidden", "claim_id", None),
    ("hidden-in-having", "SELECT category, count(*) AS n FROM claims GROUP BY category "
     "HAVING max(length(claim_id)) > 3", "column.hidden", "claim_id", "max"),
    ("hidden-in-order-by", "SELECT category, count(*) AS n FROM claims GROUP BY category "
     "ORDER BY min(claim_id)", "column.hidden", "claim_id", "min"),
    ("hidden-in-arithmetic", "SELECT sum(amount + TRY_CAST(claim_id AS DOUBLE)) AS s FROM claims",
     "column.hidden", "claim_id", "sum"),
    ("hidden-in-where", "SELECT count(*) AS n FROM claims WHERE claim_id = 'qingpu-00000001'",
     "column.hidden", "claim_id", None),
    ("hidden-via-alias", "SELECT TRY_CAST(claim_id AS INTEGER) AS cid, count(*) AS n FROM claims "
     "GROUP BY cid", "column.hidden", "claim_id", None),
    ("hidden-in-join", "SELECT count(*) AS n FROM claims a JOIN claims b ON a.person_id = "
     "b.person_id WHERE b.claim_id = 'x'", "column.hidden", "claim_id", None),
    # identity: literals and any other use
    ("identity-literal", "SELECT count(*) AS n FROM claims WHERE person_id = 'P0000000000001'",
     "identity.literal_comparison", "person_id", "="),
    ("identity-like", "SELECT count(*) AS n FROM claims WHERE person_id LIKE 'P00000000000%'",
     "identity.literal_comparison", "person_id", "like"),
    ("identity-in-list", "SELECT count(*) AS n FROM claims WHERE person_id IN ('P1', 'P2')",
     "identity.literal_comparison", "person_id", None),
    ("identity-between", "SELECT count(*) AS n FROM claims WHERE person_id BETWEEN 'P1' AND 'P2'",
     "identity.literal_comparison", "person_id", None),
    ("identity-starts-with", "SELECT count(*) AS n FROM claims WHERE starts_with(person_id, 'P0')",
     "identity.literal_comparison", "person_id", "starts_with"),
    ("identity-in-aggregate-case", "SELECT sum(CASE WHEN person_id = 'P1' THEN amount ELSE 0 END) "
     "AS s FROM claims", "identity.literal_comparison", "person_id", None),
    ("identity-in-join-literal", "SELECT count(*) AS n FROM claims a JOIN claims b ON "
     "a.person_id = 'P1' AND a.claim_id = b.claim_id", "identity.literal_comparison",
     "person_id", None),
    ("identity-vs-column", "SELECT count(*) AS n FROM claims WHERE person_id = category",
     "column.identity", "person_id", None),
    ("identity-in-expression", "SELECT length(person_id) AS l, count(*) AS n FROM claims "
     "GROUP BY 1", "column.identity", "person_id", None),
    ("count-identity", "SELECT count(person_id) AS n FROM claims", "column.identity",
     "person_id", "count"),
    ("group-by-unit", "SELECT person_id, count(*) AS n FROM claims GROUP BY person_id",
     "group.privacy_unit", "person_id", None),
    # measures outside their aggregates
    ("min-not-allowed", "SELECT category, min(amount) AS m FROM claims GROUP BY category",
     "measure.aggregate_not_allowed", "amount", "min"),
    ("max-not-allowed", "SELECT max(reimbursed) AS m FROM claims",
     "measure.aggregate_not_allowed", "reimbursed", "max"),
    ("max-through-greatest", "SELECT max(greatest(amount, 0)) AS m FROM claims",
     "measure.aggregate_not_allowed", "amount", "max"),
    ("measure-as-key", "SELECT amount, count(*) AS n FROM claims GROUP BY amount",
     "measure.outside_aggregate", "amount", None),
    ("measure-in-where", "SELECT count(*) AS n FROM claims WHERE amount > 100000",
     "measure.outside_aggregate", "amount", None),
    ("measure-in-filter", "SELECT count(*) FILTER (WHERE amount = 1234.5) AS n FROM claims",
     "measure.outside_aggregate", "amount", None),
    ("measure-in-case-condition", "SELECT sum(CASE WHEN amount > 1000 THEN 1 ELSE 0 END) AS n "
     "FROM claims", "measure.outside_aggregate", "amount", None),
    ("dimension-aggregated", "SELECT max(age) AS oldest FROM claims",
     "dimension.in_aggregate", "age", "max"),
    # filter columns outside conditions
    ("filter-as-key", "SELECT sex, count(*) AS n FROM claims GROUP BY sex",
     "column.filter", "sex", None),
    ("filter-in-case-output", "SELECT CASE WHEN sex = 'F' THEN category ELSE 'x' END AS c, "
     "count(*) AS n FROM claims GROUP BY 1", "column.filter", "sex", None),
    ("filter-counted", "SELECT count(sex) AS n FROM claims", "column.filter", "sex", "count"),
    ("filter-in-order-by", "SELECT category, count(*) AS n FROM claims GROUP BY category, sex "
     "ORDER BY category", "column.filter", "sex", None),
    # DuckDB's shorthands and the parser's traps
    ("star", "SELECT * FROM claims", "shorthand.star", None, None),
    ("group-by-all", "SELECT category, count(*) AS n FROM claims GROUP BY ALL", "group.all",
     None, None),
    ("group-by-hash-position", "SELECT category, count(*) AS n FROM claims GROUP BY #1",
     "group.positional", None, None),
    ("group-by-position-to-hidden", "SELECT claim_id AS c, count(*) AS n FROM claims GROUP BY 1",
     "column.hidden", "claim_id", None),
    ("group-by-position-out-of-range", "SELECT category, count(*) AS n FROM claims GROUP BY 5",
     "group.positional", None, None),
    ("alias-shadows-key", "SELECT age AS category, count(*) AS n FROM claims GROUP BY category "
     "ORDER BY category", "alias.shadows_column", "category", None),
    ("alias-shadows-other-column", "SELECT category AS sex, count(*) AS n FROM claims "
     "GROUP BY category ORDER BY sex", "alias.shadows_column", "sex", None),
    ("aggregate-alias-in-where", "SELECT sum(amount) AS s FROM claims WHERE s > 10",
     "alias.aggregate", None, None),
    # error oracles: whether the query fails must not depend on one row
    ("cast-can-fail", "SELECT count(*) AS n FROM claims WHERE CAST(category AS INTEGER) = 1",
     "cast.not_total", None, "cast"),
    ("cast-even-if-total", "SELECT CAST(age AS VARCHAR) AS a, count(*) AS n FROM claims GROUP BY 1",
     "cast.not_total", None, "cast"),
    ("division-singles-out", "SELECT category, sum(1 / (amount - 5)) AS m FROM claims "
     "GROUP BY category", "division.unsafe", None, "/"),
    ("division-by-dimension", "SELECT sum(amount / age) AS s FROM claims", "division.unsafe",
     None, "/"),
    ("integer-division-by-zero", "SELECT category, sum(length_of_stay // 0) AS s FROM claims "
     "GROUP BY category", "division.unsafe", None, "//"),
    ("modulo-by-expression", "SELECT count(*) AS n FROM claims WHERE age % (age - 30) = 0",
     "division.unsafe", None, "%"),
    ("multiplication-overflow", "SELECT sum(length_of_stay * 1000000000000) AS s FROM claims",
     "arithmetic.overflow", None, "*"),
    ("integer-addition-overflow", "SELECT age + 2147483000 AS a, count(*) AS n FROM claims "
     "GROUP BY 1", "arithmetic.overflow", None, "+"),
    ("abs-overflow", "SELECT abs(age) AS a, count(*) AS n FROM claims GROUP BY 1",
     "arithmetic.overflow", None, "abs"),
    ("negation-overflow", "SELECT -age AS a, count(*) AS n FROM claims GROUP BY 1",
     "arithmetic.overflow", None, "-"),
    ("implicit-cast-comparison", "SELECT count(*) AS n FROM claims WHERE category = 5",
     "type.mismatch", None, "="),
    ("implicit-cast-in-list", "SELECT count(*) AS n FROM claims WHERE hospital_level IN (1, 2)",
     "type.mismatch", None, "in"),
    ("implicit-cast-coalesce", "SELECT coalesce(category, age) AS c, count(*) AS n FROM claims "
     "GROUP BY 1", "type.mismatch", None, "coalesce"),
    ("date-part-unit-from-data", "SELECT date_part(category, service_date) AS d, count(*) AS n "
     "FROM claims GROUP BY 1", "function.argument", None, "date_part"),
    ("like-pattern-from-data", "SELECT count(*) AS n FROM claims WHERE category LIKE "
     "hospital_level", "like.pattern", None, "like"),
    # aggregates that reveal individual values
    ("string-agg", "SELECT string_agg(person_id, ',') AS s FROM claims",
     "function.not_allowed", None, None),
    ("list", "SELECT list(amount) AS s FROM claims", "function.not_allowed", None, None),
    ("arg-max", "SELECT arg_max(age, amount) AS s FROM claims", "function.not_allowed", None,
     None),
    ("median", "SELECT median(amount) AS s FROM claims", "function.not_allowed", None, None),
    ("window", "SELECT sum(amount) OVER () AS s FROM claims", "node.not_allowed", None, None),
]  # fmt: skip


def _has(decision: Decision, rule: str, column: str | None, function: str | None) -> bool:
    return any(
        r.rule == rule
        and (column is None or r.column == column)
        and (function is None or r.function == function)
        for r in decision.reasons
    )


@pytest.mark.parametrize(
    ("sql", "rule", "column", "function"),
    [case[1:] for case in ATTEMPTS],
    ids=[case[0] for case in ATTEMPTS],
)
def test_exfiltration_attempt_is_denied(
    sql: str, rule: str, column: str | None, function: str | None
) -> None:
    judged = 0
    try:
        parsed = parse_query(sql, catalog=CATALOG)
    except DataislandError:
        parsed = None  # the SQL front refused it first: the checker must refuse it alone too
    for candidate in (parsed, raw_parsed(sql)):
        if candidate is None:
            continue
        decision = check(
            candidate,
            requester=ALICE,
            purpose="statistics",
            policies=POLICIES,
            catalog=CATALOG,
            now=NOW,
        )
        assert decision.verdict is Verdict.DENY, decision.explain()
        assert _has(decision, rule, column, function), decision.explain()
        judged += 1
    assert judged, "neither the SQL front's tree nor sqlglot's could be judged"


def test_there_are_at_least_forty_distinct_attempts() -> None:
    assert len({case[1] for case in ATTEMPTS}) >= 40
    assert len({case[0] for case in ATTEMPTS}) == len(ATTEMPTS)


OK_SQL = "SELECT category, count(*) AS n FROM claims GROUP BY category"


@pytest.mark.parametrize(
    ("requester", "purpose", "rule"),
    [
        (ALICE, "marketing", "access.purpose"),
        (Principal("dataisland", "qingpu", "auditor", "eve"), "statistics", "access.role"),
        (
            Principal("dataisland", "outsider", "requester", "eve"),
            "statistics",
            "access.department",
        ),
    ],
)
def test_requester_not_in_access_is_denied_naming_the_rule(
    requester: Principal, purpose: str, rule: str
) -> None:
    decision = decide(OK_SQL, requester=requester, purpose=purpose)
    assert decision.verdict is Verdict.DENY
    assert {r.rule for r in decision.reasons} == {rule}
    assert all(r.table == "claims" for r in decision.reasons)
    assert {r.department for r in decision.reasons} == set(DEPARTMENTS)


@pytest.mark.parametrize(
    "moment",
    [dt.datetime(2030, 1, 1, tzinfo=dt.UTC), dt.datetime(2023, 12, 31, 23, 59, tzinfo=dt.UTC)],
)
def test_policy_outside_its_validity_denies(moment: dt.datetime) -> None:
    decision = decide(OK_SQL, now=moment)
    assert decision.verdict is Verdict.DENY
    assert _has(decision, "policy.not_valid", None, None)


def test_missing_policy_of_one_owner_denies() -> None:
    policies = {d: p for d, p in POLICIES.items() if d != "jiashan"}
    decision = decide(OK_SQL, policies=policies)
    assert decision.verdict is Verdict.DENY
    assert [(r.rule, r.department) for r in decision.reasons] == [("policy.missing", "jiashan")]


def test_policy_without_the_table_denies() -> None:
    raw = example_raw("jiashan")
    raw["tables"]["water_readings"] = copy.deepcopy(
        example_raw("qingpu")["tables"]["water_readings"]
    )
    del raw["tables"]["claims"]
    policies = dict(POLICIES, jiashan=Policy.from_mapping(raw))
    decision = decide(OK_SQL, policies=policies)
    assert _has(decision, "policy.no_table_rules", None, None)
    assert decision.verdict is Verdict.DENY


def test_policy_given_under_another_department_denies() -> None:
    policies = dict(POLICIES, jiashan=POLICIES["qingpu"])
    decision = decide(OK_SQL, policies=policies)
    assert _has(decision, "policy.department_mismatch", None, None)


def test_one_owner_denying_is_enough() -> None:
    raw = example_raw("wujiang")
    raw["tables"]["claims"]["columns"]["category"] = "hidden"
    policies = dict(POLICIES, wujiang=Policy.from_mapping(raw))
    decision = decide(OK_SQL, policies=policies)
    assert decision.verdict is Verdict.DENY
    assert {r.department for r in decision.reasons} == {"wujiang"}


def test_privacy_unit_needs_the_explicit_flag_to_be_grouped() -> None:
    sql = "SELECT station_id, avg(ph) AS ph FROM water_readings GROUP BY station_id"
    assert decide(sql).verdict is Verdict.ALLOW
    raw = example_raw("qingpu")
    del raw["tables"]["water_readings"]["group_by_privacy_unit"]
    policies = dict(POLICIES, qingpu=Policy.from_mapping(raw))
    decision = decide(sql, policies=policies)
    assert decision.verdict is Verdict.DENY
    assert _has(decision, "group.privacy_unit", "station_id", None)


def test_naive_now_is_refused() -> None:
    with pytest.raises(InvalidInputError):
        decide(OK_SQL, now=dt.datetime(2025, 1, 1))


# --- allowed scenarios ----------------------------------------------------------------------

ALLOWED = [
    "SELECT date_trunc('month', service_date) AS month, count(*) AS claims, sum(amount) AS total, "
    "avg(amount) AS mean FROM claims GROUP BY date_trunc('month', service_date) ORDER BY month",
    "SELECT category, CASE WHEN age < 18 THEN '0-17' WHEN age < 45 THEN '18-44' WHEN age < 65 "
    "THEN '45-64' ELSE '65+' END AS age_band, count(*) AS claims, avg(amount) AS avg_amount, "
    "stddev_samp(amount) AS sd FROM claims GROUP BY category, age_band ORDER BY category, age_band",
    "SELECT hospital_level, count(*) AS claims, count(*) FILTER (WHERE category = 'inpatient') AS "
    "inpatient, avg(length_of_stay) FILTER (WHERE category = 'inpatient') AS stay, "
    "sum(reimbursed) / sum(amount) AS ratio FROM claims GROUP BY hospital_level",
    "SELECT age // 10 AS decade, count(*) AS n, sum(amount) AS total FROM claims GROUP BY 1",
    "SELECT floor(age / 10) * 10 AS band, avg(reimbursed) AS r FROM claims GROUP BY band",
    "SELECT category, count(*) AS n FROM claims WHERE service_date >= DATE '2024-03-01' "
    "GROUP BY category",
    "SELECT count(*) FILTER (WHERE sex = 'F') AS women, count(*) AS everyone FROM claims",
    "SELECT extract(month FROM service_date) AS m, sum(amount - reimbursed) AS out_of_pocket "
    "FROM claims GROUP BY 1 ORDER BY 1",
    "SELECT category, min(length_of_stay) AS shortest, max(length_of_stay) AS longest, "
    "var_samp(amount) AS v FROM claims WHERE age BETWEEN 18 AND 64 AND sex = 'M' GROUP BY category",
    "SELECT category, sum(CASE WHEN sex = 'F' THEN amount ELSE 0 END) AS women_total FROM claims "
    "GROUP BY category HAVING count(*) > 10",
    "SELECT TRY_CAST(age AS DOUBLE) * 1.5 AS weighted, count(*) AS n FROM claims GROUP BY 1",
    "SELECT count(*) AS n FROM claims a JOIN claims b ON a.person_id = b.person_id",
    "SELECT upper(category) AS c, count(*) AS n FROM claims WHERE category LIKE 'out%' GROUP BY 1",
    "SELECT count(age) AS with_age FROM claims",
]


@pytest.mark.parametrize("sql", ALLOWED)
def test_demo_claims_questions_are_allowed(sql: str) -> None:
    decision = decide(sql)
    assert decision.verdict is Verdict.ALLOW, decision.explain()
    assert decision.reasons == ()
    assert dict(decision.k) == dict.fromkeys(DEPARTMENTS, 5)
    assert decision.strictest_k == 5
    assert decision.policy_hashes == {d: POLICIES[d].hash for d in DEPARTMENTS}


WATER = [
    "SELECT station_id, date_trunc('hour', reading_at) AS hour, count(*) AS readings, "
    "avg(ph) AS ph, min(dissolved_oxygen) AS min_do, max(turbidity) AS max_turbidity "
    "FROM water_readings "
    "WHERE reading_at < DATE '2024-06-03' GROUP BY station_id, date_trunc('hour', reading_at)",
    "SELECT date_part('hour', reading_at) AS hour, avg(dissolved_oxygen) AS do, "
    "stddev_pop(dissolved_oxygen) AS sd FROM water_readings GROUP BY 1 ORDER BY hour",
]


@pytest.mark.parametrize("sql", WATER)
def test_water_readings_are_allowed_with_k_one(sql: str) -> None:
    decision = decide(sql, purpose="environment monitoring")
    assert decision.verdict is Verdict.ALLOW, decision.explain()
    assert dict(decision.k) == {"qingpu": 1, "wujiang": 1}


def test_demo_queries_of_the_cli_are_allowed_by_the_example_policies() -> None:
    from dataisland.cli.federation import DEMO_QUERIES

    for _, sql in DEMO_QUERIES:
        decision = decide(sql, purpose="demo", policies=example_policies())
        assert decision.verdict is Verdict.ALLOW, (sql, decision.explain())


def test_strictest_k_wins_and_each_owner_keeps_its_own() -> None:
    raw = example_raw("jiashan")
    raw["tables"]["claims"]["k"] = 11
    policies = dict(POLICIES, jiashan=Policy.from_mapping(raw))
    decision = decide(OK_SQL, policies=policies)
    assert decision.verdict is Verdict.ALLOW
    assert dict(decision.k) == {"jiashan": 11, "qingpu": 5, "wujiang": 5}
    assert decision.strictest_k == 11


def test_manual_table_needs_approval_when_otherwise_allowed() -> None:
    raw = example_raw("wujiang")
    raw["tables"]["claims"]["approval"] = "manual"
    policies = dict(POLICIES, wujiang=Policy.from_mapping(raw))
    decision = decide(OK_SQL, policies=policies)
    assert decision.verdict is Verdict.NEEDS_APPROVAL
    assert [(r.rule, r.department, r.denies) for r in decision.reasons] == [
        ("approval.manual", "wujiang", False)
    ]
    denied = decide("SELECT min(amount) AS m FROM claims", policies=policies)
    assert denied.verdict is Verdict.DENY


# --- templates ------------------------------------------------------------------------------

TEMPLATE_SQL = (
    "SELECT count(*) > 0 AS has_valid_claim FROM claims "
    "WHERE person_id = $person_id AND service_date >= $since"
)


def _bound(**values: object) -> str:
    return bind_parameters(TEMPLATE_SQL, values)  # type: ignore[arg-type]


def test_template_is_judged_by_its_own_rules() -> None:
    sql = _bound(person_id="P0000000000042", since=dt.date(2024, 1, 1))
    decision = decide(sql, purpose="eligibility check")
    assert decision.verdict is Verdict.NEEDS_APPROVAL, decision.explain()
    assert dict(decision.k) == dict.fromkeys(DEPARTMENTS, 1)
    use = decision.template
    assert use is not None
    assert use.name == "has_valid_claim"
    assert "$person_id" in use.canonical_sql
    assert "P0000000000042" not in use.canonical_sql
    assert dict(use.parameters) == {"person_id": "P0000000000042", "since": "2024-01-01"}
    assert use.template_hashes == {
        d: POLICIES[d].template_hash("claims", "has_valid_claim") for d in DEPARTMENTS
    }


def test_template_access_is_its_own() -> None:
    sql = _bound(person_id="P1", since=dt.date(2024, 1, 1))
    decision = decide(sql, purpose="statistics")
    assert decision.verdict is Verdict.DENY
    assert _has(decision, "access.purpose", None, None)


@pytest.mark.parametrize(
    "sql",
    [
        # not the template's shape: the exemption does not apply
        "SELECT count(*) > 0 AS has_valid_claim FROM claims WHERE person_id = 'P1'",
        "SELECT count(*) AS n FROM claims WHERE person_id = 'P1' AND service_date >= '2024-01-01'",
        # a parameter of the wrong type
        "SELECT count(*) > 0 AS has_valid_claim FROM claims "
        "WHERE person_id = 'P1' AND service_date >= 'not a date'",
        "SELECT count(*) > 0 AS has_valid_claim FROM claims "
        "WHERE person_id = 7 AND service_date >= '2024-01-01'",
        # an extra condition turns a yes/no into a probe
        "SELECT count(*) > 0 AS has_valid_claim FROM claims "
        "WHERE person_id = 'P1' AND service_date >= '2024-01-01' AND age > 40",
    ],
)
def test_queries_close_to_the_template_get_no_exemption(sql: str) -> None:
    decision = decide(sql, purpose="eligibility check")
    assert decision.verdict is Verdict.DENY
    assert _has(decision, "identity.literal_comparison", "person_id", None)
    assert decision.template is None


def test_exemption_is_only_in_templates() -> None:
    raw = example_raw("qingpu")
    raw["tables"]["claims"]["exemptions"] = {"identity_literal_comparison": "allow"}
    with pytest.raises(DataislandError, match="exemptions"):
        Policy.from_mapping(raw)


# --- per-row error oracles ------------------------------------------------------------------
# Each query below parses (the SQL front knows no column types) yet would fail inside DuckDB
# depending on row values. Refusing them takes types, so it is the checker's job, and the
# checker runs in every department enclave before its shard is touched (docs/adr/0009).

ERROR_ORACLES = [
    ("cast-varchar-to-double",
     "SELECT count(*) AS n FROM claims WHERE CAST(category AS DOUBLE) > 0",
     "cast.not_total"),
    ("cast-varchar-to-int128",
     "SELECT count(*) AS n FROM claims WHERE CAST(category AS INT128) > 0",
     "cast.not_total"),
    ("modulo-by-column", "SELECT count(*) AS n FROM claims WHERE age % (age - 30) = 0",
     "division.unsafe"),
    ("integer-division-by-column", "SELECT count(*) AS n FROM claims WHERE age // (age - 30) = 0",
     "division.unsafe"),
    ("implicit-cast-of-text-column", "SELECT count(*) AS n FROM claims WHERE category = 5",
     "type.mismatch"),
    ("date-part-unit-from-a-column", "SELECT date_part(category, service_date) AS d, count(*) AS n "
     "FROM claims GROUP BY 1", "function.argument"),
    ("date-trunc-unit-from-a-column", "SELECT count(*) AS n FROM claims WHERE "
     "date_trunc(category, service_date) > DATE '2024-01-01'", "function.argument"),
    ("date-overflow-on-any-row", "SELECT count(*) AS n FROM claims WHERE service_date + "
     "INTERVAL 100000000 YEAR > DATE '2024-01-01'", "type.mismatch"),
    ("integer-overflow", "SELECT count(*) AS n FROM claims WHERE length_of_stay * 1000000000 > 0",
     "arithmetic.overflow"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("sql", "rule"),
    [case[1:] for case in ERROR_ORACLES],
    ids=[case[0] for case in ERROR_ORACLES],
)
def test_checker_denies_per_row_error_oracles(sql: str, rule: str) -> None:
    decision = decide(sql)
    assert decision.verdict is Verdict.DENY
    assert _has(decision, rule, None, None), decision.explain()
