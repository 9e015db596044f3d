"""A client of one witness node over HTTPS with mutual TLS, keeping connections alive.

The coordinator calls the C2SP tlog-witness endpoint (`add_checkpoint`) and dataisland's
extensions (pushing entries to the witness's replica, fetching the execution reports enclaves
made to it, publishing checkpoints a quorum cosigned); a department enclave reports its
executions to its own node's witness and reads the replica and the latest quorum checkpoint
from it when it starts. ledger/witness_service.py documents each endpoint.

Connections are reused (HTTP/1.1 keep-alive) from a small pool, so a report on the query path
costs one request, not a TLS handshake. One idle longer than `IDLE_SECONDS` is dropped (the
witness closes idle connections after 30 s), and a request that fails on a reused connection is
retried once on a fresh one (the server may have closed it meanwhile).

This module interprets no body beyond splitting lines; callers check what they receive.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import queue
import ssl
import time
from collections.abc import Sequence
from pathlib import Path

from dataisland.errors import ConfigError
from ledger.note import Ed25519Verifier

WITNESS_TIMEOUT = 5.0
"""Seconds a request to a witness may take."""

MAX_ENTRIES_BODY = 16 << 20
"""Largest entries push a witness accepts, in bytes."""

PUSH_BYTES = 4 << 20
"""About how many entry bytes the coordinator pushes per request."""

IDLE_SECONDS = 10.0
"""Longest a connection waits in the pool before it is dropped rather than reused."""

WitnessError = (OSError, ssl.SSLError, http.client.HTTPException)
"""What a failed exchange with a witness raises."""


class _TLSConnection(http.client.HTTPConnection):
    """HTTP over TLS that checks the server's name against `server_name`, not the dialled host."""

    def __init__(
        self, host: str, port: int, *, context: ssl.SSLContext, server_name: str, timeout: float
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self._tls = context
        self._server_name = server_name

    def connect(self) -> None:
        super().connect()
        self.sock = self._tls.wrap_socket(self.sock, server_hostname=self._server_name)


def encode_lines(items: Sequence[bytes]) -> str:
    """One base64 line per item."""
    return "".join(base64.b64encode(item).decode() + "\n" for item in items)


def decode_lines(body: bytes) -> list[bytes]:
    """The items of `encode_lines` output.

    Raises:
        ValueError: a line is not base64.
    """
    try:
        return [base64.b64decode(line, validate=True) for line in body.split(b"\n") if line]
    except binascii.Error:
        raise ValueError("a line is not base64") from None


class WitnessClient:
    """HTTPS calls to one witness, as the holder of `certificate`.

    Args:
        name: the witness's name in the federation file.
        address: HOST:PORT.
        server_name: the DNS SAN its certificate must carry.
        ca: the CA certificate file that issued it.
        certificate, key: our own TLS certificate and key files.
        verifier: the witness's cosignature key, for callers that check its answers.

    Raises:
        ConfigError: the TLS files cannot be loaded.
    """

    def __init__(
        self,
        *,
        name: str,
        address: str,
        server_name: str,
        ca: Path,
        certificate: Path,
        key: Path,
        verifier: Ed25519Verifier | None = None,
        timeout: float = WITNESS_TIMEOUT,
        pool: int = 4,
    ) -> None:
        self.name = name
        host, _, port = address.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.server_name = server_name
        self.verifier = verifier
        self.timeout = timeout
        try:
            context = ssl.create_default_context(cafile=str(ca))
            context.load_cert_chain(certificate, key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"TLS files for witness {name}: {exc}") from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context = context
        self._idle: queue.LifoQueue[tuple[float, _TLSConnection]] = queue.LifoQueue(maxsize=pool)

    def _connection(self, *, fresh: bool) -> tuple[_TLSConnection, bool]:
        while not fresh:
            try:
                idle_since, conn = self._idle.get_nowait()
            except queue.Empty:
                break
            if time.monotonic() - idle_since < IDLE_SECONDS:
                return conn, True
            conn.close()
        conn = _TLSConnection(
            self.host,
            self.port,
            context=self.context,
            server_name=self.server_name,
            timeout=self.timeout,
        )
        return conn, False

    def request(
        self, method: str, path: str, body: bytes | None = None, *, limit: int = 1 << 20
    ) -> tuple[int, bytes]:
        """One HTTPS request; returns the status and up to `limit` bytes of the body.

        Raises:
            OSError, ssl.SSLError, http.client.HTTPException: the exchange failed.
        """
        headers = {"Content-Type": "text/plain; charset=utf-8"} if body is not None else {}
        for attempt in range(2):
            conn, reused = self._connection(fresh=attempt > 0)
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read(limit)
            except WitnessError:
                conn.close()
                if reused and attempt == 0:
                    continue  # an idle connection the server had closed: once more, fresh
                raise
            # Reusable only when the server keeps it open and the whole body was read.
            if response.isclosed() and not response.will_close:
                try:
                    self._idle.put_nowait((time.monotonic(), conn))
                except queue.Full:
                    conn.close()
            else:
                conn.close()
            return response.status, data
        raise AssertionError("unreachable: the second attempt returns or raises")

    def close(self) -> None:
        """Close the idle connections."""
        while True:
            try:
                self._idle.get_nowait()[1].close()
            except queue.Empty:
                return

    # -- the endpoints ------------------------------------------------------------------------

    def add_checkpoint(
        self, *, old_size: int, proof: Sequence[bytes], note: bytes
    ) -> tuple[int, bytes]:
        """POST /add-checkpoint (C2SP tlog-witness)."""
        head = f"old {old_size}\n" + encode_lines(proof)
        return self.request("POST", "/add-checkpoint", (head + "\n").encode() + note)

    def push_entries(
        self, *, start: int, entries: Sequence[bytes], note: bytes
    ) -> tuple[int, bytes]:
        """POST /entries: `entries` from `start`, leading to the log-signed checkpoint `note`."""
        head = f"start {start}\n" + encode_lines(entries)
        return self.request("POST", "/entries", (head + "\n").encode() + note)

    def execution_reports(self) -> tuple[int, bytes]:
        """GET /execution-reports: the pending reports' entries, one base64 line each."""
        return self.request("GET", "/execution-reports", limit=MAX_ENTRIES_BODY)

    def report_execution(self, entry: bytes) -> tuple[int, bytes]:
        """POST /execution-report: one signed execution report entry."""
        return self.request("POST", "/execution-report", entry)

    def publish_quorum_checkpoint(self, note: bytes) -> tuple[int, bytes]:
        """POST /quorum-checkpoint: a checkpoint with a quorum of cosignatures."""
        return self.request("POST", "/quorum-checkpoint", note)

    def quorum_checkpoint(self) -> tuple[int, bytes]:
        """GET /quorum-checkpoint: the latest quorum-cosigned checkpoint it was given."""
        return self.request("GET", "/quorum-checkpoint")

    def entries(self, start: int, end: int) -> tuple[int, bytes]:
        """GET /entries?start=&end=: replica entries, one base64 line each (perhaps fewer)."""
        return self.request("GET", f"/entries?start={start}&end={end}", limit=MAX_ENTRIES_BODY)
