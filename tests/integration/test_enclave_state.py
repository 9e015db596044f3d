"""An enclave's memory survives restarts and rolled-back files; its executions reach the log.

Each test runs its own federation (it stops and starts nodes) and plays the host: it stops
qingpu's enclave and witness, puts back files from before, and starts them again, or it
stops the coordinator and calls the enclave directly, as a coordinator that never logs would.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import shutil
import time
import uuid
from pathlib import Path

import grpc
import pytest

from dataisland.canonical import TypedParam
from dataisland.cli.officers import write_signed_policy
from dataisland.supervisor import FederationProcesses
from dataisland.v1 import common_pb2, coordinator_pb2, enclave_pb2
from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.keys import load_signer
from ledger.note import SIG_TYPE_ED25519, Note
from ledger.storage import LogStorage
from ledger.witness_client import decode_lines
from tests.integration.conftest import (
    aggregator_evidence,
    approve_everywhere,
    client_for,
    free_base_port,
    signed_envelope,
    witness_client,
)
from tests.integration.test_federation import _rebase_ports
from tests.integration.test_policy_enforcement import (
    TEMPLATE,
    _enclave,
    _forwarded,
    _log_entries,
    _refused,
    _refused_declaring,
    _template_envelope,
)

pytestmark = pytest.mark.integration

SQL = "SELECT category, count(*) AS n FROM claims GROUP BY category"
PARAMS = [
    TypedParam.of("person_id", "VARCHAR", "p1-1"),
    TypedParam.of("since", "DATE", dt.date(2024, 1, 1)),
]


def _copy(federation_dir: Path, tmp_path: Path, *, report_bound: int | None = None) -> Path:
    copy = tmp_path / "fed"
    # A copy starts with an empty audit log and fresh witnesses (the original may be running).
    shutil.copytree(federation_dir, copy, ignore=shutil.ignore_patterns("logs", "audit"))
    _rebase_ports(copy, free_base_port())
    if report_bound is not None:
        path = copy / "federation.yaml"
        text = re.sub(
            r"^(  quorum: \d+\n)", rf"\1  report_bound_seconds: {report_bound}\n",
            path.read_text(), count=1, flags=re.MULTILINE,
        )  # fmt: skip
        path.write_text(text)
    return copy


def _logged(directory: Path, what: str, request_id: str, timeout: float = 20.0) -> None:
    """Wait until an entry of kind `what` about `request_id` is under a cosigned checkpoint."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = _log_entries(directory)
        if any(e["kind"] == what and e.get("request_id") == request_id for e in entries):
            status, body = witness_client(directory, "qingpu").request("GET", "/quorum-checkpoint")
            size = Checkpoint.from_text(Note.from_bytes(body).text).size if status == 200 else 0
            if size >= len(entries):
                return
        time.sleep(0.3)
    raise AssertionError(f"no {what} entry for {request_id} was logged and cosigned in time")


def _run_directly(directory: Path, request_id: str) -> enclave_pb2.ExecutePartialResponse:
    signed = _forwarded(directory, signed_envelope(directory, SQL, request_id))
    return _enclave(directory).ExecutePartial(
        enclave_pb2.ExecutePartialRequest(
            query_id=uuid.uuid4().hex,
            envelope=signed,
            aggregator_evidence=aggregator_evidence(directory),
        ),
        timeout=30,
    )


def _restart_qingpu(nodes: FederationProcesses, copy: Path, snapshot: Path) -> None:
    """qingpu's host stops its enclave and witness, restores the witness's files from the
    snapshot, and starts both again."""
    nodes.stop_node("qingpu")
    nodes.stop_node("witness-qingpu")
    shutil.rmtree(copy / "audit" / "witness-qingpu")
    shutil.copytree(snapshot, copy / "audit" / "witness-qingpu")
    nodes.start_node("witness-qingpu")
    nodes.start_node("qingpu")


def test_a_restarted_enclave_with_rolled_back_files_allows_no_extra_run_replay_or_old_policy(
    federation_dir: Path, tmp_path: Path
) -> None:
    copy = _copy(federation_dir, tmp_path)
    policy_file = copy / "policies" / "qingpu.yaml"
    version_one = policy_file.read_text()
    snapshot = tmp_path / "witness-qingpu-before"
    with FederationProcesses(copy) as nodes:
        with client_for(copy) as client:
            client.query(SQL, purpose="statistics")
        shutil.copytree(copy / "audit" / "witness-qingpu", snapshot)

        # A template approved for one run, used through the coordinator.
        with client_for(copy, "wujiang/requester/analyst") as client:
            first = client.submit(TEMPLATE, purpose="eligibility check", params=PARAMS)
            approve_everywhere(copy, first.query_id, runs=1)
            assert client.wait(first.query_id).state == coordinator_pb2.QUERY_STATE_SUCCEEDED
        approval_entry = next(
            e
            for e in _log_entries(copy)
            if e["kind"] == "approval"
            and e["query_id"] == first.query_id
            and e["department"] == "qingpu"
        )
        approval = common_pb2.Approval(
            approval=base64.b64decode(approval_entry["approval"]),
            signature=base64.b64decode(approval_entry["signature"]),
        )
        # Its one run is used: qingpu's enclave refuses another, before any restart.
        wujiang = "wujiang/requester/analyst"
        stub = _enclave(copy)
        error = _refused_declaring(stub, _template_envelope(copy, wujiang), approval)
        assert "all 1 run(s)" in (error.details() or "")

        # An envelope run once, and a newer policy applied.
        replayed = uuid.uuid4().hex
        _run_directly(copy, replayed)
        write_signed_policy(
            copy, "qingpu", re.sub(r"^version: 1$", "version: 2", version_one, flags=re.M)
        )
        newer = uuid.uuid4().hex
        _run_directly(copy, newer)
        _logged(copy, "execution_report", replayed)
        _logged(copy, "execution_report", newer)

        # The host restarts the enclave with its witness's files from before all that.
        _restart_qingpu(nodes, copy, snapshot)
        stub = _enclave(copy)
        error = _refused_declaring(stub, _template_envelope(copy, wujiang), approval)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "all 1 run(s)" in (error.details() or "")
        with pytest.raises(grpc.RpcError) as info:
            _run_directly(copy, replayed)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "already ran here" in (info.value.details() or "")
        _run_directly(copy, uuid.uuid4().hex)  # a fresh envelope still runs

        # And once more with the older signed policy put back as well.
        write_signed_policy(copy, "qingpu", version_one)
        _restart_qingpu(nodes, copy, snapshot)
        with pytest.raises(grpc.RpcError) as info:
            _run_directly(copy, uuid.uuid4().hex)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "older" in (info.value.details() or "")


def test_an_execution_kept_out_of_the_log_stops_the_enclave_until_it_is_logged(
    federation_dir: Path, tmp_path: Path
) -> None:
    copy = _copy(federation_dir, tmp_path, report_bound=2)
    with FederationProcesses(copy) as nodes:
        with client_for(copy) as client:
            client.query(SQL, purpose="statistics")
        # A coordinator that runs a query on qingpu and never logs it.
        nodes.stop_node("coordinator")
        hidden = uuid.uuid4().hex
        _run_directly(copy, hidden)
        time.sleep(3)
        signed = _forwarded(copy, signed_envelope(copy, SQL, uuid.uuid4().hex))
        error = _refused(
            _enclave(copy),
            enclave_pb2.ExecutePartialRequest(
                query_id="x", envelope=signed, aggregator_evidence=aggregator_evidence(copy)
            ),
        )
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "stops serving" in (error.details() or "")

        # The witness refuses to cosign a checkpoint that leaves it out, naming the report.
        witness = witness_client(copy, "qingpu")
        status, body = witness.execution_reports()
        (report,) = decode_lines(body)
        report_id = json.loads(report)["report_id"]
        assert json.loads(report)["request_id"] == hidden
        status, body = witness.request("GET", "/checkpoint")
        cosigned = Checkpoint.from_text(Note.from_bytes(body).text)
        storage = LogStorage.open(copy / "audit" / "log", create=False)
        try:
            log_key = load_signer(
                copy / "identity" / "committee" / "log.key",
                name=cosigned.origin,
                sig_type=SIG_TYPE_ED25519,
            )
            size = storage.size
            note = sign_checkpoint(
                Checkpoint(cosigned.origin, size, storage.root()), signer=log_key
            )
            # What the coordinator last logged, but without the report: as it would push it.
            entries = list(storage.entries(cosigned.size, size))
            status, _ = witness.push_entries(start=cosigned.size, entries=entries, note=note)
            assert status in (200, 409)
            proof = storage.consistency_proof(cosigned.size, size)
        finally:
            storage.close()
        status, body = witness.add_checkpoint(old_size=cosigned.size, proof=proof, note=note)
        assert status == 422
        assert report_id in body.decode()

        # The coordinator comes back, logs the report it finds at the witness, and qingpu
        # serves again.
        nodes.start_node("coordinator")
        _logged(copy, "execution_report", hidden, timeout=30)
        with client_for(copy) as client:
            result = client.query(SQL, purpose="statistics")
        assert result.rows
