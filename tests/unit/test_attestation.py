"""Evidence, its verification in order, the measurement, sealing, signatures and the lockdown."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import shutil
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from coordinator.attestation import verify_result
from dataisland.attestation import (
    AttestationError,
    BadSignatureError,
    Claims,
    Evidence,
    Kem,
    NonceBook,
    ReferenceValues,
    hpke_public_key,
    partial_statement,
    result_statement,
    verify_evidence,
    verify_statement,
)
from dataisland.canonical import canonical_json, commit, new_salt
from dataisland.errors import (
    ExecutionError,
    InvalidInputError,
    PermissionDeniedError,
    QueryDeadlineError,
)
from dataisland.v1 import enclave_pb2
from enclave.attestation import (
    SIGNER,
    EnclaveKeys,
    Measurement,
    SimulatedEvidenceProvider,
    certify_platform,
    code_files,
    create_vendor,
    install_root,
    measurement_document,
    platform_paths,
    vendor_paths,
)
from enclave.department import arrow_to_ipc
from enclave.engine import Lockdown
from enclave.sealing import MIN_BUCKET, bucket_size, open_sealed, pad, seal, unpad
from enclave.shard import Shard

NOW = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)
MEASURED = Measurement(measurement="ab" * 32, config="cd" * 32)


def _reference(**changes: object) -> ReferenceValues:
    values: dict[str, object] = {
        "measurement": MEASURED.measurement,
        "signer": SIGNER,
        "minimum_svn": 1,
        "debug_allowed": False,
    }
    values.update(changes)
    return ReferenceValues(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def vendor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("vendor")
    create_vendor(directory, now=NOW - dt.timedelta(days=1))
    certify_platform(directory, "qingpu", now=NOW - dt.timedelta(days=1))
    return directory


def _root(directory: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(vendor_paths(directory)[0].read_bytes())


def _provider(directory: Path, *, debug: bool = False, svn: int = 1) -> SimulatedEvidenceProvider:
    from cryptography.hazmat.primitives import serialization

    crt, key = platform_paths(directory, "qingpu")
    platform_key = serialization.load_pem_private_key(key.read_bytes(), None)
    assert isinstance(platform_key, Ed25519PrivateKey)
    return SimulatedEvidenceProvider(
        platform_key=platform_key,
        platform_certificate=x509.load_pem_x509_certificate(crt.read_bytes()),
        node="qingpu",
        role="department",
        measured=MEASURED,
        debug=debug,
        clock=lambda: NOW,
        svn=svn,
    )


def _evidence(provider: SimulatedEvidenceProvider, nonce: bytes) -> tuple[bytes, EnclaveKeys]:
    keys = EnclaveKeys.generate()
    evidence = provider.evidence(
        signing_key=keys.signing_public, hpke_key=keys.hpke_public, nonce=nonce
    )
    return evidence, keys


def _check(vendor: Path, evidence: bytes, **kwargs: object) -> str:
    with pytest.raises(AttestationError) as info:
        verify_evidence(
            evidence,
            node=str(kwargs.pop("node", "qingpu")),
            role="department",
            root=_root(vendor),
            reference=kwargs.pop("reference", _reference()),  # type: ignore[arg-type]
            now=kwargs.pop("now", NOW),  # type: ignore[arg-type]
            **kwargs,  # type: ignore[arg-type]
        )
    assert "qingpu" in str(info.value)
    return info.value.check


def test_valid_evidence_pins_the_enclave_keys(vendor: Path) -> None:
    nonces = NonceBook()
    nonce = nonces.issue(NOW)
    evidence, keys = _evidence(_provider(vendor), nonce)
    attested = verify_evidence(
        evidence,
        node="qingpu",
        role="department",
        root=_root(vendor),
        reference=_reference(),
        now=NOW,
        nonce=nonce,
        nonces=nonces,
    )
    assert attested.signing_key.public_bytes_raw() == keys.signing_public
    assert attested.hpke_key_bytes == keys.hpke_public
    assert attested.claims.simulated
    assert attested.claims.config == MEASURED.config


def test_replayed_evidence_is_refused(vendor: Path) -> None:
    nonces = NonceBook()
    nonce = nonces.issue(NOW)
    evidence, _ = _evidence(_provider(vendor), nonce)
    root = _root(vendor)
    verify_evidence(
        evidence,
        node="qingpu",
        role="department",
        root=root,
        reference=_reference(),
        now=NOW,
        nonce=nonce,
        nonces=nonces,
    )
    # The same evidence again, answering the nonce already used up.
    assert _check(vendor, evidence, nonce=nonce, nonces=nonces) == "nonce"
    # Evidence for a nonce this verifier never issued.
    other, _ = _evidence(_provider(vendor), b"\x01" * 32)
    assert _check(vendor, other, nonce=b"\x01" * 32, nonces=nonces) == "nonce"
    # Evidence for another nonce than the one just sent.
    fresh = nonces.issue(NOW)
    assert _check(vendor, other, nonce=fresh, nonces=nonces) == "nonce"


def test_expired_nonce_and_old_relayed_evidence_are_refused(vendor: Path) -> None:
    nonces = NonceBook(ttl=dt.timedelta(seconds=5))
    nonce = nonces.issue(NOW)
    evidence, _ = _evidence(_provider(vendor), nonce)
    late = NOW + dt.timedelta(seconds=6)
    assert _check(vendor, evidence, nonce=nonce, nonces=nonces, now=late) == "nonce"
    # Relayed (no nonce of ours): judged by its age.
    stale = NOW + dt.timedelta(minutes=11)
    assert _check(vendor, evidence, now=stale) == "freshness"
    future = NOW - dt.timedelta(minutes=5)
    assert _check(vendor, evidence, now=future) == "freshness"


def test_evidence_from_an_uncertified_platform_key_is_refused(vendor: Path, tmp_path: Path) -> None:
    create_vendor(tmp_path, now=NOW - dt.timedelta(days=1))  # another "vendor"
    certify_platform(tmp_path, "qingpu", now=NOW - dt.timedelta(days=1))
    evidence, _ = _evidence(_provider(tmp_path), b"\x02" * 32)
    assert _check(vendor, evidence) == "chain"


def _resigned(vendor: Path, evidence: bytes, **changes: object) -> bytes:
    """Evidence whose claims were changed and re-signed with the genuine platform key."""
    from dataclasses import replace

    from cryptography.hazmat.primitives import serialization

    from dataisland.attestation import EVIDENCE_CONTEXT

    parsed = Evidence.from_bytes(evidence, node="qingpu")
    claims = replace(Claims.from_bytes(parsed.claims), **changes)  # type: ignore[arg-type]
    key = serialization.load_pem_private_key(platform_paths(vendor, "qingpu")[1].read_bytes(), None)
    assert isinstance(key, Ed25519PrivateKey)
    data = claims.to_bytes()
    return Evidence(
        claims=data,
        signature=key.sign(EVIDENCE_CONTEXT + data),
        platform_certificate=parsed.platform_certificate,
    ).to_bytes()


def test_each_check_names_itself(vendor: Path) -> None:
    evidence, _ = _evidence(_provider(vendor), b"\x03" * 32)
    parsed = Evidence.from_bytes(evidence, node="qingpu")
    forged = Evidence(
        claims=parsed.claims.replace(b'"svn":1', b'"svn":9'),
        signature=parsed.signature,
        platform_certificate=parsed.platform_certificate,
    ).to_bytes()
    assert _check(vendor, forged) == "signature"
    assert _check(vendor, b"not evidence") == "format"
    assert _check(vendor, b"") == "format"
    assert _check(vendor, _resigned(vendor, evidence, report_data=b"\x00" * 32)) == "report_data"
    assert _check(vendor, _resigned(vendor, evidence, hpke_key=b"\x00" * 32)) == "report_data"
    assert _check(vendor, evidence, reference=_reference(measurement="00" * 32)) == "measurement"
    assert _check(vendor, evidence, reference=_reference(signer="00" * 32)) == "signer"
    assert _check(vendor, evidence, reference=_reference(minimum_svn=2)) == "svn"


def test_evidence_for_another_node_is_refused(vendor: Path) -> None:
    evidence, _ = _evidence(_provider(vendor), b"\x04" * 32)
    with pytest.raises(AttestationError) as info:
        verify_evidence(
            evidence,
            node="wujiang",
            role="department",
            root=_root(vendor),
            reference=_reference(),
            now=NOW,
        )
    assert info.value.check == "identity"
    with pytest.raises(AttestationError) as info:
        verify_evidence(
            evidence,
            node="qingpu",
            role="aggregator",
            root=_root(vendor),
            reference=_reference(),
            now=NOW,
        )
    assert info.value.check == "identity"


def test_a_debug_enclave_is_refused_unless_the_federation_is_for_development(
    vendor: Path,
) -> None:
    evidence, _ = _evidence(_provider(vendor, debug=True), b"\x05" * 32)
    assert _check(vendor, evidence) == "debug"
    verify_evidence(
        evidence,
        node="qingpu",
        role="department",
        root=_root(vendor),
        reference=_reference(debug_allowed=True),
        now=NOW,
    )


def test_attestation_errors_map_to_permission_denied(vendor: Path) -> None:
    evidence, _ = _evidence(_provider(vendor), b"\x06" * 32)
    with pytest.raises(AttestationError) as info:
        verify_evidence(
            evidence,
            node="qingpu",
            role="department",
            root=_root(vendor),
            reference=_reference(measurement="00" * 32),
            now=NOW,
        )
    assert info.value.code == "PERMISSION_DENIED"
    assert "measurement" in str(info.value)


def test_provider_refuses_odd_nonces(vendor: Path) -> None:
    with pytest.raises(InvalidInputError):
        _evidence(_provider(vendor), b"short")


# -- measurement --------------------------------------------------------------------------------


def test_two_clean_installs_measure_the_same(tmp_path: Path) -> None:
    for copy in ("a", "b"):
        for package in ("dataisland", "enclave", "policies"):
            shutil.copytree(
                install_root() / package,
                tmp_path / copy / package,
                ignore=shutil.ignore_patterns("__pycache__"),
            )
    assert code_files(tmp_path / "a") == code_files(tmp_path / "b")
    assert code_files(tmp_path / "a") == code_files(install_root())
    (tmp_path / "b" / "enclave" / "shard.py").write_text("# changed\n")
    assert code_files(tmp_path / "a") != code_files(tmp_path / "b")


def test_measurement_covers_code_versions_and_lockdown_not_configuration() -> None:
    code = {"enclave/shard.py": "00" * 32}
    versions = {"duckdb": "2.0.1", "sqlglot": "30.31.0", "pyarrow": "20.0.0"}
    base = measurement_document(
        role="department", code=code, versions=versions, lockdown=Lockdown(1, "512MB")
    )
    assert base != measurement_document(
        role="department", code=code, versions=versions, lockdown=Lockdown(2, "512MB")
    )
    assert base != measurement_document(
        role="department",
        code=code,
        versions={**versions, "duckdb": "2.0.2"},
        lockdown=Lockdown(1, "512MB"),
    )
    assert base != measurement_document(
        role="aggregator", code=code, versions=versions, lockdown=Lockdown(1, "512MB")
    )
    # The lockdown's DuckDB settings are in the measured document, by name.
    lockdown = base["lockdown"]
    assert isinstance(lockdown, dict)
    assert lockdown["connect"]["enable_external_access"] is False
    assert "SET lock_configuration = true" in lockdown["after_connect"]


# -- sealing ------------------------------------------------------------------------------------


def _ipc(rows: int) -> bytes:
    return arrow_to_ipc(
        pa.table(
            {
                "category": [f"category-{i}" for i in range(rows)],
                "n": list(range(rows)),
                "units": list(range(rows)),
            }
        )
    )


@pytest.mark.parametrize("kem", ["x25519", "mlkem768-x25519"])
def test_seal_and_open_round_trip_and_binding(kem: Kem) -> None:
    keys = EnclaveKeys.generate(kem)
    public = hpke_public_key(keys.hpke_public, kem=kem)
    payload = _ipc(3)
    sealed = seal(
        payload,
        aggregator_key=public,
        aggregator_key_bytes=keys.hpke_public,
        query_id="q1",
        query_hash="aa",
        department="d",
    )
    assert payload not in sealed

    def opened(ciphertext: bytes, query_id: str = "q1", query_hash: str = "aa") -> bytes:
        return open_sealed(
            ciphertext,
            private_key=keys.hpke_private,
            public_bytes=keys.hpke_public,
            query_id=query_id,
            query_hash=query_hash,
            department="d",
        )

    assert opened(sealed) == payload
    for changes in ({"query_id": "q2"}, {"query_hash": "bb"}):
        with pytest.raises(PermissionDeniedError):
            opened(sealed, **changes)
    other = EnclaveKeys.generate(kem)
    with pytest.raises(PermissionDeniedError):
        open_sealed(
            sealed,
            private_key=other.hpke_private,
            public_bytes=other.hpke_public,
            query_id="q1",
            query_hash="aa",
            department="d",
        )
    with pytest.raises(PermissionDeniedError):  # sealed for another department
        open_sealed(
            sealed,
            private_key=keys.hpke_private,
            public_bytes=keys.hpke_public,
            query_id="q1",
            query_hash="aa",
            department="e",
        )
    with pytest.raises(PermissionDeniedError):
        opened(sealed[:-1] + bytes([sealed[-1] ^ 1]))


def test_evidence_with_a_key_of_another_kem_is_refused(vendor: Path) -> None:
    """A federation that seals with the hybrid KEM refuses an X25519-only enclave: no downgrade."""
    keys = EnclaveKeys.generate("x25519")
    nonces = NonceBook()
    nonce = nonces.issue(NOW)
    evidence = _provider(vendor).evidence(
        signing_key=keys.signing_public, hpke_key=keys.hpke_public, nonce=nonce
    )
    with pytest.raises(AttestationError) as info:
        verify_evidence(
            evidence,
            node="qingpu",
            role="department",
            root=_root(vendor),
            reference=_reference(),
            now=NOW,
            nonce=nonce,
            nonces=nonces,
            kem="mlkem768-x25519",
        )
    assert info.value.check == "report_data"
    assert "mlkem768-x25519" in str(info.value)


def test_sealed_sizes_of_one_and_many_groups_in_a_bucket_are_equal() -> None:
    key = X25519PrivateKey.generate().public_key()
    raw = key.public_bytes_raw()
    one, many = _ipc(1), _ipc(60)
    assert len(one) < len(many) < MIN_BUCKET - 8
    sizes = {
        len(
            seal(
                p,
                aggregator_key=key,
                aggregator_key_bytes=raw,
                query_id="q",
                query_hash="h",
                department="d",
            )
        )
        for p in (one, many)
    }
    assert sizes == {MIN_BUCKET + 32 + 16}  # X25519 enc + AES-GCM tag
    assert bucket_size(MIN_BUCKET) == 2 * MIN_BUCKET
    big = _ipc(5_000)
    assert len(pad(big)) == bucket_size(len(big))
    assert unpad(pad(big)) == big


def test_malformed_padding_is_refused() -> None:
    with pytest.raises(InvalidInputError):
        unpad(b"\x00" * 100)
    padded = bytearray(pad(b"abc"))
    padded[-1] = 1
    with pytest.raises(InvalidInputError):
        unpad(bytes(padded))


# -- signatures ---------------------------------------------------------------------------------


def test_a_partial_with_a_bad_signature_is_refused() -> None:
    keys = EnclaveKeys.generate()
    public = Ed25519PrivateKey.generate().public_key()
    statement = partial_statement(
        department="qingpu",
        query_id="q",
        query_hash="h",
        ciphertext_sha256=hashlib.sha256(b"sealed").hexdigest(),
        k=5,
        policy_hashes={"qingpu": "p"},
    )
    signature = keys.sign(statement)
    with pytest.raises(BadSignatureError):
        verify_statement(public, statement, signature, what="the partial of qingpu")
    # k is bound: a coordinator lowering it breaks the signature.
    lowered = statement.replace(b'"k":5', b'"k":1')
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    own = Ed25519PublicKey.from_public_bytes(keys.signing_public)
    verify_statement(own, statement, signature, what="the partial")
    with pytest.raises(BadSignatureError):
        verify_statement(own, lowered, signature, what="the partial")


def test_a_result_with_a_bad_signature_is_refused(vendor: Path) -> None:
    from dataclasses import replace

    evidence, keys = _evidence(_provider(vendor), b"\x07" * 32)
    attested = verify_evidence(
        evidence,
        node="qingpu",
        role="department",
        root=_root(vendor),
        reference=_reference(),
        now=NOW,
    )
    salt = new_salt()
    digest = "ee" * 32
    commitment = commit(canonical_json({"result_digest": digest, "suppressed": True}), salt=salt)
    statement = result_statement(query_id="q", query_hash="h", result_commitment=commitment)
    response = enclave_pb2.MergePartialsResponse(
        result_digest=digest,
        suppressed=True,
        query_hash="h",
        result_commitment=commitment,
        result_salt=salt,
        result_signature=keys.sign(statement),
    )
    verify_result(response, aggregator=attested, query_id="q")
    with pytest.raises(BadSignatureError):
        verify_result(response, aggregator=attested, query_id="another")
    bad = enclave_pb2.MergePartialsResponse()
    bad.CopyFrom(response)
    bad.result_signature = bytes(64)
    with pytest.raises(BadSignatureError):
        verify_result(bad, aggregator=attested, query_id="q")
    lied = enclave_pb2.MergePartialsResponse()
    lied.CopyFrom(response)
    lied.suppressed = False  # the commitment no longer opens to what is shown
    with pytest.raises(PermissionDeniedError):
        verify_result(lied, aggregator=attested, query_id="q")
    other = replace(attested, signing_key=Ed25519PrivateKey.generate().public_key())
    with pytest.raises(BadSignatureError):
        verify_result(response, aggregator=other, query_id="q")
    assert base64.b64encode(attested.evidence)


# -- the lockdown without the checker -----------------------------------------------------------


@pytest.fixture
def shard(tmp_path: Path) -> Shard:
    path = tmp_path / "shard.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE claims AS SELECT range AS id, range * 2 AS amount FROM range(1000)")
    con.close()
    (tmp_path / "secret.csv").write_text("a,b\n1,2\n")
    return Shard(path, Lockdown(threads=1, memory_limit="256MB"))


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('{dir}/secret.csv')",
        "SELECT * FROM '{dir}/secret.csv'",
        "SELECT content FROM read_text('{dir}/secret.csv')",
        "COPY (SELECT * FROM claims) TO '{dir}/out.csv'",
        "COPY claims TO '{dir}/out.parquet' (FORMAT parquet)",
        "ATTACH '{dir}/other.duckdb' AS other",
        "ATTACH ':memory:' AS other",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SET threads = 8",
        "SET memory_limit = '64GB'",
        "SET lock_configuration = false",
        "RESET enable_external_access",
        "SELECT set_config('threads', 8)",
        "CREATE TABLE t AS SELECT 1",
        "INSERT INTO claims VALUES (1, 2)",
        "EXPORT DATABASE '{dir}/dump'",
    ],
)
def test_the_shard_refuses_files_extensions_settings_and_attach(
    shard: Shard, tmp_path: Path, sql: str
) -> None:
    with pytest.raises(ExecutionError):
        shard.run(sql.format(dir=tmp_path), timeout=10)
    assert not (tmp_path / "out.csv").exists()
    assert not (tmp_path / "out.parquet").exists()
    assert not (tmp_path / "dump").exists()
    # The settings did not move.
    settings = shard.run(
        "SELECT current_setting('enable_external_access') AS e, current_setting('threads') AS t",
        timeout=10,
    ).table.to_pylist()
    assert settings == [{"e": False, "t": 1}]


def test_a_runaway_query_is_interrupted_at_its_deadline(shard: Shard) -> None:
    started = time.monotonic()
    with pytest.raises(QueryDeadlineError):
        shard.run("SELECT count(*) FROM range(100000000000) a", timeout=0.5)
    assert time.monotonic() - started < 10
    # The shard still answers afterwards.
    assert shard.run("SELECT count(*) AS n FROM claims", timeout=10).table.to_pylist() == [
        {"n": 1000}
    ]
