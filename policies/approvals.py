"""Verifying officers' approvals (the record itself is dataisland/approvals.py).

One approval, one run: the envelope it binds runs once in each enclave, which refuses replays.
Pure: the clock and the pinned keys are passed in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dataisland.approvals import Approval, TemplateApproval
from dataisland.errors import PermissionDeniedError


class ApprovalError(PermissionDeniedError):
    """An approval is forged, expired, or bound to something else (the message says which)."""


def verify_approval(
    data: bytes,
    signature: bytes,
    *,
    officers: Mapping[str, Ed25519PublicKey],
    department: str,
    envelope_digest: str,
    requester: str,
    purpose: str,
    policy_hash: str,
    now: dt.datetime,
    latest_expiry: dt.datetime,
) -> Approval:
    """Accept an approval only if a pinned officer of `department` signed it for exactly this.

    `latest_expiry` bounds how long an approval may be valid (the envelope's approval window):
    an approval meant to outlive it is refused rather than trusted for longer than replays are
    remembered.

    Raises:
        ApprovalError: naming what does not match (signature, department, envelope, requester,
            purpose, policy, or expiry).
        InvalidInputError: the bytes are not an approval.
    """
    approval = Approval.from_bytes(data)
    if approval.department != department:
        raise ApprovalError(f"the approval is {approval.department}'s, not {department}'s")
    key = officers.get(approval.officer)
    if key is None:
        raise ApprovalError(f"{approval.officer} is not a pinned officer of {department}")
    try:
        key.verify(signature, data)
    except InvalidSignature:
        raise ApprovalError(f"the approval by {approval.officer} does not verify") from None
    mismatches = [
        name
        for name, got, want in (
            ("envelope", approval.envelope_digest, envelope_digest),
            ("requester", approval.requester, requester),
            ("purpose", approval.purpose, purpose),
            ("policy", approval.policy_hash, policy_hash),
        )
        if got != want
    ]
    if mismatches:
        raise ApprovalError(
            f"the approval by {approval.officer} is for another {', '.join(mismatches)}"
        )
    if now >= approval.expires_at:
        raise ApprovalError(f"the approval by {approval.officer} expired at {approval.expires_at}")
    if approval.expires_at > latest_expiry:
        raise ApprovalError(
            f"the approval by {approval.officer} is valid past {latest_expiry}, longer than "
            "its envelope may wait"
        )
    return approval


def verify_template_approval(
    data: bytes,
    signature: bytes,
    *,
    officers: Mapping[str, Ed25519PublicKey],
    department: str,
    template_hash: str,
    requester: str,
    purpose: str,
    now: dt.datetime,
) -> TemplateApproval:
    """Accept a template approval only if a pinned officer of `department` signed it for exactly
    this template (as this department's policy defines it), requester and purpose, unexpired.
    Counting its runs is the caller's (each enclave's) job.

    Raises:
        ApprovalError: naming what does not match.
        InvalidInputError: the bytes are not a template approval.
    """
    approval = TemplateApproval.from_bytes(data)
    if approval.department != department:
        raise ApprovalError(f"the approval is {approval.department}'s, not {department}'s")
    key = officers.get(approval.officer)
    if key is None:
        raise ApprovalError(f"{approval.officer} is not a pinned officer of {department}")
    try:
        key.verify(signature, data)
    except InvalidSignature:
        raise ApprovalError(f"the approval by {approval.officer} does not verify") from None
    mismatches = [
        name
        for name, got, want in (
            ("template", approval.template_hash, template_hash),
            ("requester", approval.requester, requester),
            ("purpose", approval.purpose, purpose),
        )
        if got != want
    ]
    if mismatches:
        raise ApprovalError(
            f"the template approval by {approval.officer} is for another {', '.join(mismatches)}"
        )
    if now >= approval.expires_at:
        raise ApprovalError(f"the approval by {approval.officer} expired at {approval.expires_at}")
    return approval
