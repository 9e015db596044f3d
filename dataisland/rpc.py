"""gRPC plumbing shared by every node and the client: status mapping, servicer guard, channels.

Servicers only authenticate, convert and delegate; `guarded` turns a `DataislandError` into its
status code (the one table in `dataisland.errors`) and anything unexpected into a generic
INTERNAL with a reference number, so no traceback or data value ever reaches a caller. Every
refusal also carries rich details (`google.rpc.Status` in the standard `grpc-status-details-bin`
trailer): an `ErrorInfo` naming the cause, a `BadRequest` naming the field for INVALID_ARGUMENT,
a `QuotaFailure` naming the limit and a `RetryInfo` for RESOURCE_EXHAUSTED. `guarded` also
counts and times each RPC (dataisland/metrics.py) and binds the request's query id to the log
lines written while it runs (dataisland/logs.py). The client side turns a status back into the
matching `DataislandError`.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, cast

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from dataisland import errors, metrics
from dataisland.logs import bind_query

log = logging.getLogger("dataisland.rpc")

P = ParamSpec("P")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
S = TypeVar("S")

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
"""Large enough for partials of hundreds of thousands of groups; the most any channel carries.
A server receives at most its node's `max_request_bytes` (4 MiB unless the aggregator)."""

ERROR_DOMAIN = "dataisland"
"""The `ErrorInfo.domain` of every error dataisland raises."""

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # A restarted node is dialled again within a second or two, not after gRPC's default
    # backoff of up to two minutes; a node that stays down is still refused at once.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]

_BY_CODE: dict[str, type[errors.DataislandError]] = {
    "INVALID_ARGUMENT": errors.InvalidInputError,
    "NOT_FOUND": errors.NotFoundError,
    "PERMISSION_DENIED": errors.PermissionDeniedError,
    "UNAVAILABLE": errors.NodeUnavailableError,
    "DEADLINE_EXCEEDED": errors.QueryDeadlineError,
    "RESOURCE_EXHAUSTED": errors.ResourceLimitError,
    "CANCELLED": errors.QueryCancelledError,
    "ALREADY_EXISTS": errors.RequestIdReusedError,
    "FAILED_PRECONDITION": errors.ExecutionError,
}


def status_code(error: errors.DataislandError) -> grpc.StatusCode:
    """The gRPC status for `error`, from the one table in dataisland.errors."""
    return grpc.StatusCode[errors.grpc_status_for(error)]


def _reason(error: errors.DataislandError | None) -> str:
    """`MalformedQueryError` -> `MALFORMED_QUERY`: the stable ErrorInfo reason of a cause."""
    if error is None:
        return "INTERNAL"
    name = type(error).__name__.removesuffix("Error") or "DATAISLAND"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()[:63]


def rich_status(
    code: grpc.StatusCode, message: str, error: errors.DataislandError | None
) -> grpc.Status:
    """The status a refusal leaves with: code, message and google.rpc details.

    Details: always an `ErrorInfo` (reason from the cause's class, domain "dataisland"); for a
    bad field a `BadRequest`; for a limit a `QuotaFailure` naming the setting and, when waiting
    helps, a `RetryInfo`.
    """
    info = error_details_pb2.ErrorInfo(reason=_reason(error), domain=ERROR_DOMAIN)
    if error is not None:
        info.metadata["cause"] = type(error).__name__
    details: list[Any] = [info]
    if isinstance(error, errors.InvalidInputError) or code == grpc.StatusCode.INVALID_ARGUMENT:
        field = getattr(error, "field", "")
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
                ]
            )
        )
    if isinstance(error, errors.ResourceLimitError):
        info.metadata["limit"] = error.limit
        details.append(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject=error.subject, description=message
                    )
                ]
            )
        )
        if error.retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(error.retry_after * 1e9))
            details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    packed = []
    for detail in details:
        wrapped = any_pb2.Any()
        wrapped.Pack(detail)
        packed.append(wrapped)
    status = status_pb2.Status(code=code.value[0], message=message, details=packed)
    return rpc_status.to_status(status)


def error_details(exc: grpc.RpcError) -> list[Any]:
    """The google.rpc detail messages (ErrorInfo, BadRequest, ...) of a failed call, unpacked."""
    if not isinstance(exc, grpc.Call):
        return []
    try:
        status = rpc_status.from_call(exc)
    except ValueError:
        return []
    if status is None:
        return []
    out: list[Any] = []
    for packed in status.details:
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
    return out


def _service_of(servicer: object) -> str:
    # The generated base class is named after the service: CoordinatorServiceServicer.
    for cls in type(servicer).__mro__:
        if cls.__name__.endswith("Servicer") and cls.__module__.startswith("dataisland.v1"):
            return cls.__name__.removesuffix("Servicer")
    return type(servicer).__name__


def guarded(
    method: Callable[Concatenate[S, Req, grpc.ServicerContext, P], Resp],
) -> Callable[Concatenate[S, Req, grpc.ServicerContext, P], Resp]:
    """Wrap a servicer method so every failure leaves as a clear status, never a traceback;
    count and time it, and bind the request's query id to its log lines."""

    @wraps(method)
    def wrapper(
        self: S, request: Req, context: grpc.ServicerContext, *a: P.args, **k: P.kwargs
    ) -> Resp:
        service = _service_of(self)
        began = time.perf_counter()
        query_id = getattr(request, "query_id", "")
        error: errors.DataislandError | None = None
        with bind_query(query_id if isinstance(query_id, str) else ""):
            try:
                answer = method(self, request, context, *a, **k)
            except errors.DataislandError as exc:
                error, code, message = exc, status_code(exc), str(exc)
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    metrics.count_limit(exc)
            except Exception:
                ref = secrets.token_hex(4)
                log.exception("unexpected failure in %s (ref %s)", method.__name__, ref)
                code, message = (
                    grpc.StatusCode.INTERNAL,
                    f"internal error (ref {ref}); see the node's log",
                )
            else:
                code, message = grpc.StatusCode.OK, ""
                # SubmitQuery learns its query id only on the way out: log the line with it.
                status = getattr(answer, "status", None)
                query_id = query_id or getattr(status, "query_id", "")
            elapsed = time.perf_counter() - began
            metrics.RPCS.labels(service=service, method=method.__name__, code=code.name).inc()
            metrics.RPC_SECONDS.labels(service=service, method=method.__name__).observe(elapsed)
            log.info(
                "%s/%s %s",
                service,
                method.__name__,
                code.name,
                extra={
                    **({"query_id": query_id} if isinstance(query_id, str) and query_id else {}),
                    "rpc": f"{service}/{method.__name__}",
                    "code": code.name,
                    "seconds": round(elapsed, 6),
                    **({"error": message} if code != grpc.StatusCode.OK else {}),
                },
            )
        if code == grpc.StatusCode.OK:
            return answer
        context.abort_with_status(rich_status(code, message, error))
        raise AssertionError("unreachable: context.abort_with_status raises")

    return cast("Callable[Concatenate[S, Req, grpc.ServicerContext, P], Resp]", wrapper)


def error_from_rpc(exc: grpc.RpcError, *, node: str) -> errors.DataislandError:
    """Turn a failed call to `node` into the matching DataislandError, keeping its message.

    UNAVAILABLE and DEADLINE_EXCEEDED raised by the channel itself name the node, so a caller
    learns which department was down or slow.
    """
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    detail = exc.details() if isinstance(exc, grpc.Call) else None
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    cls = _BY_CODE.get(name, errors.ExecutionError)
    if name == "UNAVAILABLE":
        return errors.NodeUnavailableError(f"{node} is unavailable: {detail or 'no connection'}")
    if name == "DEADLINE_EXCEEDED":
        return errors.QueryDeadlineError(f"{node} did not answer within the deadline")
    error = cls(f"{node}: {detail or name.lower()}")
    error.code = name if name != "UNKNOWN" else "FAILED_PRECONDITION"
    return error


def serve_until_signalled(
    register: Callable[[grpc.Server], None],
    address: str,
    *,
    credentials: grpc.ServerCredentials,
    name: str,
    workers: int = 16,
    on_stop: Callable[[], None] | None = None,
    max_request_bytes: int = MAX_MESSAGE_BYTES,
    metrics_server: metrics.MetricsServer | None = None,
) -> None:
    """Run a mutual-TLS gRPC server on `address` until SIGTERM or SIGINT, then stop gracefully.

    A request larger than `max_request_bytes` is refused by gRPC itself (RESOURCE_EXHAUSTED,
    naming both sizes) before any servicer sees it. `metrics_server` runs alongside.

    Raises:
        ConfigError: the address cannot be bound.
    """
    import signal
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    # SO_REUSEPORT off: a second node on the same port must fail, not silently share it.
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", max_request_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(ThreadPoolExecutor(max_workers=workers), options=options)
    recording = _RecordingServer(server)
    register(cast(grpc.Server, recording))
    services = list(recording.services)
    # Standard health checking and reflection, so generic tools (grpcurl, buf curl) can call it;
    # registered through `recording` too, so undecodable requests to them are refused cleanly.
    checker = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, cast(grpc.Server, recording))
    for service in ["", *services]:
        checker.set(service, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [*services, health.SERVICE_NAME, reflection.SERVICE_NAME], cast(grpc.Server, recording)
    )
    try:
        bound = server.add_secure_port(address, credentials)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise errors.ConfigError(
            f"{name} cannot listen on {address} (in use or not a local address)"
        )
    server.start()
    if metrics_server is not None:
        metrics_server.start()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("%s listening on %s", name, address)
    print(f"{name} listening on {address}", flush=True)
    stop.wait()
    checker.enter_graceful_shutdown()
    if on_stop is not None:
        on_stop()
    server.stop(grace=2).wait()
    if metrics_server is not None:
        metrics_server.stop()


class _Undecodable:
    """What a tolerant deserializer returns for bytes that are not the expected message."""


_UNDECODABLE = _Undecodable()


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def run(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:
            # gRPC would answer INTERNAL; the handler answers INVALID_ARGUMENT instead.
            return _UNDECODABLE

    return run


def _refuse_undecodable(request: Any, context: grpc.ServicerContext, method: str) -> None:
    if request is _UNDECODABLE:
        error = errors.InvalidInputError(f"the request to {method} is not a valid message")
        metrics.RPCS.labels(
            service=method.rsplit("/", 2)[-2] if "/" in method else "",
            method=method.rsplit("/", 1)[-1],
            code="INVALID_ARGUMENT",
        ).inc()
        context.abort_with_status(rich_status(grpc.StatusCode.INVALID_ARGUMENT, str(error), error))


def _tolerant_handler(handler: Any, method: str) -> Any:
    """`handler` with a request that does not decode refused as INVALID_ARGUMENT, not INTERNAL."""
    if handler is None or handler.request_deserializer is None:
        return handler
    changes: dict[str, Any] = {"request_deserializer": _tolerant(handler.request_deserializer)}
    if handler.unary_unary is not None or handler.unary_stream is not None:
        kind = "unary_unary" if handler.unary_unary is not None else "unary_stream"
        inner = getattr(handler, kind)

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            _refuse_undecodable(request, context, method)
            return inner(request, context)

        changes[kind] = unary
    else:
        kind = "stream_unary" if handler.stream_unary is not None else "stream_stream"
        inner = getattr(handler, kind)

        def streaming(requests: Any, context: grpc.ServicerContext) -> Any:
            def checked() -> Any:
                for request in requests:
                    _refuse_undecodable(request, context, method)
                    yield request

            return inner(checked(), context)

        changes[kind] = streaming
    return handler._replace(**changes)


if TYPE_CHECKING:
    _Generic = grpc.GenericRpcHandler[Any, Any]
else:
    _Generic = grpc.GenericRpcHandler


class _TolerantGenericHandler(_Generic):
    def __init__(self, inner: _Generic) -> None:
        self.inner = inner

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        return _tolerant_handler(
            self.inner.service(handler_call_details), str(handler_call_details.method)
        )


class _RecordingServer:
    """A grpc.Server stand-in that notes which services a servicer registers and makes every
    handler refuse undecodable requests with INVALID_ARGUMENT."""

    def __init__(self, server: grpc.Server) -> None:
        self._server = server
        self.services: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        for handler in handlers:
            name = getattr(handler, "service_name", None)
            if callable(name) and str(name()) not in self.services:
                self.services.append(str(name()))
        self._server.add_generic_rpc_handlers([_TolerantGenericHandler(h) for h in handlers])

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        if service not in self.services:
            self.services.append(service)
        tolerant = {
            name: _tolerant_handler(handler, f"/{service}/{name}")
            for name, handler in handlers.items()
        }
        self._server.add_registered_method_handlers(service, tolerant)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)
