"""The ledger's errors: one `LedgerError` family under `DataislandError`, subclasses by cause.

Each class names a cause a caller can act on (a proof that does not verify, a checkpoint from an
unknown log, a witness that has seen a different size, a log file that lost acknowledged data).
This module defines no behaviour and maps nothing to transport codes beyond the `code` attribute
that `dataisland.errors.grpc_status_for` reads.
"""

from __future__ import annotations

from dataisland.errors import DataislandError


class LedgerError(DataislandError):
    """Base class of every error the ledger raises on purpose."""

    code = "FAILED_PRECONDITION"


class ProofError(LedgerError):
    """An inclusion or consistency proof (or its inputs) does not verify."""

    code = "INVALID_ARGUMENT"


class EntryTooLargeError(LedgerError):
    """An entry's canonical bytes exceed 65,535 bytes (or are empty)."""

    code = "RESOURCE_EXHAUSTED"


class MalformedEntryError(LedgerError):
    """Entry bytes are not the canonical JSON of a known, well-formed entry record."""

    code = "INVALID_ARGUMENT"


class MalformedNoteError(LedgerError):
    """A signed note, checkpoint, cosignature or verifier key is not well formed."""

    code = "INVALID_ARGUMENT"


class SignatureError(LedgerError):
    """A signature from a known key does not verify, or no known key signed the note."""

    code = "PERMISSION_DENIED"


class UnknownLogError(LedgerError):
    """A checkpoint names an origin the verifier or witness is not configured for."""

    code = "NOT_FOUND"


class QuorumError(LedgerError):
    """Fewer distinct trusted witnesses cosigned a checkpoint than the quorum requires."""

    code = "FAILED_PRECONDITION"


class WitnessRequestError(LedgerError):
    """An add-checkpoint request is malformed (old size above the new size, > 63 proof lines)."""

    code = "INVALID_ARGUMENT"


class WitnessConflictError(LedgerError):
    """The witness's latest cosigned checkpoint disagrees with the request (HTTP 409 semantics).

    Attributes:
        known_size: the size of the latest checkpoint the witness cosigned for that log; the
            client retries with this as its old size.
    """

    code = "ABORTED"

    def __init__(self, message: str, *, known_size: int) -> None:
        super().__init__(message)
        self.known_size = known_size


class UnloggedExecutionError(LedgerError):
    """A witness refuses to cosign: an execution reported to it long enough ago is not logged.

    Attributes:
        report_id: the execution report that the checkpoint omits.
    """

    code = "FAILED_PRECONDITION"

    def __init__(self, message: str, *, report_id: str) -> None:
        super().__init__(message)
        self.report_id = report_id


class StorageError(LedgerError):
    """The log's storage could not be read or written (the OS error is chained)."""

    code = "UNAVAILABLE"


class LogCorruptionError(LedgerError):
    """Stored log data is damaged beyond a torn final write, or contradicts its checkpoints."""

    code = "DATA_LOSS"


class VerificationError(LedgerError):
    """An exported log fails offline verification.

    Attributes:
        index: the first leaf index known to be bad, or None when the failure is not about an
            entry (a checkpoint signature, the keys file).
        reason: what is wrong, in words.
    """

    code = "FAILED_PRECONDITION"

    def __init__(self, reason: str, *, index: int | None = None) -> None:
        where = f"index {index}: " if index is not None else ""
        super().__init__(f"{where}{reason}")
        self.index = index
        self.reason = reason
