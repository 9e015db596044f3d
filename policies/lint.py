"""Lint a policy document for officers: mistakes the schema cannot see, before anyone signs.

Errors make `dataisland policy lint` fail: a template the SQL front refuses or whose own rules
deny it, a column or table the federation does not define. Warnings point at choices worth a
second look (a privacy unit that is not `identity`, a template lowering k, an expired window).

Pure: takes the catalog (or none) and `now` as arguments; reads no files.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import Literal

from dataisland.catalog import Catalog
from dataisland.errors import DataislandError
from dataisland.identity import Principal
from policies.checker import Verdict, check
from policies.document import Policy
from policies.sqlfront import parse_query
from policies.templates import BindValue, bind_parameters, compile_template


@dataclass(frozen=True)
class Finding:
    """One lint finding: where in the document, how serious, and what."""

    level: Literal["error", "warning"]
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.path}: {self.message}"


def lint_policy(policy: Policy, *, catalog: Catalog | None, now: dt.datetime) -> list[Finding]:
    """Check a validated policy against the federation's tables and its own templates.

    Args:
        policy: the validated policy.
        catalog: the federation's tables, or None to skip the checks that need it.
        now: the time to judge validity at (aware).

    Returns:
        Findings, errors first.
    """
    findings: list[Finding] = []

    def error(path: str, message: str) -> None:
        findings.append(Finding("error", path, message))

    def warn(path: str, message: str) -> None:
        findings.append(Finding("warning", path, message))

    if now >= policy.valid_until:
        warn("valid_until", "the policy has expired: every query will be denied")
    elif now < policy.valid_from:
        warn("valid_from", "the policy is not valid yet")
    for table, rules in policy.tables.items():
        where = f"tables.{table}"
        info = catalog.get(table) if catalog is not None else None
        if catalog is not None and info is None:
            error(where, f"the federation defines no table {table!r}")
        if info is not None:
            if info.holders and policy.department not in info.holders:
                warn(where, f"{policy.department} holds no shard of {table}")
            known = {c.lower() for c in info.columns}
            for column in rules.columns:
                if column not in known:
                    error(f"{where}.columns.{column}", f"{table} has no column {column!r}")
            unlisted = sorted(known - set(rules.columns))
            if unlisted:
                warn(f"{where}.columns", f"not listed, so hidden: {', '.join(unlisted)}")
            unit = info.privacy_unit.lower()
            klass = rules.column_class(unit)
            if rules.group_by_privacy_unit and klass != "dimension":
                warn(
                    f"{where}.group_by_privacy_unit",
                    f"has no effect unless the privacy unit {unit!r} is classed dimension",
                )
            elif klass not in ("identity", "hidden") and not rules.group_by_privacy_unit:
                warn(
                    f"{where}.columns.{unit}",
                    f"the privacy unit {unit!r} is treated as identity (set "
                    "group_by_privacy_unit only for units that are not people)",
                )
        if rules.group_by_privacy_unit and rules.k > 1:
            warn(
                f"{where}.group_by_privacy_unit",
                f"grouping by the privacy unit yields one unit per group: k = {rules.k} "
                "suppresses every such row",
            )
        if not rules.access:
            warn(f"{where}.access", "no access rules: no one may query this table")
        for name, template in rules.templates.items():
            tpath = f"{where}.templates.{name}"
            try:
                shape = compile_template(template.sql, template.parameters)
            except DataislandError as exc:
                error(f"{tpath}.sql", str(exc))
                continue
            if table not in shape.parsed.tables:
                error(f"{tpath}.sql", f"the template does not read {table}")
                continue
            release = template.release
            if release is not None and release.k is not None and release.k < rules.k:
                warn(f"{tpath}.release.k", f"lowers k from {rules.k} to {release.k}")
            if catalog is not None and all(t in catalog for t in shape.parsed.tables):
                try:
                    findings += _judge_template(policy, table, name, catalog, now)
                except DataislandError as exc:
                    error(f"{tpath}.sql", str(exc))
    return sorted(findings, key=lambda f: f.level != "error")


_SAMPLES: dict[str, BindValue] = {
    "varchar": "x",
    "bigint": 0,
    "date": dt.date(2000, 1, 1),
    "boolean": True,
}


def _judge_template(
    policy: Policy, table: str, name: str, catalog: Catalog, now: dt.datetime
) -> list[Finding]:
    """A template must pass its own rules (with its exemptions) for its own requesters."""
    template = policy.tables[table].templates[name]
    values = {p: _SAMPLES[kind] for p, kind in template.parameters.items()}
    parsed = parse_query(bind_parameters(template.sql, values), catalog=catalog)
    rule = template.access[0]
    requester = Principal("lint", rule.departments[0], rule.roles[0], "officer-lint")
    own = {t: replace(catalog[t], holders=frozenset({policy.department})) for t in parsed.tables}
    moment = now if policy.is_valid_at(now) else policy.valid_from
    decision = check(
        parsed,
        requester=requester,
        purpose=rule.purposes[0],
        policies={policy.department: policy},
        catalog=own,
        now=moment,
    )
    if decision.verdict is not Verdict.DENY:
        return []
    return [
        Finding("error", f"tables.{table}.templates.{name}", f"its own rules deny it: {reason}")
        for reason in decision.reasons
        if reason.denies
    ]
