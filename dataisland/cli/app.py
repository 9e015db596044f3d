"""The root `dataisland` command group and the error handling every sub-command shares."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

import click
from rich.console import Console

from dataisland.errors import DataislandError

P = ParamSpec("P")
R = TypeVar("R")

console = Console()
err_console = Console(stderr=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dataisland")
def main() -> None:
    """dataisland: federated SQL aggregates over departments' shards, data never handed over."""


def friendly_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Print a DataislandError as one clear line and exit 1, instead of a traceback."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except DataislandError as exc:
            err_console.print(f"[bold red]error[/] ({exc.code}): {exc}")
            sys.exit(1)

    return wrapper
