"""Log entry records: versioned, strict, RFC 8785 canonical JSON of at most 65,535 bytes.

Every entry is a JSON object with `version` (1) and `kind`, one of: `query`, `denial`,
`approval`, `policy_activation`, `run_intent`, `attestation`, `failure`,
`execution_report`. All fields are required (optional values are present as null), unknown
fields are refused, and `Entry.from_bytes` accepts only the exact canonical bytes, so
`Entry.from_bytes(b).to_bytes() == b` and the leaf hash of what was parsed is the leaf hash of
what was stored.

What may appear: identifiers, names, purposes, canonical SQL, hashes, signatures and attestation
evidence. Low-entropy values (template parameters, results, yes/no answers, cell counts,
suppressed counts) appear only as 32-byte hex commitments (dataisland.canonical.commit); partials
only as the hash of their sealed ciphertext. This module cannot see the difference between a
commitment and a raw hash; callers put only commitments in the `*_commitment` fields.

This module does not sign or verify the signatures it carries (it says which bytes enclaves sign:
`signed_bytes`), read clocks, or store anything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from dataisland.canonical import canonical_json, parse_rfc3339
from dataisland.errors import DataislandError
from ledger.errors import EntryTooLargeError, MalformedEntryError
from ledger.merkle import hash_leaf

ENTRY_VERSION = 1
"""The one entry format version this module writes and reads."""

MAX_ENTRY_BYTES = 65_535
"""Largest entry, in canonical bytes (tlog-tiles entry bundles use 16-bit lengths)."""


def check_entry_size(data: bytes) -> bytes:
    """Return `data` if it is 1 to 65,535 bytes.

    Raises:
        EntryTooLargeError: empty or longer than 65,535 bytes.
    """
    if not isinstance(data, bytes):
        raise MalformedEntryError("entries are bytes")
    if not 0 < len(data) <= MAX_ENTRY_BYTES:
        raise EntryTooLargeError(
            f"an entry is 1 to {MAX_ENTRY_BYTES} bytes; this one is {len(data)}"
        )
    return data


def _timestamp(value: str) -> str:
    try:
        parse_rfc3339(value)
    except DataislandError:
        raise ValueError(
            "not RFC 3339 UTC with microseconds (YYYY-MM-DDTHH:MM:SS.ffffffZ)"
        ) from None
    return value


def _base64(value: str) -> str:
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError("not standard base64") from None
    if not raw or base64.b64encode(raw).decode() != value:
        raise ValueError("not canonical, non-empty standard base64")
    return value


Hex32 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
"""A 32-byte hash or commitment, lowercase hex."""
B64 = Annotated[str, AfterValidator(_base64)]
"""Bytes (signatures, signed documents, evidence) in canonical standard base64."""
Timestamp = Annotated[str, AfterValidator(_timestamp)]
"""An instant as dataisland.canonical.format_rfc3339 writes it."""
Ident = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
"""A query id, request id or report id."""
Name = Annotated[str, StringConstraints(min_length=1, max_length=512)]
"""A department, officer, requester, enclave or rule name."""
Text = Annotated[str, StringConstraints(min_length=1, max_length=16_384)]
"""Free text written by a person or a fixed description (purposes, SQL, reasons)."""
Count = Annotated[int, Field(ge=1, le=2**53 - 1)]

Decision = Literal["allowed", "pending", "approved", "released", "denied", "failed"]


class _Record(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class PolicyRef(_Record):
    """The policy a department's enclave applied, by hash."""

    department: Name
    policy_hash: Hex32


class ApprovalRef(_Record):
    """An officer's approval a query ran under: its hash and the officer's signature."""

    department: Name
    officer: Name
    approval_hash: Hex32
    signature: B64


class PartialRef(_Record):
    """One department's partial: the hash of its sealed payload, the release parameters it
    declared (its k and the policies it checked) and the enclave's signature over all of them
    (`dataisland.attestation.partial_statement`), which an auditor checks from the log."""

    department: Name
    payload_hash: Hex32
    k: Count
    policies: tuple[PolicyRef, ...]
    signature: B64


class OfficerSignature(_Record):
    """An officer's signature over a document carried in the entry."""

    officer: Name
    signature: B64


def _model_errors(err: ValidationError) -> str:
    # Locations and error types only: never echo the values.
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(entry)'}: {e['type']}" for e in err.errors()
    )


class Entry(_Record):
    """Base of every entry kind: `version` and `kind`, canonical bytes, leaf hash."""

    KIND: ClassVar[str] = ""

    version: Literal[1]

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object whose RFC 8785 bytes are the entry."""
        return self.model_dump(mode="json")

    def to_bytes(self) -> bytes:
        """Return the canonical bytes.

        Raises:
            EntryTooLargeError: they exceed 65,535 bytes.
        """
        # Strict validation fixed the shape: bounded integers, no floats, ASCII field names
        # (a test checks every entry model's fields), so the canonical form skips its walk.
        return check_entry_size(canonical_json(self.to_json(), shape_checked=True))

    def leaf_hash(self) -> bytes:
        """Return the RFC 9162 leaf hash of the canonical bytes."""
        return hash_leaf(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Parse canonical entry bytes strictly.

        Called on `Entry`, returns whichever kind the bytes hold; called on a kind, refuses
        other kinds.

        Raises:
            EntryTooLargeError: empty or longer than 65,535 bytes.
            MalformedEntryError: not canonical JSON, an unknown kind or version, a missing,
                unknown or ill-typed field, or a kind other than the class asked for.
        """
        check_entry_size(data)
        # One strict parse in pydantic's parser, dispatched on `kind`; canonical form (no
        # duplicate keys, no floats, key order, escapes) is proven below, where the entry must
        # re-serialise to these very bytes.
        try:
            entry: Entry = _ANY_ENTRY.validate_json(data, strict=True)
        except ValidationError as e:
            errors = e.errors()
            if any(err["type"] in ("union_tag_invalid", "union_tag_not_found") for err in errors):
                raise MalformedEntryError("entry has no known kind") from None
            if any(err["type"] == "json_invalid" for err in errors):
                raise MalformedEntryError("entry is not canonical JSON: not valid JSON") from None
            kind = str(errors[0]["loc"][0]) if errors and errors[0]["loc"] else "entry"
            raise MalformedEntryError(f"{kind} entry: {_model_errors(e)}") from None
        if not isinstance(entry, cls):
            raise MalformedEntryError(
                f"entry is a {entry.KIND!r}, not a {cls.KIND or cls.__name__!r}"
            )
        kind = entry.KIND
        if entry.to_bytes() != data:
            raise MalformedEntryError(f"{kind} entry does not re-serialise to the same bytes")
        return entry


class QueryEntry(Entry):
    """A query's decision, with everything an auditor needs to check it.

    The envelope fields (request id, purpose, issued_at, parameter commitment, digest and the
    requester's signature) let anyone holding the requester's key check who asked what.
    """

    KIND: ClassVar[str] = "query"
    kind: Literal["query"]
    query_id: Ident
    request_id: Ident
    requester: Name
    purpose: Text
    sql: Text
    query_hash: Hex32
    params_commitment: Hex32
    envelope_digest: Hex32
    envelope_signature: B64
    issued_at: Timestamp
    policies: tuple[PolicyRef, ...]
    approvals: tuple[ApprovalRef, ...]
    partials: tuple[PartialRef, ...]
    result_commitment: Hex32 | None
    aggregator_signature: B64 | None
    suppressed_commitment: Hex32 | None
    decision: Decision
    submitted_at: Timestamp
    decided_at: Timestamp

    @model_validator(mode="after")
    def _released_carries_result(self) -> Self:
        # The aggregator's signature stays optional until the aggregator holds an attested
        # signing key (the running aggregator does not sign yet); the commitment never is.
        if self.decision == "released" and self.result_commitment is None:
            raise ValueError("a released query carries its result commitment")
        return self


class DenialEntry(Entry):
    """A query refused (by the coordinator's early check, an enclave or an officer)."""

    KIND: ClassVar[str] = "denial"
    kind: Literal["denial"]
    query_id: Ident
    request_id: Ident
    requester: Name
    purpose: Text
    query_hash: Hex32 | None
    envelope_digest: Hex32
    envelope_signature: B64
    denied_by: Name
    reasons: tuple[Text, ...]
    decided_at: Timestamp


class ApprovalEntry(Entry):
    """An officer's signed approval (or refusal) of one envelope or of a template."""

    KIND: ClassVar[str] = "approval"
    kind: Literal["approval"]
    query_id: Ident | None
    department: Name
    officer: Name
    subject: Literal["envelope", "template"]
    subject_hash: Hex32
    approval: B64
    approval_hash: Hex32
    signature: B64
    decision: Literal["approved", "denied"]
    decided_at: Timestamp

    @model_validator(mode="after")
    def _hash_matches(self) -> Self:
        if hashlib.sha256(base64.b64decode(self.approval)).hexdigest() != self.approval_hash:
            raise ValueError("approval_hash is not SHA-256 of approval")
        return self


class PolicyActivationEntry(Entry):
    """A department's policy version taking effect: the signed policy document in full."""

    KIND: ClassVar[str] = "policy_activation"
    kind: Literal["policy_activation"]
    department: Name
    policy_version: Count
    policy: B64
    policy_hash: Hex32
    signatures: tuple[OfficerSignature, ...]
    activated_at: Timestamp

    @model_validator(mode="after")
    def _hash_matches(self) -> Self:
        if hashlib.sha256(base64.b64decode(self.policy)).hexdigest() != self.policy_hash:
            raise ValueError("policy_hash is not SHA-256 of policy")
        return self


class _EnclaveSigned(Entry):
    """An entry a department enclave wrote and signed itself with its attested key.

    The coordinator only relays it; `signed_bytes` is what the enclave signed (the canonical
    JSON of every other field, under a context string per kind), so anyone holding the key
    that a logged attestation pinned can check the entry from the log alone.
    """

    CONTEXT: ClassVar[str] = ""
    signature: B64

    def signed_bytes(self) -> bytes:
        """The bytes the enclave's signature covers."""
        fields = self.to_json()
        del fields["signature"]
        return canonical_json({"context": self.CONTEXT, "entry": fields})


class RunIntentEntry(_EnclaveSigned):
    """A department enclave's intent to run one approved query (ad hoc or a template run).

    The enclave releases that run's partial only once this entry is in the log under a
    checkpoint a quorum cosigned, so a run counts (and its request id is spent) before any
    result can leave, and an enclave restarted from the log knows every run it released.
    """

    KIND: ClassVar[str] = "run_intent"
    CONTEXT: ClassVar[str] = "dataisland/run-intent/v1"
    kind: Literal["run_intent"]
    intent_id: Ident
    department: Name
    enclave: Name
    query_id: Ident
    request_id: Ident
    requester: Name
    purpose: Text
    envelope_digest: Hex32
    approval_hash: Hex32
    template_hash: Hex32 | None
    run: Count
    runs: Count
    recorded_at: Timestamp

    @model_validator(mode="after")
    def _run_within_runs(self) -> Self:
        if self.run > self.runs:
            raise ValueError("run is beyond the runs the approval allows")
        return self


class AttestationEntry(Entry):
    """Attestation evidence, in full, as a verifier accepted it."""

    KIND: ClassVar[str] = "attestation"
    kind: Literal["attestation"]
    subject: Name
    role: Literal["department", "aggregator"]
    department: Name | None
    evidence: B64
    evidence_hash: Hex32
    verifier: Name
    verified_at: Timestamp

    @model_validator(mode="after")
    def _hash_matches(self) -> Self:
        if hashlib.sha256(base64.b64decode(self.evidence)).hexdigest() != self.evidence_hash:
            raise ValueError("evidence_hash is not SHA-256 of evidence")
        return self


class FailureEntry(Entry):
    """A query (or step) that failed; the message is a fixed description, never data."""

    KIND: ClassVar[str] = "failure"
    kind: Literal["failure"]
    query_id: Ident | None
    request_id: Ident | None
    stage: Name
    code: Name
    message: Text
    failed_at: Timestamp


class ExecutionReportEntry(_EnclaveSigned):
    """An enclave's report of one execution, as its witness received it before the partial left.

    It names the policy version the enclave applied, so an enclave restarted from the log
    never accepts an older one, and the requester and request id, so it never runs the same
    envelope twice.
    """

    KIND: ClassVar[str] = "execution_report"
    CONTEXT: ClassVar[str] = "dataisland/execution-report/v1"
    kind: Literal["execution_report"]
    report_id: Ident
    department: Name
    enclave: Name
    query_id: Ident
    request_id: Ident
    requester: Name
    query_hash: Hex32
    envelope_digest: Hex32
    partial_hash: Hex32
    policy_hash: Hex32
    policy_version: Count
    reported_at: Timestamp


AnyEntry = (
    QueryEntry
    | DenialEntry
    | ApprovalEntry
    | PolicyActivationEntry
    | RunIntentEntry
    | AttestationEntry
    | FailureEntry
    | ExecutionReportEntry
)

_KINDS: dict[str, type[Entry]] = {
    cls.KIND: cls
    for cls in (
        QueryEntry,
        DenialEntry,
        ApprovalEntry,
        PolicyActivationEntry,
        RunIntentEntry,
        AttestationEntry,
        FailureEntry,
        ExecutionReportEntry,
    )
}
ENTRY_KINDS = tuple(sorted(_KINDS))
"""Every kind this version knows."""

_ANY_ENTRY: TypeAdapter[AnyEntry] = TypeAdapter(Annotated[AnyEntry, Field(discriminator="kind")])
"""Parses any kind in one pass (pydantic reads `kind` first and validates that model)."""
