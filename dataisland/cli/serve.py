"""`dataisland enclave serve` and `dataisland coordinator serve`: run one node in the foreground."""

from __future__ import annotations

from pathlib import Path

import click

from dataisland.cli.app import friendly_errors, main
from dataisland.errors import ConfigError
from dataisland.federation import load_node_config
from dataisland.logs import setup_logging


def _logging(node: str) -> None:
    # One JSON object per line, with the node's name and the query id (dataisland/logs.py).
    setup_logging(node)


@main.group()
def enclave() -> None:
    """Run or inspect an enclave node (a department's, or the aggregator)."""


@enclave.command("serve")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True)
@click.option(
    "--role",
    type=click.Choice(["department", "aggregator"]),
    default="department",
    show_default=True,
    help="which enclave role this node plays; must match the configuration file",
)
@friendly_errors
def enclave_serve(config_path: Path, role: str) -> None:
    """Serve one enclave node until Ctrl-C or SIGTERM."""
    from enclave.server import serve_aggregator, serve_department

    config = load_node_config(config_path)
    if config.role != role:
        raise ConfigError(f"{config_path} configures a {config.role} node, not a {role} node")
    _logging(config.department if role == "department" and config.department else role)
    if role == "department":
        serve_department(config)
    else:
        serve_aggregator(config)


@enclave.command("measure")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True)
@friendly_errors
def enclave_measure(config_path: Path) -> None:
    """Print the measurement and configuration claim an enclave node's evidence will carry.

    The measurement covers the installed code (dataisland/, enclave/, policies/), the pinned
    versions of DuckDB, sqlglot and pyarrow, and the node's lockdown (docs/tee.md); the
    configuration claim covers the pinned officer keys and the policy file's name.
    """
    from dataisland.federation import load_federation
    from enclave.attestation import SIGNER, SVN, measure

    config = load_node_config(config_path)
    measured = measure(config, load_federation(config.federation))
    click.echo(f"role:        {config.role}")
    click.echo(f"measurement: {measured.measurement}")
    click.echo(f"config:      {measured.config}")
    click.echo(f"signer:      {SIGNER}")
    click.echo(f"svn:         {SVN}")


@main.group()
def coordinator() -> None:
    """Run the coordinator."""


@coordinator.command("serve")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True)
@friendly_errors
def coordinator_serve(config_path: Path) -> None:
    """Serve the coordinator until Ctrl-C or SIGTERM."""
    from coordinator.server import serve_coordinator

    config = load_node_config(config_path)
    if config.role != "coordinator":
        raise ConfigError(f"{config_path} configures a {config.role} node, not the coordinator")
    _logging("coordinator")
    serve_coordinator(config)
