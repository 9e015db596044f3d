"""Ed25519 note keys as files: generate, write owner-only, load as note signers.

The log's checkpoint key (type 0x01) and each witness's cosigning key (type 0x04) are Ed25519
private keys stored as unencrypted PKCS#8 PEM, created with mode 0600. Their public halves travel
as C2SP verifier keys (`Ed25519Verifier.to_vkey`), which the federation file records.

This module only reads and writes key files; it decides nothing about who holds which key.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.errors import MalformedNoteError, StorageError
from ledger.note import Ed25519Signer


def write_key(path: str | os.PathLike[str], key: Ed25519PrivateKey) -> None:
    """Write `key` as PKCS#8 PEM readable by its owner only (created 0600, never widened).

    Raises:
        StorageError: the file cannot be written.
    """
    target = Path(path)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        os.chmod(target, 0o600)
    except OSError as e:
        raise StorageError(f"cannot write key {target}: {e.strerror}") from e


def generate_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Generate a new Ed25519 key and write it owner-only to `path` (see `write_key`)."""
    key = Ed25519PrivateKey.generate()
    write_key(path, key)
    return key


def load_signer(path: str | os.PathLike[str], *, name: str, sig_type: int) -> Ed25519Signer:
    """Load an Ed25519 PEM private key as a note signer named `name`.

    Raises:
        StorageError: the file cannot be read.
        MalformedNoteError: it is not an unencrypted Ed25519 private key, or the name is bad.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise StorageError(f"cannot read key {path}: {e.strerror}") from e
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise MalformedNoteError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise MalformedNoteError(f"{path} is not an Ed25519 key")
    return Ed25519Signer(name=name, private_key=key, sig_type=sig_type)
