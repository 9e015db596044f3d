"""Enclaves enforce their owners' policies themselves, even when the coordinator skips its checks.

Each test talks to qingpu's enclave directly with the committee coordinator's own certificate,
as a coordinator that lies would, and shows the enclave refusing.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataisland.approvals import Approval, TemplateApproval
from dataisland.canonical import QueryEnvelope, TypedParam
from dataisland.cli.officers import officer_key_path, write_signed_policy
from dataisland.federation import load_federation
from dataisland.identity import credential_paths, load_certificate
from dataisland.supervisor import FederationProcesses
from dataisland.tls import KeyPair, secure_channel
from dataisland.v1 import common_pb2, coordinator_pb2, enclave_pb2, enclave_pb2_grpc
from ledger.entries import RunIntentEntry
from policies.keeper import PolicyKeeper
from policies.signing import load_private_key
from tests.integration.conftest import (
    ANALYST,
    aggregator_evidence,
    approve_everywhere,
    client_for,
    free_base_port,
    signed_envelope,
    witness_client,
)
from tests.integration.test_federation import _rebase_ports

pytestmark = pytest.mark.integration

QINGPU_ANALYST = "spiffe://dataisland/dept/qingpu/requester/analyst"
TEMPLATE = (
    "SELECT count(*) > 0 AS has_valid_claim FROM claims "
    "WHERE person_id = $person_id AND service_date >= $since"
)


def _enclave(directory: Path, department: str = "qingpu") -> enclave_pb2_grpc.EnclaveServiceStub:
    """qingpu's enclave, dialled with the coordinator's own certificate."""
    federation = load_federation(directory / "federation.yaml")
    certificate, key = credential_paths(
        directory, department="committee", role="coordinator", name="node"
    )
    channel = secure_channel(
        federation.departments[department].enclave,
        own=KeyPair.load(certificate, key),
        server_ca_pem=federation.departments[department].ca.read_bytes(),
        server_name=federation.dns_name("enclave", department),
    )
    return enclave_pb2_grpc.EnclaveServiceStub(channel)


def _forwarded(
    directory: Path, signed: common_pb2.SignedEnvelope, identity: str = ANALYST
) -> common_pb2.SignedEnvelope:
    """The envelope as a coordinator forwards it: with the requester's certificate attached."""
    department, role, name = identity.split("/")
    certificate, _ = credential_paths(directory, department=department, role=role, name=name)
    from cryptography.hazmat.primitives import serialization

    der = load_certificate(certificate.read_bytes()).public_bytes(serialization.Encoding.DER)
    forwarded = common_pb2.SignedEnvelope()
    forwarded.CopyFrom(signed)
    forwarded.requester_certificate = der
    return forwarded


def _template_envelope(
    directory: Path, identity: str = ANALYST, purpose: str = "eligibility check"
) -> common_pb2.SignedEnvelope:
    params = [
        TypedParam.of("person_id", "VARCHAR", "p1-1"),
        TypedParam.of("since", "DATE", dt.date(2024, 1, 1)),
    ]
    return _forwarded(
        directory,
        signed_envelope(
            directory, TEMPLATE, uuid.uuid4().hex, identity=identity, purpose=purpose, params=params
        ),
        identity,
    )


def _approval(
    directory: Path,
    signed: common_pb2.SignedEnvelope,
    *,
    key: Ed25519PrivateKey | None = None,
    requester: str = "spiffe://dataisland/dept/qingpu/requester/analyst",
    purpose: str = "eligibility check",
    minutes: int = 30,
) -> common_pb2.Approval:
    federation = load_federation(directory / "federation.yaml")
    from policies.keeper import PolicyKeeper

    keeper = PolicyKeeper(
        department="qingpu", officers=federation.officer_keys("qingpu"), required=1
    )
    policy = keeper.accept(*federation.read_policy("qingpu"))
    approval = Approval(
        department="qingpu",
        officer="officer",
        query_id="q",
        envelope_digest=QueryEnvelope.from_bytes(signed.envelope).digest().hex(),
        requester=requester,
        purpose=purpose,
        policy_hash=policy.hash,
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minutes),
    )
    signer = key or load_private_key(officer_key_path(directory, "qingpu").read_bytes())
    return common_pb2.Approval(approval=approval.to_bytes(), signature=approval.sign(signer))


def _refused(
    stub: enclave_pb2_grpc.EnclaveServiceStub, request: enclave_pb2.ExecutePartialRequest
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stub.ExecutePartial(request, timeout=20)
    return info.value


def test_disallowed_query_is_refused_by_the_enclave(
    running: FederationProcesses, federation_dir: Path
) -> None:
    signed = _forwarded(
        federation_dir,
        signed_envelope(
            federation_dir,
            "SELECT category, max(amount) AS top FROM claims GROUP BY category",
            uuid.uuid4().hex,
        ),
    )
    error = _refused(
        _enclave(federation_dir), enclave_pb2.ExecutePartialRequest(query_id="x", envelope=signed)
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "max" in (error.details() or "")
    assert "amount" in (error.details() or "")


def test_identity_literal_outside_a_template_is_refused(
    running: FederationProcesses, federation_dir: Path
) -> None:
    signed = _forwarded(
        federation_dir,
        signed_envelope(
            federation_dir,
            "SELECT count(*) AS n FROM claims WHERE person_id = 'p1-1'",
            uuid.uuid4().hex,
        ),
    )
    error = _refused(
        _enclave(federation_dir), enclave_pb2.ExecutePartialRequest(query_id="x", envelope=signed)
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "person_id" in (error.details() or "")


def test_manual_template_without_approval_is_refused(
    running: FederationProcesses, federation_dir: Path
) -> None:
    signed = _template_envelope(federation_dir)
    error = _refused(
        _enclave(federation_dir), enclave_pb2.ExecutePartialRequest(query_id="x", envelope=signed)
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "approval" in (error.details() or "")


def _declare(
    stub: enclave_pb2_grpc.EnclaveServiceStub,
    signed: common_pb2.SignedEnvelope,
    approval: common_pb2.Approval,
    query_id: str = "x",
) -> RunIntentEntry:
    response = stub.DeclareRun(
        enclave_pb2.DeclareRunRequest(query_id=query_id, envelope=signed, approvals=[approval]),
        timeout=20,
    )
    return RunIntentEntry.from_bytes(response.intent)


def _refused_declaring(
    stub: enclave_pb2_grpc.EnclaveServiceStub,
    signed: common_pb2.SignedEnvelope,
    approval: common_pb2.Approval,
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        _declare(stub, signed, approval, query_id=uuid.uuid4().hex)
    return info.value


def test_an_approved_run_is_declared_and_released_only_once_logged(
    running: FederationProcesses, federation_dir: Path
) -> None:
    signed = _template_envelope(federation_dir)
    approval = _approval(federation_dir, signed)
    stub = _enclave(federation_dir)
    intent = _declare(stub, signed, approval)
    assert (intent.department, intent.run, intent.runs) == ("qingpu", 1, 1)
    assert intent.envelope_digest == QueryEnvelope.from_bytes(signed.envelope).digest().hex()
    evidence = aggregator_evidence(federation_dir)
    # A coordinator that does not log the intent gets nothing.
    error = _refused(
        stub,
        enclave_pb2.ExecutePartialRequest(
            query_id="x", envelope=signed, approvals=[approval], aggregator_evidence=evidence
        ),
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "run intent" in (error.details() or "")
    # Nor one that shows it under a checkpoint only one witness cosigned (qingpu's own).
    status, note = witness_client(federation_dir, "qingpu").request("GET", "/checkpoint")
    assert status == 200
    error = _refused(
        stub,
        enclave_pb2.ExecutePartialRequest(
            query_id="x",
            envelope=signed,
            approvals=[approval],
            aggregator_evidence=evidence,
            intent=enclave_pb2.LoggedIntent(
                entry=intent.to_bytes(), index=0, inclusion_proof=[], checkpoint=note
            ),
        ),
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not shown in the log" in (error.details() or "")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"key": Ed25519PrivateKey.generate()}, "does not verify"),
        ({"requester": "spiffe://dataisland/dept/wujiang/requester/analyst"}, "requester"),
        ({"purpose": "statistics"}, "purpose"),
        ({"minutes": 60 * 48}, "longer than its envelope may wait"),
    ],
)
def test_forged_or_misbound_approvals_are_refused(
    running: FederationProcesses, federation_dir: Path, change: dict[str, object], named: str
) -> None:
    signed = _template_envelope(federation_dir)
    approval = _approval(federation_dir, signed, **change)  # type: ignore[arg-type]
    error = _refused(
        _enclave(federation_dir),
        enclave_pb2.ExecutePartialRequest(query_id="x", envelope=signed, approvals=[approval]),
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert named in (error.details() or "")


def test_approval_replayed_with_a_new_request_id_is_refused(
    running: FederationProcesses, federation_dir: Path
) -> None:
    first = _template_envelope(federation_dir)
    approval = _approval(federation_dir, first)
    stub = _enclave(federation_dir)
    _declare(stub, first, approval)
    again = _refused_declaring(stub, first, approval)
    assert again.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "already has a run declared" in (again.details() or "")
    second = _template_envelope(federation_dir)  # same question, new request id
    error = _refused_declaring(stub, second, approval)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "envelope" in (error.details() or "")


def test_enclave_refuses_a_policy_older_than_one_it_holds(
    federation_dir: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "fed"
    shutil.copytree(federation_dir, copy, ignore=shutil.ignore_patterns("logs", "audit"))
    _rebase_ports(copy, free_base_port())
    policy_file = copy / "policies" / "qingpu.yaml"
    version_one = policy_file.read_text()
    sql = "SELECT category, count(*) AS n FROM claims GROUP BY category"
    with FederationProcesses(copy):
        stub = _enclave(copy)

        def ask() -> object:
            signed = _forwarded(copy, signed_envelope(copy, sql, uuid.uuid4().hex))
            return stub.ExecutePartial(
                enclave_pb2.ExecutePartialRequest(
                    query_id="x", envelope=signed, aggregator_evidence=aggregator_evidence(copy)
                ),
                timeout=20,
            )

        ask()
        version_two = re.sub(r"^version: 1$", "version: 2", version_one, flags=re.MULTILINE)
        write_signed_policy(copy, "qingpu", version_two)
        ask()
        write_signed_policy(copy, "qingpu", version_one)  # a host rolling the file back
        with pytest.raises(grpc.RpcError) as info:
            ask()
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "older" in (info.value.details() or "")


def test_unsigned_policy_change_is_refused(federation_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "fed"
    shutil.copytree(federation_dir, copy, ignore=shutil.ignore_patterns("logs", "audit"))
    _rebase_ports(copy, free_base_port())
    policy_file = copy / "policies" / "qingpu.yaml"
    with FederationProcesses(copy):
        # The host loosens k without the officers: the signature no longer matches.
        policy_file.write_text(policy_file.read_text().replace("k: 5", "k: 1", 1))
        signed = _forwarded(
            copy,
            signed_envelope(
                copy, "SELECT category, count(*) AS n FROM claims GROUP BY category", "r1"
            ),
        )
        with pytest.raises(grpc.RpcError) as info:
            _enclave(copy).ExecutePartial(
                enclave_pb2.ExecutePartialRequest(query_id="x", envelope=signed), timeout=20
            )
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "signature" in (info.value.details() or "")


def _template_approval(
    directory: Path, *, runs: int, requester: str = QINGPU_ANALYST
) -> common_pb2.Approval:
    federation = load_federation(directory / "federation.yaml")
    policy = PolicyKeeper(
        department="qingpu", officers=federation.officer_keys("qingpu"), required=1
    ).accept(*federation.read_policy("qingpu"))
    approval = TemplateApproval(
        department="qingpu",
        officer="officer",
        approval_id=uuid.uuid4().hex,
        template_hash=policy.template_hash("claims", "has_valid_claim"),
        requester=requester,
        purpose="eligibility check",
        runs=runs,
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=7),
    )
    key = load_private_key(officer_key_path(directory, "qingpu").read_bytes())
    return common_pb2.Approval(approval=approval.to_bytes(), signature=approval.sign(key))


def test_enclave_counts_template_runs_and_refuses_one_too_many(
    running: FederationProcesses, federation_dir: Path
) -> None:
    approval = _template_approval(federation_dir, runs=2)
    stub = _enclave(federation_dir)
    # A new envelope (new parameters, new request id) for every run.
    runs = [_declare(stub, _template_envelope(federation_dir), approval, uuid.uuid4().hex)]
    runs.append(_declare(stub, _template_envelope(federation_dir), approval, uuid.uuid4().hex))
    assert [(r.run, r.runs) for r in runs] == [(1, 2), (2, 2)]
    error = _refused_declaring(stub, _template_envelope(federation_dir), approval)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "all 2 run(s)" in (error.details() or "")


def test_template_approval_binds_the_requester(
    running: FederationProcesses, federation_dir: Path
) -> None:
    approval = _template_approval(
        federation_dir, runs=5, requester="spiffe://dataisland/dept/wujiang/requester/analyst"
    )
    error = _refused_declaring(
        _enclave(federation_dir), _template_envelope(federation_dir), approval
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "another requester" in (error.details() or "")


def test_officers_approve_a_template_for_several_runs_through_the_coordinator(
    running: FederationProcesses, federation_dir: Path
) -> None:
    params = [
        TypedParam.of("person_id", "VARCHAR", "p1-1"),
        TypedParam.of("since", "DATE", dt.date(2024, 1, 1)),
    ]
    with client_for(federation_dir, "wujiang/requester/analyst") as client:
        first = client.submit(TEMPLATE, purpose="eligibility check", params=params)
        assert first.state == coordinator_pb2.QUERY_STATE_PENDING
        approve_everywhere(federation_dir, first.query_id, runs=2)
        assert client.wait(first.query_id).state == coordinator_pb2.QUERY_STATE_SUCCEEDED
        # The second run needs no officer; the third waits for a new approval.
        second = client.submit(TEMPLATE, purpose="eligibility check", params=params)
        assert client.wait(second.query_id).state == coordinator_pb2.QUERY_STATE_SUCCEEDED
        third = client.submit(TEMPLATE, purpose="eligibility check", params=params)
        assert third.state == coordinator_pb2.QUERY_STATE_PENDING
    entries = _log_entries(federation_dir)
    # Each department logged its intent before its partial left, and released it with the
    # template's own k and its policy's hash.
    intents = [e for e in entries if e["kind"] == "run_intent" and e["query_id"] == first.query_id]
    assert sorted((e["department"], e["run"], e["runs"]) for e in intents) == [
        ("jiashan", 1, 2),
        ("qingpu", 1, 2),
        ("wujiang", 1, 2),
    ]
    released = next(
        e
        for e in entries
        if e["kind"] == "query" and e["query_id"] == first.query_id and e["decision"] == "released"
    )
    assert {p["department"]: p["k"] for p in released["partials"]} == {
        "jiashan": 1,
        "qingpu": 1,
        "wujiang": 1,
    }
    assert all(len(p["policies"]) == 1 for p in released["partials"])


def _log_entries(directory: Path) -> list[dict[str, Any]]:
    """Every log entry, as `dataisland audit log --json` prints it for an auditor."""
    listed = subprocess.run(
        [sys.executable, "-m", "dataisland", "audit", "log", "--federation", str(directory),
         "--as", "qingpu/auditor/auditor", "--json"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]


def test_each_policy_activation_is_logged_with_its_signatures(
    running: FederationProcesses, federation_dir: Path
) -> None:
    with client_for(federation_dir) as client:
        client.query(
            "SELECT category, count(*) AS n FROM claims GROUP BY category", purpose="statistics"
        )
    entries = _log_entries(federation_dir)
    activations = {e["department"]: e for e in entries if e["kind"] == "policy_activation"}
    assert set(activations) == {"qingpu", "wujiang", "jiashan"}
    federation = load_federation(federation_dir / "federation.yaml")
    policy = PolicyKeeper(
        department="qingpu", officers=federation.officer_keys("qingpu"), required=1
    ).accept(*federation.read_policy("qingpu"))
    assert activations["qingpu"]["policy_hash"] == policy.hash
    assert [s["officer"] for s in activations["qingpu"]["signatures"]] == ["officer"]
