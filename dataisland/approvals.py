"""The approval record an officer signs for a query that needs it (its canonical bytes).

An approval is the RFC 8785 JSON of the fields below, signed with the officer's Ed25519 key
(the same key its department pins for policies). It binds one envelope (its digest, hence its
SQL, parameter commitment, purpose, request id and time), the requester, the purpose and the
hash of the policy the officer approved under, and it expires. Verification against pinned keys
is policies/approvals.py; this module only encodes, so clients in the kernel can build one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dataisland.canonical import canonical_json, format_rfc3339, parse_canonical_json, parse_rfc3339
from dataisland.errors import DataislandError, InvalidInputError

APPROVAL_VERSION = 1
_FIELDS = (
    "version",
    "department",
    "officer",
    "query_id",
    "envelope_digest",
    "requester",
    "purpose",
    "policy_hash",
    "expires_at",
)


@dataclass(frozen=True)
class Approval:
    """One officer's approval of one envelope under one policy."""

    department: str
    officer: str
    query_id: str
    envelope_digest: str
    requester: str
    purpose: str
    policy_hash: str
    expires_at: dt.datetime

    def to_bytes(self) -> bytes:
        """The canonical bytes the officer signs."""
        return canonical_json(
            {
                "version": APPROVAL_VERSION,
                "department": self.department,
                "officer": self.officer,
                "query_id": self.query_id,
                "envelope_digest": self.envelope_digest,
                "requester": self.requester,
                "purpose": self.purpose,
                "policy_hash": self.policy_hash,
                "expires_at": format_rfc3339(self.expires_at),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Approval:
        """Parse canonical approval bytes strictly.

        Raises:
            InvalidInputError: not an approval.
        """
        try:
            obj = parse_canonical_json(data)
        except DataislandError as exc:
            raise InvalidInputError(f"approval: {exc}") from None
        if not isinstance(obj, dict) or set(obj) != set(_FIELDS):
            raise InvalidInputError(f"an approval has exactly the fields {list(_FIELDS)}")
        if obj["version"] != APPROVAL_VERSION:
            raise InvalidInputError(f"unsupported approval version {obj['version']!r}")
        texts = {k: v for k, v in obj.items() if k != "version"}
        if not all(isinstance(v, str) for v in texts.values()):
            raise InvalidInputError("approval fields are strings")
        return cls(
            department=texts["department"],
            officer=texts["officer"],
            query_id=texts["query_id"],
            envelope_digest=texts["envelope_digest"],
            requester=texts["requester"],
            purpose=texts["purpose"],
            policy_hash=texts["policy_hash"],
            expires_at=parse_rfc3339(texts["expires_at"]),
        )

    def sign(self, key: Ed25519PrivateKey) -> bytes:
        """The officer's signature over `to_bytes()`."""
        return key.sign(self.to_bytes())


_TEMPLATE_FIELDS = (
    "version",
    "kind",
    "department",
    "officer",
    "approval_id",
    "template_hash",
    "requester",
    "purpose",
    "runs",
    "expires_at",
)
MAX_TEMPLATE_RUNS = 10_000


@dataclass(frozen=True)
class TemplateApproval:
    """One officer's approval of a template for one requester and purpose: up to `runs` runs
    with any parameters until `expires_at`. Each department enclave counts the runs itself."""

    department: str
    officer: str
    approval_id: str
    template_hash: str
    requester: str
    purpose: str
    runs: int
    expires_at: dt.datetime

    def to_bytes(self) -> bytes:
        """The canonical bytes the officer signs."""
        return canonical_json(
            {
                "version": APPROVAL_VERSION,
                "kind": "template",
                "department": self.department,
                "officer": self.officer,
                "approval_id": self.approval_id,
                "template_hash": self.template_hash,
                "requester": self.requester,
                "purpose": self.purpose,
                "runs": self.runs,
                "expires_at": format_rfc3339(self.expires_at),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> TemplateApproval:
        """Parse canonical template-approval bytes strictly.

        Raises:
            InvalidInputError: not a template approval.
        """
        try:
            obj = parse_canonical_json(data)
        except DataislandError as exc:
            raise InvalidInputError(f"approval: {exc}") from None
        if not isinstance(obj, dict) or set(obj) != set(_TEMPLATE_FIELDS):
            raise InvalidInputError(
                f"a template approval has exactly the fields {list(_TEMPLATE_FIELDS)}"
            )
        if obj["version"] != APPROVAL_VERSION or obj["kind"] != "template":
            raise InvalidInputError("not a version 1 template approval")
        runs = obj["runs"]
        if type(runs) is not int or not 1 <= runs <= MAX_TEMPLATE_RUNS:
            raise InvalidInputError(f"runs must be an integer from 1 to {MAX_TEMPLATE_RUNS}")
        texts = {k: v for k, v in obj.items() if k not in ("version", "runs")}
        if not all(isinstance(v, str) for v in texts.values()):
            raise InvalidInputError("approval fields are strings")
        return cls(
            department=texts["department"],
            officer=texts["officer"],
            approval_id=texts["approval_id"],
            template_hash=texts["template_hash"],
            requester=texts["requester"],
            purpose=texts["purpose"],
            runs=runs,
            expires_at=parse_rfc3339(texts["expires_at"]),
        )

    def sign(self, key: Ed25519PrivateKey) -> bytes:
        """The officer's signature over `to_bytes()`."""
        return key.sign(self.to_bytes())


def is_template_approval(data: bytes) -> bool:
    """Whether approval bytes claim to be a template approval (verification still decides)."""
    try:
        obj = parse_canonical_json(data)
    except DataislandError:
        return False
    return isinstance(obj, dict) and obj.get("kind") == "template"
