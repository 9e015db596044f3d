"""The part of `dataisland demo` that shows the owners' policies at work.

Four scenes, each against the running demo federation: small groups suppressed by k; a query a
policy denies, with the rule, column and function named; a yes/no verification template that
waits for every district's officer, is approved, then runs; and an officer's denial.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from dataisland.canonical import TypedParam
from dataisland.cli.officers import officer_key_path
from dataisland.client import Client, QueryFailedError
from dataisland.v1 import coordinator_pb2
from policies.signing import load_private_key

SUPPRESSED = (
    "Small groups are withheld: every released row stands for at least k people",
    "SELECT category, hospital_level, date_trunc('month', service_date) AS month, "
    "count(*) AS claims, avg(amount) AS avg_amount FROM claims WHERE age = 95 "
    "GROUP BY category, hospital_level, date_trunc('month', service_date) "
    "ORDER BY claims DESC, month LIMIT 8",
)
DENIED = (
    "An owner's policy denies it, and says which rule, column and function",
    "SELECT category, max(amount) AS largest_claim FROM claims GROUP BY category",
)
TEMPLATE = (
    "A yes/no verification template: it waits for every district's officer",
    "SELECT count(*) > 0 AS has_valid_claim FROM claims "
    "WHERE person_id = $person_id AND service_date >= $since",
)


def run_policy_scenes(
    directory: Path,
    departments: Sequence[str],
    *,
    client: Client,
    console: Console,
    show: Callable[[list[tuple[str, str]], list[tuple[str | None, ...]]], Table],
) -> int:
    """Run the four scenes; return how many did not behave as a policy says they must."""
    failures = 0
    title, sql = SUPPRESSED
    console.print(Panel(sql, title=title, title_align="left", border_style="cyan"))
    result = client.query(sql, purpose="demo")
    console.print(show(result.columns, result.rows))
    console.print(f"suppressed: [bold]{'yes' if result.status.suppressed else 'no'}[/]")
    failures += not result.status.suppressed

    title, sql = DENIED
    console.print(Panel(sql, title=title, title_align="left", border_style="yellow"))
    try:
        client.query(sql, purpose="demo")
        failures += 1
    except QueryFailedError as exc:
        console.print(f"[bold yellow]denied[/] ({exc.code}): {exc}")

    title, sql = TEMPLATE
    console.print(Panel(sql, title=title, title_align="left", border_style="magenta"))
    person = TypedParam.of("person_id", "VARCHAR", "P0000000000042")
    since = TypedParam.of("since", "DATE", dt.date(2024, 1, 1))
    status = client.submit(sql, purpose="eligibility check", params=[person, since])
    console.print(f"submitted: {coordinator_pb2.QueryState.Name(status.state)}")
    for department in departments:
        with Client.from_federation(directory, identity=f"{department}/officer/officer") as officer:
            key = load_private_key(officer_key_path(directory, department).read_bytes())
            pending = {p.query_id: p for p in officer.pending_approvals()}
            status = officer.approve(pending[status.query_id], signing_key=key)
        console.print(
            f"approved by {department}'s officer: {coordinator_pb2.QueryState.Name(status.state)}"
        )
    client.wait(status.query_id, timeout=30)
    try:
        answer = client.result(status.query_id)
        console.print(show(answer.columns, answer.rows))
    except QueryFailedError as exc:
        failures += 1
        console.print(f"[bold red]failed[/] ({exc.code}): {exc}")

    second = client.submit(sql, purpose="eligibility check", params=[person, since])
    with Client.from_federation(
        directory, identity=f"{departments[-1]}/officer/officer"
    ) as officer:
        officer.deny(second.query_id, reason="no eligibility case is open for this person")
    time.sleep(0.05)
    try:
        client.result(second.query_id)
        failures += 1
    except QueryFailedError as exc:
        console.print(f"the same question asked again, [bold yellow]denied[/] by an officer: {exc}")
    return failures
