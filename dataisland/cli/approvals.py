"""`dataisland approvals ...` for officers and `dataisland catalog` for requesters.

Officers list the queries waiting for their department, approve one (an approval signed with
their pinned Ed25519 key, bound to that query's envelope and the policy it was judged by) or deny
it. Requesters see what they may ask: tables, dimensions, measures and their aggregates, k,
templates, from the signed policies of the federation directory.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click
from rich.table import Table

from dataisland.cli.app import console, friendly_errors, main
from dataisland.cli.officers import officer_key_path
from dataisland.client import Client
from dataisland.errors import ConfigError, NotFoundError
from dataisland.federation import Federation, load_federation
from dataisland.v1.coordinator_pb2 import QUERY_STATE_PENDING
from policies.document import Policy
from policies.keeper import PolicyKeeper
from policies.signing import load_private_key

_FEDERATION = click.option(
    "--federation",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="federation directory",
)


def _officer_identity(directory: Path, identity: str | None) -> str:
    if identity is not None:
        return identity
    federation = load_federation(directory / "federation.yaml")
    return f"{next(iter(federation.departments))}/officer/officer"


_AS = click.option(
    "--as",
    "identity",
    default=None,
    help="DEPARTMENT/officer/NAME (default: the first department's local officer)",
)


@main.group()
def approvals() -> None:
    """Officers: queries waiting for your department's approval."""


@approvals.command("list")
@_FEDERATION
@_AS
@friendly_errors
def list_command(directory: Path, identity: str | None) -> None:
    """List the queries waiting for your department."""
    with Client.from_federation(directory, identity=_officer_identity(directory, identity)) as c:
        pending = c.pending_approvals()
    table = Table(
        "query", "requester", "purpose", "SQL", "why", "waiting for", title_justify="left"
    )
    for item in pending:
        table.add_row(
            item.query_id,
            item.requester.removeprefix("spiffe://"),
            item.purpose,
            item.canonical_sql,
            "; ".join(r.message for r in item.reasons),
            ", ".join(item.waiting_for),
        )
    console.print(table if pending else "[dim]nothing waits for your department[/]")


@approvals.command("approve")
@click.argument("query_id")
@_FEDERATION
@_AS
@click.option(
    "--key",
    "key_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="your officer signing key (default: the local federation's key for --as)",
)
@click.option("--valid-for", default=60, show_default=True, help="minutes the approval lasts")
@click.option(
    "--runs",
    type=click.IntRange(1, 10_000),
    default=None,
    help="template queries: approve this many runs (any parameters) for this requester and purpose",
)
@friendly_errors
def approve_command(
    query_id: str,
    directory: Path,
    identity: str | None,
    key_file: Path | None,
    valid_for: int,
    runs: int | None,
) -> None:
    """Approve QUERY_ID for your department (one approval, one run)."""
    identity = _officer_identity(directory, identity)
    department, _, name = identity.split("/")
    path = key_file or officer_key_path(directory, department, name)
    try:
        key = load_private_key(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read officer key {path}: {exc.strerror}") from None
    with Client.from_federation(directory, identity=identity) as client:
        pending = {p.query_id: p for p in client.pending_approvals()}
        if query_id not in pending:
            raise NotFoundError(f"query {query_id} is not waiting for {department}'s approval")
        status = client.approve(
            pending[query_id],
            signing_key=key,
            valid_for=dt.timedelta(minutes=valid_for),
            runs=runs,
        )
    state = "still waiting for others" if status.state == QUERY_STATE_PENDING else "running"
    console.print(f"[green]approved[/] {query_id} for {department}: {state}")


@approvals.command("deny")
@click.argument("query_id")
@_FEDERATION
@_AS
@click.option("--reason", required=True, help="why (the requester sees it)")
@friendly_errors
def deny_command(query_id: str, directory: Path, identity: str | None, reason: str) -> None:
    """Deny QUERY_ID for your department."""
    with Client.from_federation(directory, identity=_officer_identity(directory, identity)) as c:
        c.deny(query_id, reason=reason)
    console.print(f"[red]denied[/] {query_id}")


def verified_policies(federation: Federation) -> dict[str, Policy]:
    """Every department's policy that its pinned officers signed (others are left out)."""
    out = {}
    for department, entry in federation.departments.items():
        keeper = PolicyKeeper(
            department=department,
            officers=federation.officer_keys(department),
            required=entry.signatures_required,
        )
        out[department] = keeper.accept(*federation.read_policy(department))
    return out


@main.command("catalog")
@_FEDERATION
@friendly_errors
def catalog_command(directory: Path) -> None:
    """What you may ask: each table's dimensions, measures, k and templates, by owner."""
    federation = load_federation(directory / "federation.yaml")
    for department, policy in verified_policies(federation).items():
        for name, rules in policy.tables.items():
            table = Table(
                "column",
                "class",
                "aggregates",
                title=f"{name} — {department}'s policy v{policy.version} (k = {rules.k}, "
                f"approval {rules.approval})",
                title_justify="left",
            )
            for column in federation.tables[name].columns if name in federation.tables else []:
                spec = rules.columns.get(column)
                measure = getattr(spec, "measure", None)
                kind = "measure" if measure is not None else rules.column_class(column)
                aggregates = ", ".join(measure.aggregates) if measure is not None else ""
                table.add_row(column, str(getattr(kind, "value", kind)), aggregates)
            console.print(table)
            for template_name, template in (rules.templates or {}).items():
                console.print(
                    f"  template [bold]{template_name}[/]: {template.sql} "
                    f"[dim](approval {template.approval})[/]"
                )
