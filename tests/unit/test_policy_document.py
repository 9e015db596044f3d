"""Policy documents: strict validation with the project's own error, canonical bytes of what the
officers wrote (defaults never filled in), version monotonicity and templates."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from dataisland.canonical import (
    QueryEnvelope,
    TypedParam,
    canonical_json,
    new_salt,
    params_commitment,
    query_hash,
)
from dataisland.catalog import TableInfo
from dataisland.envelopes import CheckedEnvelope
from dataisland.errors import DataislandError
from policies.document import (
    Policy,
    PolicyDocument,
    PolicyDocumentError,
    PolicyRollbackError,
    check_not_older,
    load_policy_mapping,
    parse_timestamp,
)
from policies.sqlfront import ParseCache
from policies.templates import (
    TemplateError,
    bind_parameters,
    compile_template,
    logged_sql,
    parse_envelope_query,
)

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """\
schema_version: 1
department: qingpu
version: 3
valid_from: "2025-01-01T00:00:00Z"
valid_until: "2026-01-01T00:00:00+08:00"
tables:
  claims:
    k: 5
    columns:
      person_id: identity
      category: dimension
      amount: {measure: {aggregates: [sum, avg], bounds: [0, "99.50"]}}
    access:
      - {departments: [qingpu], roles: [requester], purposes: [statistics]}
    approval: auto
"""


def test_minimal_policy_loads() -> None:
    policy = Policy.from_yaml(MINIMAL)
    assert policy.department == "qingpu"
    assert policy.version == 3
    assert policy.document.required_signatures == 1
    rules = policy.tables["claims"]
    assert rules.column_class("claim_id") == "hidden"
    assert rules.templates == {}
    assert policy.is_valid_at(dt.datetime(2025, 6, 1, tzinfo=dt.UTC))
    assert not policy.is_valid_at(dt.datetime(2025, 12, 31, 16, 0, tzinfo=dt.UTC))


def test_canonical_bytes_hold_what_was_written_and_no_defaults() -> None:
    policy = Policy.from_yaml(MINIMAL)
    assert b"required_signatures" not in policy.canonical_bytes
    assert b"group_by_privacy_unit" not in policy.canonical_bytes
    assert b"templates" not in policy.canonical_bytes
    assert b'"schema_version":1' in policy.canonical_bytes
    assert policy.canonical_bytes == canonical_json(load_policy_mapping(MINIMAL))


def test_layout_and_comments_do_not_change_the_hash_but_values_do() -> None:
    policy = Policy.from_yaml(MINIMAL)
    as_json = json.dumps(load_policy_mapping(MINIMAL), indent=4)
    assert Policy.from_yaml(as_json).hash == policy.hash
    assert (
        Policy.from_yaml("# a comment\n" + MINIMAL.replace("k: 5", "k:    5")).hash == policy.hash
    )
    assert Policy.from_yaml(MINIMAL.replace("k: 5", "k: 6")).hash != policy.hash


def test_a_new_optional_field_does_not_change_existing_bytes() -> None:
    class NextDocument(PolicyDocument):
        contact: str | None = None

    raw = load_policy_mapping(MINIMAL)
    before = Policy.from_mapping(raw).canonical_bytes
    NextDocument.model_validate(raw)  # the next schema reads the same mapping...
    assert canonical_json(raw) == before  # ...and its canonical bytes are unchanged


def _with(change: str, into: str = MINIMAL) -> str:
    old, new = change.split(" => ")
    assert old in into
    return into.replace(old, new)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (_with("k: 5 => k: 5\n    kk: 1"), "kk"),
        (_with("k: 5 => k: '5'"), "k"),
        (_with("k: 5 => k: 0"), "k"),
        (_with("k: 5 => k: 5.0"), "canonical"),
        (_with("schema_version: 1 => schema_version: 2"), "schema_version"),
        (_with("version: 3 => version: -1"), "version"),
        (_with("person_id: identity => person_id: identiti"), "identiti"),
        (_with("person_id: identity => person_id: measure"), "measure"),
        (_with("[sum, avg] => []"), "aggregates"),
        (_with("[sum, avg] => [sum, median]"), "aggregates"),
        (_with("[sum, avg] => [sum, sum]"), "twice"),
        (_with('[0, "99.50"] => [10, 1]'), "bounds"),
        (_with('"99.50" => "lots"'), "bound"),
        (_with('"2025-01-01T00:00:00Z" => "2025-01-01"'), "RFC 3339"),
        (_with('"2025-01-01T00:00:00Z" => "2027-01-01T00:00:00Z"'), "before"),
        (_with("approval: auto => approval: sometimes"), "approval"),
        (_with("approval: auto\n => "), "approval"),
        (_with("department: qingpu => department: Qingpu"), "department"),
        (_with("purposes: [statistics] => purposes: []"), "purposes"),
        (MINIMAL + "version: 4\n", "duplicate"),
        (_with("k: 5 => k: &five 5"), "anchors"),
        (_with("k: 5 => k: !!python/object:os.system 5"), "tag"),
        (MINIMAL + "---\nschema_version: 1\n", "one YAML document"),
        ("- a list\n", "mapping"),
        ("tables: [\n", "YAML"),
        (_with("    k: 5 => \n    1: 5\n    k: 5"), "text"),
        (
            _with('valid_from: "2025-01-01T00:00:00Z" => valid_from: 2025-01-01T00:00:00Z').replace(
                'valid_until: "2026-01-01T00:00:00+08:00"', "valid_until: 2025-02-30T00:00:00Z"
            ),
            "valid_until",
        ),
    ],
)
def test_malformed_policies_raise_the_project_error(text: str, needle: str) -> None:
    with pytest.raises(PolicyDocumentError) as info:
        Policy.from_yaml(text)
    assert needle.lower() in str(info.value).lower()


@pytest.mark.parametrize("data", [b"\xff\xfe", b"x" * 1_000_001, "schema_version: 1"])
def test_other_bad_inputs(data: bytes | str) -> None:
    with pytest.raises(PolicyDocumentError):
        Policy.from_yaml(data)


def test_unquoted_timestamps_stay_as_written() -> None:
    text = MINIMAL.replace('"2025-01-01T00:00:00Z"', "2025-01-01T00:00:00Z")
    raw = load_policy_mapping(text)
    assert raw["valid_from"] == "2025-01-01T00:00:00Z"
    assert Policy.from_yaml(text).valid_from == dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def test_parse_timestamp_keeps_offsets_and_cuts_nanoseconds() -> None:
    assert parse_timestamp("2025-01-01T08:00:00.123456789+08:00") == dt.datetime(
        2025, 1, 1, 0, 0, 0, 123456, tzinfo=dt.UTC
    )
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_timestamp("2025-01-01 00:00:00")


def test_versions_only_go_up() -> None:
    policy = Policy.from_yaml(MINIMAL)
    check_not_older(policy, None)
    check_not_older(policy, 3)
    check_not_older(policy, 2)
    with pytest.raises(PolicyRollbackError):
        check_not_older(policy, 4)


@pytest.mark.parametrize("name", ["qingpu", "wujiang", "jiashan"])
def test_example_policies_load(name: str) -> None:
    policy = Policy.from_yaml((ROOT / "policies" / "examples" / f"{name}.yaml").read_bytes())
    assert policy.department == name
    assert "claims" in policy.tables


# --- templates ------------------------------------------------------------------------------

TEMPLATE = "SELECT count(*) > 0 AS ok FROM claims WHERE person_id = $p AND age >= $min_age"


def test_template_compiles_with_placeholders_in_its_canonical_sql() -> None:
    shape = compile_template(TEMPLATE, {"p": "varchar", "min_age": "bigint"})
    assert shape.canonical_sql == (
        "SELECT COUNT(*) > 0 AS ok FROM claims WHERE person_id = $p AND age >= $min_age"
    )


@pytest.mark.parametrize(
    ("sql", "parameters", "needle"),
    [
        (TEMPLATE, {"p": "varchar"}, "not declared"),
        (TEMPLATE, {"p": "varchar", "min_age": "bigint", "other": "date"}, "not used"),
        ("SELECT count(*) AS n FROM claims WHERE person_id = ?", {}, "named"),
        ("SELECT count(*) FILTER (WHERE age > $a) FROM claims", {"a": "bigint"}, "alias"),
        ("SELECT * FROM claims WHERE age = $a", {"a": "bigint"}, "*"),
    ],
)
def test_bad_templates_are_refused(sql: str, parameters: Any, needle: str) -> None:
    with pytest.raises(DataislandError) as info:
        compile_template(sql, parameters)
    assert needle in str(info.value)


def test_bind_parameters_quotes_values_on_the_tree() -> None:
    sql = bind_parameters(TEMPLATE, {"p": "x' OR '1'='1", "min_age": -3})
    assert sql.endswith("person_id = 'x'' OR ''1''=''1' AND age >= -3")
    with pytest.raises(TemplateError):
        bind_parameters(TEMPLATE, {"p": "x"})
    with pytest.raises(TemplateError):
        bind_parameters(TEMPLATE, {"p": "x", "min_age": 1, "extra": 2})
    with pytest.raises(TemplateError):
        bind_parameters(TEMPLATE, {"p": 1.5, "min_age": 1})  # type: ignore[dict-item]


def test_the_logged_sql_of_a_query_with_parameters_holds_no_value() -> None:
    """Two runs of one template for two people hash alike: the hash is no oracle for the id."""
    catalog = {
        "claims": TableInfo(
            name="claims",
            columns={"person_id": "VARCHAR", "age": "INTEGER"},
            privacy_unit="person_id",
            holders=frozenset({"d"}),
        )
    }
    parse = ParseCache(catalog)
    logged = set()
    for person in ("P0000000000001", "P0000000000002"):
        params = (
            TypedParam.of("p", "VARCHAR", person),
            TypedParam.of("min_age", "BIGINT", 18),
        )
        envelope = QueryEnvelope(
            sql=TEMPLATE,
            params_commitment=params_commitment(list(params), salt=new_salt()),
            purpose="check",
            request_id=person,
            issued_at=dt.datetime.now(dt.UTC),
        )
        checked = CheckedEnvelope(envelope=envelope, params=params)
        parsed = parse_envelope_query(checked, parse)
        assert person in parsed.canonical_sql  # what the enclave runs
        sql = logged_sql(checked, parsed)
        assert person not in sql
        assert "$p" in sql
        logged.add(query_hash(sql))
    assert len(logged) == 1
    # Without parameters, the logged SQL is the query's own canonical SQL.
    plain = CheckedEnvelope(
        envelope=QueryEnvelope(
            sql="SELECT count(*) AS n FROM claims",
            params_commitment=params_commitment([], salt=new_salt()),
            purpose="check",
            request_id="r",
            issued_at=dt.datetime.now(dt.UTC),
        ),
        params=(),
    )
    parsed = parse_envelope_query(plain, parse)
    assert logged_sql(plain, parsed) == parsed.canonical_sql
