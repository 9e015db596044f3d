"""gRPC plumbing shared by every node and the client: status mapping, servicer guard, channels.

Servicers only authenticate, convert and delegate; `guarded` turns a `DataislandError` into its
status code (the one table in `dataisland.errors`) and anything unexpected into a generic
INTERNAL with a reference number, so no traceback or data value ever reaches a caller. The
client side turns a status back into the matching `DataislandError`.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from functools import wraps
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import grpc

from dataisland import errors

log = logging.getLogger("dataisland.rpc")

P = ParamSpec("P")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
S = TypeVar("S")

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
"""Large enough for partials of hundreds of thousands of groups; enforced on both ends."""

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
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


def guarded(
    method: Callable[Concatenate[S, Req, grpc.ServicerContext, P], Resp],
) -> Callable[Concatenate[S, Req, grpc.ServicerContext, P], Resp]:
    """Wrap a servicer method so every failure leaves as a clear status, never a traceback."""

    @wraps(method)
    def wrapper(
        self: S, request: Req, context: grpc.ServicerContext, *a: P.args, **k: P.kwargs
    ) -> Resp:
        try:
            return method(self, request, context, *a, **k)
        except errors.DataislandError as exc:
            code, message = status_code(exc), str(exc)
        except Exception:
            ref = secrets.token_hex(4)
            log.exception("unexpected failure in %s (ref %s)", method.__name__, ref)
            code, message = (
                grpc.StatusCode.INTERNAL,
                f"internal error (ref {ref}); see the node's log",
            )
        context.abort(code, message)
        raise AssertionError("unreachable: context.abort raises")

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
) -> None:
    """Run a mutual-TLS gRPC server on `address` until SIGTERM or SIGINT, then stop gracefully.

    Raises:
        ConfigError: the address cannot be bound.
    """
    import signal
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    # SO_REUSEPORT off: a second node on the same port must fail, not silently share it.
    options = [*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)]
    server = grpc.server(ThreadPoolExecutor(max_workers=workers), options=options)
    recording = _RecordingServer(server)
    register(cast(grpc.Server, recording))
    # Standard health checking and reflection, so generic tools (grpcurl, buf curl) can call it.
    checker = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    for service in ["", *recording.services]:
        checker.set(service, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [*recording.services, health.SERVICE_NAME, reflection.SERVICE_NAME], server
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


class _RecordingServer:
    """A grpc.Server stand-in that notes which services a servicer registers."""

    def __init__(self, server: grpc.Server) -> None:
        self._server = server
        self.services: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        for handler in handlers:
            name = getattr(handler, "service_name", None)
            if callable(name) and str(name()) not in self.services:
                self.services.append(str(name()))
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        if service not in self.services:
            self.services.append(service)
        self._server.add_registered_method_handlers(service, handlers)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)
