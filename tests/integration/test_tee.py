"""The simulated TEE end to end: attestation refusals, sealed partials, signatures, no plaintext.

A federation of its own (``dataisland init``, real processes): qingpu's shard carries a
sentinel claim in a category of its own, a group the release rules will suppress. Tests act as
the coordinator (its own certificate) to reach enclaves directly, or run the real `Coordinator`
in this process over channels that record every response byte it receives.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import grpc
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.attestation import Attestor, verify_result
from coordinator.book import QueryBook, QueryRecord
from coordinator.judge import Judge
from coordinator.service import Coordinator
from dataisland.attestation import AttestationError, NonceBook, TrustAnchors
from dataisland.canonical import QueryEnvelope
from dataisland.cli import main
from dataisland.client import Client, QueryFailedError, _digest
from dataisland.federation import load_federation
from dataisland.identity import credential_paths, load_certificate
from dataisland.supervisor import FederationProcesses
from dataisland.tls import Authenticator, secure_channel
from dataisland.v1 import common_pb2, coordinator_pb2, enclave_pb2, enclave_pb2_grpc
from enclave.aggregator import ipc_to_arrow
from enclave.attestation import (
    Measurement,
    SimulatedEvidenceProvider,
    certify_platform,
    create_vendor,
    platform_paths,
)
from enclave.sealing import MIN_BUCKET
from tests.integration.conftest import (
    ANALYST,
    aggregator_evidence,
    aggregator_stub,
    client_for,
    coordinator_credentials,
    department_evidence,
    enclave_stub,
    fill_claims,
    fill_water,
    free_base_port,
    signed_envelope,
)
from tests.integration.test_federation import _rebase_ports

pytestmark = pytest.mark.integration

DEPARTMENTS = ("qingpu", "wujiang", "jiashan")
SENTINEL = "SENTINEL-6c1f0e9d"
SENTINEL_CENTS = 98_765_432  # 987654.32
BY_CATEGORY = "SELECT category, sum(amount) AS total FROM claims GROUP BY category"
WATER = "SELECT station_id, count(*) AS n FROM water_readings GROUP BY station_id"


def _utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def tee_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tee") / "fed"
    result = CliRunner().invoke(
        main,
        [
            "init",
            str(directory),
            "--departments",
            ",".join(DEPARTMENTS),
            "--base-port",
            str(free_base_port()),
        ],
    )
    assert result.exit_code == 0, result.output
    for seed, department in enumerate(DEPARTMENTS, start=1):
        fill_claims(directory / "shards" / f"{department}.duckdb", seed=seed, rows=900 * seed)
    for department in DEPARTMENTS[:2]:
        fill_water(directory / "shards" / f"{department}.duckdb", prefix=department, hours=48)
    con = duckdb.connect(str(directory / "shards" / "qingpu.duckdb"))
    con.execute(
        "INSERT INTO claims (claim_id, person_id, age, sex, category, hospital_level, "
        "service_date, amount, reimbursed, length_of_stay) VALUES ('sentinel-claim', "
        f"'sentinel-person', 40, 'F', '{SENTINEL}', 'primary', DATE '2024-03-01', "
        f"{SENTINEL_CENTS / 100:.2f}, 0, NULL)"
    )
    con.close()
    return directory


@pytest.fixture(scope="module")
def tee(tee_dir: Path) -> Iterator[Path]:
    with FederationProcesses(tee_dir):
        yield tee_dir


def _forwarded(directory: Path, sql: str, identity: str = ANALYST) -> common_pb2.SignedEnvelope:
    """A requester's envelope as the coordinator forwards it (certificate attached)."""
    signed = signed_envelope(directory, sql, uuid.uuid4().hex, identity=identity)
    department, role, name = identity.split("/")
    certificate, _ = credential_paths(directory, department=department, role=role, name=name)
    forwarded = common_pb2.SignedEnvelope()
    forwarded.CopyFrom(signed)
    forwarded.requester_certificate = load_certificate(certificate.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    return forwarded


def _partial(
    directory: Path, department: str, signed: common_pb2.SignedEnvelope, query_id: str
) -> enclave_pb2.Partial:
    response = enclave_stub(directory, department).ExecutePartial(
        enclave_pb2.ExecutePartialRequest(
            query_id=query_id, envelope=signed, aggregator_evidence=aggregator_evidence(directory)
        ),
        timeout=30,
    )
    partial: enclave_pb2.Partial = response.partial
    return partial


def _refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


# -- what the coordinator host sees ---------------------------------------------------------


class _Recorder(grpc.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Keeps the serialised bytes of every response (and error text) the coordinator receives."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.responses: list[Any] = []

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        call = continuation(details, request)
        try:
            response = call.result()
        except grpc.RpcError:
            self.received.append(str(call.details()).encode())
            return call
        self.responses.append(response)
        self.received.append(response.SerializeToString())
        return call


def _recording_coordinator(directory: Path, recorder: _Recorder) -> Coordinator:
    federation = load_federation(directory / "federation.yaml")
    authenticator = Authenticator(federation, clock=_utc)
    own = coordinator_credentials(directory)

    def channel(address: str, authority: str, role: str) -> grpc.Channel:
        return grpc.intercept_channel(
            secure_channel(
                address,
                own=own,
                server_ca_pem=authenticator.roots_pem([authority]),
                server_name=federation.dns_name(role, authority),
            ),
            recorder,
        )

    committee = federation.committee.name
    enclaves = {
        name: enclave_pb2_grpc.EnclaveServiceStub(channel(entry.enclave, name, "enclave"))
        for name, entry in federation.departments.items()
    }
    aggregator = enclave_pb2_grpc.AggregatorServiceStub(
        channel(federation.committee.aggregator, committee, "aggregator")
    )
    return Coordinator(
        catalog=federation.catalog(),
        authenticator=authenticator,
        judge=Judge(federation, clock=_utc),
        enclaves=enclaves,
        aggregator=aggregator,
        query_timeout=60,
        book=QueryBook(retention_seconds=60, max_queries=10, clock=time.time),
        attestor=Attestor(
            anchors=TrustAnchors.from_federation(federation),
            enclaves=enclaves,
            aggregator=aggregator,
            aggregator_node=committee,
            clock=_utc,
        ),
    )


def test_the_coordinator_never_receives_a_partial_or_the_sentinel_in_the_clear(
    tee: Path,
) -> None:
    recorder = _Recorder()
    coordinator = _recording_coordinator(tee, recorder)
    signed = _forwarded(tee, BY_CATEGORY)
    envelope = QueryEnvelope.from_bytes(signed.envelope)
    record = QueryRecord(
        query_id=str(uuid.uuid4()),
        requester="spiffe://dataisland/dept/qingpu/requester/analyst",
        request_id=envelope.request_id,
        envelope_digest=envelope.digest(),
        envelope=signed,
        purpose=envelope.purpose,
        canonical_sql=BY_CATEGORY,
        query_hash="",
        departments=tuple(sorted(DEPARTMENTS)),
        submitted_at=time.time(),
    )
    try:
        result = coordinator._execute(record)
    finally:
        coordinator.close()
    # The query ran, and the sentinel's group (one person) was withheld.
    categories = [row.values[0].text for row in result.rows]
    assert categories
    assert SENTINEL not in categories
    assert result.suppressed
    # Every response the host received: attestation evidence, three sealed partials, the result.
    partials = [
        r.partial for r in recorder.responses if isinstance(r, enclave_pb2.ExecutePartialResponse)
    ]
    assert len(partials) == 3
    for partial in partials:
        assert partial.encoding == enclave_pb2.PARTIAL_ENCODING_HPKE_SEALED
        assert len(partial.signature) == 64
        with pytest.raises(Exception, match="not an Arrow IPC stream"):
            ipc_to_arrow(partial.payload, department=partial.department)
    captured = b"".join(recorder.received)
    assert len(captured) > 3 * MIN_BUCKET
    forbidden = [
        SENTINEL.encode(),
        SENTINEL.encode("utf-16-le"),
        b"sentinel-person",
        b"987654.32",
        b"98765432",
        SENTINEL_CENTS.to_bytes(8, "little"),
        SENTINEL_CENTS.to_bytes(16, "little"),  # Arrow decimal128
        b"\xff\xff\xff\xff",  # the Arrow IPC continuation marker
    ]
    for needle in forbidden:
        assert needle not in captured, needle


def test_sealed_partials_of_one_group_and_many_groups_have_the_same_size(tee: Path) -> None:
    one = _partial(tee, "qingpu", _forwarded(tee, "SELECT count(*) AS n FROM claims"), "q-one")
    many = _partial(
        tee,
        "qingpu",
        _forwarded(
            tee,
            "SELECT date_trunc('month', service_date) AS month, category, count(*) AS n "
            "FROM claims GROUP BY date_trunc('month', service_date), category",
        ),
        "q-many",
    )
    assert len(one.payload) == len(many.payload) == MIN_BUCKET + 32 + 16


def test_a_federation_can_seal_partials_with_the_hybrid_post_quantum_kem(
    tee_dir: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "fed"
    shutil.copytree(tee_dir, copy, ignore=shutil.ignore_patterns("logs", "audit"))
    _rebase_ports(copy, free_base_port())
    path = copy / "federation.yaml"
    path.write_text(
        path.read_text().replace(
            "  minimum_svn: 1\n", "  minimum_svn: 1\n  hpke_kem: mlkem768-x25519\n"
        )
    )
    assert load_federation(path).attestation.hpke_kem == "mlkem768-x25519"  # type: ignore[union-attr]
    with FederationProcesses(copy):
        partial = _partial(
            copy, "qingpu", _forwarded(copy, "SELECT count(*) AS n FROM claims"), "q"
        )
        # ML-KEM-768 + X25519's encapsulation (1,120 bytes) and the AES-GCM tag.
        assert len(partial.payload) == MIN_BUCKET + 1120 + 16
        with Client.from_federation(copy, identity=ANALYST) as client:
            result = client.query(
                "SELECT category, count(*) AS n FROM claims GROUP BY category", purpose="statistics"
            )
        assert result.rows


# -- attestation refusals -------------------------------------------------------------------


def test_replayed_evidence_is_refused(tee: Path) -> None:
    anchors = TrustAnchors.from_federation(load_federation(tee / "federation.yaml"))
    nonces = NonceBook()
    nonce = nonces.issue(_utc())
    evidence = (
        enclave_stub(tee, "qingpu")
        .Attest(enclave_pb2.AttestRequest(nonce=nonce), timeout=20)
        .evidence
    )
    attested = anchors.verify(
        evidence, node="qingpu", role="department", now=_utc(), nonce=nonce, nonces=nonces
    )
    assert attested.claims.simulated
    with pytest.raises(AttestationError) as info:
        anchors.verify(
            evidence, node="qingpu", role="department", now=_utc(), nonce=nonce, nonces=nonces
        )
    assert info.value.check == "nonce"
    assert "qingpu" in str(info.value)


def _forged_aggregator_evidence(
    directory: Path, *, measurement: str | None = None, foreign_root: Path | None = None
) -> bytes:
    """Aggregator evidence signed by the committee's platform key (or one another root
    certified), claiming `measurement`: what a host could make with the simulation's files."""
    federation = load_federation(directory / "federation.yaml")
    assert federation.attestation is not None
    reference = federation.attestation.reference["aggregator"]
    if foreign_root is not None:
        create_vendor(foreign_root, now=_utc())
        certify_platform(foreign_root, "committee", now=_utc())
        base = foreign_root
    else:
        base = directory
    crt, key = platform_paths(base, "committee")
    platform_key = serialization.load_pem_private_key(key.read_bytes(), None)
    assert isinstance(platform_key, Ed25519PrivateKey)
    provider = SimulatedEvidenceProvider(
        platform_key=platform_key,
        platform_certificate=x509.load_pem_x509_certificate(crt.read_bytes()),
        node="committee",
        role="aggregator",
        measured=Measurement(measurement=measurement or reference.measurement, config="00" * 32),
        debug=False,
        clock=_utc,
    )
    return provider.evidence(signing_key=os.urandom(32), hpke_key=os.urandom(32), nonce=b"n" * 32)


@pytest.mark.parametrize("forgery", ["measurement", "chain"])
def test_a_department_refuses_to_seal_to_an_aggregator_it_cannot_verify(
    tee: Path, tmp_path: Path, forgery: str
) -> None:
    if forgery == "measurement":
        evidence = _forged_aggregator_evidence(tee, measurement="12" * 32)
    else:
        evidence = _forged_aggregator_evidence(tee, foreign_root=tmp_path)
    signed = _forwarded(tee, "SELECT count(*) AS n FROM claims")
    error = _refused(
        lambda: enclave_stub(tee, "qingpu").ExecutePartial(
            enclave_pb2.ExecutePartialRequest(
                query_id="q", envelope=signed, aggregator_evidence=evidence
            ),
            timeout=20,
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"failed the {forgery} check" in (error.details() or "")
    assert "committee" in (error.details() or "")


def _water_merge(
    directory: Path,
    tamper: Callable[[enclave_pb2.Partial], None] | None = None,
    query_id: str = "",
) -> enclave_pb2.MergePartialsResponse:
    signed = _forwarded(directory, WATER)
    query_id = query_id or str(uuid.uuid4())
    partials = [_partial(directory, d, signed, query_id) for d in DEPARTMENTS[:2]]
    if tamper is not None:
        tamper(partials[0])
    response: enclave_pb2.MergePartialsResponse = aggregator_stub(directory).MergePartials(
        enclave_pb2.MergePartialsRequest(
            query_id=query_id,
            envelope=signed,
            partials=partials,
            department_evidence={d: department_evidence(directory, d) for d in DEPARTMENTS[:2]},
        ),
        timeout=30,
    )
    return response


def test_the_aggregator_signs_the_released_result(tee: Path) -> None:
    query_id = str(uuid.uuid4())
    response = _water_merge(tee, query_id=query_id)
    assert response.rows
    anchors = TrustAnchors.from_federation(load_federation(tee / "federation.yaml"))
    attested = anchors.verify(
        aggregator_evidence(tee), node="committee", role="aggregator", now=_utc()
    )
    assert response.result_signature
    assert response.result_commitment
    # The query id is bound: verify_result with the id the aggregator saw succeeds only.
    verify_result(response, aggregator=attested, query_id=query_id)
    with pytest.raises(Exception, match="signature"):
        verify_result(response, aggregator=attested, query_id="not-this-query")


def test_the_client_refuses_a_result_no_attested_aggregator_signed(tee: Path) -> None:
    """A coordinator that changes a released cell, and the digest with it, is caught."""
    sql = "SELECT station_id, count(*) AS n FROM water_readings GROUP BY station_id"
    with Client.from_federation(tee, identity=ANALYST) as client:
        result = client.query(sql, purpose="statistics")
        query_id = result.status.query_id
        response = client._stub.GetResult(coordinator_pb2.GetResultRequest(query_id=query_id))
        status, page = response.status, response.page
        client._verify_released(query_id, status, page, result.digest)  # the real one passes
        rows = [list(row) for row in result.rows]
        rows[0][1] = str(int(rows[0][1] or 0) + 1)  # one count changed by the host
        forged = _digest(list(result.columns), [tuple(r) for r in rows])
        assert forged != result.digest
        with pytest.raises(QueryFailedError) as info:
            client._verify_released(query_id, status, page, forged)
        assert info.value.code == "PERMISSION_DENIED"
        assert "attested aggregator" in str(info.value)
        # Nor may it claim the rules withheld nothing when they did (or the other way round).
        flipped = coordinator_pb2.QueryStatus()
        flipped.CopyFrom(status)
        flipped.suppressed = not status.suppressed
        with pytest.raises(QueryFailedError):
            client._verify_released(query_id, flipped, page, result.digest)


def _flip_signature(partial: enclave_pb2.Partial) -> None:
    partial.signature = bytes([partial.signature[0] ^ 1]) + partial.signature[1:]


def _lower_k(partial: enclave_pb2.Partial) -> None:
    partial.k = 0


def _flip_ciphertext(partial: enclave_pb2.Partial) -> None:
    partial.payload = partial.payload[:-1] + bytes([partial.payload[-1] ^ 1])


@pytest.mark.parametrize("tamper", [_flip_signature, _lower_k, _flip_ciphertext])
def test_a_partial_with_a_bad_signature_is_refused(
    tee: Path, tamper: Callable[[enclave_pb2.Partial], None]
) -> None:
    error = _refused(lambda: _water_merge(tee, tamper))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "signature of the partial of qingpu" in (error.details() or "")


def test_a_plaintext_partial_is_refused(tee: Path) -> None:
    def plaintext(partial: enclave_pb2.Partial) -> None:
        partial.encoding = enclave_pb2.PARTIAL_ENCODING_ARROW_IPC

    error = _refused(lambda: _water_merge(tee, plaintext))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "plaintext partials are refused" in (error.details() or "")


def test_changed_lockdown_and_debug_enclaves_are_refused_by_a_production_federation(
    tee_dir: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "fed"
    shutil.copytree(tee_dir, copy, ignore=shutil.ignore_patterns("logs", "audit"))
    _rebase_ports(copy, free_base_port())
    federation_file = copy / "federation.yaml"
    federation_file.write_text(
        re.sub(
            r"^development: true$", "development: false", federation_file.read_text(), flags=re.M
        )
    )
    # qingpu's host runs its enclave with another lockdown; wujiang's launches it in debug mode.
    qingpu = copy / "nodes" / "qingpu.yaml"
    qingpu.write_text(qingpu.read_text().replace("threads: 1", "threads: 2"))
    wujiang = copy / "nodes" / "wujiang.yaml"
    wujiang.write_text(wujiang.read_text() + "debug: true\n")
    anchors = TrustAnchors.from_federation(load_federation(federation_file))
    with FederationProcesses(copy):
        with client_for(copy) as client, pytest.raises(QueryFailedError) as info:
            client.query("SELECT count(*) AS n FROM claims", purpose="statistics")
        assert info.value.code == "PERMISSION_DENIED"
        assert "department qingpu" in str(info.value) or "qingpu" in str(info.value)
        assert "measurement" in str(info.value)
        for node, check in (("qingpu", "measurement"), ("wujiang", "debug")):
            evidence = department_evidence(copy, node)
            with pytest.raises(AttestationError) as refused:
                anchors.verify(evidence, node=node, role="department", now=_utc())
            assert refused.value.check == check
        # jiashan is unchanged and still attests.
        anchors.verify(
            department_evidence(copy, "jiashan"), node="jiashan", role="department", now=_utc()
        )
