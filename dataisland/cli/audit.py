"""`dataisland audit ...`: read, export and verify the audit log; fetch and verify receipts.

- `audit log`: the entries, one row each (index, time, kind, requester, purpose, decision, SQL);
- `audit export DIR OUT`: a C2SP tlog-tiles export plus the checkpoint history and a keys file,
  from the running coordinator (AuditService, as an auditor) or, when the federation is stopped,
  straight from its log directory;
- `audit verify OUT`: `ledger.verify.verify_export`, offline, and with `--federation` every enclave
  signature in the entries (`ledger.signatures`); exits 1 naming the first bad index;
- `audit receipt QUERY_ID`: the requester's receipt (AuditService.GetReceipt) as a JSON file;
- `audit verify-receipt FILE`: `ledger.receipt.verify_receipt` with the federation file's keys.

The keys an auditor trusts come from its own copy of the federation file (`log:` section), or,
for `verify` without `--federation`, from the export's own `keys` file (self-consistency only).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click
import grpc
from rich.table import Table

from dataisland.attestation import TrustAnchors
from dataisland.cli.app import console, err_console, friendly_errors, main
from dataisland.cli.witness import default_quorum
from dataisland.errors import ConfigError, DataislandError
from dataisland.federation import Federation, load_federation, load_node_config
from dataisland.identity import credential_paths
from dataisland.rpc import error_from_rpc
from dataisland.supervisor import FEDERATION_FILE, NODES_DIR
from dataisland.tls import KeyPair, secure_channel
from dataisland.v1 import audit_pb2, audit_pb2_grpc
from ledger.checkpoint import Checkpoint
from ledger.entries import Entry
from ledger.errors import LedgerError, StorageError, VerificationError
from ledger.merkle import MerkleTree, hash_leaf
from ledger.note import SIG_TYPE_COSIGNATURE_V1, Ed25519Verifier, Note
from ledger.receipt import Receipt, ReceiptEntry, ReceiptReport, verify_receipt
from ledger.signatures import SignatureChecker
from ledger.storage import LogStorage
from ledger.tiles import write_export
from ledger.verify import verify_export

RPC_TIMEOUT = 30.0


def _federation(directory: Path) -> Federation:
    federation = load_federation(directory / FEDERATION_FILE)
    if federation.log is None:
        raise ConfigError(f"{directory / FEDERATION_FILE} has no 'log:' section")
    return federation


def federation_keys(federation: Federation) -> tuple[Ed25519Verifier, list[Ed25519Verifier]]:
    """The log's and the witnesses' verifier keys from the federation file.

    Raises:
        ConfigError: a key does not parse.
    """
    assert federation.log is not None
    try:
        log_key = Ed25519Verifier.from_vkey(federation.log.verifier_key)
        witnesses = [
            Ed25519Verifier.from_vkey(w.verifier_key) for w in federation.log.witnesses.values()
        ]
    except LedgerError as exc:
        raise ConfigError(f"federation file log keys: {exc}") from None
    return log_key, witnesses


def _default_identity(federation: Federation, role: str) -> str:
    first = next(iter(federation.departments))
    name = "analyst" if role == "requester" else role
    return f"{first}/{role}/{name}"


def _stub(
    directory: Path, federation: Federation, identity: str
) -> audit_pb2_grpc.AuditServiceStub:
    parts = identity.split("/")
    if len(parts) != 3:
        raise ConfigError(f"identity {identity!r} is not DEPARTMENT/ROLE/NAME")
    certificate, key = credential_paths(
        directory, department=parts[0], role=parts[1], name=parts[2]
    )
    if not certificate.is_file():
        raise ConfigError(f"no identity {identity} in {directory} (looked for {certificate})")
    channel = secure_channel(
        federation.committee.coordinator,
        own=KeyPair.load(certificate, key),
        server_ca_pem=federation.committee.ca.read_bytes(),
        server_name=federation.dns_name("coordinator", federation.committee.name),
    )
    return audit_pb2_grpc.AuditServiceStub(channel)


def _call(method: object, request: object) -> object:
    try:
        return method(request, timeout=RPC_TIMEOUT)  # type: ignore[operator]
    except grpc.RpcError as exc:
        raise error_from_rpc(exc, node="the coordinator") from None


# ---------------------------------------------------------------------------------------------
# where the log is read from
# ---------------------------------------------------------------------------------------------


@dataclass
class LogSnapshot:
    """Everything of a log needed to list or export it, up to its latest cosigned checkpoint."""

    entries: list[bytes]
    history: list[bytes]
    source: str

    @property
    def size(self) -> int:
        """Entries covered by the latest cosigned checkpoint (0 without one)."""
        if not self.history:
            return 0
        return Checkpoint.from_text(Note.from_bytes(self.history[-1]).text).size


def _log_dir(directory: Path) -> Path | None:
    path = directory / NODES_DIR / "coordinator.yaml"
    if not path.is_file():
        return None
    return load_node_config(path).log_dir


@contextmanager
def _local_log(directory: Path) -> Iterator[LogStorage | None]:
    """The log directory opened, or None when it is absent or the coordinator holds it."""
    log_dir = _log_dir(directory)
    if log_dir is None or not (log_dir / "entries.log").is_file():
        yield None
        return
    try:
        storage = LogStorage.open(log_dir, create=False)
    except StorageError:
        yield None  # open in another process: the coordinator is running
        return
    try:
        yield storage
    finally:
        storage.close()


def snapshot(directory: Path, *, identity: str | None, all_entries: bool) -> LogSnapshot:
    """Read the log of a federation directory: from its files when the federation is stopped,
    else from the running coordinator's AuditService as `identity` (an auditor).

    With `all_entries`, every entry (also those after the latest checkpoint) is read.

    Raises:
        ConfigError, DataislandError: no log, unreadable files, or the RPCs failed.
    """
    federation = _federation(directory)
    with _local_log(directory) as storage:
        if storage is not None:
            local = LogSnapshot([], storage.checkpoints(), f"files in {storage.directory}")
            local.entries = list(storage.entries(0, storage.size if all_entries else local.size))
            return local
    stub = _stub(directory, federation, identity or _default_identity(federation, "auditor"))
    history: list[bytes] = []
    token = ""
    while True:
        page = _call(stub.ListCheckpoints, audit_pb2.ListCheckpointsRequest(page_token=token))
        assert isinstance(page, audit_pb2.ListCheckpointsResponse)
        history.extend(page.checkpoints)
        token = page.next_page_token
        if not token:
            break
    snap = LogSnapshot([], history, f"the coordinator at {federation.committee.coordinator}")
    end: int | None = None if all_entries else snap.size
    entries: list[bytes] = []
    while end is None or len(entries) < end:
        response = _call(
            stub.GetEntries,
            audit_pb2.GetEntriesRequest(start=len(entries), end=0 if end is None else end),
        )
        assert isinstance(response, audit_pb2.GetEntriesResponse)
        if end is None:
            end = response.size
        if not response.entries:
            break
        entries.extend(e.data for e in response.entries)
    snap.entries = entries
    return snap


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------


@main.group("audit")
def audit_group() -> None:
    """Read, export and verify the audit log; fetch and verify receipts."""


def _row(index: int, data: bytes) -> list[str]:
    try:
        entry = Entry.from_bytes(data)
    except LedgerError:
        return [str(index), "", "[red]unparseable[/]", "", "", "", ""]
    fields = entry.to_json()
    when = fields.get("decided_at") or fields.get("failed_at") or fields.get("recorded_at") or ""
    decision = fields.get("decision") or fields.get("code") or fields.get("denied_by") or ""
    if entry.KIND == "denial":
        decision = f"denied ({fields['denied_by']})"
    elif entry.KIND == "failure":
        decision = f"{fields['stage']}: {fields['code']}"
    requester = str(fields.get("requester") or fields.get("department") or "")
    return [
        str(index),
        str(when)[:23],
        entry.KIND,
        requester.removeprefix("spiffe://"),
        str(fields.get("purpose") or ""),
        str(decision),
        str(fields.get("sql") or "; ".join(fields.get("reasons") or ()) or ""),
    ]


@audit_group.command("log")
@click.option(
    "--federation",
    "directory",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@click.option("--as", "identity", default=None, help="DEPT/auditor/NAME (default: first dept's)")
@click.option("--last", default=0, type=click.IntRange(0), help="Only the last N entries.")
@click.option("--json", "as_json", is_flag=True, help="One JSON entry per line instead.")
@friendly_errors
def log_command(directory: Path, identity: str | None, last: int, as_json: bool) -> None:
    """List the log's entries readably."""
    snap = snapshot(directory, identity=identity, all_entries=True)
    first = max(0, len(snap.entries) - last) if last else 0
    if as_json:
        for data in snap.entries[first:]:
            sys.stdout.write(data.decode("utf-8") + "\n")
        return
    table = Table(
        "index", "time (UTC)", "kind", "requester", "purpose", "decision", "SQL / reasons"
    )
    for index in range(first, len(snap.entries)):
        table.add_row(*_row(index, snap.entries[index]))
    console.print(table)
    console.print(
        f"{len(snap.entries)} entries, {snap.size} under the latest cosigned checkpoint "
        f"({len(snap.history)} checkpoints); read from {snap.source}"
    )


@audit_group.command("export")
@click.option(
    "--federation",
    "directory",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@click.option("--as", "identity", default=None, help="DEPT/auditor/NAME (default: first dept's)")
@click.argument("out", type=click.Path(path_type=Path))
@friendly_errors
def export_command(directory: Path, identity: str | None, out: Path) -> None:
    """Write the log up to its latest cosigned checkpoint to OUT as a tlog-tiles export."""
    federation = _federation(directory)
    snap = snapshot(directory, identity=identity, all_entries=False)
    if not snap.history:
        raise ConfigError("the log has no cosigned checkpoint yet; nothing to export")
    tree = MerkleTree.from_leaf_hashes(hash_leaf(e) for e in snap.entries)
    latest = Checkpoint.from_text(Note.from_bytes(snap.history[-1]).text)
    if tree.size != latest.size or tree.root(latest.size) != latest.root_hash:
        raise VerificationError(
            f"the entries read from {snap.source} do not reproduce the latest checkpoint"
        )
    log_key, witnesses = federation_keys(federation)
    write_export(
        out,
        size=latest.size,
        entry=lambda i: snap.entries[i],
        tree=tree,
        checkpoint=snap.history[-1],
        history=snap.history,
        verifier_keys=[log_key.to_vkey(), *(w.to_vkey() for w in witnesses)],
    )
    console.print(
        f"[green]exported[/] {latest.size} entries and {len(snap.history)} checkpoints "
        f"from {snap.source} to {out}"
    )


SIGNATURE_BATCH = 1024
"""Signature checks `audit verify --federation` lets wait and runs together."""


@audit_group.command("verify")
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--quorum", type=click.IntRange(1), default=None, help="Default: the federation's.")
@click.option(
    "--federation",
    "directory",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Trust the keys of this federation file instead of the export's keys file.",
)
def verify_command(out: Path, quorum: int | None, directory: Path | None) -> None:
    """Verify an export OUT offline; exit 1 naming the first bad index and why."""
    try:
        trusted: list[str] | None = None
        signatures: SignatureChecker | None = None
        if directory is not None:
            federation = _federation(directory)
            assert federation.log is not None
            log_key, witnesses = federation_keys(federation)
            trusted = [log_key.to_vkey(), *(w.to_vkey() for w in witnesses)]
            quorum = quorum or federation.log.quorum
            # Checks run in batches: faster, and the first bad index is still the one named.
            signatures = SignatureChecker(
                TrustAnchors.from_federation(federation), batch=SIGNATURE_BATCH
            )
        if quorum is None:
            keys_file = out / "keys"
            keys = keys_file.read_text(encoding="utf-8").split() if keys_file.is_file() else []
            count = sum(1 for k in keys if _is_witness_key(k))
            quorum = default_quorum(count) if count else 1
        report = verify_export(
            out,
            trusted_keys=trusted,
            quorum=quorum,
            parse_entries=True,
            check_entry=signatures.check if signatures else None,
            flush_checks=signatures.flush if signatures else None,
        )
    except VerificationError as exc:
        where = f"index {exc.index}" if exc.index is not None else "export"
        err_console.print(f"[bold red]FAILED[/] at {where}: {exc.reason}")
        sys.exit(1)
    except DataislandError as exc:
        err_console.print(f"[bold red]error[/] ({exc.code}): {exc}")
        sys.exit(1)
    table = Table("origin", "entries", "root", "checkpoints", "cosigned by", "quorum")
    table.add_row(
        report.origin,
        str(report.size),
        report.root_hash.hex()[:16] + "…",
        str(report.checkpoints),
        ", ".join(c.name for c in report.latest.cosignatures),
        str(quorum),
    )
    console.print(table)
    console.print(
        "[green]verified[/]: every entry, tile, checkpoint signature, quorum and consistency"
    )
    if signatures is None:
        console.print(
            "[yellow]enclave signatures not checked[/]: pass --federation to check them "
            "against the pinned vendor root and reference measurements"
        )
    else:
        console.print(
            f"[green]verified[/]: {signatures.attestations} attestations, "
            f"{signatures.results} released results signed by the attested aggregator, "
            f"{signatures.partials} partials and {signatures.reports} execution reports and "
            "run intents signed by attested department enclaves"
        )


def _is_witness_key(vkey: str) -> bool:
    try:
        return Ed25519Verifier.from_vkey(vkey).sig_type == SIG_TYPE_COSIGNATURE_V1
    except LedgerError:
        return False


@audit_group.command("receipt")
@click.argument("query_id")
@click.option(
    "--federation",
    "directory",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@click.option("--as", "identity", default=None, help="DEPT/requester/NAME that asked the query.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@friendly_errors
def receipt_command(query_id: str, directory: Path, identity: str | None, out: Path | None) -> None:
    """Fetch the receipt of your query QUERY_ID (JSON to --out, or to stdout)."""
    federation = _federation(directory)
    stub = _stub(directory, federation, identity or _default_identity(federation, "requester"))
    response = _call(stub.GetReceipt, audit_pb2.GetReceiptRequest(query_id=query_id))
    assert isinstance(response, audit_pb2.GetReceiptResponse)
    receipt = Receipt(
        query_id=response.query_id,
        checkpoint=response.checkpoint,
        entries=tuple(
            ReceiptEntry(e.index, e.data, tuple(e.inclusion_proof)) for e in response.entries
        ),
        result_salt=response.result_salt or None,
        result_committed=response.result_opening or None,
    )
    data = receipt.to_bytes()
    if out is None:
        sys.stdout.write(data.decode("utf-8") + "\n")
        return
    out.write_bytes(data)
    indexes = ", ".join(str(e.index) for e in receipt.entries)
    console.print(f"[green]receipt[/] of {query_id} (entries {indexes}) written to {out}")


def check_receipt_file(file: Path, directory: Path, *, result_digest: str | None) -> ReceiptReport:
    """Verify a receipt file with a federation directory's keys and quorum.

    Raises:
        VerificationError: what failed first.
        ConfigError: the federation file has no usable log section.
        OSError: the file cannot be read.
    """
    federation = _federation(directory)
    assert federation.log is not None
    log_key, witnesses = federation_keys(federation)
    report = verify_receipt(
        Receipt.from_bytes(file.read_bytes()),
        log_verifier=log_key,
        witness_verifiers=witnesses,
        quorum=federation.log.quorum,
    )
    if result_digest is not None and report.result_digest != result_digest.lower():
        raise VerificationError("the receipt's result digest is not the one given")
    return report


@audit_group.command("verify-receipt")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--federation",
    "directory",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@click.option("--result-digest", default=None, help="Also require this result digest (hex).")
def verify_receipt_command(file: Path, directory: Path, result_digest: str | None) -> None:
    """Verify a receipt FILE with the federation file's keys; exit 1 naming what failed."""
    try:
        report = check_receipt_file(file, directory, result_digest=result_digest)
    except VerificationError as exc:
        where = f"index {exc.index}" if exc.index is not None else "receipt"
        err_console.print(f"[bold red]FAILED[/] at {where}: {exc.reason}")
        sys.exit(1)
    except (DataislandError, OSError) as exc:
        err_console.print(f"[bold red]error[/]: {exc}")
        sys.exit(1)
    table = Table("index", "kind", "decision")
    for index, kind, decision in report.entries:
        table.add_row(str(index), kind, decision)
    console.print(table)
    console.print(
        f"[green]verified[/]: included in the checkpoint of size {report.size}, cosigned by "
        f"{', '.join(report.cosigners)}"
    )
    if report.result_digest is not None:
        console.print(
            json.dumps({"result_digest": report.result_digest, "suppressed": report.suppressed})
        )
