"""Federation directory commands: ``init``, ``shard load``, ``up`` and ``demo``.

A federation directory holds ``federation.yaml`` (the shared, human-edited federation file),
``nodes/<node>.yaml`` (one configuration per process), ``shards/<department>.duckdb`` (each
department's own data) and ``logs/`` (written by ``up``). On a real deployment each department
keeps only its own node file and shard; the directory layout is the development convenience of
running a whole federation on one machine.

``shard load`` is the department's own tooling acting on its own file: it reads CSV or Parquet
with DuckDB in this process, outside any enclave, and never talks to a node. Nothing here
decides what may be released; that is the enclaves' job.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import re
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType

import click
import duckdb
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from dataisland.cli.app import console, err_console, friendly_errors, main
from dataisland.cli.demo_policies import run_policy_scenes
from dataisland.cli.identity import provision_local
from dataisland.cli.officers import (
    LOCAL_OFFICER,
    POLICIES_DIR,
    demo_policy_text,
    provision_officers,
    write_signed_policy,
)
from dataisland.cli.witness import coordinator_log_yaml, provision_audit_log
from dataisland.errors import (
    ConfigError,
    DataislandError,
    InvalidInputError,
    SchemaMismatchError,
    UnknownTableError,
)
from dataisland.federation import (
    NAME_PATTERN,
    Federation,
    TableEntry,
    load_federation,
    load_node_config,
)
from dataisland.supervisor import FEDERATION_FILE, LOGS_DIR, NODES_DIR, FederationProcesses
from dataisland.synthetic import CLAIMS_COLUMNS, WATER_COLUMNS, populate_shard
from dataisland.unitmasks import add_unit_masks, is_reserved
from enclave.attestation import (
    SIGNER,
    SVN,
    VENDOR_DIR,
    Measurement,
    certify_platform,
    create_vendor,
    measure,
)

SHARDS_DIR = "shards"
COMMITTEE = "committee"
DEFAULT_DEPARTMENTS = ("qingpu", "wujiang", "jiashan")
DEFAULT_BASE_PORT = 7100
RESERVED_NAMES = frozenset({"aggregator", "coordinator", "committee"})
LOAD_BATCH_ROWS = 20_000

# --------------------------------------------------------------------------------------------
# init
# --------------------------------------------------------------------------------------------

_FEDERATION_HEADER = """\
# dataisland federation file, written by `dataisland init` and meant to be edited by people.
#
# Every node of the federation reads this same file; a node trusts it as its own configuration,
# so each department should keep (and check) its own copy. Unknown fields are errors: a typo
# never silently becomes a default.
#
#   federation   the federation's name (lower case letters, digits and underscores).
#   development  development conveniences (see below).
#   departments  each department that owns data: the HOST:PORT of its enclave node, its
#                certificate authority (a principal's department is the CA that issued its
#                certificate) and that CA's revocation list, re-read by running nodes.
#   committee    the executive committee's node: it runs the coordinator (where department
#                services send SQL) and the aggregator enclave (which merges partials); it is
#                a CA of its own for its nodes. Every connection is mutual TLS.
#   tables       the logical tables queries name. For each: its columns and DuckDB types (every
#                holder's shard must have exactly these), its privacy unit (the column whose
#                distinct values count as people for the release rules; declared here and
#                nowhere else) and the departments holding a shard of it.
"""


def _federation_text(
    *,
    name: str,
    departments: Sequence[str],
    base_port: int,
    development: bool,
    officers: Mapping[str, str],
) -> str:
    lines = [_FEDERATION_HEADER, f"federation: {name}", ""]
    lines += [
        "# Development convenience: every CA key lives in this one directory (identity/), and",
        "# simulated evidence with the debug flag is accepted. Never set it for real data.",
        f"development: {'true' if development else 'false'}",
        "",
        "departments:",
    ]
    for index, department in enumerate(departments):
        lines += [
            f"  {department}:",
            f"    enclave: 127.0.0.1:{base_port + 2 + index}",
            f"    ca: identity/{department}/ca.crt",
            f"    revocations: identity/{department}/revocations.crl",
            f"    policy: {POLICIES_DIR}/{department}.yaml",
            "    # The only keys whose signatures make its policy or approvals valid.",
            f"    officers: {{{LOCAL_OFFICER}: {officers[department]}}}",
        ]
    lines += [
        "",
        "committee:",
        f"  name: {COMMITTEE}",
        f"  coordinator: 127.0.0.1:{base_port}",
        f"  aggregator: 127.0.0.1:{base_port + 1}",
        f"  ca: identity/{COMMITTEE}/ca.crt",
        f"  revocations: identity/{COMMITTEE}/revocations.crl",
        "",
        "tables:",
        "  # Medical-insurance claims: every district holds its own horizontal shard.",
        "  claims:",
        "    privacy_unit: person_id",
        f"    holders: [{', '.join(departments)}]",
        "    columns:",
    ]
    lines += [f"      {column}: {type_name}" for column, type_name in CLAIMS_COLUMNS.items()]
    water = list(departments[:2])
    positions = ["upstream", "downstream"][: len(water)]
    lines += [
        "",
        "  # Hourly water-quality readings per monitoring station, held by the "
        + " and ".join(f"{p} ({d})" for p, d in zip(positions, water, strict=True))
        + ",",
        "  # districts. Not personal data: the station is the privacy unit.",
        "  water_readings:",
        "    privacy_unit: station_id",
        f"    holders: [{', '.join(water)}]",
        "    columns:",
    ]
    lines += [f"      {column}: {type_name}" for column, type_name in WATER_COLUMNS.items()]
    return "\n".join(lines) + "\n"


def _platform_text(node: str) -> str:
    return f"""\
# The host's SIMULATED platform key, certified by identity/{VENDOR_DIR}/root.crt: it signs this
# enclave's attestation evidence (a real TEE keeps it in hardware). The threads and memory limit
# below are part of the enclave's measurement: change them and update the reference values.
platform:
  certificate: ../identity/{node}/platform.crt
  key: ../identity/{node}/platform.key
"""


def _attestation_text(department: Measurement, aggregator: Measurement) -> str:
    return f"""
# Attestation (docs/tee.md). Every verifier pins this SIMULATED vendor root and holds each
# enclave role to these reference values; `dataisland enclave measure --config NODE_FILE`
# prints a node's. An enclave whose code, pinned versions (DuckDB, sqlglot, pyarrow) or
# lockdown differ is refused; a debug enclave only while `development` is true.
attestation:
  vendor_root: identity/{VENDOR_DIR}/root.crt
  minimum_svn: {SVN}
  reference:
    department:
      measurement: {department.measurement}
      signer: {SIGNER}
    aggregator:
      measurement: {aggregator.measurement}
      signer: {SIGNER}
"""


def ports_needed(departments: int) -> int:
    """Loopback ports `init` uses: the coordinator, the aggregator, every enclave and witness,
    and a metrics port for each of them (its node's port plus the number of nodes)."""
    return 2 * node_count(departments)


def node_count(departments: int) -> int:
    """Processes of a local federation: coordinator, aggregator, enclaves, witnesses."""
    return 2 * departments + 3


def _metrics_text(port: int) -> str:
    return (
        "# Prometheus metrics over mutual TLS, for operators of this node's department\n"
        f"# (GET https://127.0.0.1:{port}/metrics with an operator certificate).\n"
        f"metrics_listen: 127.0.0.1:{port}\n"
    )


def _department_node_text(department: str, port: int, metrics_port: int) -> str:
    return f"""\
# Node configuration of department {department}'s enclave (`dataisland enclave serve --config`).
# Relative paths are resolved against this file's directory.
federation: ../federation.yaml
role: department
department: {department}
listen: 127.0.0.1:{port}
# The department's own DuckDB file; the enclave opens it read-only and locked down.
shard: ../{SHARDS_DIR}/{department}.duckdb
# This node's certificate (from {department}'s CA, DNS SAN checked by the coordinator) and key.
tls:
  certificate: ../identity/{department}/enclave-node.crt
  key: ../identity/{department}/enclave-node.key
{_platform_text(department)}\
# DuckDB resources for one query; a query still running after the timeout is interrupted.
threads: 1
memory_limit: 512MB
query_timeout_seconds: 30
# The longest SQL text accepted, in bytes (RESOURCE_EXHAUSTED beyond it).
max_sql_bytes: 16384
{_metrics_text(metrics_port)}"""


def _aggregator_node_text(port: int, metrics_port: int) -> str:
    return f"""\
# Node configuration of the executive committee's aggregator enclave
# (`dataisland enclave serve --role aggregator --config`). Paths are relative to this file.
federation: ../federation.yaml
role: aggregator
listen: 127.0.0.1:{port}
tls:
  certificate: ../identity/{COMMITTEE}/aggregator-node.crt
  key: ../identity/{COMMITTEE}/aggregator-node.key
{_platform_text(COMMITTEE)}threads: 1
memory_limit: 512MB
query_timeout_seconds: 30
# A released result larger than these is refused (checked on the released result only, never
# on partials: whether a limit trips must not depend on one person's rows).
max_result_rows: 1000000
max_result_bytes: 67108864
max_sql_bytes: 16384
{_metrics_text(metrics_port)}"""


def _coordinator_node_text(port: int, metrics_port: int) -> str:
    return f"""\
# Node configuration of the coordinator (`dataisland coordinator serve --config`): the
# untrusted host that department services call. Paths are relative to this file.
federation: ../federation.yaml
role: coordinator
listen: 127.0.0.1:{port}
tls:
  certificate: ../identity/{COMMITTEE}/coordinator-node.crt
  key: ../identity/{COMMITTEE}/coordinator-node.key
# Deadline for one query's fan-out to the enclaves and the merge.
query_timeout_seconds: 30
# Finished queries are kept for retention_seconds, and at most retention_max_queries of them
# (oldest finished dropped first); after that GetResult answers NOT_FOUND.
retention_seconds: 3600
retention_max_queries: 10000
# Limits (RESOURCE_EXHAUSTED with the setting's name beyond them): queries one requester may
# have pending or running, fan-outs one requester runs at once (the rest queue behind other
# requesters'), fan-outs running in total, RPCs per second per caller (sustained, and in a
# burst), the longest SQL and the largest request message accepted.
max_unfinished_per_requester: 16
max_running_per_requester: 4
query_workers: 8
rate_per_caller: 50
rate_burst: 100
max_sql_bytes: 16384
max_request_bytes: 4194304
# Queries waiting for officers' approvals are kept here, so a restart keeps them (template
# parameters included: this directory is the coordinator's own, never the audit log).
state_dir: ../state/coordinator
{_metrics_text(metrics_port)}"""


def parse_departments(text: str) -> list[str]:
    """Split a comma-separated department list and check every name.

    Raises:
        ConfigError: empty list, a name that is not lower-case letters/digits/underscores
            starting with a letter, a reserved node name, or a duplicate.
    """
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ConfigError("--departments lists no department")
    seen: set[str] = set()
    for name in names:
        if not re.match(NAME_PATTERN, name):
            raise ConfigError(
                f"invalid department name {name!r}: use lower-case letters, digits and "
                "underscores, starting with a letter (at most 63 characters)"
            )
        if name in RESERVED_NAMES:
            raise ConfigError(f"department name {name!r} is reserved for a committee node")
        if name in seen:
            raise ConfigError(f"department {name!r} is listed twice")
        seen.add(name)
    return names


def _columns_ddl(columns: dict[str, str]) -> str:
    return ", ".join(f'"{column}" {type_name}' for column, type_name in columns.items())


def create_shard(path: Path, tables: dict[str, TableEntry]) -> None:
    """Create a DuckDB file at `path` with one empty table per entry, typed as given.

    Raises:
        ConfigError: the file already exists or cannot be written.
    """
    if path.exists():
        raise ConfigError(f"shard {path} already exists")
    try:
        con = duckdb.connect(str(path))
    except duckdb.Error as exc:
        raise ConfigError(f"cannot create shard {path}: {exc}") from None
    try:
        for name, table in tables.items():
            con.execute(f'CREATE TABLE "{name}" ({_columns_ddl(dict(table.columns))})')
    finally:
        con.close()


def init_federation(
    directory: Path,
    departments: Sequence[str],
    *,
    name: str = "dataisland",
    base_port: int = DEFAULT_BASE_PORT,
    development: bool = True,
) -> Federation:
    """Write a new federation directory: federation file, node files, empty shards.

    The coordinator listens on `base_port`, the aggregator on `base_port + 1`, the
    departments on the ports after that, in the order given, then the audit log's witnesses
    (one per department, then the committee's). ``claims`` is held by every
    department; ``water_readings`` by the first two (upstream, downstream).

    Raises:
        ConfigError: `directory` exists and is not an empty directory, a department name is
            invalid or repeated, the ports do not fit, or the written files do not validate.
    """
    departments = parse_departments(",".join(departments))
    if not 1 <= base_port <= 65536 - ports_needed(len(departments)):
        raise ConfigError(
            f"base port {base_port} leaves no room for {ports_needed(len(departments))} ports"
        )
    metrics = node_count(len(departments))
    if directory.exists():
        if not directory.is_dir():
            raise ConfigError(f"{directory} exists and is not a directory")
        if any(directory.iterdir()):
            raise ConfigError(f"{directory} is not empty; init writes only into a new directory")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / NODES_DIR).mkdir()
    (directory / SHARDS_DIR).mkdir()

    federation_path = directory / FEDERATION_FILE
    federation_path.write_text(
        _federation_text(
            name=name,
            departments=departments,
            base_port=base_port,
            development=development,
            officers=provision_officers(directory, departments),
        ),
        encoding="utf-8",
    )
    federation = load_federation(federation_path)
    provision_local(
        directory,
        federation=federation.federation,
        departments=departments,
        committee=COMMITTEE,
        dns_name=federation.dns_name,
    )

    nodes = directory / NODES_DIR
    for index, department in enumerate(departments):
        (nodes / f"{department}.yaml").write_text(
            _department_node_text(
                department, base_port + 2 + index, base_port + 2 + index + metrics
            ),
            encoding="utf-8",
        )
    (nodes / "aggregator.yaml").write_text(
        _aggregator_node_text(base_port + 1, base_port + 1 + metrics), encoding="utf-8"
    )
    (nodes / "coordinator.yaml").write_text(
        _coordinator_node_text(base_port, base_port + metrics) + coordinator_log_yaml(COMMITTEE),
        encoding="utf-8",
    )
    log_section = provision_audit_log(
        directory,
        federation=federation.federation,
        departments=departments,
        committee=COMMITTEE,
        dns_name=federation.dns_name,
        first_port=base_port + 2 + len(departments),
        metrics_offset=metrics,
    )
    with federation_path.open("a", encoding="utf-8") as handle:
        handle.write(log_section)
    federation = load_federation(federation_path)
    for node_file in sorted(nodes.iterdir()):
        load_node_config(node_file)
    now = dt.datetime.now(dt.UTC)
    create_vendor(directory, now=now)
    for node in [*departments, COMMITTEE]:
        certify_platform(directory, node, now=now)
    with federation_path.open("a", encoding="utf-8") as handle:
        handle.write(
            _attestation_text(
                measure(load_node_config(nodes / f"{departments[0]}.yaml"), federation),
                measure(load_node_config(nodes / "aggregator.yaml"), federation),
            )
        )
    federation = load_federation(federation_path)

    for department in departments:
        held = {t: entry for t, entry in federation.tables.items() if department in entry.holders}
        create_shard(directory / SHARDS_DIR / f"{department}.duckdb", held)
        policy_text = demo_policy_text(department, departments=departments, tables=held)
        write_signed_policy(directory, department, policy_text)
    return federation


@main.command("init")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option(
    "--departments",
    default=",".join(DEFAULT_DEPARTMENTS),
    show_default=True,
    help="Comma-separated department names (the first two hold water readings).",
)
@click.option("--federation", "name", default="dataisland", show_default=True, help="Name.")
@click.option(
    "--base-port",
    default=DEFAULT_BASE_PORT,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="Coordinator port; aggregator +1, departments from +2.",
)
@click.option(
    "--dev/--no-dev",
    "development",
    default=True,
    show_default=True,
    help="Mark the federation as a development one (all CA keys on this machine).",
)
@friendly_errors
def init_command(
    directory: Path, departments: str, name: str, base_port: int, development: bool
) -> None:
    """Write a new federation directory DIRECTORY with an empty shard per department."""
    federation = init_federation(
        directory,
        parse_departments(departments),
        name=name,
        base_port=base_port,
        development=development,
    )
    console.print(f"[green]created[/] federation {federation.federation!r} in {directory}")
    console.print(
        "[yellow]development convenience:[/] every department's CA key, officer key and node "
        "key is in this one directory (identity/). In a real federation each department creates "
        "its own CA with `dataisland identity init-department` and keeps its keys to itself."
    )
    table = Table("node", "role", "address", "tables")
    for dept, entry in federation.departments.items():
        held = [t for t, e in federation.tables.items() if dept in e.holders]
        table.add_row(dept, "department", entry.enclave, ", ".join(held))
    table.add_row("aggregator", "committee", federation.committee.aggregator, "")
    table.add_row("coordinator", "committee", federation.committee.coordinator, "")
    if federation.log is not None:
        for witness, endpoint in federation.log.witnesses.items():
            table.add_row(f"witness-{witness}", "witness", endpoint.address, "")
    console.print(table)
    console.print(
        f"next: [bold]dataisland shard load {directory} --department D --table T FILE[/], "
        f"then [bold]dataisland up {directory}[/]"
    )


# --------------------------------------------------------------------------------------------
# shard load
# --------------------------------------------------------------------------------------------


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _source_relation(file: Path) -> str:
    name = file.name.lower()
    if name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz")):
        # Everything as text, then cast to the federation's types: auto-detection must not get
        # the chance to turn an identifier like 007 into the number 7.
        return f"read_csv({_sql_string(str(file))}, header = true, all_varchar = true)"
    if name.endswith((".parquet", ".pq")):
        return f"read_parquet({_sql_string(str(file))})"
    raise InvalidInputError(f"{file}: expected a .csv or .parquet file (chosen by extension)")


def _describe(con: duckdb.DuckDBPyConnection, relation: str) -> list[tuple[str, str]]:
    return [
        (str(r[0]), str(r[1])) for r in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    ]


def check_file_schema(
    con: duckdb.DuckDBPyConnection, relation: str, table: str, columns: dict[str, str]
) -> int:
    """Check a source relation against a logical table's schema; return its row count.

    Raises:
        SchemaMismatchError: a column is missing or unexpected, or some values of a column
            cannot be cast to its type (the column is named; values are not quoted).
    """
    found = _describe(con, relation)
    found_names = [n for n, _ in found]
    missing = [c for c in columns if c not in found_names]
    extra = [c for c in found_names if c not in columns]
    problems = []
    if missing:
        problems.append(f"missing column(s) {', '.join(map(repr, missing))}")
    if extra:
        problems.append(f"unexpected column(s) {', '.join(map(repr, extra))}")
    if problems:
        raise SchemaMismatchError(f"file does not match table {table!r}: {'; '.join(problems)}")
    checks = [
        f'count(*) FILTER (WHERE "{c}" IS NOT NULL AND TRY_CAST("{c}" AS {t}) IS NULL)'
        for c, t in columns.items()
    ]
    row = con.execute(f"SELECT count(*), {', '.join(checks)} FROM {relation}").fetchall()[0]
    source_types = dict(found)
    for (column, type_name), bad in zip(columns.items(), row[1:], strict=True):
        if bad:
            raise SchemaMismatchError(
                f"column {column!r} of table {table!r}: {bad} value(s) cannot be cast to "
                f"{type_name} (file type {source_types[column]})"
            )
    return int(row[0])


def _check_shard_table(
    con: duckdb.DuckDBPyConnection, shard: Path, table: str, columns: dict[str, str]
) -> None:
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_schema = 'main' AND table_name = ?",
        [table],
    ).fetchall()
    if not exists[0][0]:
        raise SchemaMismatchError(f"shard {shard} has no table {table!r}")
    actual = [(c, t) for c, t in _describe(con, f'"{table}"') if not is_reserved(c)]
    expected = list(columns.items())
    if actual != expected:
        differences = [
            f"{c!r} is {dict(actual).get(c, 'missing')} in the shard, {t} in the federation"
            for c, t in expected
            if dict(actual).get(c) != t
        ] + [f"{c!r} is not in the federation" for c, _ in actual if c not in columns]
        raise SchemaMismatchError(
            f"table {table!r} of shard {shard} differs from the federation file: "
            + ("; ".join(differences) or "column order differs")
        )


def shard_path(directory: Path, department: str) -> Path:
    """The shard file of `department`, as its node configuration names it.

    Raises:
        ConfigError: the node configuration is missing or invalid.
    """
    config = load_node_config(directory / NODES_DIR / f"{department}.yaml")
    if config.shard is None or config.department != department:
        raise ConfigError(f"node configuration of {department!r} names no shard for it")
    return config.shard


def load_shard_file(
    directory: Path,
    department: str,
    table: str,
    file: Path,
    *,
    on_total: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    batch_rows: int = LOAD_BATCH_ROWS,
) -> int:
    """Append a CSV or Parquet file to `department`'s shard of logical table `table`.

    The file must have exactly the table's columns (any order) with values castable to the
    federation's types. The append is one transaction: all rows or none.

    Args:
        directory: the federation directory.
        department: the department whose shard receives the rows.
        table: the logical table.
        file: a ``.csv`` (with a header) or ``.parquet`` file.
        on_total: called once with the number of rows to load, after the checks.
        on_batch: called with the number of rows of each batch appended.
        batch_rows: rows per batch.

    Returns:
        The number of rows appended.

    Raises:
        ConfigError: unknown department, a department that does not hold `table`, or a shard
            that cannot be opened (for instance because its node is running).
        UnknownTableError: the federation defines no such table.
        InvalidInputError: the file is missing or neither CSV nor Parquet.
        SchemaMismatchError: the file's or the shard's columns or types do not match.
    """
    federation = load_federation(directory / FEDERATION_FILE)
    if department not in federation.departments:
        raise ConfigError(
            f"no department {department!r} in the federation "
            f"(departments: {', '.join(federation.departments)})"
        )
    entry = federation.tables.get(table)
    if entry is None:
        raise UnknownTableError(
            f"no table {table!r} in the federation (tables: {', '.join(federation.tables)})"
        )
    if department not in entry.holders:
        raise ConfigError(
            f"department {department!r} does not hold a shard of {table!r} "
            f"(holders: {', '.join(entry.holders)})"
        )
    if not file.is_file():
        raise InvalidInputError(f"{file} is not a readable file")
    columns = dict(entry.columns)
    shard = shard_path(directory, department)

    source = duckdb.connect()
    try:
        relation = _source_relation(file)
        try:
            total = check_file_schema(source, relation, table, columns)
        except duckdb.Error as exc:
            raise InvalidInputError(f"cannot read {file}: {exc}") from None
        if on_total is not None:
            on_total(total)
        try:
            target = duckdb.connect(str(shard))
        except duckdb.Error as exc:
            raise ConfigError(
                f"cannot open shard {shard} for writing (is its node running?): {exc}"
            ) from None
        try:
            _check_shard_table(target, shard, table, columns)
            casts = ", ".join(f'CAST("{c}" AS {t}) AS "{c}"' for c, t in columns.items())
            reader = source.sql(f"SELECT {casts} FROM {relation}").to_arrow_reader(batch_rows)
            loaded = 0
            target.execute("BEGIN TRANSACTION")
            try:
                for batch in reader:
                    target.register("incoming_batch", batch)
                    target.execute(f'INSERT INTO "{table}" BY NAME SELECT * FROM incoming_batch')
                    target.unregister("incoming_batch")
                    loaded += batch.num_rows
                    if on_batch is not None:
                        on_batch(batch.num_rows)
                # Every row's unit masks, so partials can bound units as cheaply as a SUM.
                add_unit_masks(target, table, entry.privacy_unit)
                target.execute("COMMIT")
            except BaseException:
                target.execute("ROLLBACK")
                raise
        except duckdb.Error as exc:
            raise SchemaMismatchError(f"loading {file} into {table!r} failed: {exc}") from None
        finally:
            target.close()
    finally:
        source.close()
    return loaded


@main.group("shard")
def shard_group() -> None:
    """Manage a department's own shard (its own tooling; no node involved)."""


@shard_group.command("load")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--department", "-d", required=True, help="The department whose shard to load.")
@click.option("--table", "-t", required=True, help="The logical table to append to.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@friendly_errors
def shard_load_command(directory: Path, department: str, table: str, file: Path) -> None:
    """Append FILE (CSV with a header, or Parquet) to a department's shard of a table."""
    with Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task(f"checking {file.name}", total=None)

        def on_total(total: int) -> None:
            progress.update(task, total=total, description=f"loading {file.name}")

        def on_batch(rows: int) -> None:
            progress.advance(task, rows)

        loaded = load_shard_file(
            directory, department, table, file, on_total=on_total, on_batch=on_batch
        )
    console.print(f"[green]loaded[/] {loaded:,} rows into {department}'s shard of {table}")


# --------------------------------------------------------------------------------------------
# up
# --------------------------------------------------------------------------------------------


class _TerminatedError(Exception):
    """SIGTERM arrived: stop everything as on Ctrl-C."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise _TerminatedError

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _nodes_table(nodes: FederationProcesses) -> Table:
    table = Table("node", "role", "address", "pid", "log")
    for node in nodes.nodes:
        table.add_row(
            node.spec.name,
            node.spec.role,
            node.spec.address,
            str(node.pid),
            str(node.log.relative_to(nodes.directory)),
        )
    return table


@main.command("up")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--startup-timeout", default=30.0, show_default=True, help="Seconds per node group.")
@friendly_errors
def up_command(directory: Path, startup_timeout: float) -> None:
    """Start every node of DIRECTORY on loopback; Ctrl-C or SIGTERM stops them all."""
    try:
        with _sigterm_raises():
            with console.status("starting nodes"):
                nodes = FederationProcesses(directory, startup_timeout=startup_timeout)
                nodes.start()
            with nodes:
                console.print(_nodes_table(nodes))
                console.print(
                    f"coordinator at [bold]{nodes.coordinator_address}[/]; "
                    f"logs in {directory / LOGS_DIR}; Ctrl-C to stop"
                )
                while True:
                    dead = nodes.exited()
                    if dead:
                        node = dead[0]
                        raise ConfigError(
                            f"node {node.spec.name} exited with status "
                            f"{node.process.returncode}; see {node.log}"
                        )
                    time.sleep(0.5)
    except (KeyboardInterrupt, _TerminatedError):
        console.print("stopped every node")


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------

DEMO_QUERIES: tuple[tuple[str, str], ...] = (
    (
        "Cross-district claims per month: totals and averages",
        "SELECT date_trunc('month', service_date) AS month, count(*) AS claims, "
        "sum(amount) AS total_amount, avg(amount) AS avg_amount, "
        "sum(reimbursed) AS total_reimbursed FROM claims "
        "GROUP BY date_trunc('month', service_date) ORDER BY month",
    ),
    (
        "Spread of claim amounts by category and age band",
        "SELECT category, CASE WHEN age < 18 THEN '0-17' WHEN age < 45 THEN '18-44' "
        "WHEN age < 65 THEN '45-64' ELSE '65+' END AS age_band, count(*) AS claims, "
        "avg(amount) AS avg_amount, stddev_samp(amount) AS sd_amount FROM claims "
        "GROUP BY category, CASE WHEN age < 18 THEN '0-17' WHEN age < 45 THEN '18-44' "
        "WHEN age < 65 THEN '45-64' ELSE '65+' END ORDER BY category, age_band",
    ),
    (
        "Inpatient share and stays by hospital level (aggregate FILTER)",
        "SELECT hospital_level, count(*) AS claims, "
        "count(*) FILTER (WHERE category = 'inpatient') AS inpatient_claims, "
        "avg(length_of_stay) FILTER (WHERE category = 'inpatient') AS avg_inpatient_stay, "
        "sum(reimbursed) / sum(amount) AS reimbursed_ratio FROM claims "
        "GROUP BY hospital_level ORDER BY hospital_level",
    ),
    (
        "Daily water quality per station, upstream and downstream",
        "SELECT station_id, date_trunc('day', reading_at) AS day, count(*) AS readings, "
        "avg(ph) AS avg_ph, min(dissolved_oxygen) AS min_do, max(turbidity) AS max_turbidity, "
        "avg(ammonia_nitrogen) AS avg_nh3n FROM water_readings "
        "WHERE reading_at < DATE '2024-06-03' "
        "GROUP BY station_id, date_trunc('day', reading_at) ORDER BY station_id, day",
    ),
    (
        "Hourly profile of dissolved oxygen across all stations (first week)",
        "SELECT date_part('hour', reading_at) AS hour, avg(dissolved_oxygen) AS avg_do, "
        "stddev_pop(dissolved_oxygen) AS sd_do FROM water_readings "
        "WHERE reading_at < DATE '2024-06-08' "
        "GROUP BY date_part('hour', reading_at) ORDER BY hour",
    ),
)

DEMO_REFUSED = (
    "A query that asks for rows, not aggregates, is refused",
    "SELECT person_id, amount FROM claims",
)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port(count: int, *, attempts: int = 200) -> int:
    """A port p such that p .. p+count-1 are all free on loopback right now.

    Raises:
        ConfigError: no such range found.
    """
    rng = random.SystemRandom()
    for _ in range(attempts):
        base = rng.randrange(20_000, 32_000)  # below the ephemeral range (32768+)
        if all(_port_free(base + offset) for offset in range(count)):
            return base
    raise ConfigError(f"found no {count} consecutive free loopback ports")


def _result_table(columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[object]]) -> Table:
    table = Table(*(f"{name}\n[dim]{type_name}[/]" for name, type_name in columns))
    for row in rows:
        table.add_row(*("[dim]NULL[/]" if cell is None else _short(str(cell)) for cell in row))
    return table


_MIDNIGHT = re.compile(r"^(\d{4}-\d\d-\d\d)T00:00:00(\.0+)?$")


def _short(cell: str) -> str:
    # Canonical strings carry every digit and the full timestamp; a demo table reads better
    # with fewer.
    midnight = _MIDNIGHT.match(cell)
    if midnight:
        return midnight.group(1)
    if "." in cell and "e" not in cell.lower() and len(cell.split(".")[1]) > 4:
        with contextlib.suppress(ValueError):
            return f"{float(cell):,.4f}"
    return cell


def _populate_demo(directory: Path, federation: Federation, rows: int, seed: int) -> None:
    water_holders = list(federation.tables["water_readings"].holders)
    for department in federation.departments:
        held = [t for t, e in federation.tables.items() if department in e.holders]
        populate_shard(
            shard_path(directory, department),
            department,
            held,
            rows=rows,
            seed=seed,
            downstream=department in water_holders[1:],
        )


def run_demo(directory: Path, *, rows: int, seed: int) -> int:
    """Build, populate, start and query a demo federation in `directory`; return failures."""
    from dataisland.client import Client, QueryFailedError

    started = time.monotonic()
    departments = list(DEFAULT_DEPARTMENTS)
    base_port = free_base_port(ports_needed(len(departments)))
    with console.status("writing the federation directory and synthetic shards"):
        federation = init_federation(
            directory, departments, name="demonstration_zone", base_port=base_port
        )
        _populate_demo(directory, federation, rows, seed)
    console.print(
        f"federation [bold]{federation.federation}[/] in {directory}: "
        f"{len(departments)} districts x {rows:,} claims; water readings upstream "
        f"({departments[0]}) and downstream ({departments[1]})"
    )
    failures = 0
    with console.status("starting enclaves, aggregator and coordinator"):
        nodes = FederationProcesses(directory)
        nodes.start()
    with nodes:
        console.print(_nodes_table(nodes))
        requester = f"{departments[0]}/requester/analyst"
        console.print(f"asking as [bold]{requester}[/] over mutual TLS")
        with Client.from_federation(directory, identity=requester) as client:
            for title, sql in DEMO_QUERIES:
                console.print(Panel(sql, title=title, title_align="left", border_style="cyan"))
                try:
                    result = client.query(sql, purpose="demo")
                except QueryFailedError as exc:
                    failures += 1
                    err_console.print(f"[bold red]failed[/] ({exc.code}): {exc}")
                    continue
                console.print(_result_table(result.columns, result.rows))
            title, sql = DEMO_REFUSED
            console.print(Panel(sql, title=title, title_align="left", border_style="yellow"))
            try:
                client.query(sql, purpose="demo")
            except QueryFailedError as exc:
                console.print(f"[bold yellow]refused[/] ({exc.code}): {exc}")
            else:
                failures += 1
                err_console.print("[bold red]the row-level query was not refused[/]")
            failures += run_policy_scenes(
                directory, departments, client=client, console=console, show=_result_table
            )
    console.print(f"stopped every node; demo took {time.monotonic() - started:.1f}s")
    return failures


@main.command("demo")
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Build the federation in this (new or empty) directory and leave it there.",
)
@click.option("--rows", default=30_000, show_default=True, help="Claims per district.")
@click.option("--seed", default=2024, show_default=True, help="Seed of the synthetic data.")
@friendly_errors
def demo_command(keep: Path | None, rows: int, seed: int) -> None:
    """Run a three-district federation on loopback with synthetic data and query it."""
    try:
        with _sigterm_raises():
            if keep is not None:
                failures = run_demo(keep, rows=rows, seed=seed)
                console.print(f"federation directory kept in {keep}")
            else:
                with tempfile.TemporaryDirectory(prefix="dataisland-demo-") as tmp:
                    failures = run_demo(Path(tmp) / "federation", rows=rows, seed=seed)
    except (KeyboardInterrupt, _TerminatedError):
        err_console.print("interrupted; every node stopped")
        raise SystemExit(130) from None
    if failures:
        raise DataislandError(f"{failures} demo quer{'y' if failures == 1 else 'ies'} failed")
