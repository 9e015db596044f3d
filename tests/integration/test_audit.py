"""The audit log of a running federation: entries, checkpoints, witnesses, export, receipts."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataisland.canonical import TypedParam
from dataisland.cli import main
from dataisland.cli.federation import DEMO_QUERIES
from dataisland.federation import load_federation
from dataisland.supervisor import FederationProcesses
from dataisland.tls import secure_channel
from dataisland.v1 import audit_pb2, audit_pb2_grpc
from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.entries import Entry, QueryEntry
from ledger.keys import load_signer
from ledger.merkle import EMPTY_ROOT
from ledger.note import SIG_TYPE_ED25519, Ed25519Signer, Note
from ledger.tiles import bundles_for_size, decode_bundle, encode_bundle, tile_path
from ledger.witness_client import WitnessClient
from tests.integration.conftest import (
    approve_everywhere,
    client_for,
    credentials_of,
    witness_client,
)
from tests.integration.test_policy_enforcement import TEMPLATE

pytestmark = pytest.mark.integration

AUDITOR = "wujiang/auditor/auditor"
OTHER_REQUESTER = "wujiang/requester/analyst"
PURPOSE = "statistics"


def audit_stub(directory: Path, identity: str = AUDITOR) -> audit_pb2_grpc.AuditServiceStub:
    federation = load_federation(directory / "federation.yaml")
    channel = secure_channel(
        federation.committee.coordinator,
        own=credentials_of(directory, identity),
        server_ca_pem=federation.committee.ca.read_bytes(),
        server_name=federation.dns_name("coordinator", federation.committee.name),
    )
    return audit_pb2_grpc.AuditServiceStub(channel)


def all_entries(directory: Path) -> list[bytes]:
    stub = audit_stub(directory)
    entries: list[bytes] = []
    while True:
        response = stub.GetEntries(audit_pb2.GetEntriesRequest(start=len(entries)))
        entries.extend(e.data for e in response.entries)
        if len(entries) >= response.size or not response.entries:
            return entries


def wait_checkpointed(directory: Path, timeout: float = 15.0) -> int:
    """Wait until a cosigned checkpoint covers the whole log; return its size."""
    stub = audit_stub(directory)
    deadline = time.monotonic() + timeout
    while True:
        size = stub.GetEntries(audit_pb2.GetEntriesRequest(start=0, end=1)).size
        latest = stub.GetCheckpoint(audit_pb2.GetCheckpointRequest()).size
        if latest >= size > 0:
            return latest
        assert time.monotonic() < deadline, f"no checkpoint covers {size} entries"
        time.sleep(0.1)


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_every_decision_is_logged_with_its_index(
    running: FederationProcesses, federation_dir: Path
) -> None:
    with client_for(federation_dir) as client:
        result = client.query("SELECT count(*) AS n FROM claims", purpose=PURPOSE)
        with pytest.raises(Exception, match="not supported"):
            client.query("SELECT * FROM claims", purpose=PURPOSE)
    status = result.status
    assert status.HasField("log_index")
    entries = all_entries(federation_dir)
    submitted = Entry.from_bytes(entries[status.log_index])
    assert isinstance(submitted, QueryEntry)
    assert submitted.query_id == status.query_id
    assert submitted.decision == "allowed"
    assert submitted.sql == status.canonical_sql
    assert submitted.query_hash == status.query_hash
    assert submitted.requester.endswith("/dept/qingpu/requester/analyst")
    later = [Entry.from_bytes(e) for e in entries[status.log_index + 1 :]]
    released = [e for e in later if isinstance(e, QueryEntry) and e.query_id == status.query_id]
    assert [e.decision for e in released] == ["released"]
    assert released[0].result_commitment is not None
    # The refused SELECT * was logged as a denial by the SQL front before it was answered.
    denials = [e.to_json() for e in later if e.KIND == "denial"]
    assert any(d["denied_by"] == "coordinator.sql_front" for d in denials)


def test_audit_roles_are_enforced(running: FederationProcesses, federation_dir: Path) -> None:
    requester = audit_stub(federation_dir, "qingpu/requester/analyst")
    with pytest.raises(grpc.RpcError) as info:
        requester.GetEntries(audit_pb2.GetEntriesRequest())
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with client_for(federation_dir) as client:
        status = client.query("SELECT count(*) AS n FROM claims", purpose=PURPOSE).status
    with pytest.raises(grpc.RpcError) as info:
        audit_stub(federation_dir).GetReceipt(audit_pb2.GetReceiptRequest(query_id=status.query_id))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as info:
        audit_stub(federation_dir, OTHER_REQUESTER).GetReceipt(
            audit_pb2.GetReceiptRequest(query_id=status.query_id)
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def _bundle(out: Path, size: int) -> tuple[Path, list[bytes]]:
    index, width = bundles_for_size(size)[-1]
    path = out / tile_path("entries", index, width)
    return path, decode_bundle(path.read_bytes(), first_index=index * 256, width=width)


def test_export_verifies_and_tampering_names_the_index(
    running: FederationProcesses, federation_dir: Path, tmp_path: Path
) -> None:
    with client_for(federation_dir) as client:
        for _ in range(3):
            client.query("SELECT sum(amount) AS s FROM claims", purpose=PURPOSE)
    size = wait_checkpointed(federation_dir)
    out = tmp_path / "export"
    result = cli("audit", "export", "--federation", str(federation_dir), str(out))
    assert result.exit_code == 0, result.output
    result = cli("audit", "verify", str(out), "--federation", str(federation_dir))
    assert result.exit_code == 0, result.output
    # Every released result and partial is signed by an enclave the log attested.
    counts = re.search(
        r"(\d+) attestations, (\d+) released results signed by the attested aggregator, "
        r"(\d+) partials and (\d+) execution reports",
        " ".join(result.output.split()),
    )
    assert counts is not None, result.output
    attestations, results, partials, reports = (int(g) for g in counts.groups())
    assert attestations >= 4
    assert results >= 3
    assert partials >= 3 * 3
    assert reports >= partials  # every partial's execution was reported and logged
    without = cli("audit", "verify", str(out))
    assert without.exit_code == 0, without.output
    assert "enclave signatures not checked" in " ".join(without.output.split())
    assert (out / "checkpoint").is_file()
    assert (out / "keys").read_text().count("\n") == 5
    assert size >= 4

    # One flipped byte in an entry.
    flipped = tmp_path / "flipped"
    shutil.copytree(out, flipped)
    path, entries = _bundle(flipped, size)
    first = (size - 1) // 256 * 256
    victim = len(entries) - 2
    data = bytearray(entries[victim])
    at = data.index(b'"kind"') + 2
    data[at] ^= 0x01
    entries[victim] = bytes(data)
    path.write_bytes(encode_bundle(entries))
    result = cli("audit", "verify", str(flipped))
    assert result.exit_code == 1
    assert f"index {first + victim}" in result.output

    # A dropped entry.
    dropped = tmp_path / "dropped"
    shutil.copytree(out, dropped)
    path, entries = _bundle(dropped, size)
    del entries[victim]
    path.write_bytes(encode_bundle(entries))
    result = cli("audit", "verify", str(dropped))
    assert result.exit_code == 1
    assert f"index {first + victim}" in result.output

    # A checkpoint of the history quietly removed: the exported one is then not the latest.
    older = tmp_path / "older"
    shutil.copytree(out, older)
    history = sorted((older / "checkpoints").iterdir())
    if len(history) >= 2:
        shutil.copy(history[-2], older / "checkpoint")
        result = cli("audit", "verify", str(older))
        assert result.exit_code == 1


def _witness(directory: Path, name: str) -> WitnessClient:
    return witness_client(directory, name)


def test_witness_refuses_an_inconsistent_checkpoint(
    running: FederationProcesses, federation_dir: Path
) -> None:
    wait_checkpointed(federation_dir)
    federation = load_federation(federation_dir / "federation.yaml")
    assert federation.log is not None
    log_key = load_signer(
        federation_dir / "identity" / "committee" / "log.key",
        name=federation.log.origin,
        sig_type=SIG_TYPE_ED25519,
    )
    witness = _witness(federation_dir, "qingpu")
    status, body = witness.request("GET", "/checkpoint")
    assert status == 200
    seen = Checkpoint.from_text(Note.from_bytes(body).text)
    # Two different checkpoints of the same size, both signed by the log's key: a fork.
    fork = Checkpoint(seen.origin, seen.size, bytes(32))
    status, body = witness.add_checkpoint(
        old_size=seen.size, proof=[], note=sign_checkpoint(fork, signer=log_key)
    )
    assert status == 409
    assert body == f"{seen.size}\n".encode()
    # A bigger checkpoint whose consistency proof does not hold.
    bigger = Checkpoint(seen.origin, seen.size + 1, bytes(32))
    status, _ = witness.add_checkpoint(
        old_size=seen.size, proof=[EMPTY_ROOT], note=sign_checkpoint(bigger, signer=log_key)
    )
    assert status == 422
    # Not signed by the log.
    impostor = Ed25519Signer(federation.log.origin, Ed25519PrivateKey.generate())
    status, _ = witness.add_checkpoint(
        old_size=seen.size, proof=[], note=sign_checkpoint(seen, signer=impostor)
    )
    assert status == 403
    # The witness still publishes what it cosigned before.
    status, body = witness.request("GET", "/checkpoint")
    now = Checkpoint.from_text(Note.from_bytes(body).text)
    assert now.size >= seen.size
    if now.size == seen.size:
        assert now.root_hash == seen.root_hash


def test_only_the_coordinator_may_add_checkpoints(
    running: FederationProcesses, federation_dir: Path
) -> None:
    witness = _witness(federation_dir, "committee")
    requester = federation_dir / "identity" / "qingpu"
    as_requester = WitnessClient(
        name="committee",
        address=f"{witness.host}:{witness.port}",
        server_name=witness.server_name,
        ca=federation_dir / "identity" / "committee" / "ca.crt",
        certificate=requester / "requester-analyst.crt",
        key=requester / "requester-analyst.key",
        verifier=witness.verifier,
    )
    status, _ = as_requester.request("POST", "/add-checkpoint", b"old 0\n\n")
    assert status == 403
    status, _ = as_requester.request("GET", "/checkpoint")
    assert status in {200, 404}


def test_receipt_verifies_and_a_tampered_one_fails(
    running: FederationProcesses, federation_dir: Path, tmp_path: Path
) -> None:
    with client_for(federation_dir) as client:
        result = client.query(
            "SELECT category, count(*) AS n FROM claims GROUP BY 1", purpose=PURPOSE
        )
    query_id = result.status.query_id
    receipt = tmp_path / "receipt.json"
    out = cli(
        "audit", "receipt", query_id, "--federation", str(federation_dir), "--out", str(receipt)
    )
    assert out.exit_code == 0, out.output
    ok = cli(
        "audit",
        "verify-receipt",
        str(receipt),
        "--federation",
        str(federation_dir),
        "--result-digest",
        result.digest,
    )
    assert ok.exit_code == 0, ok.output
    assert result.digest in ok.output

    data = json.loads(receipt.read_bytes())
    salt = bytearray(base64.b64decode(data["result_opening"]["salt"]))
    salt[0] ^= 1
    bad = dict(
        data, result_opening=dict(data["result_opening"], salt=base64.b64encode(salt).decode())
    )
    tampered = tmp_path / "tampered-opening.json"
    tampered.write_text(json.dumps(bad, sort_keys=True, separators=(",", ":")))
    failed = cli("audit", "verify-receipt", str(tampered), "--federation", str(federation_dir))
    assert failed.exit_code == 1
    assert "opening" in failed.output

    entry = data["entries"][-1]
    raw = base64.b64decode(entry["entry"]).replace(b'"released"', b'"allowed"')
    bad_entry = dict(entry, entry=base64.b64encode(raw).decode())
    bad = dict(data, entries=[*data["entries"][:-1], bad_entry])
    tampered = tmp_path / "tampered-entry.json"
    tampered.write_text(json.dumps(bad, sort_keys=True, separators=(",", ":")))
    failed = cli("audit", "verify-receipt", str(tampered), "--federation", str(federation_dir))
    assert failed.exit_code == 1
    assert f"index {entry['index']}" in failed.output

    wrong = cli(
        "audit",
        "verify-receipt",
        str(receipt),
        "--federation",
        str(federation_dir),
        "--result-digest",
        "00" * 32,
    )
    assert wrong.exit_code == 1

    other = cli(
        "audit", "receipt", query_id, "--federation", str(federation_dir), "--as", OTHER_REQUESTER
    )
    assert other.exit_code == 1
    assert "NOT_FOUND" in other.output


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def test_no_result_value_or_count_in_the_clear(
    running: FederationProcesses, federation_dir: Path, tmp_path: Path
) -> None:
    cells: set[str] = set()
    sqls = []
    with client_for(federation_dir) as client:
        for _, sql in DEMO_QUERIES[:3]:
            result = client.query(sql, purpose="demo")
            sqls.append(sql)
            cells.update(c for row in result.rows for c in row if c is not None)
        cells.update(
            c
            for c in client.query(
                "SELECT count(*) AS n, sum(amount) AS s FROM claims WHERE age < 3", purpose=PURPOSE
            ).rows[0]
            if c is not None
        )
    # A yes/no verification template, approved by every owner's officer: neither its
    # parameter nor its answer may appear in the log.
    person = "p417-2"  # claims in wujiang only
    params = [
        TypedParam.of("person_id", "VARCHAR", person),
        TypedParam.of("since", "DATE", dt.date(2024, 1, 1)),
    ]
    with client_for(federation_dir) as client:
        status = client.submit(TEMPLATE, purpose="eligibility check", params=params)
        approve_everywhere(federation_dir, status.query_id)
        client.wait(status.query_id, timeout=30)
        answer = client.result(status.query_id)
    assert [list(row) for row in answer.rows] == [["true"]]
    # Its hash in every entry is the hash of the SQL with placeholders: no oracle for the id.
    template_entries = [json.loads(e) for e in all_entries(federation_dir)]
    logged = {
        e["query_hash"]
        for e in template_entries
        if e.get("query_id") == status.query_id and "query_hash" in e
    }
    assert len(logged) == 1
    assert any(e["kind"] == "execution_report" for e in template_entries)
    # And the released template run's signatures verify from the log alone.
    wait_checkpointed(federation_dir)
    out = tmp_path / "export"
    assert cli("audit", "export", "--federation", str(federation_dir), str(out)).exit_code == 0
    verified = cli("audit", "verify", str(out), "--federation", str(federation_dir))
    assert verified.exit_code == 0, verified.output
    # Values that are also words of the SQL (category names, 'F') prove nothing either way.
    interesting = {c for c in cells if len(c) >= 3 and not any(c in sql for sql in sqls)}
    assert len(interesting) > 20
    interesting.add(person)
    entries = all_entries(federation_dir)
    for index, data in enumerate(entries):
        obj = json.loads(data)
        # The only numbers in an entry are format versions and counters, never results.
        assert not any(k in obj for k in ("rows", "result", "suppressed", "count")), index
        for text in _strings(obj):
            assert text not in interesting, (index, text)
            assert text not in ("true", "false"), (index, text)  # no yes/no answer
            for blob in _decoded(text):
                assert person.encode() not in blob, index
        for key in ("sql", "purpose", "reasons", "message"):
            for text in _strings(obj.get(key)):
                leaked = [c for c in interesting if c in text]
                assert not leaked, (index, key, leaked[:3])


def _decoded(text: str) -> list[bytes]:
    """A string's bytes, and what it decodes to if it is base64 (signed documents, evidence)."""
    try:
        return [text.encode(), base64.b64decode(text, validate=True)]
    except ValueError:
        return [text.encode()]


def test_audit_log_lists_entries_from_the_running_coordinator(
    running: FederationProcesses, federation_dir: Path
) -> None:
    with client_for(federation_dir) as client:
        status = client.query("SELECT avg(amount) AS mean FROM claims", purpose=PURPOSE).status
    listed = cli("audit", "log", "--federation", str(federation_dir), "--as", AUDITOR, "--json")
    assert listed.exit_code == 0, listed.output
    lines = [json.loads(line) for line in listed.output.splitlines()]
    assert lines[status.log_index]["query_id"] == status.query_id
    table = cli("audit", "log", "--federation", str(federation_dir), "--last", "3")
    assert table.exit_code == 0, table.output
    assert "the coordinator at" in table.output
