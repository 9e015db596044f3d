"""An enclave's side of attestation: its measurement, its keys, and the evidence provider.

Measurement (hex SHA-256 of the RFC 8785 JSON of this document, ``dataisland-measurement-v1``):

- ``role``: ``department`` or ``aggregator``;
- ``code``: SHA-256 of the RFC 8785 JSON object mapping each installed ``.py`` file of the
  packages ``dataisland/``, ``enclave/`` and ``policies/`` (POSIX path relative to the install
  root, e.g. ``enclave/shard.py``; sorted by RFC 8785) to the hex SHA-256 of its bytes;
- ``versions``: the installed versions of ``duckdb``, ``sqlglot`` and ``pyarrow``;
- ``lockdown``: the DuckDB connect-time settings (`Lockdown.connect_config`: read-only,
  external access off, extension autoload/autoinstall off, Python replacement scans off,
  threads, memory limit) and the statements run right after connecting (`LOCK_STATEMENTS`).

The configuration claim (``dataisland-config-v1``) is separate, so rotating an officer key or
moving the policy file changes it and not the measurement: the federation name, the role, and
for each department this enclave judges for (its own; every department for the aggregator) the
pinned officer keys, the number of signatures required and the policy's file name.

`SimulatedEvidenceProvider` signs claims with a platform key that a simulated vendor root
certified (`create_vendor`, `certify_platform`, run by ``dataisland init``). It is a simulation:
the platform key is a file on the same host, so it protects against nothing a real TEE would
(docs/tee.md). A hardware provider implements `EvidenceProvider` and fills the same claims
from the quote the hardware produces.

This module does not verify evidence (dataisland/attestation.py does, for every verifier) and
does not seal anything (enclave/sealing.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509.oid import NameOID

from dataisland.attestation import (
    EVIDENCE_CONTEXT,
    PRODUCT_IDS,
    Claims,
    Evidence,
    Kem,
    Role,
    report_data,
)
from dataisland.canonical import canonical_json
from dataisland.errors import ConfigError, InvalidInputError
from dataisland.federation import Federation, NodeConfig
from dataisland.identity import IDENTITY_DIR, write_pem, write_private_key
from enclave.engine import LOCK_STATEMENTS, Lockdown

MEASURED_PACKAGES = ("dataisland", "enclave", "policies")
MEASURED_VERSIONS = ("duckdb", "sqlglot", "pyarrow")
MEASUREMENT_FORMAT = "dataisland-measurement-v1"
CONFIG_FORMAT = "dataisland-config-v1"
SIGNER = hashlib.sha256(b"dataisland simulated enclave signer v1").hexdigest()
"""The simulated signer identity (MRSIGNER's analogue): who built and signed the enclave."""
SVN = 1
"""This code's security version; raise it when a fix must lock out older enclaves."""
VENDOR_DIR = "simulated-vendor"
MIN_NONCE = 16
MAX_NONCE = 64


def install_root() -> Path:
    """The directory holding the installed ``dataisland/``, ``enclave/`` and ``policies/``."""
    return Path(__file__).resolve().parent.parent


def code_files(root: Path) -> dict[str, str]:
    """Relative POSIX path of every measured ``.py`` file to the hex SHA-256 of its bytes."""
    files: dict[str, str] = {}
    for package in MEASURED_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            files[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def measurement_document(
    *, role: Role, code: dict[str, str], versions: dict[str, str], lockdown: Lockdown
) -> dict[str, object]:
    """The measured document (pure: everything it covers is passed in)."""
    return {
        "format": MEASUREMENT_FORMAT,
        "role": role,
        "code": hashlib.sha256(canonical_json(code)).hexdigest(),
        "versions": dict(versions),
        "lockdown": {
            "connect": lockdown.connect_config(),
            "after_connect": list(LOCK_STATEMENTS),
        },
    }


def config_document(federation: Federation, *, role: Role, department: str | None) -> object:
    """The configuration claim's document (pure)."""
    judged: Iterable[str] = federation.departments if department is None else (department,)
    return {
        "format": CONFIG_FORMAT,
        "federation": federation.federation,
        "role": role,
        "departments": {
            name: {
                "officers": dict(federation.departments[name].officers),
                "signatures_required": federation.departments[name].signatures_required,
                "policy": federation.departments[name].policy.name,
            }
            for name in judged
        },
    }


@dataclass(frozen=True)
class Measurement:
    """What a node's evidence will claim: its measurement and its configuration claim (hex)."""

    measurement: str
    config: str


def measure(config: NodeConfig, federation: Federation, *, root: Path | None = None) -> Measurement:
    """Measure the enclave a node configuration would run, as installed under `root`.

    Raises:
        ConfigError: the node is not an enclave node.
    """
    if config.role not in ("department", "aggregator"):
        raise ConfigError(f"a {config.role} node is not an enclave and has no measurement")
    role: Role = "department" if config.role == "department" else "aggregator"
    document = measurement_document(
        role=role,
        code=code_files(root or install_root()),
        versions={name: version(name) for name in MEASURED_VERSIONS},
        lockdown=Lockdown(threads=config.threads, memory_limit=config.memory_limit),
    )
    claim = config_document(federation, role=role, department=config.department)
    return Measurement(
        measurement=hashlib.sha256(canonical_json(document)).hexdigest(),
        config=hashlib.sha256(canonical_json(claim)).hexdigest(),
    )


HpkePrivateKey = X25519PrivateKey | hpke.MLKEM768X25519PrivateKey


class EnclaveKeys:
    """The enclave's own keys, generated at start; the private halves never leave the process.

    Attributes:
        signing_public: the Ed25519 public key, raw.
        hpke_public: the HPKE public key as evidence carries it (X25519's 32 bytes, or
            ML-KEM-768's 1,184 then X25519's 32 for the hybrid KEM).
    """

    def __init__(
        self, signing: Ed25519PrivateKey, hpke_key: HpkePrivateKey, hpke_public: bytes
    ) -> None:
        self._signing = signing
        self._hpke = hpke_key
        self.signing_public = signing.public_key().public_bytes_raw()
        self.hpke_public = hpke_public

    @classmethod
    def generate(cls, kem: Kem = "x25519") -> EnclaveKeys:
        """Fresh keys, the HPKE one of the federation's `kem`."""
        exchange = X25519PrivateKey.generate()
        exchange_public = exchange.public_key().public_bytes_raw()
        if kem == "x25519":
            return cls(Ed25519PrivateKey.generate(), exchange, exchange_public)
        lattice = MLKEM768PrivateKey.generate()
        return cls(
            Ed25519PrivateKey.generate(),
            hpke.MLKEM768X25519PrivateKey(lattice, exchange),
            lattice.public_key().public_bytes_raw() + exchange_public,
        )

    def sign(self, statement: bytes) -> bytes:
        """Ed25519 signature over `statement` with the attested signing key."""
        return self._signing.sign(statement)

    @property
    def hpke_private(self) -> HpkePrivateKey:
        """The HPKE private key (for opening partials inside this enclave only)."""
        return self._hpke


class EvidenceProvider(Protocol):
    """Produces evidence binding an enclave's public keys to a verifier's nonce.

    A hardware provider asks the platform for a quote over report_data and wraps it; the
    simulated one signs the claims with its platform key.
    """

    def evidence(self, *, signing_key: bytes, hpke_key: bytes, nonce: bytes) -> bytes:
        """Evidence for these public keys and this nonce (the bytes `verify_evidence` takes)."""
        ...


class SimulatedEvidenceProvider:
    """Simulated evidence, signed with a platform key certified by the simulated vendor root."""

    def __init__(
        self,
        *,
        platform_key: Ed25519PrivateKey,
        platform_certificate: x509.Certificate,
        node: str,
        role: Role,
        measured: Measurement,
        debug: bool,
        clock: Callable[[], dt.datetime],
        svn: int = SVN,
        signer: str = SIGNER,
    ) -> None:
        self._platform_key = platform_key
        self._certificate = platform_certificate.public_bytes(serialization.Encoding.DER)
        self.node = node
        self.role = role
        self.measured = measured
        self.debug = debug
        self.clock = clock
        self.svn = svn
        self.signer = signer

    @classmethod
    def load(
        cls,
        config: NodeConfig,
        *,
        node: str,
        role: Role,
        measured: Measurement,
        clock: Callable[[], dt.datetime],
    ) -> SimulatedEvidenceProvider:
        """The provider a node configuration names.

        Raises:
            ConfigError: no ``platform:`` files, or they cannot be read.
        """
        if config.platform is None:
            raise ConfigError("an enclave node needs 'platform' (its simulated platform key)")
        try:
            key = serialization.load_pem_private_key(config.platform.key.read_bytes(), None)
            certificate = x509.load_pem_x509_certificate(config.platform.certificate.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the platform key or certificate: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError("the platform key is not an Ed25519 key")
        return cls(
            platform_key=key,
            platform_certificate=certificate,
            node=node,
            role=role,
            measured=measured,
            debug=config.debug,
            clock=clock,
        )

    def evidence(self, *, signing_key: bytes, hpke_key: bytes, nonce: bytes) -> bytes:
        """Signed claims for these keys and this nonce.

        Raises:
            InvalidInputError: the nonce is not 16 to 64 bytes.
        """
        if not MIN_NONCE <= len(nonce) <= MAX_NONCE:
            raise InvalidInputError(f"a nonce is {MIN_NONCE} to {MAX_NONCE} bytes")
        claims = Claims(
            simulated=True,
            node=self.node,
            role=self.role,
            measurement=self.measured.measurement,
            config=self.measured.config,
            signer=self.signer,
            product_id=PRODUCT_IDS[self.role],
            svn=self.svn,
            debug=self.debug,
            timestamp=self.clock(),
            signing_key=signing_key,
            hpke_key=hpke_key,
            nonce=nonce,
            report_data=report_data(signing_key, hpke_key, nonce),
        ).to_bytes()
        return Evidence(
            claims=claims,
            signature=self._platform_key.sign(EVIDENCE_CONTEXT + claims),
            platform_certificate=self._certificate,
        ).to_bytes()


class Attester:
    """An enclave's keys and evidence provider: answers `Attest` and signs statements."""

    def __init__(self, *, keys: EnclaveKeys, provider: EvidenceProvider) -> None:
        self.keys = keys
        self.provider = provider

    def evidence(self, nonce: bytes) -> bytes:
        """Evidence binding this enclave's keys to `nonce`.

        Raises:
            InvalidInputError: a nonce of the wrong size.
        """
        return self.provider.evidence(
            signing_key=self.keys.signing_public, hpke_key=self.keys.hpke_public, nonce=nonce
        )


# ------------------------------------------------------------------------------------------
# The simulated vendor (what `dataisland init` creates)
# ------------------------------------------------------------------------------------------


def vendor_paths(directory: Path) -> tuple[Path, Path]:
    """The simulated vendor root's certificate and key in a federation directory."""
    base = directory / IDENTITY_DIR / VENDOR_DIR
    return base / "root.crt", base / "root.key"


def platform_paths(directory: Path, node: str) -> tuple[Path, Path]:
    """A node host's simulated platform certificate and key in a federation directory."""
    base = directory / IDENTITY_DIR / node
    return base / "platform.crt", base / "platform.key"


def _pem_key(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create_vendor(directory: Path, *, now: dt.datetime, days: int = 3650) -> Path:
    """Create the simulated vendor root (Ed25519, self-signed); return its certificate path."""
    key = Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dataisland SIMULATED TEE vendor")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, None)
    )
    crt, key_path = vendor_paths(directory)
    write_private_key(key_path, _pem_key(key))
    write_pem(crt, certificate.public_bytes(serialization.Encoding.PEM))
    return crt


def certify_platform(
    directory: Path, node: str, *, now: dt.datetime, days: int = 3650
) -> tuple[Path, Path]:
    """Create node `node`'s simulated platform key, certified by the vendor root.

    Raises:
        ConfigError: the vendor root does not exist or is unreadable.
    """
    root_crt, root_key_path = vendor_paths(directory)
    try:
        root_key = serialization.load_pem_private_key(root_key_path.read_bytes(), None)
        root = x509.load_pem_x509_certificate(root_crt.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the simulated vendor root: {exc}") from None
    if not isinstance(root_key, Ed25519PrivateKey):
        raise ConfigError("the simulated vendor root key is not Ed25519")
    key = Ed25519PrivateKey.generate()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"simulated platform {node}")])
        )
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(root_key, None)
    )
    crt, key_path = platform_paths(directory, node)
    write_private_key(key_path, _pem_key(key))
    write_pem(crt, certificate.public_bytes(serialization.Encoding.PEM))
    return crt, key_path
