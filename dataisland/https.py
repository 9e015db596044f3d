"""The small HTTPS-with-mutual-TLS server the witnesses and the metrics endpoints share.

`MutualTLSServer` accepts connections on a socket wrapped with `tls_server_context` (a client
certificate chained to the federation's CAs is required) and runs each TLS handshake in the
request's own thread, so a slow or hostile peer cannot stall the accept loop; a refused
handshake or a port probe is logged in one line, not as a traceback. `MutualTLSHandler` gives
handlers the verified caller (`caller`, checked in full by the `authenticate` callable the server
holds, which also reads revocation lists) and one way to answer (`reply`, `text`).

This module decides nothing about who may call what: each server's handler does.
"""

from __future__ import annotations

import logging
import ssl
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from dataisland.errors import ConfigError, DataislandError
from dataisland.identity import Principal

log = logging.getLogger("dataisland.https")


def tls_server_context(*, certificate: str, key: str, client_roots_pem: bytes) -> ssl.SSLContext:
    """A TLS server context requiring a client certificate chained to `client_roots_pem`.

    Raises:
        ConfigError: the node's TLS files cannot be loaded.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certificate, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS files {certificate}: {exc}") from None
    context.load_verify_locations(cadata=client_roots_pem.decode("ascii"))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class MutualTLSServer(ThreadingHTTPServer):
    """A threading HTTP server over mutual TLS; `authenticate` verifies a peer's DER certificate.

    Raises:
        ConfigError: the address cannot be bound.
    """

    daemon_threads = True
    authenticate: Callable[[bytes], Principal]

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        context: ssl.SSLContext,
        authenticate: Callable[[bytes], Principal],
        what: str,
    ) -> None:
        try:
            super().__init__(address, handler, bind_and_activate=True)
        except OSError as exc:
            raise ConfigError(
                f"{what} cannot listen on {address[0]}:{address[1]}: {exc.strerror}"
            ) from None
        self.socket = context.wrap_socket(
            self.socket, server_side=True, do_handshake_on_connect=False
        )
        self.authenticate = authenticate
        self._thread: threading.Thread | None = None
        self._what = what

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.server_address[1])

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, name=self._what, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Port probes and refused handshakes are not worth a traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ssl.SSLError, OSError)):
            log.info("connection from %s dropped: %s", client_address, exc)
            return
        super().handle_error(request, client_address)


class MutualTLSHandler(BaseHTTPRequestHandler):
    """A request handler whose TLS handshake runs in its own thread, with the verified caller."""

    server: MutualTLSServer
    protocol_version = "HTTP/1.1"
    timeout = 30

    def setup(self) -> None:
        """Run the TLS handshake here, in the request's thread, not in the accept loop."""
        super().setup()
        self.request.do_handshake()

    def log_message(self, format: str, *args: Any) -> None:
        """Request lines go to the node's (JSON) log."""
        log.info("%s %s", self.address_string(), format % args)

    def reply(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        """Send a complete response."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def text(self, status: HTTPStatus, message: str) -> None:
        """Send a one-line plain-text response."""
        self.reply(status, (message + "\n").encode(), "text/plain; charset=utf-8")

    def caller(self) -> Principal | None:
        """The verified caller, or None after answering 403 naming why it was refused."""
        der = self.request.getpeercert(binary_form=True)
        try:
            if not der:
                raise ConfigError("no client certificate")
            return self.server.authenticate(der)
        except DataislandError as exc:
            self.text(HTTPStatus.FORBIDDEN, f"caller not accepted: {exc}")
            return None
