"""The witness node: C2SP tlog-witness over HTTPS with mutual TLS, around `ledger.witness`.

Endpoints (c2sp.org/tlog-witness):

- ``POST /add-checkpoint``: body ``old <size>``, consistency proof lines, a blank line, the
  signed checkpoint. 200 with this witness's cosignature line (``text/plain; charset=utf-8``);
  400 malformed, 403 not signed by the log, 404 another origin, 409 (body ``<known size>\\n``,
  ``text/x.tlog.size``) when the old size is not the one it last cosigned or the same size comes
  with another root, 422 when the consistency proof fails. Only the federation's coordinator
  (the committee's ``coordinator`` identity) may call it.
- ``GET /checkpoint``: the latest checkpoint this witness cosigned, with its cosignature, for any
  verified member of the federation (404 before the first).
- ``GET /healthz``: 200 with ``{"status": "SERVING", "origin", "size"}`` (JSON; the size it last
  cosigned), for any verified member of the federation (`health_body`).

TLS: the server's certificate is the witness node's (its department's CA, DNS SAN
``witness.<department>.<federation>.dataisland``); clients must present a certificate from one of
the federation's CAs, and the caller is then verified in full (`dataisland.tls.Authenticator`:
its own department's CA, revocation list). Each add-checkpoint is checked and its new state
persisted atomically (`save_state`) under one lock before the cosignature leaves.

Not done here: the replica of the entries and the execution-report rule (`ExecutionRule`) that
would let a witness refuse checkpoints omitting an enclave's execution; enclaves do not report
to witnesses yet. This module imports neither the coordinator nor the enclave.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import signal
import ssl
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path

from dataisland.errors import ConfigError, DataislandError
from dataisland.federation import Federation, NodeConfig, load_federation
from dataisland.https import MutualTLSHandler, MutualTLSServer, tls_server_context
from dataisland.identity import Principal, load_certificate
from dataisland.tls import Authenticator, metrics_server
from ledger.errors import (
    LedgerError,
    LogCorruptionError,
    MalformedNoteError,
    ProofError,
    SignatureError,
    UnknownLogError,
    UnloggedExecutionError,
    WitnessConflictError,
    WitnessRequestError,
)
from ledger.keys import load_signer
from ledger.note import SIG_TYPE_COSIGNATURE_V1, Ed25519Signer, Ed25519Verifier
from ledger.witness import (
    WitnessState,
    add_checkpoint,
    load_state,
    parse_add_checkpoint_body,
    save_state,
)

log = logging.getLogger("dataisland.witness")

MAX_BODY_BYTES = 1 << 20
"""Largest add-checkpoint body accepted (a note is at most 1 MiB; proofs are 63 lines)."""

SIZE_CONTENT_TYPE = "text/x.tlog.size"


class WitnessService:
    """One witness's state for one log, and the add-checkpoint transition with persistence.

    Args:
        state_path: the state file (created on the first cosignature).
        log_verifier: the log's type 0x01 key; its name is the origin.
        cosigner: this witness's type 0x04 key.
        clock: POSIX seconds, for cosignature timestamps.

    Raises:
        StorageError, LogCorruptionError: the state file exists but cannot be read or parsed,
            or it is for another origin.
    """

    def __init__(
        self,
        *,
        state_path: Path,
        log_verifier: Ed25519Verifier,
        cosigner: Ed25519Signer,
        clock: Callable[[], float],
    ) -> None:
        self.state_path = state_path
        self.log_verifier = log_verifier
        self.cosigner = cosigner
        self.clock = clock
        self._lock = threading.Lock()
        origin = log_verifier.name
        if state_path.exists():
            state = load_state(state_path)
            if state.origin != origin:
                raise LogCorruptionError(
                    f"witness state {state_path} is for origin {state.origin!r}, not {origin!r}"
                )
        else:
            state = WitnessState.initial(origin)
        self._state = state

    @property
    def state(self) -> WitnessState:
        """The state as last persisted."""
        return self._state

    def add_checkpoint(self, body: bytes) -> bytes:
        """Handle an add-checkpoint body; return the cosignature line once the state is durable.

        Raises:
            WitnessRequestError, MalformedNoteError, SignatureError, UnknownLogError,
            WitnessConflictError, ProofError: see `ledger.witness.add_checkpoint`.
            StorageError: the new state could not be persisted (nothing was cosigned).
        """
        old_size, proof, note = parse_add_checkpoint_body(body)
        with self._lock:
            new_state, signature = add_checkpoint(
                self._state,
                old_size=old_size,
                consistency_proof=proof,
                signed_checkpoint=note,
                log_verifier=self.log_verifier,
                cosigner=self.cosigner,
                timestamp=int(self.clock()),
                rule=None,
            )
            save_state(self.state_path, new_state)
            self._state = new_state
        return signature.line().encode()

    def latest(self) -> bytes | None:
        """The latest checkpoint this witness cosigned, with its cosignature."""
        return self._state.checkpoint


def health_body(state: WitnessState) -> bytes:
    """The witness's health answer: serving, for which log, and the size it last cosigned."""
    return json.dumps({"status": "SERVING", "origin": state.origin, "size": state.size}).encode()


def http_status(error: DataislandError) -> HTTPStatus:
    """The tlog-witness HTTP status for an add-checkpoint failure."""
    if isinstance(error, WitnessConflictError):
        return HTTPStatus.CONFLICT
    if isinstance(error, (WitnessRequestError, MalformedNoteError)):
        return HTTPStatus.BAD_REQUEST
    if isinstance(error, SignatureError):
        return HTTPStatus.FORBIDDEN
    if isinstance(error, UnknownLogError):
        return HTTPStatus.NOT_FOUND
    if isinstance(error, (ProofError, UnloggedExecutionError)):
        return HTTPStatus.UNPROCESSABLE_ENTITY
    return HTTPStatus.SERVICE_UNAVAILABLE


class _Server(MutualTLSServer):
    # Set by `WitnessHTTPServer`; typed here for the handler.
    service: WitnessService
    may_add: Callable[[Principal], bool]


class _Handler(MutualTLSHandler):
    server: _Server

    # The shared base's names, kept for the handlers below.
    def _reply(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.reply(status, body, content_type)

    def _text(self, status: HTTPStatus, message: str) -> None:
        self.text(status, message)

    def _caller(self) -> Principal | None:
        return self.caller()

    def do_GET(self) -> None:
        if self._caller() is None:
            return
        if self.path == "/healthz":
            self._reply(HTTPStatus.OK, health_body(self.server.service.state), "application/json")
            return
        if self.path != "/checkpoint":
            self._text(HTTPStatus.NOT_FOUND, "unknown path")
            return
        latest = self.server.service.latest()
        if latest is None:
            self._text(HTTPStatus.NOT_FOUND, "no checkpoint cosigned yet")
            return
        self._reply(HTTPStatus.OK, latest, "text/plain; charset=utf-8")

    def do_POST(self) -> None:
        caller = self._caller()
        if caller is None:
            return
        if self.path != "/add-checkpoint":
            self._text(HTTPStatus.NOT_FOUND, "unknown path")
            return
        if not self.server.may_add(caller):
            self._text(HTTPStatus.FORBIDDEN, f"{caller} may not add checkpoints")
            return
        length_text = self.headers.get("Content-Length", "")
        if not length_text.isdigit() or int(length_text) > MAX_BODY_BYTES:
            self._text(HTTPStatus.BAD_REQUEST, "a Content-Length up to 1 MiB is required")
            return
        body = self.rfile.read(int(length_text))
        try:
            line = self.server.service.add_checkpoint(body)
        except WitnessConflictError as exc:
            self._reply(HTTPStatus.CONFLICT, f"{exc.known_size}\n".encode(), SIZE_CONTENT_TYPE)
            return
        except LedgerError as exc:
            self._text(http_status(exc), str(exc))
            return
        self._reply(HTTPStatus.OK, line, "text/plain; charset=utf-8")


def server_context(*, certificate: Path, key: Path, client_roots_pem: bytes) -> ssl.SSLContext:
    """A TLS server context that requires a client certificate chained to `client_roots_pem`."""
    return tls_server_context(
        certificate=str(certificate), key=str(key), client_roots_pem=client_roots_pem
    )


class WitnessHTTPServer:
    """The HTTPS server around a `WitnessService`.

    Args:
        service: the witness.
        address: (host, port) to bind.
        context: from `server_context`.
        authenticate: verifies a client certificate (DER), returning its principal or raising.
        may_add: whether a principal may call add-checkpoint.
    """

    def __init__(
        self,
        service: WitnessService,
        *,
        address: tuple[str, int],
        context: ssl.SSLContext,
        authenticate: Callable[[bytes], Principal],
        may_add: Callable[[Principal], bool],
    ) -> None:
        self._server = _Server(
            address, _Handler, context=context, authenticate=authenticate, what="witness"
        )
        self._server.service = service
        self._server.may_add = may_add

    @property
    def port(self) -> int:
        """The bound port."""
        return self._server.port

    def start(self) -> None:
        """Serve in a background thread."""
        self._server.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.stop()


def witness_setup(config: NodeConfig, federation: Federation) -> tuple[Ed25519Verifier, str]:
    """The log's verifier key and this witness's key name, checked against the federation file.

    Raises:
        ConfigError: the federation has no log, does not list this witness, or its keys are bad.
    """
    if federation.log is None:
        raise ConfigError("the federation file has no 'log:' section; nothing to witness")
    if config.department not in federation.log.witnesses:
        raise ConfigError(f"the federation's log lists no witness {config.department!r}")
    try:
        log_verifier = Ed25519Verifier.from_vkey(federation.log.verifier_key)
        own = Ed25519Verifier.from_vkey(federation.log.witnesses[config.department].verifier_key)
    except LedgerError as exc:
        raise ConfigError(f"federation file log keys: {exc}") from None
    if log_verifier.name != federation.log.origin:
        raise ConfigError("the log's verifier key is not named after the log's origin")
    return log_verifier, own.name


def serve_witness(config: NodeConfig) -> None:
    """Run a witness node from its configuration until SIGTERM or SIGINT.

    Raises:
        ConfigError: the configuration, federation file, keys or TLS files are unusable.
        LedgerError: the state file is unreadable or for another log.
    """
    if config.witness_key is None or config.witness_state is None or config.department is None:
        raise ConfigError("a witness node needs 'department', 'witness_key' and 'witness_state'")
    federation = load_federation(config.federation)
    log_verifier, name = witness_setup(config, federation)
    assert federation.log is not None
    cosigner = load_signer(config.witness_key, name=name, sig_type=SIG_TYPE_COSIGNATURE_V1)
    expected = federation.log.witnesses[config.department].verifier_key
    if cosigner.verifier().to_vkey() != expected:
        raise ConfigError(
            f"{config.witness_key} does not match the witness key in the federation file"
        )
    config.witness_state.parent.mkdir(parents=True, exist_ok=True)
    service = WitnessService(
        state_path=config.witness_state,
        log_verifier=log_verifier,
        cosigner=cosigner,
        clock=time.time,
    )
    authenticator = Authenticator(federation, clock=lambda: dt.datetime.now(dt.UTC))
    committee = federation.committee.name

    def authenticate(der: bytes) -> Principal:
        return authenticator.verify(load_certificate(der))

    def may_add(principal: Principal) -> bool:
        return principal.role == "coordinator" and principal.department == committee

    host, _, port = config.listen.rpartition(":")
    server = WitnessHTTPServer(
        service,
        address=(host.strip("[]"), int(port)),
        context=server_context(
            certificate=config.tls.certificate,
            key=config.tls.key,
            client_roots_pem=authenticator.roots_pem(),
        ),
        authenticate=authenticate,
        may_add=may_add,
    )
    metrics = metrics_server(config, authenticator, department=config.department)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    if metrics is not None:
        metrics.start()
    log.info("witness %s listening on %s", name, config.listen)
    print(f"witness {config.department} listening on {config.listen}", flush=True)
    stop.wait()
    server.stop()
    if metrics is not None:
        metrics.stop()
