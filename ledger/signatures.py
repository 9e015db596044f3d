"""Checks every enclave signature the log's entries carry, with keys the log itself attested.

An auditor holding an export and the federation file (the pinned vendor root and the reference
measurements) can check, offline, that each released result was signed by an attested
aggregator and each partial, execution report and run intent by an attested department enclave:
walking the entries in order, an attestation entry's evidence is verified as the coordinator
verified it (at its `verified_at`) and pins that enclave's signing key (`AttestedKeys`); a
released query entry must then carry the aggregator's signature over its result statement and,
for every partial, that department's signature over its partial statement and, before it, that
enclave's execution report of the same sealed partial; an execution report or run intent must
carry its enclave's signature over the entry itself; each signature verifies with a key pinned
by an earlier entry. Any key attested earlier for the node is accepted, since an enclave
restarted mid-query signs with the key of the attestation before its restart. A department
enclave restarted from the log trusts its own past entries the same way (enclave/history.py).

This module does not: check the tree or checkpoints (ledger/verify.py does, and calls this
per entry), or check requesters' and officers' signatures (their certificates are not in the
log).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dataisland.attestation import (
    AttestationError,
    TrustAnchors,
    partial_statement,
    result_statement,
)
from dataisland.canonical.envelope import parse_rfc3339
from dataisland.errors import DataislandError
from ledger.entries import (
    AttestationEntry,
    Entry,
    ExecutionReportEntry,
    QueryEntry,
    RunIntentEntry,
)
from ledger.errors import VerificationError


@dataclass
class AttestedKeys:
    """The enclave signing keys that attestation entries pinned, in log order.

    Attributes:
        anchors: the federation's pinned vendor root and reference values.
    """

    anchors: TrustAnchors
    _keys: dict[tuple[str, str], list[Ed25519PublicKey]] = field(default_factory=dict)

    def attest(self, entry: AttestationEntry) -> None:
        """Verify a logged attestation as its verifier did, at its `verified_at`, and pin its key.

        Raises:
            AttestationError: the evidence fails a check.
            InvalidInputError: its timestamp or base64 does not parse.
        """
        attested = self.anchors.verify(
            base64.b64decode(entry.evidence),
            node=entry.subject,
            role=entry.role,
            now=parse_rfc3339(entry.verified_at),
        )
        self._keys.setdefault((entry.role, entry.subject), []).append(attested.signing_key)

    def of(self, role: str, node: str | None = None) -> list[Ed25519PublicKey]:
        """The keys pinned for `node` in `role` (every node of the role when None)."""
        if node is not None:
            return list(self._keys.get((role, node), ()))
        return [k for (r, _), ks in self._keys.items() if r == role for k in ks]

    def signed(self, role: str, node: str | None, statement: bytes, signature: bytes) -> bool:
        """Whether a key pinned for `node` in `role` made `signature` over `statement`."""
        return _any_signed(self.of(role, node), statement, signature)


def _any_signed(keys: Sequence[Ed25519PublicKey], statement: bytes, signature: bytes) -> bool:
    for key in reversed(keys):  # the latest attestation is the likeliest signer
        try:
            key.verify(signature, statement)
        except InvalidSignature:
            continue
        return True
    return False


@dataclass(frozen=True)
class _Pending:
    """A signature check that waits for its batch, with the keys attested before its entry."""

    index: int
    keys: tuple[Ed25519PublicKey, ...]
    statement: bytes
    signature: bytes
    what: str


@dataclass
class SignatureChecker:
    """Feed it every entry in log order; it raises at the first signature that fails.

    With `batch` above 1 the Ed25519 checks of up to that many signatures wait and run
    together (in log order) when the batch is full, before any other failure is raised, and at
    `flush`: interleaved with parsing each check costs about a sixth more (the verifier's code
    and tables fall out of the caches). The first failing index is still the one reported, as
    long as the caller calls `flush` before trusting the result (ledger.verify.verify_export
    does).

    Attributes:
        anchors: the federation's pinned vendor root and reference values.
        batch: how many signature checks may wait (1: each is checked at once).
        attestations, partials, results, reports: how many of each were checked (reports
            counts execution reports and run intents).
    """

    anchors: TrustAnchors
    batch: int = 1
    attestations: int = 0
    partials: int = 0
    results: int = 0
    reports: int = 0
    _keys: AttestedKeys | None = None
    _reported: set[tuple[str, str, str]] = field(default_factory=set)
    _pending: list[_Pending] = field(default_factory=list)

    def check(self, index: int, data: bytes) -> None:
        """Parse the entry at `index` and check (or queue the check of) its signatures.

        Raises:
            VerificationError: the entry does not parse, its evidence does not verify, or a
                signature is missing or does not verify with any key attested before it
                (a queued signature's failure, of a lower index, is raised first).
        """
        try:
            self._check(index, data)
        except VerificationError:
            self.flush()  # an earlier entry's bad signature is the first failure
            raise
        if len(self._pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        """Run every queued signature check, in log order.

        Raises:
            VerificationError: the first that does not verify with any key attested before it.
        """
        pending, self._pending = self._pending, []
        for item in pending:
            if not _any_signed(item.keys, item.statement, item.signature):
                raise VerificationError(
                    f"the signature of {item.what} does not verify with any key attested before it",
                    index=item.index,
                )

    def _check(self, index: int, data: bytes) -> None:
        if self._keys is None:
            self._keys = AttestedKeys(self.anchors)
        try:
            entry = Entry.from_bytes(data)
        except DataislandError as e:
            raise VerificationError(f"not a valid entry: {e}", index=index) from None
        if isinstance(entry, AttestationEntry):
            try:
                self._keys.attest(entry)
            except (AttestationError, DataislandError) as e:
                raise VerificationError(
                    f"the attestation evidence of {entry.subject} does not verify: {e}",
                    index=index,
                ) from None
            self.attestations += 1
        elif isinstance(entry, QueryEntry) and entry.decision == "released":
            self._released(index, entry, self._keys)
        elif isinstance(entry, (ExecutionReportEntry, RunIntentEntry)):
            what = (
                f"the execution report {entry.report_id}"
                if isinstance(entry, ExecutionReportEntry)
                else f"the run intent {entry.intent_id}"
            )
            self._signed(
                index,
                self._keys,
                ("department", entry.department),
                entry.signed_bytes(),
                entry.signature,
                what,
            )
            if isinstance(entry, ExecutionReportEntry):
                self._reported.add((entry.department, entry.query_id, entry.partial_hash))
            self.reports += 1

    def _released(self, index: int, entry: QueryEntry, keys: AttestedKeys) -> None:
        if entry.aggregator_signature is None or entry.result_commitment is None:
            raise VerificationError(
                "a released result without the aggregator's signature", index=index
            )
        if not entry.partials:
            raise VerificationError("a released result without its partials", index=index)
        statement = result_statement(
            query_id=entry.query_id,
            query_hash=entry.query_hash,
            result_commitment=bytes.fromhex(entry.result_commitment),
        )
        self._signed(
            index,
            keys,
            ("aggregator", None),
            statement,
            entry.aggregator_signature,
            "the released result",
        )
        for partial in entry.partials:
            statement = partial_statement(
                department=partial.department,
                query_id=entry.query_id,
                query_hash=entry.query_hash,
                ciphertext_sha256=partial.payload_hash,
                k=partial.k,
                policy_hashes={p.department: p.policy_hash for p in partial.policies},
            )
            self._signed(
                index,
                keys,
                ("department", partial.department),
                statement,
                partial.signature,
                f"the partial of {partial.department}",
            )
            if (partial.department, entry.query_id, partial.payload_hash) not in self._reported:
                raise VerificationError(
                    f"the partial of {partial.department} was released, but its enclave's "
                    "execution report is not in the log before it",
                    index=index,
                )
            self.partials += 1
        self.results += 1

    def _signed(
        self,
        index: int,
        keys: AttestedKeys,
        signer: tuple[str, str | None],
        statement: bytes,
        signature: str,
        what: str,
    ) -> None:
        attested = keys.of(*signer)
        if not attested:
            raise VerificationError(
                f"{what} is signed, but no attestation of its enclave comes before it",
                index=index,
            )
        try:
            raw = base64.b64decode(signature, validate=True)
        except binascii.Error:
            raise VerificationError(f"the signature of {what} is not base64", index=index) from None
        # The keys attested so far: a later attestation must not vouch for this signature.
        self._pending.append(_Pending(index, tuple(attested), statement, raw, what))
