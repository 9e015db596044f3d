"""Refusals carry google.rpc.Status details: ErrorInfo, BadRequest, QuotaFailure, RetryInfo."""

from __future__ import annotations

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2

from dataisland.errors import (
    InvalidInputError,
    MalformedQueryError,
    NodeUnavailableError,
    ResourceLimitError,
)
from dataisland.rpc import rich_status, status_code


def _details(status: grpc.Status) -> tuple[status_pb2.Status, list[object]]:
    ((key, value),) = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    decoded = status_pb2.Status.FromString(value)
    out: list[object] = []
    for packed in decoded.details:
        for cls in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.QuotaFailure,
            error_details_pb2.RetryInfo,
        ):
            if packed.Is(cls.DESCRIPTOR):
                message = cls()
                packed.Unpack(message)
                out.append(message)
    return decoded, out


def test_invalid_argument_names_the_cause_and_the_field() -> None:
    error = InvalidInputError("page_size 20000 is above the maximum 10000", field="page_size")
    decoded, details = _details(rich_status(status_code(error), str(error), error))
    assert decoded.code == code_pb2.INVALID_ARGUMENT
    info, bad = details
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("INVALID_INPUT", "dataisland")
    assert isinstance(bad, error_details_pb2.BadRequest)
    assert bad.field_violations[0].field == "page_size"


def test_malformed_sql_is_a_bad_request_too() -> None:
    error = MalformedQueryError("the SQL does not parse near 'SELEC'")
    _, details = _details(rich_status(status_code(error), str(error), error))
    assert [type(d).__name__ for d in details] == ["ErrorInfo", "BadRequest"]
    assert details[0].reason == "MALFORMED_QUERY"  # type: ignore[attr-defined]


def test_a_limit_names_the_setting_and_when_to_retry() -> None:
    error = ResourceLimitError(
        "too fast", limit="rate_per_caller", subject="spiffe://x", retry_after=0.25
    )
    decoded, details = _details(rich_status(status_code(error), str(error), error))
    assert decoded.code == code_pb2.RESOURCE_EXHAUSTED
    info, quota, retry = details
    assert info.metadata["limit"] == "rate_per_caller"  # type: ignore[attr-defined]
    assert quota.violations[0].subject == "spiffe://x"  # type: ignore[attr-defined]
    assert retry.retry_delay.ToNanoseconds() == 250_000_000  # type: ignore[attr-defined]


def test_unavailable_and_internal_carry_only_error_info() -> None:
    error = NodeUnavailableError("department wujiang is unavailable")
    _, details = _details(rich_status(status_code(error), str(error), error))
    assert len(details) == 1
    _, details = _details(rich_status(grpc.StatusCode.INTERNAL, "internal error (ref 1)", None))
    assert details[0].reason == "INTERNAL"  # type: ignore[attr-defined]
