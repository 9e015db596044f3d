"""The auditor's signature check: enclave signatures in the log, against keys the log attested."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataisland.attestation import (
    ReferenceValues,
    TrustAnchors,
    partial_statement,
    result_statement,
)
from dataisland.canonical import format_rfc3339
from enclave.attestation import (
    SIGNER,
    EnclaveKeys,
    Measurement,
    SimulatedEvidenceProvider,
    certify_platform,
    create_vendor,
    platform_paths,
    vendor_paths,
)
from ledger.entries import AttestationEntry, ExecutionReportEntry, QueryEntry
from ledger.errors import VerificationError
from ledger.signatures import SignatureChecker

NOW = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)
MEASURED = Measurement(measurement="ab" * 32, config="cd" * 32)
H = "e" * 64
POLICY = "f" * 64


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def vendor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("vendor")
    create_vendor(directory, now=NOW - dt.timedelta(days=1))
    for node in ("qingpu", "committee"):
        certify_platform(directory, node, now=NOW - dt.timedelta(days=1))
    return directory


@pytest.fixture
def anchors(vendor: Path) -> TrustAnchors:
    reference = ReferenceValues(
        measurement=MEASURED.measurement, signer=SIGNER, minimum_svn=1, debug_allowed=False
    )
    root = x509.load_pem_x509_certificate(vendor_paths(vendor)[0].read_bytes())
    return TrustAnchors(root=root, references={"department": reference, "aggregator": reference})


def _attest(vendor: Path, node: str, role: str) -> tuple[bytes, EnclaveKeys]:
    """A logged attestation entry of `node`, and the keys it pins."""
    crt, key = platform_paths(vendor, node)
    platform_key = serialization.load_pem_private_key(key.read_bytes(), None)
    assert isinstance(platform_key, Ed25519PrivateKey)
    provider = SimulatedEvidenceProvider(
        platform_key=platform_key,
        platform_certificate=x509.load_pem_x509_certificate(crt.read_bytes()),
        node=node,
        role=role,  # type: ignore[arg-type]
        measured=MEASURED,
        debug=False,
        clock=lambda: NOW,
        svn=1,
    )
    keys = EnclaveKeys.generate()
    evidence = provider.evidence(
        signing_key=keys.signing_public, hpke_key=keys.hpke_public, nonce=b"n" * 32
    )
    entry = AttestationEntry(
        version=1,
        kind="attestation",
        subject=node,
        role=role,  # type: ignore[arg-type]
        department=node if role == "department" else None,
        evidence=_b64(evidence),
        evidence_hash=hashlib.sha256(evidence).hexdigest(),
        verifier="coordinator",
        verified_at=format_rfc3339(NOW),
    )
    return entry.to_bytes(), keys


def _report(keys: EnclaveKeys, *, partial_hash: str = H) -> bytes:
    """qingpu's execution report of the sealed partial `partial_hash`, signed with `keys`."""
    report = ExecutionReportEntry(
        version=1,
        kind="execution_report",
        report_id="rep-1",
        department="qingpu",
        enclave="qingpu",
        query_id="q1",
        request_id="r1",
        requester="spiffe://demo/dept/qingpu/requester/analyst",
        query_hash=H,
        envelope_digest=H,
        partial_hash=partial_hash,
        policy_hash=POLICY,
        policy_version=1,
        reported_at=format_rfc3339(NOW),
        signature="AA==",
    )
    signature = _b64(keys.sign(report.signed_bytes()))
    return report.model_copy(update={"signature": signature}).to_bytes()


def _checked(checker: SignatureChecker, *entries: bytes) -> None:
    for index, data in enumerate(entries):
        checker.check(index, data)


def _released(department: EnclaveKeys, aggregator: EnclaveKeys, *, k: int = 5) -> QueryEntry:
    commitment = hashlib.sha256(b"result").digest()
    partial = partial_statement(
        department="qingpu",
        query_id="q1",
        query_hash=H,
        ciphertext_sha256=H,
        k=k,
        policy_hashes={"qingpu": POLICY},
    )
    result = result_statement(query_id="q1", query_hash=H, result_commitment=commitment)
    when = format_rfc3339(NOW)
    return QueryEntry.model_validate(
        {
            "version": 1,
            "kind": "query",
            "query_id": "q1",
            "request_id": "r1",
            "requester": "spiffe://demo/dept/qingpu/requester/analyst",
            "purpose": "statistics",
            "sql": "SELECT count(*) AS n FROM claims",
            "query_hash": H,
            "params_commitment": H,
            "envelope_digest": H,
            "envelope_signature": _b64(b"requester"),
            "issued_at": when,
            "policies": ({"department": "qingpu", "policy_hash": POLICY},),
            "approvals": (),
            "partials": (
                {
                    "department": "qingpu",
                    "payload_hash": H,
                    "k": 5,
                    "policies": ({"department": "qingpu", "policy_hash": POLICY},),
                    "signature": _b64(department.sign(partial)),
                },
            ),
            "result_commitment": commitment.hex(),
            "aggregator_signature": _b64(aggregator.sign(result)),
            "suppressed_commitment": None,
            "decision": "released",
            "submitted_at": when,
            "decided_at": when,
        }
    )


def test_signed_partials_and_results_verify_with_attested_keys(
    vendor: Path, anchors: TrustAnchors
) -> None:
    department, department_keys = _attest(vendor, "qingpu", "department")
    aggregator, aggregator_keys = _attest(vendor, "committee", "aggregator")
    checker = SignatureChecker(anchors)
    released = _released(department_keys, aggregator_keys).to_bytes()
    _checked(checker, department, aggregator, _report(department_keys), released)
    assert (checker.attestations, checker.results, checker.partials, checker.reports) == (
        2,
        1,
        1,
        1,
    )


def test_a_partial_released_without_its_execution_report_fails(
    vendor: Path, anchors: TrustAnchors
) -> None:
    department, department_keys = _attest(vendor, "qingpu", "department")
    aggregator, aggregator_keys = _attest(vendor, "committee", "aggregator")
    released = _released(department_keys, aggregator_keys).to_bytes()
    # No report at all, or one of another sealed partial.
    for missing in ([], [_report(department_keys, partial_hash="d" * 64)]):
        checker = SignatureChecker(anchors)
        with pytest.raises(VerificationError) as info:
            _checked(checker, department, aggregator, *missing, released)
        assert info.value.index == 2 + len(missing)
        assert "execution report is not in the log" in str(info.value)


def test_an_execution_report_not_signed_by_its_attested_enclave_fails(
    vendor: Path, anchors: TrustAnchors
) -> None:
    department, _ = _attest(vendor, "qingpu", "department")
    checker = SignatureChecker(anchors)
    with pytest.raises(VerificationError) as info:
        _checked(checker, department, _report(EnclaveKeys.generate()))
    assert info.value.index == 1
    assert "the execution report rep-1 does not verify" in str(info.value)


def test_a_partial_released_with_a_higher_k_claimed_fails(
    vendor: Path, anchors: TrustAnchors
) -> None:
    """The log says k=5, but the enclave signed k=2: the entry lies about the release rule."""
    department, department_keys = _attest(vendor, "qingpu", "department")
    aggregator, aggregator_keys = _attest(vendor, "committee", "aggregator")
    checker = SignatureChecker(anchors)
    _checked(checker, department, aggregator, _report(department_keys))
    with pytest.raises(VerificationError) as info:
        checker.check(3, _released(department_keys, aggregator_keys, k=2).to_bytes())
    assert info.value.index == 3
    assert "the partial of qingpu does not verify" in str(info.value)


def test_signatures_by_keys_never_attested_fail(vendor: Path, anchors: TrustAnchors) -> None:
    department, department_keys = _attest(vendor, "qingpu", "department")
    aggregator, _ = _attest(vendor, "committee", "aggregator")
    impostor = EnclaveKeys.generate()
    checker = SignatureChecker(anchors)
    checker.check(0, department)
    checker.check(1, aggregator)
    with pytest.raises(VerificationError) as info:
        checker.check(2, _released(department_keys, impostor).to_bytes())
    assert "the released result does not verify" in str(info.value)
    # A result logged before any attestation of its aggregator.
    fresh = SignatureChecker(anchors)
    fresh.check(0, department)
    with pytest.raises(VerificationError) as info:
        fresh.check(1, _released(department_keys, impostor).to_bytes())
    assert "no attestation of its enclave comes before it" in str(info.value)


def test_a_released_entry_without_signatures_fails(vendor: Path, anchors: TrustAnchors) -> None:
    department, department_keys = _attest(vendor, "qingpu", "department")
    aggregator, aggregator_keys = _attest(vendor, "committee", "aggregator")
    unsigned = _released(department_keys, aggregator_keys).model_copy(
        update={"aggregator_signature": None}
    )
    checker = SignatureChecker(anchors)
    checker.check(0, department)
    checker.check(1, aggregator)
    with pytest.raises(VerificationError, match="without the aggregator's signature"):
        checker.check(2, unsigned.to_bytes())


def test_evidence_that_fails_its_reference_fails_the_log(vendor: Path) -> None:
    department, _ = _attest(vendor, "qingpu", "department")
    root = x509.load_pem_x509_certificate(vendor_paths(vendor)[0].read_bytes())
    other = ReferenceValues(
        measurement="00" * 32, signer=SIGNER, minimum_svn=1, debug_allowed=False
    )
    checker = SignatureChecker(
        TrustAnchors(root=root, references={"department": other, "aggregator": other})
    )
    with pytest.raises(VerificationError) as info:
        checker.check(7, department)
    assert info.value.index == 7
    assert "evidence of qingpu does not verify" in str(info.value)


def test_batched_checks_still_name_the_first_bad_index(vendor: Path, anchors: TrustAnchors) -> None:
    """With a batch, a bad signature waits, but is raised before a later entry's failure, and
    at the latest by flush()."""
    department, department_keys = _attest(vendor, "qingpu", "department")
    aggregator, aggregator_keys = _attest(vendor, "committee", "aggregator")
    good = _released(department_keys, aggregator_keys).to_bytes()
    bad = _released(department_keys, aggregator_keys, k=2).to_bytes()
    report = _report(department_keys)
    checker = SignatureChecker(anchors, batch=100)
    for index, data in enumerate([department, aggregator, report, good, bad]):
        checker.check(index, data)  # nothing verified yet
    with pytest.raises(VerificationError) as info:
        checker.check(5, b"not an entry")
    assert info.value.index == 4
    assert "the partial of qingpu does not verify" in str(info.value)

    waiting = SignatureChecker(anchors, batch=100)
    for index, data in enumerate([department, aggregator, report, bad, good]):
        waiting.check(index, data)
    with pytest.raises(VerificationError) as info:
        waiting.flush()
    assert info.value.index == 3

    full = SignatureChecker(anchors, batch=3)  # the batch fills at the bad entry's two checks
    for index, data in enumerate([department, aggregator, report]):
        full.check(index, data)
    with pytest.raises(VerificationError) as info:
        full.check(3, bad)
    assert info.value.index == 3
    assert (full.partials, full.results) == (1, 1)
