"""`dataisland identity ...`: each department is its own certificate authority.

`init-department` creates a department's (or the committee's) CA and an empty revocation list;
`issue` issues a requester, officer, auditor or node certificate from that department's CA;
`revoke` adds a certificate to its CA's revocation list, which running nodes re-read.
`provision_local` does all of it for a whole federation on one machine: a development
convenience, since in a real federation each department keeps its CA key to itself.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path

import click
from cryptography import x509
from rich.table import Table

from dataisland.cli.app import console, friendly_errors, main
from dataisland.errors import ConfigError
from dataisland.identity import (
    NODE_ROLES,
    ROLES,
    Credentials,
    Principal,
    authority_paths,
    create_authority,
    credential_paths,
    issue,
    load_certificate,
    load_private_key,
    revocation_list,
    write_pem,
    write_private_key,
)

LOCAL_PEOPLE = (
    ("requester", "analyst"),
    ("officer", "officer"),
    ("auditor", "auditor"),
    ("operator", "operator"),
)
"""The people `provision_local` issues for every department (the committee gets an operator)."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def init_authority(directory: Path, *, federation: str, department: str) -> Credentials:
    """Create `department`'s CA (certificate, owner-only key) and an empty revocation list.

    Raises:
        ConfigError: the department already has a CA here.
    """
    ca_crt, ca_key, crl = authority_paths(directory, department)
    if ca_crt.exists():
        raise ConfigError(f"{department} already has a CA at {ca_crt}")
    authority = create_authority(federation=federation, department=department, now=_now())
    write_private_key(ca_key, authority.key_pem())
    write_pem(ca_crt, authority.certificate_pem())
    write_pem(crl, _crl_pem(authority, []))
    return authority


def _crl_pem(authority: Credentials, serials: Sequence[int]) -> bytes:
    from cryptography.hazmat.primitives import serialization

    crl = revocation_list(authority, revoked_serials=serials, now=_now())
    return crl.public_bytes(serialization.Encoding.PEM)


def load_authority(directory: Path, department: str) -> Credentials:
    """Read a department's CA credentials from a federation directory.

    Raises:
        ConfigError: the department has no CA here.
    """
    ca_crt, ca_key, _ = authority_paths(directory, department)
    if not ca_crt.is_file() or not ca_key.is_file():
        raise ConfigError(f"{department} has no CA in {directory} (run identity init-department)")
    return Credentials(load_private_key(ca_key.read_bytes()), load_certificate(ca_crt.read_bytes()))


def issue_identity(
    directory: Path,
    *,
    federation: str,
    department: str,
    role: str,
    name: str,
    dns_names: Sequence[str] = (),
    days: int = 365,
) -> Path:
    """Issue a certificate from `department`'s CA into the federation directory; return its path.

    Raises:
        ConfigError: no CA, or the identity already exists.
        InvalidInputError: bad role or name.
    """
    authority = load_authority(directory, department)
    principal = Principal(federation, department, role, name)
    certificate, key = credential_paths(directory, department=department, role=role, name=name)
    if certificate.exists():
        raise ConfigError(f"{principal} already exists at {certificate}")
    issued = issue(authority, principal=principal, now=_now(), dns_names=dns_names, days=days)
    write_private_key(key, issued.key_pem())
    write_pem(certificate, issued.certificate_pem())
    return certificate


def provision_local(
    directory: Path,
    *,
    federation: str,
    departments: Sequence[str],
    committee: str,
    dns_name: Callable[[str, str], str],
) -> None:
    """Every CA, node certificate and a requester, officer, auditor and operator per department.

    `dns_name(role, department)` gives each node's DNS SAN (Federation.dns_name).
    """
    for department in [*departments, committee]:
        init_authority(directory, federation=federation, department=department)
    for department in departments:
        issue_identity(
            directory,
            federation=federation,
            department=department,
            role="enclave",
            name="node",
            dns_names=[dns_name("enclave", department)],
        )
        for role, name in LOCAL_PEOPLE:
            issue_identity(
                directory, federation=federation, department=department, role=role, name=name
            )
    for role in ("coordinator", "aggregator"):
        issue_identity(
            directory,
            federation=federation,
            department=committee,
            role=role,
            name="node",
            dns_names=[dns_name(role, committee)],
        )
    # The committee's operator reads the coordinator's and the aggregator's metrics.
    issue_identity(
        directory, federation=federation, department=committee, role="operator", name="operator"
    )


def _federation_name(directory: Path, given: str | None) -> str:
    if given is not None:
        return given
    from dataisland.federation import load_federation

    return load_federation(directory / "federation.yaml").federation


@main.group()
def identity() -> None:
    """Certificate authorities and identities (each department is its own CA)."""


@identity.command("init-department")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.argument("department")
@click.option("--federation", "federation_name", help="federation name (default: from DIRECTORY)")
@friendly_errors
def init_department_command(directory: Path, department: str, federation_name: str | None) -> None:
    """Create DEPARTMENT's certificate authority under DIRECTORY/identity/DEPARTMENT."""
    name = _federation_name(directory, federation_name)
    authority = init_authority(directory, federation=name, department=department)
    ca_crt, ca_key, crl = authority_paths(directory, department)
    console.print(f"[green]created[/] CA of {department}: {ca_crt} (key {ca_key}, owner-only)")
    console.print(f"revocation list: {crl}; serial {authority.certificate.serial_number:x}")
    console.print(
        "List the CA certificate under the department in federation.yaml (ca:, revocations:)."
    )


@identity.command("issue")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--department", required=True)
@click.option("--role", required=True, type=click.Choice(sorted(ROLES)))
@click.option("--dns", "dns_names", multiple=True, help="DNS SAN (nodes: how clients check them)")
@click.option("--days", default=365, show_default=True, type=click.IntRange(1, 3650))
@click.option("--federation", "federation_name", help="federation name (default: from DIRECTORY)")
@click.argument("name")
@friendly_errors
def issue_command(
    directory: Path,
    department: str,
    role: str,
    dns_names: tuple[str, ...],
    days: int,
    federation_name: str | None,
    name: str,
) -> None:
    """Issue NAME a certificate for ROLE from DEPARTMENT's CA."""
    federation = _federation_name(directory, federation_name)
    if role in NODE_ROLES and not dns_names:
        raise ConfigError(f"a {role} node certificate needs --dns (its clients check that name)")
    path = issue_identity(
        directory,
        federation=federation,
        department=department,
        role=role,
        name=name,
        dns_names=dns_names,
        days=days,
    )
    console.print(f"[green]issued[/] spiffe://{federation}/dept/{department}/{role}/{name}: {path}")


@identity.command("revoke")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--department", required=True)
@click.argument("certificate", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@friendly_errors
def revoke_command(directory: Path, department: str, certificate: Path) -> None:
    """Revoke CERTIFICATE in DEPARTMENT's revocation list (running nodes pick it up at once)."""
    authority = load_authority(directory, department)
    revoked = load_certificate(certificate.read_bytes())
    if revoked.issuer != authority.certificate.subject:
        raise ConfigError(f"{certificate} was not issued by {department}'s CA")
    _, _, crl_path = authority_paths(directory, department)
    serials = [r.serial_number for r in x509.load_pem_x509_crl(crl_path.read_bytes())]
    write_pem(crl_path, _crl_pem(authority, [*serials, revoked.serial_number]))
    table = Table("department", "revoked serial", "revocation list")
    table.add_row(department, f"{revoked.serial_number:x}", str(crl_path))
    console.print(table)
