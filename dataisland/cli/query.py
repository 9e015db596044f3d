"""`dataisland query`: ask the federation a question and print the answer."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import click
from rich.table import Table

from dataisland.cli.app import console, friendly_errors, main
from dataisland.client import Client, QueryResult
from dataisland.federation import Federation, load_federation


def result_table(result: QueryResult, *, title: str | None = None) -> Table:
    """A rich table of a released result (NULL shown dimmed)."""
    table = Table(title=title, title_justify="left")
    numeric = ("INT", "DECIMAL", "DOUBLE", "FLOAT", "HUGEINT")
    for name, type_name in result.columns:
        numeric_column = any(k in type_name for k in numeric)
        table.add_column(
            f"{name}\n[dim]{type_name}[/]", justify="right" if numeric_column else "left"
        )
    for row in result.rows:
        table.add_row(*("[dim]NULL[/]" if v is None else v for v in row))
    return table


@main.command("query")
@click.option(
    "--federation",
    "federation_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="federation directory (its federation.yaml names the coordinator)",
)
@click.option(
    "--as",
    "identity",
    default=None,
    help="DEPARTMENT/ROLE/NAME from the directory's identity/ (default: the first department's "
    "requester 'analyst')",
)
@click.option("--purpose", default="ad-hoc analysis", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON for machines")
@click.option(
    "--explain",
    is_flag=True,
    help="print the decision of every owner's policy and why, without running anything",
)
@click.option("--timeout", default=60.0, show_default=True, help="seconds to wait for the answer")
@click.argument("sql")
@friendly_errors
def query(
    federation_dir: Path,
    identity: str | None,
    purpose: str,
    as_json: bool,
    explain: bool,
    timeout: float,
    sql: str,
) -> None:
    """Run SQL across the federation and print the released result."""
    federation = load_federation(federation_dir / "federation.yaml")
    if identity is None:
        identity = f"{next(iter(federation.departments))}/requester/analyst"
    if explain:
        _explain(federation, identity, purpose, sql, as_json=as_json)
        return
    with Client.from_federation(federation_dir, identity=identity, timeout=timeout) as client:
        result = client.query(sql, purpose=purpose)
    if as_json:
        click.echo(json.dumps(result.as_json(), ensure_ascii=False))
        return
    console.print(result_table(result))
    console.print(
        f"[dim]{len(result.rows)} rows · query {result.status.query_id} · "
        f"result digest {result.digest[:16]}…[/]"
    )


def _explain(
    federation: Federation, identity: str, purpose: str, sql: str, *, as_json: bool
) -> None:
    """The early answer, computed here from the directory's signed policies."""
    from dataisland.cli.approvals import verified_policies
    from dataisland.identity import Principal
    from policies.checker import check
    from policies.sqlfront import parse_query

    department, role, name = identity.split("/")
    decision = check(
        parse_query(sql, catalog=federation.catalog()),
        requester=Principal(federation.federation, department, role, name),
        purpose=purpose,
        policies=verified_policies(federation),
        catalog=federation.catalog(),
        now=dt.datetime.now(dt.UTC),
    )
    if as_json:
        reasons = [
            {
                "rule": r.rule,
                "department": r.department,
                "table": r.table,
                "column": r.column,
                "function": r.function,
                "message": r.message,
            }
            for r in decision.reasons
        ]
        click.echo(
            json.dumps(
                {
                    "decision": decision.verdict.value,
                    "reasons": reasons,
                    "k": dict(decision.k),
                    "policy_hashes": dict(decision.policy_hashes),
                }
            )
        )
        return
    console.print(f"[bold]{decision.verdict.value}[/] for {identity}, purpose {purpose!r}")
    for reason in decision.reasons:
        console.print(f"  • {reason}")
    if decision.k:
        console.print(f"  k by owner: {dict(decision.k)}")
