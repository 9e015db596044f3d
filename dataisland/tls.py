"""Mutual TLS for every connection, and who is calling: the I/O shell around dataisland.identity.

Servers require a client certificate from one of the CAs they trust and then, after the
handshake, verify the peer certificate themselves (`Authenticator.caller`): the claimed
department's own CA must have issued it and its revocation list, re-read when the file changes,
must not list it (Python gRPC has no CRL hook). Clients pin the CA of the node they dial and check
its DNS SAN through a target-name override, since Python gRPC cannot check a server's URI SAN.

This module decides nothing about roles beyond `require_role`; servicers say which roles may call.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509

from dataisland.errors import ConfigError, PermissionDeniedError
from dataisland.federation import Federation, NodeConfig
from dataisland.https import tls_server_context
from dataisland.identity import Principal, TrustStore, UnauthenticatedError, load_certificate
from dataisland.metrics import MetricsServer, operator_of
from dataisland.rpc import CHANNEL_OPTIONS


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None


@dataclass(frozen=True)
class KeyPair:
    """A node's or a client's own certificate and key, as PEM."""

    certificate_pem: bytes
    key_pem: bytes

    @classmethod
    def load(cls, certificate: Path, key: Path) -> KeyPair:
        """Read a certificate and key from PEM files.

        Raises:
            ConfigError: a file cannot be read.
        """
        return cls(_read(certificate, "certificate"), _read(key, "private key"))

    @classmethod
    def of_node(cls, config: NodeConfig) -> KeyPair:
        """The TLS files a node configuration names."""
        return cls.load(config.tls.certificate, config.tls.key)


class Authenticator:
    """The federation's pinned CAs and revocation lists, and the caller of an RPC.

    Revocation lists are re-read when their file's modification time changes, so revoking a
    certificate takes effect on running nodes without a restart.
    """

    def __init__(self, federation: Federation, *, clock: Callable[[], dt.datetime]) -> None:
        self.federation = federation
        self.clock = clock
        self._authorities: dict[str, x509.Certificate] = {}
        self._pem: dict[str, bytes] = {}
        for name, (ca_path, _) in federation.authorities().items():
            pem = _read(ca_path, f"CA certificate of {name}")
            try:
                self._authorities[name] = load_certificate(pem)
            except UnauthenticatedError:
                raise ConfigError(f"{ca_path} is not a certificate") from None
            self._pem[name] = pem
        self._crl_lock = threading.Lock()
        self._crls: dict[str, tuple[float, x509.CertificateRevocationList]] = {}

    def roots_pem(self, departments: Collection[str] | None = None) -> bytes:
        """The PEM of the CAs of `departments` (all of them when None)."""
        names = sorted(self._pem) if departments is None else sorted(departments)
        return b"".join(self._pem[name] for name in names)

    def _revocations(self) -> Mapping[str, x509.CertificateRevocationList]:
        out: dict[str, x509.CertificateRevocationList] = {}
        with self._crl_lock:
            for name, (_, crl_path) in self.federation.authorities().items():
                if crl_path is None:
                    continue
                try:
                    mtime = crl_path.stat().st_mtime
                except OSError:
                    # A revocation list the federation names but that is gone fails closed.
                    raise UnauthenticatedError(f"revocation list of {name} is unreadable") from None
                cached = self._crls.get(name)
                if cached is None or cached[0] != mtime:
                    try:
                        crl = x509.load_pem_x509_crl(_read(crl_path, "revocation list"))
                    except ValueError:
                        raise UnauthenticatedError(
                            f"revocation list of {name} is not a CRL"
                        ) from None
                    cached = (mtime, crl)
                    self._crls[name] = cached
                out[name] = cached[1]
        return out

    def store(self) -> TrustStore:
        """A trust store with the current revocation lists."""
        return TrustStore(
            federation=self.federation.federation,
            authorities=self._authorities,
            revocations=self._revocations(),
        )

    def verify(self, certificate: x509.Certificate) -> Principal:
        """Verify any certificate (a peer's or a requester's) now.

        Raises:
            UnauthenticatedError: naming the failed check.
        """
        return self.store().verify(certificate, now=self.clock())

    def caller(self, context: grpc.ServicerContext) -> tuple[Principal, x509.Certificate]:
        """The verified principal and certificate of the peer of an RPC.

        Raises:
            UnauthenticatedError: no client certificate, or it fails verification.
        """
        auth = context.auth_context()
        pems: object = auth.get("x509_pem_cert") or []
        if not isinstance(pems, list) or not pems:
            raise UnauthenticatedError("no client certificate: every call needs mutual TLS")
        certificate = load_certificate(pems[0])
        return self.verify(certificate), certificate


def require_role(principal: Principal, roles: Collection[str], *, rpc: str) -> None:
    """Refuse a caller whose role may not call `rpc`.

    Raises:
        PermissionDeniedError: naming the role and the RPC.
    """
    if principal.role not in roles:
        raise PermissionDeniedError(
            f"{principal} (role {principal.role}) may not call {rpc}; "
            f"allowed roles: {sorted(roles)}"
        )


def server_credentials(own: KeyPair, *, client_roots_pem: bytes) -> grpc.ServerCredentials:
    """Server credentials requiring a client certificate chained to `client_roots_pem`."""
    return grpc.ssl_server_credentials(
        [(own.key_pem, own.certificate_pem)],
        root_certificates=client_roots_pem,
        require_client_auth=True,
    )


def secure_channel(
    address: str, *, own: KeyPair, server_ca_pem: bytes, server_name: str
) -> grpc.Channel:
    """A mutual-TLS channel to `address` whose server must present `server_name` from that CA."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=server_ca_pem,
        private_key=own.key_pem,
        certificate_chain=own.certificate_pem,
    )
    options = [*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", server_name)]
    return grpc.secure_channel(address, credentials, options=options)


def metrics_server(
    config: NodeConfig, authenticator: Authenticator, *, department: str
) -> MetricsServer | None:
    """The node's metrics endpoint when its configuration names `metrics_listen`, else None.

    It presents the node's own TLS certificate and answers only operators of `department`
    (dataisland/metrics.py), each verified in full like any other caller.

    Raises:
        ConfigError: the TLS files cannot be loaded or the address cannot be bound.
    """
    if config.metrics_listen is None:
        return None

    def authenticate(der: bytes) -> Principal:
        return authenticator.verify(load_certificate(der))

    context = tls_server_context(
        certificate=str(config.tls.certificate),
        key=str(config.tls.key),
        client_roots_pem=authenticator.roots_pem(),
    )
    return MetricsServer(
        config.metrics_listen,
        context=context,
        authenticate=authenticate,
        may_read=operator_of(department),
    )
