"""Salted hash commitments: SHA-256(32-byte salt || canonical bytes), and their openings.

Only `new_salt` reads randomness; everything else takes the salt it uses. This module does not
decide what is committed to (parameters, results and suppressed counts build their own canonical
bytes) nor where openings travel.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from dataisland.errors import InvalidInputError

SALT_SIZE = 32
"""Bytes of salt in every commitment."""


class CommitmentMismatchError(InvalidInputError):
    """An opening (salt and canonical bytes) does not match the commitment it should open."""


def new_salt() -> bytes:
    """Return 32 bytes from the operating system's CSPRNG, for one commitment only."""
    return secrets.token_bytes(SALT_SIZE)


def _check_salt(salt: object) -> bytes:
    if not isinstance(salt, bytes) or len(salt) != SALT_SIZE:
        raise InvalidInputError(f"a commitment salt must be exactly {SALT_SIZE} bytes")
    return salt


def commit(canonical_bytes: bytes, *, salt: bytes) -> bytes:
    """Commit to canonical bytes.

    Args:
        canonical_bytes: the canonical form of what is committed to.
        salt: exactly 32 bytes, fresh for this commitment (`new_salt`); without it the
            commitment to a low-entropy value (a yes/no answer) could be guessed.

    Returns:
        The 32-byte SHA-256(salt || canonical_bytes).

    Raises:
        InvalidInputError: the salt is not 32 bytes, or the data is not bytes.
    """
    _check_salt(salt)
    if not isinstance(canonical_bytes, bytes):
        raise InvalidInputError("commitments are made to bytes")
    return hashlib.sha256(salt + canonical_bytes).digest()


@dataclass(frozen=True)
class Opening:
    """What opens a commitment: the salt and the exact canonical bytes.

    Attributes:
        salt: the 32-byte salt.
        canonical_bytes: the committed canonical bytes.
    """

    salt: bytes
    canonical_bytes: bytes

    def __post_init__(self) -> None:
        _check_salt(self.salt)
        if not isinstance(self.canonical_bytes, bytes):
            raise InvalidInputError("an opening holds bytes")

    def commitment(self) -> bytes:
        """Return the commitment this opening opens."""
        return commit(self.canonical_bytes, salt=self.salt)

    def verify(self, commitment: bytes) -> None:
        """Check that this opening opens `commitment`.

        Raises:
            CommitmentMismatchError: it does not (or `commitment` is not 32 bytes).
        """
        if not isinstance(commitment, bytes) or len(commitment) != hashlib.sha256().digest_size:
            raise CommitmentMismatchError("a commitment is 32 bytes")
        if not hmac.compare_digest(self.commitment(), commitment):
            raise CommitmentMismatchError("the opening does not match the commitment")
