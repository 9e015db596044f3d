"""Receipts: a query's entries, their inclusion proofs, a cosigned checkpoint and the openings.

A receipt file is the RFC 8785 JSON

    {"version": 1, "query_id": <id>, "checkpoint": <the signed note, as text>,
     "entries": [{"index": <n>, "entry": <base64 entry bytes>,
                  "inclusion_proof": [<base64 hash>, ...]}, ...],
     "result_opening": null | {"salt": <base64, 32 bytes>, "committed": <base64 bytes>}}

(written as RFC 8785 JSON; read as any JSON of that shape), where `committed` is the RFC 8785
JSON {"result_digest": <hex>, "suppressed": <bool>} that the released entry's
`result_commitment` commits to: SHA-256(salt || committed). `verify_receipt` checks, with keys
the verifier holds: the checkpoint's log signature and witness quorum, that every entry parses,
is about the query and is included in the checkpoint's tree, and that the opening opens the
released entry's commitment. It does no I/O and reads no clock.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dataisland.canonical import canonical_json, commit, parse_canonical_json
from dataisland.errors import DataislandError
from ledger.checkpoint import verify_cosigned
from ledger.entries import DenialEntry, Entry, FailureEntry, QueryEntry
from ledger.errors import LedgerError, VerificationError
from ledger.merkle import hash_leaf, verify_inclusion
from ledger.note import Ed25519Verifier

RECEIPT_VERSION = 1


@dataclass(frozen=True)
class ReceiptEntry:
    """One entry of a receipt and its inclusion proof in the receipt's checkpoint."""

    index: int
    data: bytes
    inclusion_proof: tuple[bytes, ...]


@dataclass(frozen=True)
class Receipt:
    """A receipt as the requester holds it (see the module docstring for the file form)."""

    query_id: str
    checkpoint: bytes
    entries: tuple[ReceiptEntry, ...]
    result_salt: bytes | None
    result_committed: bytes | None

    def to_bytes(self) -> bytes:
        """The canonical JSON file form."""
        opening = (
            None
            if self.result_salt is None or self.result_committed is None
            else {"salt": _b64(self.result_salt), "committed": _b64(self.result_committed)}
        )
        return canonical_json(
            {
                "version": RECEIPT_VERSION,
                "query_id": self.query_id,
                "checkpoint": self.checkpoint.decode("utf-8"),
                "entries": [
                    {
                        "index": e.index,
                        "entry": _b64(e.data),
                        "inclusion_proof": [_b64(h) for h in e.inclusion_proof],
                    }
                    for e in self.entries
                ],
                "result_opening": opening,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Receipt:
        """Parse a receipt file (the canonical form, or any JSON of the same structure).

        Raises:
            VerificationError: it is not a receipt.
        """
        try:
            # Any JSON will do (people pretty-print receipts): the verified bytes are inside.
            obj = json.loads(data)
            return cls._from_json(obj)
        except (DataislandError, KeyError, TypeError, ValueError, binascii.Error) as exc:
            if isinstance(exc, VerificationError):
                raise
            raise VerificationError(f"not a receipt file: {type(exc).__name__}") from None

    @classmethod
    def _from_json(cls, obj: Any) -> Receipt:
        if not isinstance(obj, dict) or obj.get("version") != RECEIPT_VERSION:
            raise VerificationError("not a version 1 receipt")
        entries = tuple(
            ReceiptEntry(
                index=_int(e["index"]),
                data=_unb64(e["entry"]),
                inclusion_proof=tuple(_unb64(h) for h in e["inclusion_proof"]),
            )
            for e in obj["entries"]
        )
        opening = obj["result_opening"]
        salt = None if opening is None else _unb64(opening["salt"])
        committed = None if opening is None else _unb64(opening["committed"])
        query_id, note = obj["query_id"], obj["checkpoint"]
        if not isinstance(query_id, str) or not isinstance(note, str):
            raise VerificationError("receipt query_id and checkpoint are strings")
        return cls(query_id, note.encode("utf-8"), entries, salt, committed)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise VerificationError("expected base64 text")
    return base64.b64decode(text.encode("ascii"), validate=True)


def _int(value: object) -> int:
    if type(value) is not int or value < 0:
        raise VerificationError("expected a non-negative integer")
    return value


@dataclass(frozen=True)
class ReceiptReport:
    """What a verified receipt establishes.

    Attributes:
        query_id: the query.
        size: the size of the cosigned checkpoint the entries are included in.
        cosigners: names of the witnesses whose cosignatures verified.
        entries: (index, kind, decision or code) of each entry.
        result_digest: the released result's digest the opening revealed, if released.
        suppressed: whether the release rules suppressed something, if released.
    """

    query_id: str
    size: int
    cosigners: tuple[str, ...]
    entries: tuple[tuple[int, str, str], ...]
    result_digest: str | None
    suppressed: bool | None


def verify_receipt(
    receipt: Receipt,
    *,
    log_verifier: Ed25519Verifier,
    witness_verifiers: Sequence[Ed25519Verifier],
    quorum: int,
) -> ReceiptReport:
    """Verify a receipt against the log's and the witnesses' keys.

    Raises:
        VerificationError: the first check that fails, with the entry index when it is about one.
    """
    try:
        cosigned = verify_cosigned(
            receipt.checkpoint,
            origin=log_verifier.name,
            log_verifier=log_verifier,
            witness_verifiers=witness_verifiers,
            quorum=quorum,
        )
    except LedgerError as exc:
        raise VerificationError(f"checkpoint: {exc}") from None
    checkpoint = cosigned.checkpoint
    if not receipt.entries:
        raise VerificationError("the receipt holds no entry")
    summary: list[tuple[int, str, str]] = []
    commitment: str | None = None
    for item in receipt.entries:
        try:
            entry = Entry.from_bytes(item.data)
        except DataislandError as exc:
            raise VerificationError(f"not a valid entry: {exc}", index=item.index) from None
        if getattr(entry, "query_id", None) != receipt.query_id:
            raise VerificationError("the entry is about another query", index=item.index)
        try:
            verify_inclusion(
                leaf_hash=hash_leaf(item.data),
                index=item.index,
                size=checkpoint.size,
                proof=list(item.inclusion_proof),
                root=checkpoint.root_hash,
            )
        except LedgerError as exc:
            raise VerificationError(
                f"not included in the checkpoint of size {checkpoint.size}: {exc}",
                index=item.index,
            ) from None
        if isinstance(entry, QueryEntry):
            summary.append((item.index, entry.KIND, entry.decision))
            if entry.result_commitment is not None:
                commitment = entry.result_commitment
        elif isinstance(entry, FailureEntry):
            summary.append((item.index, entry.KIND, entry.code))
        elif isinstance(entry, DenialEntry):
            summary.append((item.index, entry.KIND, entry.denied_by))
        else:
            summary.append((item.index, entry.KIND, ""))
    digest: str | None = None
    suppressed: bool | None = None
    if commitment is not None:
        if receipt.result_salt is None or receipt.result_committed is None:
            raise VerificationError("the result was released but the receipt has no opening")
        try:
            opened = commit(receipt.result_committed, salt=receipt.result_salt).hex()
        except DataislandError as exc:
            raise VerificationError(f"result opening: {exc}") from None
        if opened != commitment:
            raise VerificationError("the result opening does not match the logged commitment")
        try:
            value = parse_canonical_json(receipt.result_committed)
        except DataislandError as exc:
            raise VerificationError(f"result opening is not canonical JSON: {exc}") from None
        if (
            not isinstance(value, dict)
            or set(value) != {"result_digest", "suppressed"}
            or not isinstance(value["result_digest"], str)
            or not isinstance(value["suppressed"], bool)
        ):
            raise VerificationError("result opening is not {result_digest, suppressed}")
        digest, suppressed = value["result_digest"], value["suppressed"]
    return ReceiptReport(
        query_id=receipt.query_id,
        size=checkpoint.size,
        cosigners=tuple(c.name for c in cosigned.cosignatures),
        entries=tuple(summary),
        result_digest=digest,
        suppressed=suppressed,
    )
