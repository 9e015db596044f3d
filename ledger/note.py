"""C2SP signed notes (c2sp.org/signed-note): parse, sign and verify, with Ed25519 keys.

Two signature types, both Ed25519:

- 0x01, plain note signatures (the log signs its checkpoints with one): the signature is
  base64(key ID || Ed25519(text));
- 0x04, C2SP tlog-cosignature/v1 (what witnesses return): base64(key ID || timestamp as a
  big-endian uint64 || Ed25519("cosignature/v1\\ntime <timestamp>\\n" || text)).

Key ID = SHA-256(name || 0x0A || type || 32-byte public key)[:4]. Verifier keys use the vkey form
`<name>+<key ID as 8 hex digits>+base64(type || public key)` of golang.org/x/mod/sumdb/note.

This module reads no clock and no randomness: cosigning takes its timestamp, and keys are passed
in (`cryptography` objects). It does not know what a checkpoint is (ledger.checkpoint does) and
does not load keys from files.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ledger.errors import MalformedNoteError, SignatureError

SIG_TYPE_ED25519 = 0x01
"""Signature type of plain Ed25519 note signatures."""

SIG_TYPE_COSIGNATURE_V1 = 0x04
"""Signature type of timestamped Ed25519 witness cosignatures (c2sp.org/tlog-cosignature)."""

MAX_SIGNATURES = 100
"""Most signature lines accepted in one note (the spec requires at least 16)."""

MAX_NOTE_BYTES = 1 << 20
MAX_TIMESTAMP = (1 << 63) - 1
EM_DASH = "\u2014"
_HEX8 = re.compile(r"[0-9a-f]{8}", re.ASCII)


def check_key_name(name: object) -> str:
    """Return `name` if it is a valid key name: non-empty, no Unicode space, no '+'.

    Raises:
        MalformedNoteError: it is not.
    """
    if (
        not isinstance(name, str)
        or not name
        or "+" in name
        or any(c.isspace() for c in name)
        or any(ord(c) < 0x20 for c in name)
    ):
        raise MalformedNoteError("a key name must be non-empty, without spaces or '+'")
    return name


def key_id(name: str, sig_type: int, public_key: bytes) -> bytes:
    """Return the 4-byte key ID SHA-256(name || 0x0A || sig_type || public_key)[:4]."""
    check_key_name(name)
    return hashlib.sha256(name.encode() + b"\n" + bytes([sig_type]) + public_key).digest()[:4]


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise MalformedNoteError(f"{what} is not standard base64") from None


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def cosignature_message(text: str, timestamp: int) -> bytes:
    """Return what a tlog-cosignature/v1 signs: the two header lines, then the note text."""
    return f"cosignature/v1\ntime {timestamp}\n".encode() + text.encode()


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a note.

    Attributes:
        name: the key name.
        key_id: the 4-byte key ID.
        signature: the bytes after the key ID (for type 0x04: timestamp and signature).
    """

    name: str
    key_id: bytes
    signature: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if not isinstance(self.key_id, bytes) or len(self.key_id) != 4:
            raise MalformedNoteError("a key ID is 4 bytes")
        if not isinstance(self.signature, bytes) or not self.signature:
            raise MalformedNoteError("a note signature is not empty")

    def line(self) -> str:
        """Return the signature line: em dash, space, name, space, base64, newline."""
        b64 = base64.b64encode(self.key_id + self.signature).decode()
        return f"{EM_DASH} {self.name} {b64}\n"

    @classmethod
    def from_line(cls, line: str) -> NoteSignature:
        """Parse one signature line (with or without its final newline).

        Raises:
            MalformedNoteError: not `— <name> <base64>` with at least 5 decoded bytes.
        """
        body = line.removesuffix("\n")
        if not body.startswith(EM_DASH + " "):
            raise MalformedNoteError("a signature line starts with an em dash and a space")
        parts = body[2:].split(" ")
        if len(parts) != 2:
            raise MalformedNoteError("a signature line is '— <name> <base64>'")
        name, b64 = parts
        raw = _b64decode(b64, "signature")
        if len(raw) < 5:
            raise MalformedNoteError("a signature holds a key ID and at least one byte")
        return cls(name=check_key_name(name), key_id=raw[:4], signature=raw[4:])


@dataclass(frozen=True)
class Note:
    """A signed note: text (ending in a newline) and its signature lines, in order."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def __post_init__(self) -> None:
        _check_text(self.text)
        if len(self.signatures) > MAX_SIGNATURES:
            raise MalformedNoteError(f"more than {MAX_SIGNATURES} signatures")

    def to_bytes(self) -> bytes:
        """Return text, blank line, signature lines (UTF-8)."""
        if not self.signatures:
            raise MalformedNoteError("a signed note has at least one signature")
        return (self.text + "\n" + "".join(s.line() for s in self.signatures)).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Note:
        """Parse a signed note without verifying anything.

        Raises:
            MalformedNoteError: not UTF-8, control characters, no blank line before the
                signatures, a malformed signature line, or too many signatures.
        """
        if not isinstance(data, bytes) or len(data) > MAX_NOTE_BYTES:
            raise MalformedNoteError(f"a note is bytes, at most {MAX_NOTE_BYTES}")
        try:
            msg = data.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedNoteError("a note is UTF-8") from None
        if any(ord(c) < 0x20 and c != "\n" for c in msg):
            raise MalformedNoteError("a note has no control characters but newline")
        split = msg.rfind("\n\n")
        if split < 0:
            raise MalformedNoteError("a note has a blank line before its signatures")
        text, sigs = msg[: split + 1], msg[split + 2 :]
        if not sigs or not sigs.endswith("\n"):
            raise MalformedNoteError("a note ends with newline-terminated signature lines")
        lines = sigs[:-1].split("\n")
        if len(lines) > MAX_SIGNATURES:
            raise MalformedNoteError(f"more than {MAX_SIGNATURES} signatures")
        return cls(text=text, signatures=tuple(NoteSignature.from_line(x) for x in lines))


def _check_text(text: object) -> str:
    if not isinstance(text, str) or not text.endswith("\n"):
        raise MalformedNoteError("note text ends with a newline")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise MalformedNoteError("note text has no control characters but newline")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedNoteError("note text is not valid Unicode") from None
    return text


@runtime_checkable
class NoteVerifier(Protocol):
    """A key that can check signature lines: its name, key ID and check."""

    @property
    def name(self) -> str:
        """The key name."""
        ...

    @property
    def key_id(self) -> bytes:
        """The 4-byte key ID."""
        ...

    def verify(self, text: str, signature: bytes) -> bool:
        """Return whether `signature` (the bytes after the key ID) signs `text`."""
        ...


@dataclass(frozen=True)
class Ed25519Verifier:
    """A type 0x01 (or, with `sig_type`, 0x04) Ed25519 verifier key."""

    name: str
    public_key: Ed25519PublicKey
    sig_type: int = SIG_TYPE_ED25519

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if self.sig_type not in (SIG_TYPE_ED25519, SIG_TYPE_COSIGNATURE_V1):
            raise MalformedNoteError(f"unsupported signature type {self.sig_type:#04x}")

    @property
    def key_id(self) -> bytes:
        """SHA-256(name || 0x0A || type || public key)[:4]."""
        return key_id(self.name, self.sig_type, _raw_public(self.public_key))

    @property
    def public_bytes(self) -> bytes:
        """The 32-byte raw public key."""
        return _raw_public(self.public_key)

    def verify(self, text: str, signature: bytes) -> bool:
        """Check a signature's bytes after the key ID against `text`.

        For type 0x04 the bytes are an 8-byte big-endian timestamp and the signature over the
        cosignature/v1 message for that timestamp.
        """
        if self.sig_type == SIG_TYPE_ED25519:
            if len(signature) != 64:
                return False
            message = text.encode()
        else:
            if len(signature) != 72:
                return False
            timestamp = int.from_bytes(signature[:8], "big")
            if timestamp > MAX_TIMESTAMP:
                return False
            message = cosignature_message(text, timestamp)
            signature = signature[8:]
        try:
            self.public_key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def to_vkey(self) -> str:
        """Return `<name>+<key ID hex>+base64(type || public key)`."""
        raw = bytes([self.sig_type]) + self.public_bytes
        return f"{self.name}+{self.key_id.hex()}+{base64.b64encode(raw).decode()}"

    @classmethod
    def from_vkey(cls, vkey: str) -> Ed25519Verifier:
        """Parse a verifier key of type 0x01 or 0x04.

        Raises:
            MalformedNoteError: not three '+'-separated parts, a bad name, a key ID that is not
                8 lowercase hex digits or does not match, an unknown type or a bad key.
        """
        if not isinstance(vkey, str):
            raise MalformedNoteError("a verifier key is a string")
        parts = vkey.split("+", 2)
        if len(parts) != 3 or _HEX8.fullmatch(parts[1]) is None:
            raise MalformedNoteError("a verifier key is <name>+<8 hex digits>+<base64>")
        name, hex_id, b64 = parts
        check_key_name(name)
        raw = _b64decode(b64, "verifier key")
        if len(raw) != 33 or raw[0] not in (SIG_TYPE_ED25519, SIG_TYPE_COSIGNATURE_V1):
            raise MalformedNoteError("a verifier key is type 0x01 or 0x04 and 32 key bytes")
        try:
            public_key = Ed25519PublicKey.from_public_bytes(raw[1:])
        except ValueError:
            raise MalformedNoteError("not an Ed25519 public key") from None
        verifier = cls(name=name, public_key=public_key, sig_type=raw[0])
        if verifier.key_id.hex() != hex_id:
            raise MalformedNoteError("verifier key ID does not match its name and key")
        return verifier


@dataclass(frozen=True)
class Ed25519Signer:
    """An Ed25519 note signer: type 0x01 signs text, type 0x04 cosigns with a timestamp."""

    name: str
    private_key: Ed25519PrivateKey
    sig_type: int = SIG_TYPE_ED25519

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if self.sig_type not in (SIG_TYPE_ED25519, SIG_TYPE_COSIGNATURE_V1):
            raise MalformedNoteError(f"unsupported signature type {self.sig_type:#04x}")

    def verifier(self) -> Ed25519Verifier:
        """Return the matching verifier."""
        return Ed25519Verifier(self.name, self.private_key.public_key(), self.sig_type)

    def sign(self, text: str, *, timestamp: int | None = None) -> NoteSignature:
        """Sign note text.

        Args:
            text: the note text (ends in a newline).
            timestamp: POSIX seconds; required for type 0x04, refused for type 0x01.

        Raises:
            MalformedNoteError: bad text, or a timestamp missing, present or out of range.
        """
        _check_text(text)
        kid = self.verifier().key_id
        if self.sig_type == SIG_TYPE_ED25519:
            if timestamp is not None:
                raise MalformedNoteError("plain Ed25519 note signatures carry no timestamp")
            return NoteSignature(self.name, kid, self.private_key.sign(text.encode()))
        if type(timestamp) is not int or not 0 <= timestamp <= MAX_TIMESTAMP:
            raise MalformedNoteError("a cosignature needs a timestamp in 0 .. 2**63 - 1")
        sig = self.private_key.sign(cosignature_message(text, timestamp))
        return NoteSignature(self.name, kid, timestamp.to_bytes(8, "big") + sig)


@dataclass(frozen=True)
class VerifiedNote:
    """A note whose text at least one trusted key signed.

    Attributes:
        note: the parsed note.
        verified: signatures from known keys, each verified (one per key).
        unverified: signatures from unknown keys (ignored, kept for display).
    """

    note: Note
    verified: tuple[tuple[NoteVerifier, NoteSignature], ...]
    unverified: tuple[NoteSignature, ...]

    @property
    def text(self) -> str:
        """The note text."""
        return self.note.text


def open_note(data: bytes | Note, verifiers: Sequence[NoteVerifier]) -> VerifiedNote:
    """Parse a note and verify its signatures from known keys.

    Signatures whose (name, key ID) no verifier has are ignored. A signature from a known key
    that fails rejects the whole note, as the spec recommends.

    Raises:
        MalformedNoteError: the note does not parse, or two verifiers share a name and key ID.
        SignatureError: a known key's signature does not verify, or no known key signed.
    """
    note = data if isinstance(data, Note) else Note.from_bytes(data)
    by_id: dict[tuple[str, bytes], NoteVerifier] = {}
    for v in verifiers:
        ident = (v.name, v.key_id)
        if ident in by_id and by_id[ident] is not v:
            raise MalformedNoteError(f"ambiguous key {v.name}+{v.key_id.hex()}")
        by_id[ident] = v
    verified: list[tuple[NoteVerifier, NoteSignature]] = []
    seen: set[tuple[str, bytes]] = set()
    unverified: list[NoteSignature] = []
    for sig in note.signatures:
        ident = (sig.name, sig.key_id)
        verifier = by_id.get(ident)
        if verifier is None:
            unverified.append(sig)
            continue
        if not verifier.verify(note.text, sig.signature):
            raise SignatureError(f"invalid signature for key {sig.name}+{sig.key_id.hex()}")
        if ident not in seen:
            seen.add(ident)
            verified.append((verifier, sig))
    if not verified:
        raise SignatureError("note has no verifiable signatures")
    return VerifiedNote(note=note, verified=tuple(verified), unverified=tuple(unverified))


def sign_note(text: str, signers: Iterable[Ed25519Signer]) -> bytes:
    """Return the signed note of `text` with one type 0x01 signature per signer.

    Raises:
        MalformedNoteError: bad text, no signer, or a cosigner (type 0x04) among them.
    """
    sigs = []
    for signer in signers:
        if signer.sig_type != SIG_TYPE_ED25519:
            raise MalformedNoteError("cosigners sign checkpoints with a timestamp; see cosign")
        sigs.append(signer.sign(text))
    return Note(text=_check_text(text), signatures=tuple(sigs)).to_bytes()
