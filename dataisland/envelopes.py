"""Signing and checking a requester's query envelope, as the client, coordinator and enclaves do.

The requester signs the canonical envelope bytes with its certificate's key; the typed parameters
and the salt of their commitment travel beside it. `check_signed_envelope` verifies the signature
with a certificate the caller has already verified, parses the bytes strictly, checks freshness,
and opens the parameter commitment. Replay protection needs state and lives with whoever keeps it
(each enclave).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from dataisland.canonical import (
    CommitmentMismatchError,
    QueryEnvelope,
    TypedParam,
    params_commitment,
)
from dataisland.errors import DataislandError, InvalidInputError
from dataisland.identity import UnauthenticatedError, sign_envelope, verify_envelope_signature
from dataisland.v1 import common_pb2

MAX_AGE = dt.timedelta(minutes=5)
"""How old an envelope may be when it is checked (submission and execution alike)."""
MAX_SKEW = dt.timedelta(minutes=1)
"""How far in the future a requester's clock may be."""
APPROVAL_WINDOW = dt.timedelta(hours=24)
"""How long an envelope waiting for officers' approvals may stay usable, at most."""


@dataclass(frozen=True)
class CheckedEnvelope:
    """An envelope whose signature, freshness and parameter opening were checked."""

    envelope: QueryEnvelope
    params: tuple[TypedParam, ...]


def sign(
    envelope: QueryEnvelope,
    *,
    key: ec.EllipticCurvePrivateKey,
    params: Sequence[TypedParam],
    salt: bytes,
) -> common_pb2.SignedEnvelope:
    """The wire form of a requester's signed envelope (the client does this transparently)."""
    data = envelope.to_bytes()
    return common_pb2.SignedEnvelope(
        envelope=data,
        signature=sign_envelope(key, data),
        params=[
            common_pb2.TypedParam(name=p.name, type=p.type)
            if p.value is None
            else common_pb2.TypedParam(name=p.name, type=p.type, value=p.value)
            for p in params
        ],
        params_salt=salt,
    )


def check_signed_envelope(
    signed: common_pb2.SignedEnvelope,
    *,
    signer: x509.Certificate,
    now: dt.datetime,
    max_age: dt.timedelta = MAX_AGE,
) -> CheckedEnvelope:
    """Verify a signed envelope against the (already verified) certificate of its requester.

    Raises:
        UnauthenticatedError: the signature does not verify, or the envelope is stale or from
            the future (freshness is part of proving who asked, and when).
        InvalidInputError: the envelope's fields or its parameters are malformed, or the
            parameters do not open the commitment.
        CanonicalEncodingError: the envelope bytes are not canonical JSON.
    """
    if not signed.envelope:
        raise InvalidInputError("envelope is empty")
    verify_envelope_signature(signer, signed.envelope, signed.signature)
    envelope = QueryEnvelope.from_bytes(signed.envelope)
    check_fresh(envelope, now=now, max_age=max_age)
    try:
        params = tuple(
            TypedParam(p.name, p.type, p.value if p.HasField("value") else None)
            for p in signed.params
        )
        opened = params_commitment(list(params), salt=signed.params_salt)
    except CommitmentMismatchError:
        raise
    except DataislandError as exc:
        raise InvalidInputError(f"query parameters: {exc}") from None
    if opened != envelope.params_commitment:
        raise InvalidInputError("the parameters and salt do not open the envelope's commitment")
    return CheckedEnvelope(envelope=envelope, params=params)


def check_fresh(envelope: QueryEnvelope, *, now: dt.datetime, max_age: dt.timedelta) -> None:
    """Refuse an envelope older than `max_age` or dated in the future.

    Raises:
        UnauthenticatedError: stale or from the future.
    """
    if now - envelope.issued_at > max_age:
        raise UnauthenticatedError(
            f"envelope {envelope.request_id} was issued more than "
            f"{int(max_age.total_seconds())} s ago; sign a new one"
        )
    if envelope.issued_at - now > MAX_SKEW:
        raise UnauthenticatedError(f"envelope {envelope.request_id} is dated in the future")
