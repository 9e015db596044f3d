"""Identities in memory: CAs, issued certificates, the trust store's refusals, signed envelopes.

Every refusal must be the project's own error naming the failed check (never a ValueError from
cryptography), since certificates and envelopes arrive from callers.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from dataisland.canonical import QueryEnvelope, TypedParam, new_salt, params_commitment
from dataisland.envelopes import MAX_AGE, MAX_SKEW, check_signed_envelope, sign
from dataisland.errors import DataislandError, InvalidInputError
from dataisland.identity import (
    Credentials,
    Principal,
    TrustStore,
    UnauthenticatedError,
    authority_paths,
    create_authority,
    credential_paths,
    issue,
    load_certificate,
    load_private_key,
    principal_of,
    revocation_list,
    sign_envelope,
    verify_envelope_signature,
    write_private_key,
)
from dataisland.v1 import common_pb2

FEDERATION = "zone"
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)

# Creating P-256 keys is cheap, but the authorities are shared so every test sees the same CAs.
QINGPU_CA = create_authority(federation=FEDERATION, department="qingpu", now=NOW)
WUJIANG_CA = create_authority(federation=FEDERATION, department="wujiang", now=NOW)
COMMITTEE_CA = create_authority(federation=FEDERATION, department="committee", now=NOW)
ANALYST = Principal(FEDERATION, "qingpu", "requester", "analyst")


def _store(
    revocations: dict[str, x509.CertificateRevocationList] | None = None,
) -> TrustStore:
    return TrustStore(
        federation=FEDERATION,
        authorities={
            "qingpu": QINGPU_CA.certificate,
            "wujiang": WUJIANG_CA.certificate,
            "committee": COMMITTEE_CA.certificate,
        },
        revocations=revocations or {},
    )


def _analyst(*, now: dt.datetime = NOW, days: int = 365) -> Credentials:
    return issue(QINGPU_CA, principal=ANALYST, now=now, days=days)


def _handmade(authority: Credentials, sans: Sequence[x509.GeneralName] | None) -> x509.Certificate:
    """A certificate the CA really signed, but with the given SANs (None: no SAN extension)."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "handmade")]))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(authority.key, hashes.SHA256())


# -- authorities and issuance ------------------------------------------------------------------


def test_authority_is_a_self_signed_p256_ca_naming_its_department() -> None:
    certificate = QINGPU_CA.certificate
    assert isinstance(QINGPU_CA.key, ec.EllipticCurvePrivateKey)
    assert isinstance(QINGPU_CA.key.curve, ec.SECP256R1)
    assert certificate.issuer == certificate.subject
    certificate.verify_directly_issued_by(certificate)
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is True
    assert constraints.value.path_length == 0  # it signs leaves only, never another CA
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert not usage.digital_signature
    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://zone/dept/qingpu"]
    assert certificate.not_valid_before_utc <= NOW < certificate.not_valid_after_utc
    # Two departments are two different authorities, not two names for one key.
    assert QINGPU_CA.certificate.public_key() != WUJIANG_CA.certificate.public_key()


def test_issued_requester_certificate_carries_one_spiffe_id_and_no_dns_name() -> None:
    issued = _analyst(days=30)
    certificate = issued.certificate
    assert isinstance(issued.key, ec.EllipticCurvePrivateKey)
    assert isinstance(issued.key.curve, ec.SECP256R1)
    assert isinstance(certificate.public_key(), ec.EllipticCurvePublicKey)
    assert certificate.signature_hash_algorithm is not None
    assert certificate.signature_hash_algorithm.name == "sha256"
    certificate.verify_directly_issued_by(QINGPU_CA.certificate)
    assert certificate.issuer == QINGPU_CA.certificate.subject
    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://zone/dept/qingpu/requester/analyst"
    ]
    assert sans.get_values_for_type(x509.DNSName) == []
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is False
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert certificate.not_valid_after_utc == NOW + dt.timedelta(days=30)
    assert certificate.not_valid_before_utc <= NOW
    assert principal_of(certificate) == ANALYST
    assert _store().verify(certificate, now=NOW) == ANALYST


def test_node_certificate_carries_its_dns_name_beside_the_spiffe_id() -> None:
    node = Principal(FEDERATION, "qingpu", "enclave", "node")
    issued = issue(QINGPU_CA, principal=node, now=NOW, dns_names=["enclave.qingpu.zone.dataisland"])
    sans = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["enclave.qingpu.zone.dataisland"]
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://zone/dept/qingpu/enclave/node"
    ]
    assert _store().verify(issued.certificate, now=NOW) == node


def test_each_issue_is_a_new_key_and_serial() -> None:
    first, second = _analyst(), _analyst()
    assert first.certificate.serial_number != second.certificate.serial_number
    assert first.certificate.public_key() != second.certificate.public_key()


def test_pem_round_trips() -> None:
    issued = _analyst()
    assert load_certificate(issued.certificate_pem()) == issued.certificate
    der = issued.certificate.public_bytes(serialization.Encoding.DER)
    assert load_certificate(der) == issued.certificate
    key = load_private_key(issued.key_pem())
    assert key.private_numbers() == issued.key.private_numbers()


@pytest.mark.parametrize(
    ("principal", "named"),
    [
        (Principal(FEDERATION, "qingpu", "admin", "root"), "unknown role"),
        (Principal(FEDERATION, "qingpu", "requester", "bad name"), "name"),
        (Principal(FEDERATION, "qingpu", "requester", "-leading"), "name"),
        (Principal(FEDERATION, "qingpu", "requester", "x" * 64), "name"),
    ],
)
def test_issue_refuses_unknown_roles_and_bad_names(principal: Principal, named: str) -> None:
    with pytest.raises(InvalidInputError, match=named):
        issue(QINGPU_CA, principal=principal, now=NOW)


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://zone/dept/qingpu",  # a CA's trust domain, not a principal
        "spiffe://zone/dept/qingpu/admin/root",  # unknown role
        "spiffe://zone/dept/qingpu/requester/analyst/extra",
        "spiffe://zone/qingpu/requester/analyst",
        "spiffe://Zone/dept/qingpu/requester/analyst",
        "https://zone/dept/qingpu/requester/analyst",
        "spiffe://zone/dept/Qingpu/requester/analyst",
        "",
    ],
)
def test_malformed_spiffe_ids_are_unauthenticated(uri: str) -> None:
    with pytest.raises(UnauthenticatedError, match="not a dataisland SPIFFE ID"):
        Principal.from_spiffe_id(uri)


def test_spiffe_id_round_trips() -> None:
    assert Principal.from_spiffe_id(ANALYST.spiffe_id) == ANALYST
    assert str(ANALYST) == "qingpu/requester/analyst"


# -- the trust store's refusals ----------------------------------------------------------------


def test_another_departments_ca_cannot_mint_this_departments_identity() -> None:
    # wujiang's CA is pinned and trusted, but only for wujiang: a principal's department is the
    # CA that issued it.
    forged = issue(WUJIANG_CA, principal=ANALYST, now=NOW)
    with pytest.raises(UnauthenticatedError, match="not issued by qingpu's CA"):
        _store().verify(forged.certificate, now=NOW)
    # The committee's CA cannot mint department identities either.
    forged = issue(COMMITTEE_CA, principal=ANALYST, now=NOW)
    with pytest.raises(UnauthenticatedError, match="not issued by qingpu's CA"):
        _store().verify(forged.certificate, now=NOW)


def test_an_unknown_ca_is_refused_even_with_the_same_name() -> None:
    # Same federation, same department, same subject name: a different key is a different CA.
    impostor = create_authority(federation=FEDERATION, department="qingpu", now=NOW)
    assert impostor.certificate.subject == QINGPU_CA.certificate.subject
    forged = issue(impostor, principal=ANALYST, now=NOW)
    with pytest.raises(UnauthenticatedError, match="not issued by qingpu's CA"):
        _store().verify(forged.certificate, now=NOW)


def test_a_department_with_no_pinned_ca_is_refused() -> None:
    songjiang = create_authority(federation=FEDERATION, department="songjiang", now=NOW)
    stranger = issue(
        songjiang, principal=Principal(FEDERATION, "songjiang", "requester", "a"), now=NOW
    )
    with pytest.raises(UnauthenticatedError, match="no pinned CA for department 'songjiang'"):
        _store().verify(stranger.certificate, now=NOW)


def test_another_federations_name_is_refused() -> None:
    # Even when this federation's own qingpu CA signed it, the name must be this federation's.
    other = issue(QINGPU_CA, principal=Principal("other", "qingpu", "requester", "a"), now=NOW)
    with pytest.raises(UnauthenticatedError, match="belongs to federation 'other'"):
        _store().verify(other.certificate, now=NOW)
    # And another federation's CA for a department of the same name is another CA.
    foreign_ca = create_authority(federation="other", department="qingpu", now=NOW)
    foreign = issue(foreign_ca, principal=Principal("other", "qingpu", "requester", "a"), now=NOW)
    with pytest.raises(UnauthenticatedError, match="federation 'other'"):
        _store().verify(foreign.certificate, now=NOW)


def test_an_expired_certificate_is_refused() -> None:
    expired = _analyst(now=NOW - dt.timedelta(days=40), days=30)
    with pytest.raises(UnauthenticatedError, match="expired or not yet valid"):
        _store().verify(expired.certificate, now=NOW)


def test_a_not_yet_valid_certificate_is_refused() -> None:
    early = _analyst(now=NOW + dt.timedelta(days=1))
    with pytest.raises(UnauthenticatedError, match="expired or not yet valid"):
        _store().verify(early.certificate, now=NOW)


def test_validity_bounds_are_inclusive() -> None:
    issued = _analyst(days=1)
    last = issued.certificate.not_valid_after_utc
    first = issued.certificate.not_valid_before_utc
    assert _store().verify(issued.certificate, now=last) == ANALYST
    assert _store().verify(issued.certificate, now=first) == ANALYST
    for moment in (last + dt.timedelta(seconds=1), first - dt.timedelta(seconds=1)):
        with pytest.raises(UnauthenticatedError, match="expired or not yet valid"):
            _store().verify(issued.certificate, now=moment)


def test_a_revoked_serial_is_refused_and_others_are_not() -> None:
    revoked, kept = _analyst(), _analyst()
    crl = revocation_list(QINGPU_CA, revoked_serials=[revoked.certificate.serial_number], now=NOW)
    store = _store({"qingpu": crl})
    with pytest.raises(UnauthenticatedError, match="qingpu/requester/analyst is revoked"):
        store.verify(revoked.certificate, now=NOW)
    assert store.verify(kept.certificate, now=NOW) == ANALYST
    # qingpu's list says nothing about wujiang's certificates, even with the same serial.
    wujiang = Principal(FEDERATION, "wujiang", "requester", "w")
    other = issue(WUJIANG_CA, principal=wujiang, now=NOW)
    crl = revocation_list(QINGPU_CA, revoked_serials=[other.certificate.serial_number], now=NOW)
    assert _store({"qingpu": crl}).verify(other.certificate, now=NOW) == wujiang


def test_a_revocation_list_not_signed_by_the_ca_is_refused() -> None:
    # An empty list signed by a key that merely has the CA's name must not be trusted: it could
    # hide a revocation. Verification fails closed.
    impostor = create_authority(federation=FEDERATION, department="qingpu", now=NOW)
    forged = revocation_list(impostor, revoked_serials=[], now=NOW)
    assert forged.issuer == QINGPU_CA.certificate.subject
    with pytest.raises(UnauthenticatedError, match="revocation list of qingpu is not signed"):
        _store({"qingpu": forged}).verify(_analyst().certificate, now=NOW)
    by_neighbour = revocation_list(WUJIANG_CA, revoked_serials=[], now=NOW)
    with pytest.raises(UnauthenticatedError, match="not signed by its CA"):
        _store({"qingpu": by_neighbour}).verify(_analyst().certificate, now=NOW)


@pytest.mark.parametrize(
    ("sans", "named"),
    [
        pytest.param(None, "no subject alternative name", id="no SAN extension"),
        pytest.param([x509.DNSName("qingpu.example")], "exactly one SPIFFE URI", id="DNS only"),
        pytest.param(
            [
                x509.UniformResourceIdentifier("spiffe://zone/dept/qingpu/requester/analyst"),
                x509.UniformResourceIdentifier("spiffe://zone/dept/qingpu/officer/officer"),
            ],
            "exactly one SPIFFE URI",
            id="two SPIFFE URIs",
        ),
        pytest.param(
            [x509.UniformResourceIdentifier("https://qingpu.example/analyst")],
            "not a dataisland SPIFFE ID",
            id="not SPIFFE",
        ),
    ],
)
def test_a_certificate_must_carry_exactly_one_spiffe_id(
    sans: list[x509.GeneralName] | None, named: str
) -> None:
    # Signed by the right CA and valid: only the name is wrong.
    certificate = _handmade(QINGPU_CA, sans)
    with pytest.raises(UnauthenticatedError, match=named):
        _store().verify(certificate, now=NOW)


@pytest.mark.parametrize("data", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n"])
def test_garbage_certificates_are_unauthenticated(data: bytes) -> None:
    with pytest.raises(UnauthenticatedError, match=r"not an X\.509 certificate"):
        load_certificate(data)


@pytest.mark.parametrize("data", [b"", b"garbage", QINGPU_CA.certificate_pem()])
def test_garbage_private_keys_are_invalid_input(data: bytes) -> None:
    with pytest.raises(InvalidInputError, match="private key"):
        load_private_key(data)


def test_an_ed25519_private_key_is_refused_for_tls() -> None:
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(InvalidInputError, match="not an ECDSA key"):
        load_private_key(pem)


# -- signed envelopes --------------------------------------------------------------------------

PARAMS = [TypedParam("district", "VARCHAR", "qingpu"), TypedParam("year", "INTEGER", "2024")]


def _signed(
    *,
    key: ec.EllipticCurvePrivateKey | None = None,
    issued_at: dt.datetime = NOW,
    request_id: str = "r-1",
    params: Sequence[TypedParam] = PARAMS,
) -> tuple[common_pb2.SignedEnvelope, Credentials]:
    requester = _analyst()
    salt = new_salt()
    envelope = QueryEnvelope(
        sql="SELECT count(*) AS n FROM claims WHERE district = $district",
        params_commitment=params_commitment(list(params), salt=salt),
        purpose="monthly report",
        request_id=request_id,
        issued_at=issued_at,
    )
    return sign(envelope, key=key or requester.key, params=params, salt=salt), requester


def test_a_signed_envelope_checks_and_opens_its_parameters() -> None:
    signed, requester = _signed()
    checked = check_signed_envelope(signed, signer=requester.certificate, now=NOW)
    assert checked.envelope.request_id == "r-1"
    assert checked.envelope.issued_at == NOW
    assert checked.params == tuple(PARAMS)
    # The wire signature is plain ECDSA P-256 / SHA-256 over the canonical bytes, so a client in
    # another language can produce it.
    public_key = requester.certificate.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(signed.signature, signed.envelope, ec.ECDSA(hashes.SHA256()))
    assert QueryEnvelope.from_bytes(signed.envelope).to_bytes() == signed.envelope


def test_a_null_parameter_survives_the_wire() -> None:
    params = [TypedParam("district", "VARCHAR", None)]
    signed, requester = _signed(params=params)
    checked = check_signed_envelope(signed, signer=requester.certificate, now=NOW)
    assert checked.params == tuple(params)


def _replace_bytes(signed: common_pb2.SignedEnvelope, old: bytes, new: bytes) -> None:
    assert old in signed.envelope
    signed.envelope = signed.envelope.replace(old, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param(b'"r-1"', b'"r-2"', id="request id"),
        pytest.param(b"count(*)", b"sum(amount)", id="sql"),
        pytest.param(b"monthly report", b"anything else!", id="purpose"),
        pytest.param(b"2026-03-01T12:00:00", b"2026-03-01T12:01:00", id="issued_at"),
    ],
)
def test_tampered_envelope_bytes_are_unauthenticated(old: bytes, new: bytes) -> None:
    signed, requester = _signed()
    _replace_bytes(signed, old, new)
    # Still a well-formed envelope: only the signature can tell.
    QueryEnvelope.from_bytes(signed.envelope)
    with pytest.raises(UnauthenticatedError, match="signature does not verify"):
        check_signed_envelope(signed, signer=requester.certificate, now=NOW)


def test_a_signature_by_another_key_is_unauthenticated() -> None:
    someone_else = _analyst()
    signed, requester = _signed(key=someone_else.key)
    with pytest.raises(UnauthenticatedError, match="signature does not verify"):
        check_signed_envelope(signed, signer=requester.certificate, now=NOW)
    # The CA's own key is another key too.
    signed, requester = _signed(key=QINGPU_CA.key)
    with pytest.raises(UnauthenticatedError, match="signature does not verify"):
        check_signed_envelope(signed, signer=requester.certificate, now=NOW)


@pytest.mark.parametrize(
    "signature", [b"", b"\x00", b"\x30\x06\x02\x01\x01\x02\x01\x01", b"x" * 72]
)
def test_malformed_signatures_are_unauthenticated(signature: bytes) -> None:
    signed, requester = _signed()
    signed.signature = signature
    with pytest.raises(UnauthenticatedError, match="signature does not verify"):
        check_signed_envelope(signed, signer=requester.certificate, now=NOW)


def test_a_signer_certificate_without_an_ecdsa_key_is_unauthenticated() -> None:
    ed_key = ed25519.Ed25519PrivateKey.generate()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(QINGPU_CA.certificate.subject)
        .issuer_name(QINGPU_CA.certificate.subject)
        .public_key(ed_key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .sign(QINGPU_CA.key, hashes.SHA256())
    )
    with pytest.raises(UnauthenticatedError, match="not an ECDSA key"):
        verify_envelope_signature(certificate, b"{}", ed_key.sign(b"{}"))


def test_stale_envelopes_are_unauthenticated() -> None:
    signed, requester = _signed(issued_at=NOW - MAX_AGE)
    check_signed_envelope(signed, signer=requester.certificate, now=NOW)  # just in time
    for age in (MAX_AGE + dt.timedelta(seconds=1), dt.timedelta(minutes=10), dt.timedelta(days=3)):
        signed, requester = _signed(issued_at=NOW - age)
        with pytest.raises(UnauthenticatedError, match="issued more than 300 s ago"):
            check_signed_envelope(signed, signer=requester.certificate, now=NOW)


def test_future_dated_envelopes_are_unauthenticated() -> None:
    signed, requester = _signed(issued_at=NOW + MAX_SKEW)
    check_signed_envelope(signed, signer=requester.certificate, now=NOW)  # tolerated skew
    for ahead in (MAX_SKEW + dt.timedelta(seconds=1), dt.timedelta(hours=1)):
        signed, requester = _signed(issued_at=NOW + ahead)
        with pytest.raises(UnauthenticatedError, match="dated in the future"):
            check_signed_envelope(signed, signer=requester.certificate, now=NOW)


def test_parameters_that_do_not_open_the_commitment_are_invalid_input() -> None:
    signed, requester = _signed()
    signed.params[1].value = "2025"
    with pytest.raises(InvalidInputError, match="commitment"):
        check_signed_envelope(signed, signer=requester.certificate, now=NOW)

    signed, requester = _signed()
    signed.params_salt = new_salt()
    with pytest.raises(InvalidInputError, match="commitment"):
        check_signed_envelope(signed, signer=requester.certificate, now=NOW)

    signed, requester = _signed()
    del signed.params[0]
    with pytest.raises(InvalidInputError, match="commitment"):
        check_signed_envelope(signed, signer=requester.certificate, now=NOW)

    signed, requester = _signed()
    signed.params[0].ClearField("value")  # NULL is a different value from 'qingpu'
    with pytest.raises(InvalidInputError, match="commitment"):
        check_signed_envelope(signed, signer=requester.certificate, now=NOW)


@pytest.mark.parametrize(
    ("field", "value"),
    [("type", "MONEY"), ("name", "no spaces allowed"), ("value", "not a number")],
)
def test_malformed_parameters_are_invalid_input(field: str, value: str) -> None:
    signed, requester = _signed()
    setattr(signed.params[1], field, value)
    with pytest.raises(InvalidInputError, match="query parameters"):
        check_signed_envelope(signed, signer=requester.certificate, now=NOW)


def test_a_short_salt_is_invalid_input() -> None:
    signed, requester = _signed()
    signed.params_salt = b"short"
    with pytest.raises(InvalidInputError, match="salt"):
        check_signed_envelope(signed, signer=requester.certificate, now=NOW)


def test_an_empty_envelope_is_invalid_input() -> None:
    _, requester = _signed()
    with pytest.raises(InvalidInputError, match="empty"):
        check_signed_envelope(common_pb2.SignedEnvelope(), signer=requester.certificate, now=NOW)


@pytest.mark.parametrize("data", [b"not json", b'{"a":1}', b'{ "version": 1 }', b"[]", b"\xff\xfe"])
def test_signed_but_malformed_envelopes_are_invalid_argument(data: bytes) -> None:
    # The requester really signed these bytes; they are still not an envelope.
    requester = _analyst()
    signed = common_pb2.SignedEnvelope(envelope=data, signature=sign_envelope(requester.key, data))
    with pytest.raises(DataislandError) as info:
        check_signed_envelope(signed, signer=requester.certificate, now=NOW)
    assert info.value.code == "INVALID_ARGUMENT"


@settings(max_examples=150, deadline=None)
@given(
    target=st.sampled_from(["envelope", "signature"]),
    position=st.integers(min_value=0),
    flip=st.integers(min_value=1, max_value=255),
)
def test_any_single_byte_change_is_refused_with_the_projects_error(
    target: str, position: int, flip: int
) -> None:
    signed, requester = _FUZZ_SIGNED
    corrupted = common_pb2.SignedEnvelope()
    corrupted.CopyFrom(signed)
    data = bytearray(getattr(corrupted, target))
    data[position % len(data)] ^= flip
    setattr(corrupted, target, bytes(data))
    with pytest.raises(UnauthenticatedError):
        check_signed_envelope(corrupted, signer=requester.certificate, now=NOW)


_FUZZ_SIGNED = _signed()


# -- files -------------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_keys_are_written_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o000)
    try:
        path = tmp_path / "deep" / "analyst.key"
        write_private_key(path, _analyst().key_pem())
    finally:
        os.umask(previous)
    assert _mode(path) == 0o600
    assert load_private_key(path.read_bytes())


def test_overwriting_a_readable_key_file_narrows_it_to_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "analyst.key"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_private_key(path, _analyst().key_pem())
    assert _mode(path) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_identity_layout_under_the_federation_directory(tmp_path: Path) -> None:
    assert credential_paths(tmp_path, department="qingpu", role="requester", name="analyst") == (
        tmp_path / "identity" / "qingpu" / "requester-analyst.crt",
        tmp_path / "identity" / "qingpu" / "requester-analyst.key",
    )
    assert authority_paths(tmp_path, "committee") == (
        tmp_path / "identity" / "committee" / "ca.crt",
        tmp_path / "identity" / "committee" / "ca.key",
        tmp_path / "identity" / "committee" / "revocations.crl",
    )
