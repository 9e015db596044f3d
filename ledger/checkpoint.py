"""C2SP tlog-checkpoint bodies, their log signatures and witness cosignatures, and quorum checks.

A checkpoint body (c2sp.org/tlog-checkpoint) is the origin line, the tree size in decimal, the
base64 root hash and optional non-empty extension lines, each ending in a newline. The log signs
it as a signed note with an Ed25519 key (type 0x01); witnesses add tlog-cosignature/v1 lines
(type 0x04). `verify_cosigned` checks the log's signature and that at least `quorum` distinct
trusted witnesses cosigned.

Quorum arithmetic: with n witnesses and quorum q, two conflicting checkpoints can both reach the
quorum only if at least 2q - n witnesses sign both sides; 3-of-4 needs 2 dishonest witnesses.

This module does no I/O and reads no clock (cosigning takes its timestamp). It does not check a
checkpoint against a tree (ledger.merkle and ledger.witness do) and does not choose the quorum.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ledger.errors import MalformedNoteError, QuorumError, UnknownLogError
from ledger.merkle import HASH_SIZE
from ledger.note import (
    SIG_TYPE_COSIGNATURE_V1,
    SIG_TYPE_ED25519,
    Ed25519Signer,
    Ed25519Verifier,
    Note,
    NoteSignature,
    NoteVerifier,
    open_note,
)

MAX_TREE_SIZE = (1 << 63) - 1
_SIZE_RE = re.compile(r"0|[1-9][0-9]{0,18}", re.ASCII)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint body.

    Attributes:
        origin: the log's identity (non-empty, no newline).
        size: the number of leaves.
        root_hash: the 32-byte RFC 9162 root at that size.
        extensions: optional extension lines (each non-empty); dataisland's log writes none.
    """

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not self.origin or "\n" in self.origin:
            raise MalformedNoteError("a checkpoint origin is a non-empty line")
        if type(self.size) is not int or not 0 <= self.size <= MAX_TREE_SIZE:
            raise MalformedNoteError("a checkpoint size is an integer in 0 .. 2**63 - 1")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != HASH_SIZE:
            raise MalformedNoteError("a checkpoint root hash is 32 bytes")
        for line in self.extensions:
            if not isinstance(line, str) or not line or "\n" in line:
                raise MalformedNoteError("checkpoint extension lines are non-empty lines")

    def to_text(self) -> str:
        """Return the note text: origin, size, base64 root, extensions, each newline-ended."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode()]
        return "".join(line + "\n" for line in (*lines, *self.extensions))

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        """Parse a checkpoint body strictly.

        Raises:
            MalformedNoteError: fewer than three lines, an empty line, a size with leading
                zeros or out of range, or a root that is not the base64 of 32 bytes.
        """
        if not isinstance(text, str) or not text.endswith("\n"):
            raise MalformedNoteError("a checkpoint body ends with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3 or any(not line for line in lines):
            raise MalformedNoteError("a checkpoint body has at least three non-empty lines")
        origin, size_text, root_text, *extensions = lines
        if _SIZE_RE.fullmatch(size_text) is None or int(size_text) > MAX_TREE_SIZE:
            raise MalformedNoteError("checkpoint size is not a decimal without leading zeros")
        try:
            root = base64.b64decode(root_text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            raise MalformedNoteError("checkpoint root hash is not base64") from None
        checkpoint = cls(origin, int(size_text), root, tuple(extensions))
        if checkpoint.to_text() != text:
            raise MalformedNoteError("checkpoint body is not in its one canonical form")
        return checkpoint


@dataclass(frozen=True)
class WitnessCosignature:
    """A verified cosignature: which witness, and the time it states."""

    name: str
    key_id: bytes
    timestamp: int


@dataclass(frozen=True)
class CosignedCheckpoint:
    """A checkpoint whose log signature and witness quorum verified.

    Attributes:
        checkpoint: the parsed body.
        note: the whole note as received.
        cosignatures: one verified cosignature per distinct trusted witness key.
    """

    checkpoint: Checkpoint
    note: Note
    cosignatures: tuple[WitnessCosignature, ...]


def sign_checkpoint(checkpoint: Checkpoint, *, signer: Ed25519Signer) -> bytes:
    """Return the checkpoint as a signed note carrying the log's Ed25519 signature.

    Raises:
        MalformedNoteError: the signer is not a type 0x01 key.
    """
    if signer.sig_type != SIG_TYPE_ED25519:
        raise MalformedNoteError("the log signs checkpoints with a type 0x01 key")
    text = checkpoint.to_text()
    return Note(text=text, signatures=(signer.sign(text),)).to_bytes()


def cosign(checkpoint: Checkpoint, *, cosigner: Ed25519Signer, timestamp: int) -> NoteSignature:
    """Return a tlog-cosignature/v1 signature line over the checkpoint body.

    Raises:
        MalformedNoteError: the cosigner is not a type 0x04 key, or the timestamp is out of range.
    """
    if cosigner.sig_type != SIG_TYPE_COSIGNATURE_V1:
        raise MalformedNoteError("witnesses cosign with a type 0x04 key")
    return cosigner.sign(checkpoint.to_text(), timestamp=timestamp)


def add_signatures(note_bytes: bytes, signatures: Sequence[NoteSignature]) -> bytes:
    """Return the note with `signatures` appended (skipping exact duplicates).

    Raises:
        MalformedNoteError: the note does not parse, or too many signatures result.
    """
    note = Note.from_bytes(note_bytes)
    sigs = list(note.signatures)
    for sig in signatures:
        if sig not in sigs:
            sigs.append(sig)
    return Note(text=note.text, signatures=tuple(sigs)).to_bytes()


def open_checkpoint(
    data: bytes, *, origin: str, log_verifier: Ed25519Verifier
) -> tuple[Checkpoint, Note]:
    """Parse a signed checkpoint and verify the log's signature only.

    Other signatures (cosignatures) are ignored here; `verify_cosigned` checks them.

    Raises:
        MalformedNoteError: the note or body does not parse.
        UnknownLogError: the origin line is not `origin`.
        SignatureError: the log's signature is missing or does not verify.
    """
    if log_verifier.sig_type != SIG_TYPE_ED25519:
        raise MalformedNoteError("the log verifier is a type 0x01 key")
    note = Note.from_bytes(data)
    checkpoint = Checkpoint.from_text(note.text)
    if checkpoint.origin != origin:
        raise UnknownLogError(f"checkpoint is for origin {checkpoint.origin!r}, not {origin!r}")
    open_note(note, [log_verifier])
    return checkpoint, note


def verify_cosigned(
    checkpoint_note: bytes,
    *,
    origin: str,
    log_verifier: Ed25519Verifier,
    witness_verifiers: Sequence[Ed25519Verifier],
    quorum: int,
) -> CosignedCheckpoint:
    """Verify a checkpoint's log signature and a quorum of witness cosignatures.

    Args:
        checkpoint_note: the signed checkpoint with its cosignature lines.
        origin: the log's origin line.
        log_verifier: the log's type 0x01 key.
        witness_verifiers: the trusted witnesses' type 0x04 keys (distinct keys).
        quorum: how many distinct witnesses must have cosigned, 1 .. len(witness_verifiers).

    Returns:
        The checkpoint and the verified cosignatures.

    Raises:
        MalformedNoteError: bad note or body, wrong key types, a duplicated witness key, or a
            quorum out of range.
        UnknownLogError: the origin is not `origin`.
        SignatureError: a signature from a known key fails, or the log's is missing.
        QuorumError: fewer than `quorum` trusted witnesses cosigned.
    """
    if type(quorum) is not int or not 1 <= quorum <= len(witness_verifiers):
        raise MalformedNoteError("quorum must be between 1 and the number of witnesses")
    public_keys = set()
    for w in witness_verifiers:
        if w.sig_type != SIG_TYPE_COSIGNATURE_V1:
            raise MalformedNoteError(f"witness key {w.name} is not a cosignature (0x04) key")
        # The Ed25519 cosignature message does not commit to the name: one key, one witness.
        if w.public_bytes in public_keys:
            raise MalformedNoteError(f"witness key {w.name} is listed twice")
        public_keys.add(w.public_bytes)
    checkpoint, note = open_checkpoint(checkpoint_note, origin=origin, log_verifier=log_verifier)
    verifiers: list[NoteVerifier] = [log_verifier, *witness_verifiers]
    opened = open_note(note, verifiers)
    cosignatures = tuple(
        WitnessCosignature(sig.name, sig.key_id, int.from_bytes(sig.signature[:8], "big"))
        for verifier, sig in opened.verified
        if verifier is not log_verifier
    )
    if len(cosignatures) < quorum:
        raise QuorumError(
            f"checkpoint of size {checkpoint.size} has {len(cosignatures)} trusted "
            f"cosignature(s); the quorum is {quorum}"
        )
    return CosignedCheckpoint(checkpoint=checkpoint, note=note, cosignatures=cosignatures)
