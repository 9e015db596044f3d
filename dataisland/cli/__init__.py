"""The `dataisland` command: the only place that wires the kernel, enclave, coordinator together.

Each sub-module registers its commands on `main`; this module only assembles them.
"""

from __future__ import annotations

import click

from dataisland.cli import approvals as _approvals  # noqa: F401  (registers approvals, catalog)
from dataisland.cli import audit as _audit  # noqa: F401  (registers audit)
from dataisland.cli import federation as _federation  # noqa: F401  (registers init, shard, up, demo)
from dataisland.cli import identity as _identity  # noqa: F401  (registers identity)
from dataisland.cli import policy as _policy  # noqa: F401  (registers policy)
from dataisland.cli import query as _query  # noqa: F401  (registers query)
from dataisland.cli import serve as _serve  # noqa: F401  (registers enclave, coordinator)
from dataisland.cli import witness as _witness  # noqa: F401  (registers witness)
from dataisland.cli.app import main

__all__ = ["click", "main"]
