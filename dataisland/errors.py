"""The project's one error hierarchy and the one table that maps it to gRPC status codes.

Every failure that can reach a user is a `DataislandError` subclass chosen by cause. Servicers
convert them with `grpc_status_for`; nothing else decides a status code. This module does not
import grpc: the table names codes by their canonical names so the pure packages stay free of it.

Errors raised on the data path (inside an enclave, over rows) must never carry values: their
messages name constructs, tables, columns and departments, never data.
"""

from __future__ import annotations


class DataislandError(Exception):
    """Base class of every error dataisland raises on purpose.

    Attributes:
        code: the canonical gRPC status code name that this cause maps to.
    """

    code: str = "FAILED_PRECONDITION"


class MalformedQueryError(DataislandError):
    """The SQL text does not parse, or is not a single statement."""

    code = "INVALID_ARGUMENT"


class UnsupportedQueryError(DataislandError):
    """The SQL parses but uses a construct dataisland refuses to answer (named in the message)."""

    code = "INVALID_ARGUMENT"


class UnknownTableError(DataislandError):
    """The query names a logical table the federation does not define."""

    code = "NOT_FOUND"


class InvalidInputError(DataislandError):
    """A request field is missing, malformed or out of range (named in the message).

    Attributes:
        field: the request field at fault, when one is (it goes into a google.rpc.BadRequest).
    """

    code = "INVALID_ARGUMENT"

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class CanonicalEncodingError(DataislandError):
    """A value cannot be put in (or read from) its canonical form."""

    code = "INVALID_ARGUMENT"


class ConfigError(DataislandError):
    """A federation or node configuration file is missing, malformed or inconsistent."""

    code = "FAILED_PRECONDITION"


class SchemaMismatchError(DataislandError):
    """A shard's schema differs from the federation's schema for the logical table."""

    code = "FAILED_PRECONDITION"


class NotFoundError(DataislandError):
    """A query id or other named object does not exist (or is not the caller's)."""

    code = "NOT_FOUND"


class PermissionDeniedError(DataislandError):
    """The caller may not do this (the reason names the rule)."""

    code = "PERMISSION_DENIED"


class MissingPartialError(DataislandError):
    """The aggregator lacks a partial from a department its configuration lists for the tables."""

    code = "FAILED_PRECONDITION"


class NodeUnavailableError(DataislandError):
    """A node (named in the message) could not be reached within the deadline."""

    code = "UNAVAILABLE"


class QueryDeadlineError(DataislandError):
    """A query ran past its deadline and was interrupted."""

    code = "DEADLINE_EXCEEDED"


class ResourceLimitError(DataislandError):
    """A request or result exceeds a configured limit (named in the message).

    Attributes:
        limit: the configuration setting that set the limit (a google.rpc.QuotaFailure names it).
        subject: whom or what the limit applies to (a requester, "the released result").
        retry_after: seconds after which the same request may succeed (a google.rpc.RetryInfo),
            or None when retrying unchanged will not help.
    """

    code = "RESOURCE_EXHAUSTED"

    def __init__(
        self,
        message: str,
        *,
        limit: str = "",
        subject: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.limit = limit
        self.subject = subject
        self.retry_after = retry_after


class QueryCancelledError(DataislandError):
    """The query was cancelled by its requester."""

    code = "CANCELLED"


class ExecutionError(DataislandError):
    """Executing a checked plan failed for a reason that is not the requester's input.

    The message never carries data values: callers pass a fixed description.
    """

    code = "FAILED_PRECONDITION"


def grpc_status_for(error: DataislandError) -> str:
    """Return the canonical gRPC status code name for `error` (never INTERNAL)."""
    return error.code


class RequestIdReusedError(DataislandError):
    """A request id was submitted again with a different envelope."""

    code = "ALREADY_EXISTS"


def _all_causes(cls: type[DataislandError]) -> list[type[DataislandError]]:
    return [cls] + [sub for direct in cls.__subclasses__() for sub in _all_causes(direct)]


def grpc_status_table() -> dict[str, str]:
    """Every cause and its gRPC status code name: the one table the README prints."""
    return {cls.__name__: cls.code for cls in _all_causes(DataislandError)}


class ReplayedEnvelopeError(PermissionDeniedError):
    """An enclave already executed this requester's request id: envelopes run once."""
