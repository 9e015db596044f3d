"""`dataisland policy ...`: officer tooling for policy documents (lint, explain, test, sign).

These commands read local files only: they neither contact nodes nor deploy anything. Column
types and privacy units come from the federation file (`--federation`, a directory holding
federation.yaml or the file itself); without one, the demonstration zone's built-in schemas are
used for its tables (claims, water_readings).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from dataisland.catalog import Catalog, TableInfo
from dataisland.cli.app import friendly_errors, main
from dataisland.errors import ConfigError, DataislandError, InvalidInputError
from dataisland.federation import load_federation
from dataisland.identity import Principal, write_pem, write_private_key
from policies.checker import Decision, Verdict, check
from policies.document import Policy, load_policy_mapping, parse_timestamp
from policies.lint import lint_policy
from policies.signing import (
    add_signature,
    decode_signatures,
    encode_signatures,
    generate_key,
    load_private_key,
    private_key_pem,
    public_key_bytes,
    public_key_from_base64,
    sign_policy,
    verify_signed_policy,
)
from policies.sqlfront import parse_query
from policies.templates import BindValue, bind_parameters

_FEDERATION_OPTION = click.option(
    "--federation",
    "federation_path",
    type=click.Path(path_type=Path),
    default=None,
    help="federation directory or file (column types, privacy units); default: the demo schemas",
)
_AT_OPTION = click.option(
    "--at", "at", default=None, help="judge at this RFC 3339 time instead of now"
)


@main.group("policy")
def policy() -> None:
    """Officer tooling: lint, explain, test and sign policy documents."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None


def _load_policy(path: Path) -> Policy:
    return Policy.from_yaml(_read(path, "policy"))


def _demo_catalog() -> Catalog:
    from dataisland.synthetic import CLAIMS_COLUMNS, WATER_COLUMNS

    return {
        "claims": TableInfo("claims", dict(CLAIMS_COLUMNS), "person_id", frozenset()),
        "water_readings": TableInfo(
            "water_readings", dict(WATER_COLUMNS), "station_id", frozenset()
        ),
    }


def _catalog(federation_path: Path | None) -> tuple[Catalog, str]:
    if federation_path is None:
        return _demo_catalog(), "the demonstration zone's built-in schemas"
    path = federation_path / "federation.yaml" if federation_path.is_dir() else federation_path
    return load_federation(path).catalog(), str(path)


def _own_view(catalog: Catalog, policy: Policy) -> Catalog:
    """The catalog as one department's officers see it: every table held by them alone."""
    return {
        name: replace(info, holders=frozenset({policy.department}))
        for name, info in catalog.items()
    }


def _now(at: str | None) -> dt.datetime:
    if at is None:
        return dt.datetime.now(dt.UTC)
    try:
        return parse_timestamp(at)
    except ValueError as exc:
        raise InvalidInputError(f"--at: {exc}") from None


def _principal(text: str) -> Principal:
    parts = text.split("/")
    if len(parts) != 3 or not all(parts):
        raise InvalidInputError(f"--as {text!r} must be DEPARTMENT/ROLE/NAME")
    return Principal("local", parts[0], parts[1], parts[2])


def _decide(
    policy: Policy,
    catalog: Catalog,
    *,
    sql: str,
    requester: Principal,
    purpose: str,
    now: dt.datetime,
    params: Mapping[str, BindValue] | None = None,
) -> Decision:
    if params:
        sql = bind_parameters(sql, params)
    parsed = parse_query(sql, catalog=catalog)
    return check(
        parsed,
        requester=requester,
        purpose=purpose,
        policies={policy.department: policy},
        catalog=_own_view(catalog, policy),
        now=now,
    )


console = Console(soft_wrap=True)
"""Rule ids and hashes must stay on one line: officers grep them."""

_VERDICT_STYLE = {
    Verdict.ALLOW: "bold green",
    Verdict.NEEDS_APPROVAL: "bold yellow",
    Verdict.DENY: "bold red",
}


@policy.command("lint")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@_FEDERATION_OPTION
@_AT_OPTION
@friendly_errors
def lint(file: Path, federation_path: Path | None, at: str | None) -> None:
    """Validate FILE and report problems (exit 1 on errors)."""
    policy_doc = _load_policy(file)
    catalog, source = _catalog(federation_path)
    findings = lint_policy(policy_doc, catalog=catalog, now=_now(at))
    console.print(
        f"{file}: {policy_doc.department} version {policy_doc.version}, "
        f"{len(policy_doc.tables)} table(s); hash [bold]{policy_doc.hash}[/]"
    )
    console.print(f"[dim]tables checked against {source}[/]")
    for finding in findings:
        style = "red" if finding.level == "error" else "yellow"
        console.print(
            f"[{style}]{finding.level}[/] {escape(finding.path)}: {escape(finding.message)}",
            highlight=False,
        )
    errors = sum(1 for f in findings if f.level == "error")
    if errors:
        console.print(f"[bold red]{errors} error(s)[/]")
        raise SystemExit(1)
    console.print("[bold green]ok[/]")


@policy.command("explain")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("sql")
@click.option("--as", "as_", required=True, help="the requester, DEPARTMENT/ROLE/NAME")
@click.option("--purpose", required=True, help="the purpose the requester declares")
@click.option(
    "--param",
    "params",
    multiple=True,
    help="NAME=VALUE for a template's $NAME (integers, dates YYYY-MM-DD and true/false are typed)",
)
@_FEDERATION_OPTION
@_AT_OPTION
@click.option("--json", "as_json", is_flag=True, help="print JSON for machines")
@friendly_errors
def explain(
    file: Path,
    sql: str,
    as_: str,
    purpose: str,
    params: tuple[str, ...],
    federation_path: Path | None,
    at: str | None,
    as_json: bool,
) -> None:
    """Print what FILE's rules decide for SQL asked by --as for --purpose, and why."""
    policy_doc = _load_policy(file)
    catalog, _ = _catalog(federation_path)
    try:
        decision = _decide(
            policy_doc,
            catalog,
            sql=sql,
            requester=_principal(as_),
            purpose=purpose,
            now=_now(at),
            params=_parse_params(params),
        )
    except DataislandError as exc:
        if as_json:
            refused = {"verdict": "DENY", "refused_by": "sql front", "error": str(exc)}
            click.echo(json.dumps(refused, ensure_ascii=False))
            return
        console.print(
            f"[bold red]DENY[/] (the SQL front refuses it): {escape(str(exc))}", highlight=False
        )
        return
    if as_json:
        click.echo(json.dumps(decision_json(decision), ensure_ascii=False))
        return
    console.print(
        f"[{_VERDICT_STYLE[decision.verdict]}]{decision.verdict.value}[/]", highlight=False
    )
    for reason in decision.reasons:
        console.print(f"  {reason}", markup=False, highlight=False)
    for department, k in decision.k.items():
        digest = decision.policy_hashes.get(department, "?")[:16]
        console.print(f"  [dim]k for {department}: {k}; policy {digest}…[/]")
    if decision.template is not None:
        use = decision.template
        console.print(f"  [dim]judged by template {use.name} of {use.table}[/]")


def decision_json(decision: Decision) -> dict[str, Any]:
    """A decision as JSON-ready data."""
    return {
        "verdict": decision.verdict.value,
        "reasons": [
            {
                "rule": r.rule,
                "message": r.message,
                "department": r.department,
                "table": r.table,
                "column": r.column,
                "function": r.function,
                "denies": r.denies,
            }
            for r in decision.reasons
        ],
        "k": dict(decision.k),
        "policy_hashes": dict(decision.policy_hashes),
        "template": None if decision.template is None else decision.template.name,
    }


def _typed(text: str) -> BindValue:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        if len(text) == 10:
            return dt.date.fromisoformat(text)
    except ValueError:
        pass
    return text


def _parse_params(items: tuple[str, ...] | list[str]) -> dict[str, BindValue]:
    out: dict[str, BindValue] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidInputError(f"--param {item!r} must be NAME=VALUE")
        out[name] = _typed(value)
    return out


_CASE_FIELDS = frozenset({"name", "sql", "as", "purpose", "expect", "rule", "at", "params"})


def _load_cases(path: Path) -> list[dict[str, Any]]:
    raw = load_policy_mapping(_read(path, "test cases"))
    cases = raw.get("cases")
    if set(raw) != {"cases"} or not isinstance(cases, list) or not cases:
        raise ConfigError(f"{path}: a test file is a mapping with one key, cases: a list")
    out = []
    for index, case in enumerate(cases):
        if not isinstance(case, dict):
            raise ConfigError(f"{path}: case {index} is not a mapping")
        unknown = set(case) - _CASE_FIELDS
        missing = {"sql", "as", "purpose", "expect"} - set(case)
        if unknown or missing:
            raise ConfigError(
                f"{path}: case {index}: unknown fields {sorted(unknown)}, missing {sorted(missing)}"
            )
        if case["expect"] not in {v.value for v in Verdict}:
            raise ConfigError(f"{path}: case {index}: expect is ALLOW, NEEDS_APPROVAL or DENY")
        out.append(case)
    return out


@policy.command("test")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("cases_file", metavar="CASES", type=click.Path(path_type=Path, dir_okay=False))
@_FEDERATION_OPTION
@_AT_OPTION
@friendly_errors
def test_cases(file: Path, cases_file: Path, federation_path: Path | None, at: str | None) -> None:
    """Run officer-written CASES (query, requester, purpose, expected decision) against FILE.

    CASES is YAML: `cases:` a list of {name, sql, as: DEPT/ROLE/NAME, purpose, expect: ALLOW |
    NEEDS_APPROVAL | DENY, rule: an id that must be among the reasons, at: RFC 3339,
    params: {name: value}}.
    """
    policy_doc = _load_policy(file)
    catalog, _ = _catalog(federation_path)
    failures = 0
    cases = _load_cases(cases_file)
    for index, case in enumerate(cases):
        name = str(case.get("name") or f"case {index + 1}")
        params = case.get("params") or {}
        if not isinstance(params, dict):
            raise ConfigError(f"{cases_file}: {name}: params must be a mapping")
        try:
            decision = _decide(
                policy_doc,
                catalog,
                sql=str(case["sql"]),
                requester=_principal(str(case["as"])),
                purpose=str(case["purpose"]),
                now=_now(case.get("at") or at),
                params={str(k): _typed(str(v)) for k, v in params.items()},
            )
            verdict, rules = decision.verdict.value, {r.rule for r in decision.reasons}
            detail = "; ".join(str(r) for r in decision.reasons)
        except DataislandError as exc:
            verdict, rules, detail = "DENY", {"sqlfront"}, f"the SQL front refuses it: {exc}"
        ok = verdict == case["expect"] and ("rule" not in case or case["rule"] in rules)
        if ok:
            console.print(f"[green]pass[/] {escape(name)}", highlight=False)
            continue
        failures += 1
        want = case["expect"] + (f" with rule {case['rule']}" if "rule" in case else "")
        console.print(
            f"[red]FAIL[/] {escape(name)}: expected {want}, got {verdict}", highlight=False
        )
        if detail:
            console.print(f"     {detail}", markup=False, highlight=False)
    summary = f"{len(cases) - failures} passed, {failures} failed"
    console.print(f"[bold {'red' if failures else 'green'}]{summary}[/]")
    if failures:
        raise SystemExit(1)


def _signature_path(file: Path) -> Path:
    return file.with_name(file.name + ".sig.json")


@policy.command("keygen")
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="where to write the private key (PEM, 0600); the public key goes to OUT.pub",
)
@friendly_errors
def keygen(out: Path) -> None:
    """Make an officer's Ed25519 signing key and print its public key (base64)."""
    if out.exists():
        raise ConfigError(f"{out} exists; refusing to overwrite a key")
    key = generate_key()
    write_private_key(out, private_key_pem(key))
    public = base64.b64encode(public_key_bytes(key.public_key())).decode("ascii")
    write_pem(out.with_name(out.name + ".pub"), (public + "\n").encode("ascii"))
    console.print(f"wrote {out} (private, 0600) and {out}.pub")
    click.echo(public)


@policy.command("sign")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--key", "key_file", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option("--officer", required=True, help="your officer name, as your enclave pins it")
@friendly_errors
def sign(file: Path, key_file: Path, officer: str) -> None:
    """Sign FILE's canonical form; the signature is added to FILE.sig.json."""
    policy_doc = _load_policy(file)
    key = load_private_key(_read(key_file, "key"))
    sig_path = _signature_path(file)
    existing = decode_signatures(_read(sig_path, "signatures")) if sig_path.exists() else []
    signatures = add_signature(existing, sign_policy(policy_doc, officer=officer, private_key=key))
    sig_path.write_bytes(encode_signatures(signatures) + b"\n")
    console.print(
        f"signed {policy_doc.department} version {policy_doc.version} "
        f"(hash {policy_doc.hash}) as {officer}; {len(signatures)} signature(s) in {sig_path}",
        highlight=False,
    )


@policy.command("verify")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--officer",
    "officers",
    multiple=True,
    required=True,
    help="NAME=BASE64_PUBLIC_KEY of a pinned officer (repeat)",
)
@click.option("--required", default=1, show_default=True, help="least distinct officers")
@friendly_errors
def verify(file: Path, officers: tuple[str, ...], required: int) -> None:
    """Verify FILE.sig.json against pinned officer keys."""
    pinned = {}
    for item in officers:
        name, sep, key = item.partition("=")
        if not sep:
            raise InvalidInputError(f"--officer {item!r} must be NAME=BASE64")
        pinned[name] = public_key_from_base64(key)
    policy_doc = verify_signed_policy(
        _read(file, "policy"),
        decode_signatures(_read(_signature_path(file), "signatures")),
        pinned_officer_keys=pinned,
        required=required,
    )
    console.print(
        f"[bold green]verified[/] {policy_doc.department} version {policy_doc.version} "
        f"hash {policy_doc.hash}",
        highlight=False,
    )


__all__ = ["decision_json", "policy"]


def _deployed(directory: Path, file: Path) -> tuple[Policy, Policy | None, Path]:
    """The candidate policy (verified against the department's pinned officers) and the one
    deployed now, if any."""
    federation = load_federation(directory / "federation.yaml")
    candidate = Policy.from_yaml(_read(file, "policy"))
    department = candidate.department
    if department not in federation.departments:
        raise ConfigError(f"{department} is not a department of {directory}")
    entry = federation.departments[department]
    verify_signed_policy(
        _read(file, "policy"),
        decode_signatures(_read(_signature_path(file), "signatures")),
        pinned_officer_keys=federation.officer_keys(department),
        required=entry.signatures_required,
        department=department,
    )
    try:
        current: Policy | None = Policy.from_yaml(entry.policy.read_bytes())
    except OSError:
        current = None
    return candidate, current, entry.policy


@policy.command("diff")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--federation", "directory", type=click.Path(path_type=Path), required=True)
@friendly_errors
def diff(file: Path, directory: Path) -> None:
    """Show what FILE changes against the policy deployed in the federation directory."""
    import difflib

    candidate, current, path = _deployed(directory, file)
    before = json.dumps(current.raw if current else {}, indent=2, sort_keys=True, default=str)
    after = json.dumps(candidate.raw, indent=2, sort_keys=True, default=str)
    lines = list(
        difflib.unified_diff(before.splitlines(), after.splitlines(), str(path), str(file))
    )
    console.print("\n".join(escape(line) for line in lines) if lines else "no change")


@policy.command("deploy")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--federation", "directory", type=click.Path(path_type=Path), required=True)
@friendly_errors
def deploy(file: Path, directory: Path) -> None:
    """Activate FILE (and FILE.sig.json) for its department: signed by enough pinned officers
    and of a higher version than the deployed one. Running enclaves pick it up on the next
    query and themselves refuse anything unsigned or older."""
    candidate, current, path = _deployed(directory, file)
    if current is not None and candidate.version <= current.version:
        raise ConfigError(
            f"version {candidate.version} is not above the deployed version {current.version}"
        )
    signatures = _read(_signature_path(file), "signatures")
    write_pem(path.with_name(path.name + ".sig.json"), signatures)
    write_pem(path, _read(file, "policy"))
    console.print(
        f"deployed {candidate.department} policy version {candidate.version} "
        f"(hash {candidate.hash}) to {path}",
        highlight=False,
    )
