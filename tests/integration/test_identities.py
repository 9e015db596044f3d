"""Identities over real processes: who may call what, and what the enclaves check themselves.

Read-only checks run against the session federation (`running`). Revocation changes a running
federation's state, so it gets a federation of its own from `dataisland init`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from dataisland.canonical import QueryEnvelope, new_salt, params_commitment
from dataisland.cli import main
from dataisland.client import QueryFailedError
from dataisland.envelopes import sign
from dataisland.federation import Federation, load_federation
from dataisland.identity import (
    Credentials,
    Principal,
    authority_paths,
    create_authority,
    credential_paths,
    issue,
    load_certificate,
    load_private_key,
)
from dataisland.supervisor import FederationProcesses
from dataisland.tls import KeyPair, secure_channel
from dataisland.v1 import (
    common_pb2,
    coordinator_pb2,
    coordinator_pb2_grpc,
    enclave_pb2,
    enclave_pb2_grpc,
)
from tests.integration.conftest import (
    aggregator_evidence,
    client_for,
    coordinator_stub,
    credentials_of,
    fill_claims,
    free_base_port,
    signed_envelope,
)

pytestmark = pytest.mark.integration

COUNT = "SELECT count(*) AS n FROM claims"
PURPOSE = "statistics"  # one the departments' policies allow requesters
TIMEOUT = 30.0
NO_ANSWER = {grpc.StatusCode.UNAVAILABLE}
REFUSED_OR_NO_ANSWER = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _federation(directory: Path) -> Federation:
    return load_federation(directory / "federation.yaml")


def _pair(credentials: Credentials) -> KeyPair:
    return KeyPair(credentials.certificate_pem(), credentials.key_pem())


def _authority(directory: Path, department: str) -> Credentials:
    """A department's CA as its key holder has it (DIR/identity/DEPT/ca.crt and ca.key)."""
    ca_crt, ca_key, _ = authority_paths(directory, department)
    return Credentials(load_private_key(ca_key.read_bytes()), load_certificate(ca_crt.read_bytes()))


def _coordinator_as(directory: Path, own: KeyPair) -> coordinator_pb2_grpc.CoordinatorServiceStub:
    federation = _federation(directory)
    channel = secure_channel(
        federation.committee.coordinator,
        own=own,
        server_ca_pem=federation.committee.ca.read_bytes(),
        server_name=federation.dns_name("coordinator", federation.committee.name),
    )
    return coordinator_pb2_grpc.CoordinatorServiceStub(channel)


def _envelope(
    key_pem: bytes,
    *,
    sql: str = COUNT,
    request_id: str | None = None,
    issued_at: dt.datetime | None = None,
) -> common_pb2.SignedEnvelope:
    """An envelope signed with `key_pem` (any key: the tests pick whose)."""
    salt = new_salt()
    envelope = QueryEnvelope(
        sql=sql,
        params_commitment=params_commitment([], salt=salt),
        purpose=PURPOSE,
        request_id=request_id or uuid.uuid4().hex,
        issued_at=issued_at or _now(),
    )
    return sign(envelope, key=load_private_key(key_pem), params=[], salt=salt)


def _refusal(call: Callable[[], object]) -> grpc.RpcError:
    """Run `call`, which must fail, and return its error (a result would be a leak)."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def _submit(stub: coordinator_pb2_grpc.CoordinatorServiceStub, key_pem: bytes) -> object:
    request = coordinator_pb2.SubmitQueryRequest(envelope=_envelope(key_pem))
    return stub.SubmitQuery(request, timeout=TIMEOUT)


def _issue_cli(directory: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["identity", "issue", str(directory), *args])


# -- transport ---------------------------------------------------------------------------------


def test_a_plaintext_channel_to_the_coordinator_gets_no_answer(
    running: FederationProcesses, federation_dir: Path
) -> None:
    with grpc.insecure_channel(running.coordinator_address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        error = _refusal(lambda: stub.ListQueries(coordinator_pb2.ListQueriesRequest(), timeout=5))
    assert error.code() in NO_ANSWER
    # The same call over mutual TLS is answered: the node is up, it just refuses plaintext.
    coordinator_stub(federation_dir).ListQueries(coordinator_pb2.ListQueriesRequest(), timeout=5)


def test_tls_without_a_client_certificate_gets_no_answer(
    running: FederationProcesses, federation_dir: Path
) -> None:
    federation = _federation(federation_dir)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=federation.committee.ca.read_bytes()
    )
    target = ("grpc.ssl_target_name_override", federation.dns_name("coordinator", "committee"))
    with grpc.secure_channel(running.coordinator_address, credentials, options=[target]) as channel:
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        error = _refusal(lambda: stub.ListQueries(coordinator_pb2.ListQueriesRequest(), timeout=5))
    assert error.code() in NO_ANSWER


def test_the_client_checks_which_node_it_reached(
    running: FederationProcesses, federation_dir: Path
) -> None:
    # The coordinator's certificate is from the right CA but names the coordinator, not the
    # aggregator: a client expecting the aggregator's name must not talk to it.
    federation = _federation(federation_dir)
    channel = secure_channel(
        running.coordinator_address,
        own=credentials_of(federation_dir),
        server_ca_pem=federation.committee.ca.read_bytes(),
        server_name=federation.dns_name("aggregator", federation.committee.name),
    )
    stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
    error = _refusal(lambda: stub.ListQueries(coordinator_pb2.ListQueriesRequest(), timeout=5))
    assert error.code() in NO_ANSWER
    # Nor when it pins another CA (qingpu's) for the committee's node.
    channel = secure_channel(
        running.coordinator_address,
        own=credentials_of(federation_dir),
        server_ca_pem=federation.departments["qingpu"].ca.read_bytes(),
        server_name=federation.dns_name("coordinator", federation.committee.name),
    )
    stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
    error = _refusal(lambda: stub.ListQueries(coordinator_pb2.ListQueriesRequest(), timeout=5))
    assert error.code() in NO_ANSWER


# -- who the caller is -------------------------------------------------------------------------


def test_another_departments_ca_cannot_claim_qingpu(
    running: FederationProcesses, federation_dir: Path
) -> None:
    federation = _federation(federation_dir)
    # wujiang's CA key holder mints a "qingpu" requester. The TLS layer accepts it (wujiang's CA
    # is one the coordinator trusts); the coordinator then finds qingpu's CA did not issue it.
    forged = issue(
        _authority(federation_dir, "wujiang"),
        principal=Principal(federation.federation, "qingpu", "requester", "analyst"),
        now=_now(),
    )
    stub = _coordinator_as(federation_dir, _pair(forged))
    error = _refusal(lambda: _submit(stub, forged.key_pem()))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not issued by qingpu's CA" in (error.details() or "")
    # Nor may it read anything as the real qingpu analyst.
    error = _refusal(lambda: stub.ListQueries(coordinator_pb2.ListQueriesRequest(), timeout=5))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_certificate_from_an_unknown_ca_is_refused(
    running: FederationProcesses, federation_dir: Path
) -> None:
    federation = _federation(federation_dir)
    # Same federation name, department and CA subject: only the key differs.
    stranger_ca = create_authority(
        federation=federation.federation, department="qingpu", now=_now()
    )
    stranger = issue(
        stranger_ca,
        principal=Principal(federation.federation, "qingpu", "requester", "analyst"),
        now=_now(),
    )
    stub = _coordinator_as(federation_dir, _pair(stranger))
    error = _refusal(lambda: _submit(stub, stranger.key_pem()))
    assert error.code() in REFUSED_OR_NO_ANSWER
    error = _refusal(lambda: stub.ListQueries(coordinator_pb2.ListQueriesRequest(), timeout=5))
    assert error.code() in REFUSED_OR_NO_ANSWER


def test_an_expired_requester_certificate_is_refused(
    running: FederationProcesses, federation_dir: Path
) -> None:
    federation = _federation(federation_dir)
    expired = issue(
        _authority(federation_dir, "qingpu"),
        principal=Principal(federation.federation, "qingpu", "requester", "analyst"),
        now=_now() - dt.timedelta(days=40),
        days=30,
    )
    stub = _coordinator_as(federation_dir, _pair(expired))
    error = _refusal(lambda: _submit(stub, expired.key_pem()))
    assert error.code() in REFUSED_OR_NO_ANSWER
    if error.code() == grpc.StatusCode.UNAUTHENTICATED:
        assert "expired" in (error.details() or "")


@pytest.mark.parametrize(
    "identity",
    ["qingpu/officer/officer", "wujiang/auditor/auditor", "qingpu/enclave/node"],
)
def test_only_requesters_submit_and_read_queries(
    running: FederationProcesses, federation_dir: Path, identity: str
) -> None:
    stub = coordinator_stub(federation_dir, identity)
    own = credentials_of(federation_dir, identity)
    error = _refusal(lambda: _submit(stub, own.key_pem))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may not call SubmitQuery" in (error.details() or "")
    for call in (
        lambda: stub.ListQueries(coordinator_pb2.ListQueriesRequest(), timeout=5),
        lambda: stub.GetResult(coordinator_pb2.GetResultRequest(query_id="x"), timeout=5),
        lambda: stub.CancelQuery(coordinator_pb2.CancelQueryRequest(query_id="x"), timeout=5),
    ):
        assert _refusal(call).code() == grpc.StatusCode.PERMISSION_DENIED


def test_the_coordinator_checks_the_envelope_at_submission(
    running: FederationProcesses, federation_dir: Path
) -> None:
    stub = coordinator_stub(federation_dir)
    # Signed by someone else's key (wujiang's analyst), sent over qingpu analyst's connection.
    other = credentials_of(federation_dir, "wujiang/requester/analyst")
    request = coordinator_pb2.SubmitQueryRequest(envelope=_envelope(other.key_pem))
    error = _refusal(lambda: stub.SubmitQuery(request, timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "signature" in (error.details() or "")
    stale = signed_envelope(
        federation_dir, COUNT, uuid.uuid4().hex, issued_at=_now() - dt.timedelta(minutes=10)
    )
    request = coordinator_pb2.SubmitQueryRequest(envelope=stale)
    error = _refusal(lambda: stub.SubmitQuery(request, timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "ago" in (error.details() or "")
    future = signed_envelope(
        federation_dir, COUNT, uuid.uuid4().hex, issued_at=_now() + dt.timedelta(minutes=10)
    )
    request = coordinator_pb2.SubmitQueryRequest(envelope=future)
    error = _refusal(lambda: stub.SubmitQuery(request, timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "future" in (error.details() or "")


# -- requesters see only their own queries -----------------------------------------------------


@pytest.fixture(scope="module")
def other_requesters(federation_dir: Path) -> list[str]:
    """Requesters who are not qingpu's analyst: one per department, two issued by the CLI."""
    suffix = uuid.uuid4().hex[:8]
    issued = []
    for department in ("jiashan", "qingpu"):
        name = f"other-{suffix}"
        result = _issue_cli(federation_dir, "--department", department, "--role", "requester", name)
        assert result.exit_code == 0, result.output
        assert f"/dept/{department}/requester/{name}" in result.output
        issued.append(f"{department}/requester/{name}")
    # Same name as qingpu's analyst, other department: a different principal.
    return ["wujiang/requester/analyst", *issued]


def _query_calls(
    stub: coordinator_pb2_grpc.CoordinatorServiceStub, query_id: str
) -> dict[str, Callable[[], object]]:
    """Every RPC that reads or changes one query, as `stub`'s caller."""
    return {
        "GetResult": lambda: stub.GetResult(
            coordinator_pb2.GetResultRequest(query_id=query_id), timeout=TIMEOUT
        ),
        "WaitResult": lambda: stub.WaitResult(
            coordinator_pb2.WaitResultRequest(query_id=query_id, timeout_ms=100), timeout=TIMEOUT
        ),
        "CancelQuery": lambda: stub.CancelQuery(
            coordinator_pb2.CancelQueryRequest(query_id=query_id), timeout=TIMEOUT
        ),
    }


def test_a_requester_cannot_read_or_cancel_anothers_query(
    running: FederationProcesses, federation_dir: Path, other_requesters: list[str]
) -> None:
    owner = coordinator_stub(federation_dir)
    request_id = uuid.uuid4().hex
    envelope = signed_envelope(federation_dir, COUNT, request_id, purpose=PURPOSE)
    status = owner.SubmitQuery(
        coordinator_pb2.SubmitQueryRequest(envelope=envelope), timeout=TIMEOUT
    ).status
    query_id = status.query_id
    unknown_id = str(uuid.uuid4())
    unknown = _refusal(
        lambda: owner.GetResult(coordinator_pb2.GetResultRequest(query_id=unknown_id))
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    said_for_unknown = (unknown.details() or "").replace(unknown_id, "ID")
    for identity in other_requesters:
        stub = coordinator_stub(federation_dir, identity)
        calls = _query_calls(stub, query_id)
        for rpc, call in calls.items():
            error = _refusal(call)
            assert error.code() == grpc.StatusCode.NOT_FOUND, (identity, rpc)
            # Indistinguishable from a query that does not exist.
            assert (error.details() or "").replace(query_id, "ID") == said_for_unknown
        listed = stub.ListQueries(coordinator_pb2.ListQueriesRequest(), timeout=TIMEOUT)
        assert query_id not in [q.query_id for q in listed.queries]
    # The owner's query was neither cancelled nor disturbed.
    done = owner.WaitResult(
        coordinator_pb2.WaitResultRequest(query_id=query_id, timeout_ms=20_000), timeout=TIMEOUT
    )
    assert done.status.state == coordinator_pb2.QUERY_STATE_SUCCEEDED
    assert done.page.rows


def test_request_ids_belong_to_their_requester(
    running: FederationProcesses, federation_dir: Path
) -> None:
    # Another requester reusing the analyst's request id gets a query of its own, not a clash
    # and not the analyst's query.
    request_id = uuid.uuid4().hex
    mine = coordinator_stub(federation_dir).SubmitQuery(
        coordinator_pb2.SubmitQueryRequest(
            envelope=signed_envelope(federation_dir, COUNT, request_id, purpose=PURPOSE)
        ),
        timeout=TIMEOUT,
    )
    other = "wujiang/requester/analyst"
    theirs = coordinator_stub(federation_dir, other).SubmitQuery(
        coordinator_pb2.SubmitQueryRequest(
            envelope=signed_envelope(
                federation_dir,
                "SELECT sum(amount) AS s FROM claims",
                request_id,
                identity=other,
                purpose=PURPOSE,
            )
        ),
        timeout=TIMEOUT,
    )
    assert mine.status.query_id != theirs.status.query_id
    assert theirs.status.request_id == request_id


# -- nodes speak only node protocol ------------------------------------------------------------


def _enclave_as(
    directory: Path, own: KeyPair, department: str = "qingpu"
) -> enclave_pb2_grpc.EnclaveServiceStub:
    federation = _federation(directory)
    channel = secure_channel(
        federation.departments[department].enclave,
        own=own,
        server_ca_pem=federation.departments[department].ca.read_bytes(),
        server_name=federation.dns_name("enclave", department),
    )
    return enclave_pb2_grpc.EnclaveServiceStub(channel)


def _aggregator_as(directory: Path, own: KeyPair) -> enclave_pb2_grpc.AggregatorServiceStub:
    federation = _federation(directory)
    committee = federation.committee.name
    channel = secure_channel(
        federation.committee.aggregator,
        own=own,
        server_ca_pem=federation.committee.ca.read_bytes(),
        server_name=federation.dns_name("aggregator", committee),
    )
    return enclave_pb2_grpc.AggregatorServiceStub(channel)


def _attached(
    signed: common_pb2.SignedEnvelope, certificate_pem: bytes
) -> common_pb2.SignedEnvelope:
    """The envelope as the coordinator forwards it: with a requester certificate (DER)."""
    forwarded = common_pb2.SignedEnvelope()
    forwarded.CopyFrom(signed)
    forwarded.requester_certificate = load_certificate(certificate_pem).public_bytes(
        serialization.Encoding.DER
    )
    return forwarded


def _execute(
    stub: enclave_pb2_grpc.EnclaveServiceStub,
    envelope: common_pb2.SignedEnvelope,
    evidence: bytes = b"",
) -> enclave_pb2.ExecutePartialResponse:
    request = enclave_pb2.ExecutePartialRequest(
        query_id=str(uuid.uuid4()), envelope=envelope, aggregator_evidence=evidence
    )
    response: enclave_pb2.ExecutePartialResponse = stub.ExecutePartial(request, timeout=TIMEOUT)
    return response


@pytest.mark.parametrize(
    "identity", ["qingpu/requester/analyst", "qingpu/officer/officer", "wujiang/enclave/node"]
)
def test_people_and_other_departments_nodes_cannot_call_an_enclave(
    running: FederationProcesses, federation_dir: Path, identity: str
) -> None:
    own = credentials_of(federation_dir, identity)
    envelope = _attached(_envelope(own.key_pem), own.certificate_pem)
    stub = _enclave_as(federation_dir, own)
    error = _refusal(lambda: _execute(stub, envelope))
    # The enclave's TLS layer accepts only the committee's CA; past it, only the coordinator.
    assert error.code() in {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
    aggregator = _aggregator_as(federation_dir, own)
    merge = enclave_pb2.MergePartialsRequest(query_id="q", envelope=envelope)
    error = _refusal(lambda: aggregator.MergePartials(merge, timeout=TIMEOUT))
    assert error.code() in {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }


def test_a_committee_node_other_than_the_coordinator_cannot_call_an_enclave(
    running: FederationProcesses, federation_dir: Path
) -> None:
    # The aggregator's certificate passes the enclave's TLS layer (committee CA); its role
    # does not.
    own = credentials_of(federation_dir, "committee/aggregator/node")
    analyst = credentials_of(federation_dir)
    envelope = _attached(_envelope(analyst.key_pem), analyst.certificate_pem)
    error = _refusal(lambda: _execute(_enclave_as(federation_dir, own), envelope))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may not call ExecutePartial" in (error.details() or "")
    describe = _enclave_as(federation_dir, own).DescribeShard
    error = _refusal(lambda: describe(enclave_pb2.DescribeShardRequest(), timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


# -- the enclave checks the requester itself, even when the coordinator forwards ----------------


@pytest.fixture
def as_coordinator(
    running: FederationProcesses, federation_dir: Path
) -> enclave_pb2_grpc.EnclaveServiceStub:
    """qingpu's enclave, dialled with the coordinator's own certificate and key."""
    return _enclave_as(federation_dir, credentials_of(federation_dir, "committee/coordinator/node"))


def test_the_enclave_runs_a_good_envelope_the_coordinator_forwards(
    federation_dir: Path, as_coordinator: enclave_pb2_grpc.EnclaveServiceStub
) -> None:
    analyst = credentials_of(federation_dir)
    response = _execute(
        as_coordinator,
        _attached(_envelope(analyst.key_pem), analyst.certificate_pem),
        aggregator_evidence(federation_dir),
    )
    assert response.partial.department == "qingpu"
    assert response.partial.payload


def test_the_enclave_refuses_a_wrong_signature(
    federation_dir: Path, as_coordinator: enclave_pb2_grpc.EnclaveServiceStub
) -> None:
    analyst = credentials_of(federation_dir)
    envelope = _attached(_envelope(analyst.key_pem), analyst.certificate_pem)
    envelope.signature = _envelope(analyst.key_pem).signature  # a real signature, over other bytes
    error = _refusal(lambda: _execute(as_coordinator, envelope))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "signature does not verify" in (error.details() or "")
    envelope.signature = b""
    error = _refusal(lambda: _execute(as_coordinator, envelope))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("field", "replacement"),
    [
        ("request_id", "rewritten-by-the-coordinator"),
        ("sql", "SELECT sum(amount) AS n FROM claims"),
        ("purpose", "another purpose"),
    ],
)
def test_the_enclave_refuses_bytes_changed_after_signing(
    federation_dir: Path,
    as_coordinator: enclave_pb2_grpc.EnclaveServiceStub,
    field: str,
    replacement: str,
) -> None:
    analyst = credentials_of(federation_dir)
    envelope = _attached(_envelope(analyst.key_pem), analyst.certificate_pem)
    parsed = QueryEnvelope.from_bytes(envelope.envelope)
    fields = {
        "sql": parsed.sql,
        "params_commitment": parsed.params_commitment,
        "purpose": parsed.purpose,
        "request_id": parsed.request_id,
        "issued_at": parsed.issued_at,
        field: replacement,
    }
    envelope.envelope = QueryEnvelope(**fields).to_bytes()  # type: ignore[arg-type]
    error = _refusal(lambda: _execute(as_coordinator, envelope))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "signature does not verify" in (error.details() or "")


def test_the_enclave_refuses_an_envelope_without_a_requester_certificate(
    federation_dir: Path, as_coordinator: enclave_pb2_grpc.EnclaveServiceStub
) -> None:
    analyst = credentials_of(federation_dir)
    error = _refusal(lambda: _execute(as_coordinator, _envelope(analyst.key_pem)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "no requester certificate" in (error.details() or "")
    garbage = _envelope(analyst.key_pem)
    garbage.requester_certificate = b"not a certificate"
    error = _refusal(lambda: _execute(as_coordinator, garbage))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_enclave_refuses_another_requesters_certificate_attached(
    federation_dir: Path, as_coordinator: enclave_pb2_grpc.EnclaveServiceStub
) -> None:
    analyst = credentials_of(federation_dir)
    for other in ("wujiang/requester/analyst", "qingpu/officer/officer"):
        certificate = credentials_of(federation_dir, other).certificate_pem
        envelope = _attached(_envelope(analyst.key_pem), certificate)
        error = _refusal(partial(_execute, as_coordinator, envelope))
        # Refused whichever check comes first: the officer is not a requester at all; the
        # wujiang analyst is, but did not sign this.
        assert error.code() in {
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,
        }, other
    envelope = _attached(
        _envelope(analyst.key_pem),
        credentials_of(federation_dir, "wujiang/requester/analyst").certificate_pem,
    )
    error = _refusal(lambda: _execute(as_coordinator, envelope))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "signature does not verify" in (error.details() or "")


def test_the_enclave_refuses_a_signer_that_is_not_a_requester(
    federation_dir: Path, as_coordinator: enclave_pb2_grpc.EnclaveServiceStub
) -> None:
    officer = credentials_of(federation_dir, "qingpu/officer/officer")
    envelope = _attached(_envelope(officer.key_pem), officer.certificate_pem)
    error = _refusal(lambda: _execute(as_coordinator, envelope))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_the_enclave_refuses_a_requester_certificate_it_cannot_verify(
    federation_dir: Path, as_coordinator: enclave_pb2_grpc.EnclaveServiceStub
) -> None:
    federation = _federation(federation_dir)
    analyst = Principal(federation.federation, "qingpu", "requester", "analyst")
    cases = {
        "not issued by qingpu's CA": issue(
            _authority(federation_dir, "wujiang"), principal=analyst, now=_now()
        ),
        "expired": issue(
            _authority(federation_dir, "qingpu"),
            principal=analyst,
            now=_now() - dt.timedelta(days=40),
            days=30,
        ),
    }
    for named, forged in cases.items():
        # The TLS layer never sees these certificates: only the enclave's own check can stop them.
        envelope = _attached(_envelope(forged.key_pem()), forged.certificate_pem())
        error = _refusal(partial(_execute, as_coordinator, envelope))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, named
        assert named in (error.details() or ""), named


def test_the_enclave_refuses_a_replay(
    federation_dir: Path, as_coordinator: enclave_pb2_grpc.EnclaveServiceStub
) -> None:
    analyst = credentials_of(federation_dir)
    envelope = _attached(_envelope(analyst.key_pem), analyst.certificate_pem)
    evidence = aggregator_evidence(federation_dir)
    assert _execute(as_coordinator, envelope, evidence).partial.department == "qingpu"
    # A new query id does not make it a new query: the requester's request id ran here.
    error = _refusal(lambda: _execute(as_coordinator, envelope, evidence))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "already ran" in (error.details() or "")


def test_the_enclave_refuses_a_stale_envelope(
    federation_dir: Path, as_coordinator: enclave_pb2_grpc.EnclaveServiceStub
) -> None:
    analyst = credentials_of(federation_dir)
    stale = _envelope(analyst.key_pem, issued_at=_now() - dt.timedelta(minutes=10))
    error = _refusal(lambda: _execute(as_coordinator, _attached(stale, analyst.certificate_pem)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "ago" in (error.details() or "")


def test_the_aggregator_checks_the_envelope_too(
    running: FederationProcesses, federation_dir: Path
) -> None:
    aggregator = _aggregator_as(
        federation_dir, credentials_of(federation_dir, "committee/coordinator/node")
    )
    analyst = credentials_of(federation_dir)
    envelope = _attached(_envelope(analyst.key_pem), analyst.certificate_pem)
    envelope.signature = _envelope(analyst.key_pem).signature
    merge = enclave_pb2.MergePartialsRequest(query_id="q", envelope=envelope)
    error = _refusal(lambda: aggregator.MergePartials(merge, timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    merge = enclave_pb2.MergePartialsRequest(query_id="q", envelope=_envelope(analyst.key_pem))
    error = _refusal(lambda: aggregator.MergePartials(merge, timeout=TIMEOUT))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


# -- revocation on a running federation --------------------------------------------------------


@pytest.fixture(scope="module")
def revocable(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, FederationProcesses]]:
    """A federation of its own, since revoking changes what every node accepts."""
    directory = tmp_path_factory.mktemp("revocation") / "fed"
    result = CliRunner().invoke(
        main,
        [
            "init",
            str(directory),
            "--departments",
            "qingpu,wujiang",
            "--base-port",
            str(free_base_port(16)),
        ],
    )
    assert result.exit_code == 0, result.output
    for seed, department in enumerate(("qingpu", "wujiang"), start=1):
        fill_claims(directory / "shards" / f"{department}.duckdb", seed=seed, rows=100)
    with FederationProcesses(directory) as nodes:
        yield directory, nodes


def test_revoking_a_requester_takes_effect_on_the_running_federation(
    revocable: tuple[Path, FederationProcesses],
) -> None:
    directory, nodes = revocable
    pids = [node.pid for node in nodes.nodes]
    analyst = credentials_of(directory)
    with client_for(directory) as client:
        assert client.query(COUNT, purpose=PURPOSE).rows == [("200",)]
    # An envelope signed before the revocation, to replay at the enclave afterwards.
    signed_before = _attached(_envelope(analyst.key_pem), analyst.certificate_pem)

    result = CliRunner().invoke(
        main,
        [
            "identity",
            "revoke",
            str(directory),
            "--department",
            "qingpu",
            str(directory / "identity" / "qingpu" / "requester-analyst.crt"),
        ],
    )
    assert result.exit_code == 0, result.output
    serial = load_certificate(analyst.certificate_pem).serial_number
    _, _, crl_path = authority_paths(directory, "qingpu")
    crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    assert [revoked.serial_number for revoked in crl] == [serial]
    assert crl.is_signature_valid(_authority(directory, "qingpu").certificate.public_key())  # type: ignore[arg-type]

    with client_for(directory) as client, pytest.raises(QueryFailedError) as info:
        client.query(COUNT, purpose=PURPOSE)
    assert info.value.code == "UNAUTHENTICATED"
    assert "revoked" in str(info.value)
    stub = coordinator_stub(directory)
    error = _refusal(lambda: stub.ListQueries(coordinator_pb2.ListQueriesRequest(), timeout=5))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "qingpu/requester/analyst is revoked" in (error.details() or "")
    # The enclave re-reads the list as well: a coordinator holding an envelope signed before the
    # revocation cannot get it run.
    coordinator = credentials_of(directory, "committee/coordinator/node")
    error = _refusal(lambda: _execute(_enclave_as(directory, coordinator), signed_before))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (error.details() or "")
    # Only that certificate is refused: wujiang's analyst still works.
    with client_for(directory, "wujiang/requester/analyst") as client:
        assert client.query(COUNT, purpose=PURPOSE).rows == [("200",)]
    # No node was restarted to get here.
    assert not nodes.exited()
    assert [node.pid for node in nodes.nodes] == pids


def test_revoke_refuses_a_certificate_of_another_department(
    revocable: tuple[Path, FederationProcesses],
) -> None:
    directory, _ = revocable
    certificate, _ = credential_paths(
        directory, department="wujiang", role="requester", name="analyst"
    )
    result = CliRunner().invoke(
        main, ["identity", "revoke", str(directory), "--department", "qingpu", str(certificate)]
    )
    assert result.exit_code == 1
    assert "not issued by qingpu's CA" in " ".join(result.output.split())
    with client_for(directory, "wujiang/requester/analyst") as client:
        assert client.query(COUNT, purpose=PURPOSE).rows == [("200",)]


# -- the identity commands ---------------------------------------------------------------------


def test_identity_commands_refuse_duplicates_and_nodes_without_a_dns_name(
    federation_dir: Path,
) -> None:
    result = _issue_cli(federation_dir, "--department", "qingpu", "--role", "requester", "analyst")
    assert result.exit_code == 1
    assert "already exists" in " ".join(result.output.split())
    result = _issue_cli(federation_dir, "--department", "qingpu", "--role", "enclave", "spare")
    assert result.exit_code == 1
    assert "needs --dns" in " ".join(result.output.split())
    result = _issue_cli(federation_dir, "--department", "songjiang", "--role", "requester", "x")
    assert result.exit_code == 1
    assert "songjiang has no CA" in " ".join(result.output.split())
    result = CliRunner().invoke(
        main, ["identity", "init-department", str(federation_dir), "qingpu"]
    )
    assert result.exit_code == 1
    assert "already has a CA" in " ".join(result.output.split())


def test_init_department_and_issue_make_a_new_department_identity(tmp_path: Path) -> None:
    directory = tmp_path / "fed"
    runner = CliRunner()
    result = runner.invoke(
        main, ["identity", "init-department", str(directory), "songjiang", "--federation", "zone"]
    )
    assert result.exit_code == 0, result.output
    ca_crt, ca_key, crl = authority_paths(directory, "songjiang")
    assert ca_crt.is_file()
    assert crl.is_file()
    assert ca_key.stat().st_mode & 0o777 == 0o600
    result = runner.invoke(
        main,
        [
            "identity",
            "issue",
            str(directory),
            "--federation",
            "zone",
            "--department",
            "songjiang",
            "--role",
            "enclave",
            "--dns",
            "enclave.songjiang.zone.dataisland",
            "node",
        ],
    )
    assert result.exit_code == 0, result.output
    certificate, key = credential_paths(
        directory, department="songjiang", role="enclave", name="node"
    )
    assert key.stat().st_mode & 0o777 == 0o600
    issued = load_certificate(certificate.read_bytes())
    issued.verify_directly_issued_by(load_certificate(ca_crt.read_bytes()))
    assert "spiffe://zone/dept/songjiang/enclave/node" in result.output
