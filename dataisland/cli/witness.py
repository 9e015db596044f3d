"""`dataisland witness serve`, and the audit log's keys, witnesses and node files for `init`.

`provision_audit_log` is what `dataisland init` runs for the log: the log's Ed25519 checkpoint key
(owner-only, under the committee's identity directory), one witness per department plus one for
the committee (a TLS certificate from its own department's CA with its DNS SAN, an Ed25519
cosigning key, a node file), and the `log:` section of the federation file with every verifier
key and the quorum. Like the rest of `init`, holding every department's keys in one directory is
a development convenience: a real department generates its witness's keys itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from dataisland.cli.app import friendly_errors, main
from dataisland.cli.identity import issue_identity
from dataisland.errors import ConfigError
from dataisland.federation import load_node_config
from dataisland.identity import IDENTITY_DIR
from dataisland.logs import setup_logging
from ledger.keys import generate_key
from ledger.note import SIG_TYPE_COSIGNATURE_V1, SIG_TYPE_ED25519, Ed25519Verifier

AUDIT_DIR = "audit"
"""Where a local federation directory keeps the log and the witnesses' state."""
LOG_KEY_FILE = "log.key"
WITNESS_KEY_FILE = "witness-cosigner.key"


def default_quorum(witnesses: int) -> int:
    """A strict majority: 3 of 4, 2 of 3, 3 of 5.

    With n witnesses and quorum q, two inconsistent checkpoints both reach the quorum only if at
    least 2q - n witnesses cosign both sides; a majority makes that at least one (two for 3-of-4).
    """
    return witnesses // 2 + 1


@dataclass(frozen=True)
class LogLayout:
    """Where `provision_audit_log` put things, relative to the federation directory."""

    origin: str
    log_key: Path
    witness_nodes: dict[str, Path]


def log_origin(dns_name: Callable[[str, str], str], committee: str) -> str:
    """The log's origin line (and its key's name): ``log.<committee>.<federation>.dataisland``."""
    return dns_name("log", committee)


def _witness_node_text(department: str, port: int, metrics_port: int | None) -> str:
    return f"""\
# Node configuration of {department}'s audit-log witness (`dataisland witness serve --config`):
# C2SP tlog-witness over HTTPS with mutual TLS. It cosigns a checkpoint only if it is consistent
# with the last one it cosigned, and keeps that state in witness_state (written atomically).
# Paths are relative to this file.
federation: ../federation.yaml
role: witness
department: {department}
listen: 127.0.0.1:{port}
tls:
  certificate: ../{IDENTITY_DIR}/{department}/witness-node.crt
  key: ../{IDENTITY_DIR}/{department}/witness-node.key
# This witness's Ed25519 cosigning key (owner-only); its verifier key is in federation.yaml.
witness_key: ../{IDENTITY_DIR}/{department}/{WITNESS_KEY_FILE}
witness_state: ../{AUDIT_DIR}/witness-{department}/state.json
""" + (
        ""
        if metrics_port is None
        else "# Prometheus metrics over mutual TLS, for operators of this department.\n"
        f"metrics_listen: 127.0.0.1:{metrics_port}\n"
    )


def provision_audit_log(
    directory: Path,
    *,
    federation: str,
    departments: Sequence[str],
    committee: str,
    dns_name: Callable[[str, str], str],
    first_port: int,
    metrics_offset: int | None = None,
) -> str:
    """Write the log key, every witness's identity, key and node file; return the `log:` YAML.

    Witness ports are `first_port`, `first_port + 1`, ... in the order departments, committee;
    with `metrics_offset`, each serves metrics on its port plus that offset.

    Raises:
        ConfigError: an identity already exists.
    """
    origin = log_origin(dns_name, committee)
    log_key = generate_key(directory / IDENTITY_DIR / committee / LOG_KEY_FILE)
    log_vkey = Ed25519Verifier(origin, log_key.public_key(), SIG_TYPE_ED25519).to_vkey()
    witnesses = [*departments, committee]
    quorum = default_quorum(len(witnesses))
    lines = [
        "",
        "# The audit log (RFC 9162 Merkle tree, C2SP checkpoints). The coordinator appends",
        "# every decision and signs checkpoints with the log key; each witness below cosigns a",
        "# checkpoint only if it is consistent with the last one it cosigned, and a checkpoint",
        "# counts once `quorum` distinct witnesses cosigned it. What the quorum protects: with n",
        "# witnesses and quorum q, a fork (two inconsistent checkpoints, both cosigned) needs at",
        f"# least 2q - n witnesses to sign both sides; here q = {quorum} of n = {len(witnesses)},",
        f"# so at least {2 * quorum - len(witnesses)} witness(es) would have to collude. A higher",
        "# quorum needs more colluders but tolerates fewer witnesses down (n - q may be down).",
        "log:",
        f"  origin: {origin}",
        f"  verifier_key: {log_vkey}",
        f"  quorum: {quorum}",
        "  witnesses:",
    ]
    nodes = directory / "nodes"
    for index, department in enumerate(witnesses):
        issue_identity(
            directory,
            federation=federation,
            department=department,
            role="witness",
            name="node",
            dns_names=[dns_name("witness", department)],
        )
        key = generate_key(directory / IDENTITY_DIR / department / WITNESS_KEY_FILE)
        vkey = Ed25519Verifier(
            dns_name("witness", department), key.public_key(), SIG_TYPE_COSIGNATURE_V1
        ).to_vkey()
        port = first_port + index
        node_file = nodes / f"witness-{department}.yaml"
        metrics_port = None if metrics_offset is None else port + metrics_offset
        node_file.write_text(_witness_node_text(department, port, metrics_port), encoding="utf-8")
        load_node_config(node_file)
        lines += [
            f"    {department}:",
            f"      address: 127.0.0.1:{port}",
            f"      verifier_key: {vkey}",
            f"      ca: {IDENTITY_DIR}/{department}/ca.crt",
        ]
    return "\n".join(lines) + "\n"


def coordinator_log_yaml(committee: str) -> str:
    """The lines of the coordinator's node file that locate the log and its key."""
    return (
        "# The audit log: entries and cosigned checkpoints (appended durably before answering),\n"
        "# and the log's Ed25519 checkpoint key (owner-only).\n"
        f"log_dir: ../{AUDIT_DIR}/log\n"
        f"log_key: ../{IDENTITY_DIR}/{committee}/{LOG_KEY_FILE}\n"
    )


@main.group("witness")
def witness_group() -> None:
    """Run an audit-log witness (C2SP tlog-witness over mutual TLS)."""


@witness_group.command("serve")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True)
@friendly_errors
def witness_serve(config_path: Path) -> None:
    """Serve one witness until Ctrl-C or SIGTERM."""
    from ledger.witness_service import serve_witness

    config = load_node_config(config_path)
    if config.role != "witness":
        raise ConfigError(f"{config_path} configures a {config.role} node, not a witness")
    setup_logging(f"witness-{config.department}")
    serve_witness(config)
