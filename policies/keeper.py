"""The active policy of one department, as an enclave (or the coordinator) holds it.

`PolicyKeeper.accept` takes the policy document and its detached signatures as bytes (the
caller reads them from its own configuration on every query) and returns the verified policy:
signed by enough of the department's pinned officers, the department's own, never older than a
version already accepted, and never a different document under a version already accepted.
Verification is repeated only when the bytes change.

This module reads no file and keeps no state across restarts: an enclave seeds it with the
versions the cosigned log shows (`remember`, enclave/history.py).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from policies.document import Policy, PolicyRollbackError
from policies.signing import decode_signatures, verify_signed_policy


class PolicyKeeper:
    """Verifies and remembers one department's policy; thread-safe."""

    def __init__(
        self, *, department: str, officers: Mapping[str, Ed25519PublicKey], required: int
    ) -> None:
        self.department = department
        self.officers = dict(officers)
        self.required = required
        self._lock = threading.Lock()
        self._seen: tuple[bytes, bytes] | None = None
        self._policy: Policy | None = None
        self._hash_of_version: dict[int, str] = {}

    def remember(self, versions: Mapping[int, str]) -> None:
        """Add policy versions (version to policy hash) applied before, as the log shows them:
        an older version, or another document under one of them, is then refused."""
        with self._lock:
            for version, policy_hash in versions.items():
                self._hash_of_version.setdefault(version, policy_hash)
            self._seen = None  # the next accept re-checks against what is now known

    def accept(self, document: bytes, signatures: bytes) -> Policy:
        """The verified policy these bytes hold.

        Raises:
            PolicyDocumentError: the document does not parse or validate.
            SignatureFileError: the signature file is malformed.
            PolicySignatureError: too few pinned officers signed it, or it is another
                department's.
            PolicyRollbackError: it is older than, or differs from, a version already accepted.
        """
        with self._lock:
            if self._seen == (document, signatures) and self._policy is not None:
                return self._policy
            highest = max(self._hash_of_version, default=None)
            policy = verify_signed_policy(
                document,
                decode_signatures(signatures),
                pinned_officer_keys=self.officers,
                required=self.required,
                department=self.department,
                highest_seen_version=highest,
            )
            known = self._hash_of_version.get(policy.version)
            if known is not None and known != policy.hash:
                raise PolicyRollbackError(
                    f"{self.department}'s policy version {policy.version} was already accepted "
                    "with other contents; a changed policy needs a higher version"
                )
            self._hash_of_version[policy.version] = policy.hash
            self._seen, self._policy = (document, signatures), policy
            return policy
