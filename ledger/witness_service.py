"""The witness node: C2SP tlog-witness over HTTPS with mutual TLS, around `ledger.witness`.

Endpoints (c2sp.org/tlog-witness), and who may call them:

- ``POST /add-checkpoint`` (the committee's coordinator): body ``old <size>``, consistency
  proof lines, a blank line, the signed checkpoint. 200 with this witness's cosignature line
  (``text/plain; charset=utf-8``); 400 malformed, 403 not signed by the log, 404 another origin,
  409 (body ``<known size>\\n``, ``text/x.tlog.size``) when the old size is not the one it last
  cosigned or the same size comes with another root, 422 when the consistency proof fails or
  (dataisland's rule) an execution reported long enough ago is missing from the checkpoint, 412
  when the replica does not yet hold the checkpoint's entries.
- ``GET /checkpoint`` (any verified member of the federation): the latest checkpoint this
  witness cosigned, with its cosignature (404 before the first).
- ``GET /healthz`` (any verified member): 200 with ``{"status": "SERVING", "origin", "size"}``
  (JSON; the size it last cosigned, `health_body`).

dataisland's extensions, which a plain tlog-witness lacks (a plain one can still take a node's
place; it then cannot hold enclaves to the execution rule):

- ``POST /entries`` (the coordinator): ``start <n>``, one base64 entry per line, a blank line,
  a log-signed checkpoint of size n + the number of entries. The replica keeps them only if they
  reproduce that checkpoint's root (ledger/replica.py); 409 with the replica's size when n is not
  it. 200 with the new size.
- ``GET /entries?start=A&end=B`` (this department's enclave, the coordinator, auditors): replica
  entries, one base64 line each, at most 1,000 or 4 MiB per call.
- ``POST /execution-report`` (this department's enclave only): one signed execution report
  entry (ledger.entries.ExecutionReportEntry). 200 once it is durable; 423 while an earlier
  report has stayed out of the log longer than the federation's bound, which stops the
  enclave serving until the log catches up.
- ``GET /execution-reports`` (the coordinator): the reports not yet in a cosigned checkpoint,
  one base64 entry per line, for the coordinator to log.
- ``POST /quorum-checkpoint`` (the coordinator): a checkpoint with a quorum of cosignatures,
  verified here against the federation's keys, kept for ``GET /quorum-checkpoint`` (any verified
  member): a restarted enclave rebuilds its state against such a checkpoint, cosigned after it
  started.

TLS: the server's certificate is the witness node's (its department's CA, DNS SAN
``witness.<department>.<federation>.dataisland``); clients must present a certificate from one of
the federation's CAs, and the caller is then verified in full (`dataisland.tls.Authenticator`:
its own department's CA, revocation list). Each state change is checked and persisted
atomically under one lock before the answer leaves. This module imports neither the
coordinator nor the enclave.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import signal
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from dataisland.errors import ConfigError, DataislandError
from dataisland.federation import Federation, NodeConfig, load_federation
from dataisland.https import MutualTLSHandler, MutualTLSServer, tls_server_context
from dataisland.identity import Principal, load_certificate
from dataisland.tls import Authenticator, metrics_server
from ledger.checkpoint import Checkpoint, open_checkpoint, verify_cosigned
from ledger.entries import ExecutionReportEntry
from ledger.errors import (
    LedgerError,
    LogCorruptionError,
    MalformedNoteError,
    ProofError,
    SignatureError,
    StorageError,
    UnknownLogError,
    UnloggedExecutionError,
    WitnessConflictError,
    WitnessRequestError,
)
from ledger.keys import load_signer
from ledger.note import SIG_TYPE_COSIGNATURE_V1, Ed25519Signer, Ed25519Verifier, Note
from ledger.replica import Replica
from ledger.storage import LogStorage
from ledger.witness import (
    ExecutionRule,
    PendingReport,
    WitnessState,
    add_checkpoint,
    load_state,
    parse_add_checkpoint_body,
    record_execution_report,
    save_state,
    write_atomically,
)
from ledger.witness_client import MAX_ENTRIES_BODY, decode_lines, encode_lines

log = logging.getLogger("dataisland.witness")

MAX_BODY_BYTES = 1 << 20
"""Largest add-checkpoint body accepted (a note is at most 1 MiB; proofs are 63 lines)."""

MAX_ENTRIES_PER_READ = 1_000
MAX_READ_BYTES = 4 << 20

SIZE_CONTENT_TYPE = "text/x.tlog.size"


class ReplicaBehindError(LedgerError):
    """The replica does not yet hold the entries of a checkpoint it is asked to cosign."""

    code = "FAILED_PRECONDITION"

    def __init__(self, message: str, *, replica_size: int) -> None:
        super().__init__(message)
        self.replica_size = replica_size


@dataclass(frozen=True)
class Quorum:
    """What a quorum-cosigned checkpoint must carry: the federation's witness keys and quorum."""

    witnesses: tuple[Ed25519Verifier, ...]
    size: int


class WitnessService:
    """One witness's state for one log, its replica, and the transitions with persistence.

    Args:
        state_path: the state file (created on the first cosignature).
        log_verifier: the log's type 0x01 key; its name is the origin.
        cosigner: this witness's type 0x04 key.
        clock: POSIX seconds, for cosignature timestamps and report ages.
        replica: the replica of the log's entries, for dataisland's rules; None for a plain
            tlog-witness.
        report_bound: seconds an execution report may stay out of the log.
        quorum: the federation's witnesses and quorum, to check published checkpoints.

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
        replica: Replica | None = None,
        report_bound: int | None = None,
        quorum: Quorum | None = None,
    ) -> None:
        self.state_path = state_path
        self.quorum_path = state_path.with_name(state_path.name + ".quorum")
        self.log_verifier = log_verifier
        self.cosigner = cosigner
        self.clock = clock
        self.replica = replica
        self.report_bound = report_bound
        self.quorum = quorum
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
        self.journal_path = state_path.with_name(state_path.name + ".reports")
        self._state = _replay_journal(state, self.journal_path)
        self._quorum_note: bytes | None = None
        if self.quorum_path.exists():
            try:
                self._quorum_note = self.quorum_path.read_bytes()
            except OSError as exc:
                raise StorageError(f"cannot read {self.quorum_path}: {exc.strerror}") from exc

    @property
    def state(self) -> WitnessState:
        """The state as last persisted."""
        return self._state

    def _open(self, note: bytes) -> Checkpoint:
        checkpoint, _ = open_checkpoint(
            note, origin=self.log_verifier.name, log_verifier=self.log_verifier
        )
        return checkpoint

    def add_checkpoint(self, body: bytes) -> bytes:
        """Handle an add-checkpoint body; return the cosignature line once the state is durable.

        Raises:
            WitnessRequestError, MalformedNoteError, SignatureError, UnknownLogError,
            WitnessConflictError, ProofError, UnloggedExecutionError: see
                `ledger.witness.add_checkpoint`.
            ReplicaBehindError: the replica lacks the checkpoint's entries (push them first).
            StorageError: the new state could not be persisted (nothing was cosigned).
        """
        old_size, proof, note = parse_add_checkpoint_body(body)
        with self._lock:
            replica = self.replica
            checkpoint = self._open(note)
            behind = replica is not None and replica.size < checkpoint.size
            rule = None
            if replica is not None and not behind and self.report_bound is not None:
                rule = ExecutionRule(self.report_bound, replica.includes)
            # tlog-witness's own checks come first (and the report rule once the replica can
            # answer it), so a fork or a bad proof gets the status the spec gives it.
            new_state, signature = add_checkpoint(
                self._state,
                old_size=old_size,
                consistency_proof=proof,
                signed_checkpoint=note,
                log_verifier=self.log_verifier,
                cosigner=self.cosigner,
                timestamp=int(self.clock()),
                rule=rule,
            )
            if replica is not None:
                if behind:
                    raise ReplicaBehindError(
                        f"the replica holds {replica.size} entries; the checkpoint covers "
                        f"{checkpoint.size}: push them first",
                        replica_size=replica.size,
                    )
                if replica.root(checkpoint.size) != checkpoint.root_hash:
                    raise ProofError(
                        f"the checkpoint of size {checkpoint.size} is not the root of the entries "
                        "this witness holds: the log forked"
                    )
            save_state(self.state_path, new_state)  # it holds the reports still pending
            self._state = new_state
            _clear_journal(self.journal_path)
        return signature.line().encode()

    def latest(self) -> bytes | None:
        """The latest checkpoint this witness cosigned, with its cosignature."""
        return self._state.checkpoint

    # -- dataisland's extensions --------------------------------------------------------------

    def _replica(self) -> Replica:
        if self.replica is None:
            raise WitnessRequestError("this witness keeps no replica of the log")
        return self.replica

    def push_entries(self, body: bytes) -> int:
        """Handle a push of entries to the replica; return its new size.

        Raises:
            WitnessRequestError: malformed body, or no replica.
            MalformedNoteError, UnknownLogError, SignatureError: the checkpoint is not the log's.
            WitnessConflictError: the push does not start at the replica's size (carries it).
            ProofError: the entries do not reproduce the checkpoint's root.
            StorageError: they could not be made durable.
        """
        replica = self._replica()
        try:
            text_end = body.index(b"\n\n")
        except ValueError:
            raise WitnessRequestError("no blank line before the checkpoint") from None
        head, note = body[:text_end].split(b"\n"), body[text_end + 2 :]
        first = head[0].decode("ascii", "replace")
        digits = first.removeprefix("start ")
        if first == digits or not digits.isdigit() or len(digits) > 15:
            raise WitnessRequestError("first line is 'start <index>'")
        try:
            entries = decode_lines(b"\n".join(head[1:]))
        except ValueError as exc:
            raise WitnessRequestError(str(exc)) from None
        checkpoint = self._open(note)
        return replica.extend(int(digits), entries, checkpoint)

    def entries(self, start: int, end: int) -> list[bytes]:
        """Replica entries from `start`, at most up to `end` (fewer past the read limits).

        Raises:
            WitnessRequestError: no replica, or a range outside it.
        """
        replica = self._replica()
        end = min(end, start + MAX_ENTRIES_PER_READ)
        out: list[bytes] = []
        total = 0
        for data in replica.entries(start, end):
            total += len(data)
            if out and total > MAX_READ_BYTES:
                break
            out.append(data)
        return out

    def report_execution(self, entry: bytes, *, department: str) -> None:
        """Record an execution report from `department`'s enclave, durably.

        Raises:
            MalformedEntryError: not an execution report entry.
            WitnessRequestError: a report about another department, or no replica.
            UnloggedExecutionError: an earlier report stayed out of the log too long.
            StorageError: it could not be persisted.
        """
        replica = self._replica()
        report = ExecutionReportEntry.from_bytes(entry)
        if report.department != department:
            raise WitnessRequestError(
                f"an enclave of {department} reported an execution of {report.department}"
            )
        with self._lock:
            if replica.report_index(report.report_id) is not None:
                return  # logged already: nothing is pending
            new_state = record_execution_report(
                self._state,
                report_id=report.report_id,
                received_at=int(self.clock()),
                entry=entry,
                bound_seconds=self.report_bound,
            )
            if new_state is not self._state:
                # One appended line and one fdatasync, not a rewrite of the state (which
                # costs two fsyncs and a rename): the report path is the query path.
                _append_journal(self.journal_path, new_state.pending_reports[-1])
                self._state = new_state

    def pending_reports(self) -> list[bytes]:
        """The entries of the reports no cosigned checkpoint includes yet."""
        return [r.entry for r in self._state.pending_reports if r.entry]

    def publish_quorum(self, note: bytes) -> None:
        """Keep a quorum-cosigned checkpoint for enclaves to fetch (the largest wins).

        Raises:
            WitnessRequestError: this witness checks no quorum.
            MalformedNoteError, UnknownLogError, SignatureError, QuorumError: it is not a
                checkpoint of this log with a quorum of the federation's witnesses.
            ProofError: its root is not the replica's at that size (the log forked).
            StorageError: it could not be persisted.
        """
        if self.quorum is None:
            raise WitnessRequestError("this witness keeps no quorum checkpoints")
        cosigned = verify_cosigned(
            note,
            origin=self.log_verifier.name,
            log_verifier=self.log_verifier,
            witness_verifiers=self.quorum.witnesses,
            quorum=self.quorum.size,
        )
        size = cosigned.checkpoint.size
        if (
            self.replica is not None
            and size <= self.replica.size
            and self.replica.root(size) != cosigned.checkpoint.root_hash
        ):
            raise ProofError(f"the quorum checkpoint of size {size} contradicts the replica")
        with self._lock:
            if self._quorum_note is not None:
                known = Checkpoint.from_text(Note.from_bytes(self._quorum_note).text)
                if known.size > size:
                    return
            write_atomically(self.quorum_path, note)
            self._quorum_note = note

    def quorum_checkpoint(self) -> bytes | None:
        """The latest quorum-cosigned checkpoint published to this witness."""
        return self._quorum_note


def _append_journal(path: Path, report: PendingReport) -> None:
    """Append one pending report to the journal, durably.

    Raises:
        StorageError: it could not be written.
    """
    line = json.dumps(
        {"received_at": report.received_at, "entry": base64.b64encode(report.entry).decode()}
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode() + b"\n")
            os.fdatasync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StorageError(f"cannot record the execution report in {path}: {exc.strerror}") from exc


def _clear_journal(path: Path) -> None:
    """Empty the journal once the state file holds every report still pending."""
    try:
        if path.exists() and path.stat().st_size:
            write_atomically(path, b"")
    except StorageError as exc:
        log.warning("the report journal could not be cleared (it is replayed at start): %s", exc)


def _replay_journal(state: WitnessState, path: Path) -> WitnessState:
    """The state with the reports the journal holds (appended since the state was saved); a
    line torn by a crash is ignored (its report was never acknowledged).

    Raises:
        StorageError: the journal exists but cannot be read.
    """
    try:
        lines = path.read_bytes().splitlines() if path.exists() else []
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
    for line in lines:
        try:
            obj = json.loads(line)
            entry = base64.b64decode(obj["entry"], validate=True)
            report = ExecutionReportEntry.from_bytes(entry)
            state = record_execution_report(
                state, report_id=report.report_id, received_at=int(obj["received_at"]), entry=entry
            )
        except (ValueError, KeyError, TypeError, LedgerError):
            continue
    return state


def health_body(state: WitnessState) -> bytes:
    """The witness's health answer: serving, for which log, and the size it last cosigned."""
    return json.dumps({"status": "SERVING", "origin": state.origin, "size": state.size}).encode()


def http_status(error: DataislandError) -> HTTPStatus:
    """The HTTP status for a failed witness request (tlog-witness's, where it defines one)."""
    if isinstance(error, WitnessConflictError):
        return HTTPStatus.CONFLICT
    if isinstance(error, ReplicaBehindError):
        return HTTPStatus.PRECONDITION_FAILED
    if isinstance(error, (WitnessRequestError, MalformedNoteError)):
        return HTTPStatus.BAD_REQUEST
    if isinstance(error, SignatureError):
        return HTTPStatus.FORBIDDEN
    if isinstance(error, UnknownLogError):
        return HTTPStatus.NOT_FOUND
    if isinstance(error, (ProofError, UnloggedExecutionError)):
        return HTTPStatus.UNPROCESSABLE_ENTITY
    if isinstance(error, LedgerError) and error.code == "INVALID_ARGUMENT":
        return HTTPStatus.BAD_REQUEST
    if isinstance(error, LedgerError) and error.code == "RESOURCE_EXHAUSTED":
        return HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    if isinstance(error, LedgerError) and error.code == "FAILED_PRECONDITION":
        return HTTPStatus.UNPROCESSABLE_ENTITY
    return HTTPStatus.SERVICE_UNAVAILABLE


@dataclass(frozen=True)
class Callers:
    """Who may call what: the witness's own department and the committee's name.

    Attributes:
        department: the department this witness belongs to (its enclave may report here).
        committee: the executive committee, whose coordinator feeds the witness.
    """

    department: str
    committee: str

    def coordinator(self, p: Principal) -> bool:
        """The committee's coordinator."""
        return p.role == "coordinator" and p.department == self.committee

    def enclave(self, p: Principal) -> bool:
        """This department's enclave."""
        return p.role == "enclave" and p.department == self.department

    def reader(self, p: Principal) -> bool:
        """Who may read the replica: this department's enclave, the coordinator, auditors."""
        return self.enclave(p) or self.coordinator(p) or p.role == "auditor"

    @staticmethod
    def member(p: Principal) -> bool:
        """Any verified member of the federation."""
        return True


class _Server(MutualTLSServer):
    # Set by `WitnessHTTPServer`; typed here for the handler.
    service: WitnessService
    callers: Callers


_TEXT = "text/plain; charset=utf-8"

_Routes = dict[str, tuple[Callable[[Principal], bool], Callable[[], None]]]
"""Path to (who may call it, what answers it)."""


class _Handler(MutualTLSHandler):
    server: _Server

    def _reply(self, status: HTTPStatus, body: bytes, content_type: str = _TEXT) -> None:
        self.reply(status, body, content_type)

    def _text(self, status: HTTPStatus, message: str) -> None:
        self.text(status, message)

    def _body(self, limit: int) -> bytes | None:
        length_text = self.headers.get("Content-Length", "")
        if not length_text.isdigit() or int(length_text) > limit:
            self.close_connection = True
            self._text(HTTPStatus.BAD_REQUEST, f"a Content-Length up to {limit} bytes is required")
            return None
        return self.rfile.read(int(length_text))

    def _route(self, routes: _Routes) -> None:
        caller = self.caller()
        if caller is None:
            return
        path = urlsplit(self.path).path
        route = routes.get(path)
        if route is None:
            self._text(HTTPStatus.NOT_FOUND, "unknown path")
            return
        allowed, handle = route
        if not allowed(caller):
            self._text(HTTPStatus.FORBIDDEN, f"{caller} may not call {self.command} {path}")
            return
        try:
            handle()
        except WitnessConflictError as exc:
            self._reply(HTTPStatus.CONFLICT, f"{exc.known_size}\n".encode(), SIZE_CONTENT_TYPE)
        except ReplicaBehindError as exc:
            self._reply(
                HTTPStatus.PRECONDITION_FAILED, f"{exc.replica_size}\n".encode(), SIZE_CONTENT_TYPE
            )
        except DataislandError as exc:
            self._text(http_status(exc), str(exc))

    def do_GET(self) -> None:
        c = self.server.callers
        self._route(
            {
                "/checkpoint": (c.member, self._get_checkpoint),
                "/healthz": (c.member, self._health),
                "/quorum-checkpoint": (c.member, self._get_quorum),
                "/entries": (c.reader, self._get_entries),
                "/execution-reports": (c.coordinator, self._get_reports),
            }
        )

    def do_POST(self) -> None:
        c = self.server.callers
        self._route(
            {
                "/add-checkpoint": (c.coordinator, self._add_checkpoint),
                "/entries": (c.coordinator, self._push_entries),
                "/execution-report": (c.enclave, self._report),
                "/quorum-checkpoint": (c.coordinator, self._publish_quorum),
            }
        )

    def _health(self) -> None:
        self._reply(HTTPStatus.OK, health_body(self.server.service.state), "application/json")

    def _get_checkpoint(self) -> None:
        latest = self.server.service.latest()
        if latest is None:
            self._text(HTTPStatus.NOT_FOUND, "no checkpoint cosigned yet")
            return
        self._reply(HTTPStatus.OK, latest)

    def _get_quorum(self) -> None:
        note = self.server.service.quorum_checkpoint()
        if note is None:
            self._text(HTTPStatus.NOT_FOUND, "no quorum checkpoint published yet")
            return
        self._reply(HTTPStatus.OK, note)

    def _get_entries(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        start, end = query.get("start", [""])[0], query.get("end", [""])[0]
        if not (start.isdigit() and end.isdigit() and len(start) < 16 and len(end) < 16):
            raise WitnessRequestError("entries takes ?start=A&end=B")
        entries = self.server.service.entries(int(start), int(end))
        self._reply(HTTPStatus.OK, encode_lines(entries).encode())

    def _get_reports(self) -> None:
        self._reply(HTTPStatus.OK, encode_lines(self.server.service.pending_reports()).encode())

    def _add_checkpoint(self) -> None:
        body = self._body(MAX_BODY_BYTES)
        if body is not None:
            self._reply(HTTPStatus.OK, self.server.service.add_checkpoint(body))

    def _push_entries(self) -> None:
        body = self._body(MAX_ENTRIES_BODY)
        if body is not None:
            size = self.server.service.push_entries(body)
            self._reply(HTTPStatus.OK, f"{size}\n".encode(), SIZE_CONTENT_TYPE)

    def _report(self) -> None:
        body = self._body(MAX_BODY_BYTES)
        if body is None:
            return
        try:
            self.server.service.report_execution(body, department=self.server.callers.department)
        except UnloggedExecutionError as exc:
            self._text(HTTPStatus.LOCKED, str(exc))
            return
        self._text(HTTPStatus.OK, "recorded")

    def _publish_quorum(self) -> None:
        body = self._body(MAX_BODY_BYTES)
        if body is not None:
            self.server.service.publish_quorum(body)
            self._text(HTTPStatus.OK, "kept")


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
        callers: who may call which endpoint.
    """

    def __init__(
        self,
        service: WitnessService,
        *,
        address: tuple[str, int],
        context: ssl.SSLContext,
        authenticate: Callable[[bytes], Principal],
        callers: Callers,
    ) -> None:
        self._server = _Server(
            address, _Handler, context=context, authenticate=authenticate, what="witness"
        )
        self._server.service = service
        self._server.callers = callers

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


def replica_path(state: Path) -> Path:
    """Where a witness keeps its replica: beside its state file."""
    return state.with_name(state.name + ".replica")


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
    try:
        witnesses = tuple(
            Ed25519Verifier.from_vkey(w.verifier_key) for w in federation.log.witnesses.values()
        )
    except LedgerError as exc:
        raise ConfigError(f"federation file witness keys: {exc}") from None
    replica = Replica(LogStorage.open(replica_path(config.witness_state), create=True))
    service = WitnessService(
        state_path=config.witness_state,
        log_verifier=log_verifier,
        cosigner=cosigner,
        clock=time.time,
        replica=replica,
        report_bound=federation.log.report_bound_seconds,
        quorum=Quorum(witnesses=witnesses, size=federation.log.quorum),
    )
    authenticator = Authenticator(federation, clock=lambda: dt.datetime.now(dt.UTC))

    def authenticate(der: bytes) -> Principal:
        return authenticator.verify(load_certificate(der))

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
        callers=Callers(department=config.department, committee=federation.committee.name),
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
    replica.close()
