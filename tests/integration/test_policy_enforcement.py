"""Enclaves enforce their owners' policies themselves, even when the coordinator skips its checks.

Each test talks to qingpu's enclave directly with the committee coordinator's own certificate,
as a coordinator that lies would, and shows the enclave refusing.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import uuid
from pathlib import Path

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
from policies.keeper import PolicyKeeper
from policies.signing import load_private_key
from tests.integration.conftest import (
    ANALYST,
    aggregator_evidence,
    client_for,
    free_base_port,
    signed_envelope,
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


def test_approved_template_runs_and_carries_k_and_policy_hash(
    running: FederationProcesses, federation_dir: Path
) -> None:
    signed = _template_envelope(federation_dir)
    response = _enclave(federation_dir).ExecutePartial(
        enclave_pb2.ExecutePartialRequest(
            query_id="x",
            envelope=signed,
            approvals=[_approval(federation_dir, signed)],
            aggregator_evidence=aggregator_evidence(federation_dir),
        ),
        timeout=20,
    )
    assert response.partial.k == 1  # the template's own release rule
    assert set(response.partial.policy_hashes) == {"qingpu"}


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
    stub.ExecutePartial(
        enclave_pb2.ExecutePartialRequest(
            query_id="x",
            envelope=first,
            approvals=[approval],
            aggregator_evidence=aggregator_evidence(federation_dir),
        ),
        timeout=20,
    )
    again = _refused(
        stub, enclave_pb2.ExecutePartialRequest(query_id="x", envelope=first, approvals=[approval])
    )
    assert "already ran" in (again.details() or "")
    second = _template_envelope(federation_dir)  # same question, new request id
    error = _refused(
        stub, enclave_pb2.ExecutePartialRequest(query_id="y", envelope=second, approvals=[approval])
    )
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
    evidence = aggregator_evidence(federation_dir)

    def run() -> enclave_pb2.ExecutePartialRequest:
        return enclave_pb2.ExecutePartialRequest(
            query_id=uuid.uuid4().hex,
            envelope=_template_envelope(federation_dir),  # new parameters' envelope each time
            approvals=[approval],
            aggregator_evidence=evidence,
        )

    stub.ExecutePartial(run(), timeout=20)
    stub.ExecutePartial(run(), timeout=20)
    error = _refused(stub, run())
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "all 2 run(s)" in (error.details() or "")


def test_template_approval_binds_the_requester(
    running: FederationProcesses, federation_dir: Path
) -> None:
    approval = _template_approval(
        federation_dir, runs=5, requester="spiffe://dataisland/dept/wujiang/requester/analyst"
    )
    error = _refused(
        _enclave(federation_dir),
        enclave_pb2.ExecutePartialRequest(
            query_id="x",
            envelope=_template_envelope(federation_dir),
            approvals=[approval],
            aggregator_evidence=aggregator_evidence(federation_dir),
        ),
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
        for department in ("qingpu", "wujiang", "jiashan"):
            with client_for(federation_dir, f"{department}/officer/officer") as officer:
                key = load_private_key(officer_key_path(federation_dir, department).read_bytes())
                pending = {p.query_id: p for p in officer.pending_approvals()}
                officer.approve(pending[first.query_id], signing_key=key, runs=2)
        assert client.wait(first.query_id).state == coordinator_pb2.QUERY_STATE_SUCCEEDED
        # The second run needs no officer; the third waits for a new approval.
        second = client.submit(TEMPLATE, purpose="eligibility check", params=params)
        assert client.wait(second.query_id).state == coordinator_pb2.QUERY_STATE_SUCCEEDED
        third = client.submit(TEMPLATE, purpose="eligibility check", params=params)
        assert third.state == coordinator_pb2.QUERY_STATE_PENDING


def test_each_policy_activation_is_logged_with_its_signatures(
    running: FederationProcesses, federation_dir: Path
) -> None:
    import json
    import subprocess
    import sys

    with client_for(federation_dir) as client:
        client.query(
            "SELECT category, count(*) AS n FROM claims GROUP BY category", purpose="statistics"
        )
    listed = subprocess.run(
        [sys.executable, "-m", "dataisland", "audit", "log", "--federation", str(federation_dir),
         "--as", "qingpu/auditor/auditor", "--json"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    entries = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    activations = {e["department"]: e for e in entries if e["kind"] == "policy_activation"}
    assert set(activations) == {"qingpu", "wujiang", "jiashan"}
    federation = load_federation(federation_dir / "federation.yaml")
    policy = PolicyKeeper(
        department="qingpu", officers=federation.officer_keys("qingpu"), required=1
    ).accept(*federation.read_policy("qingpu"))
    assert activations["qingpu"]["policy_hash"] == policy.hash
    assert [s["officer"] for s in activations["qingpu"]["signatures"]] == ["officer"]
