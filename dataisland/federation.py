"""The federation file and node configuration files: strict models, loading, and the catalog.

A federation file lists the departments, the executive committee's node, and the logical tables
(schema, privacy unit column, which departments hold shards). A node configuration file says
which role one process plays and where its own resources are. Both are YAML that people edit;
unknown fields are errors so a typo never silently becomes a default.

This module reads files; it does not open shards, bind ports or check certificates.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dataisland.catalog import Catalog, TableInfo
from dataisland.errors import ConfigError

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
_ADDRESS = re.compile(r"^[A-Za-z0-9.\-]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$")

Name = Annotated[str, Field(pattern=NAME_PATTERN)]

SUPPORTED_COLUMN_TYPES = re.compile(
    r"^(BOOLEAN|TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER|UBIGINT|"
    r"FLOAT|DOUBLE|DECIMAL\(\d{1,2},\d{1,2}\)|VARCHAR|DATE|TIMESTAMP|"
    r"TIMESTAMP WITH TIME ZONE|INTERVAL)$"
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_address(value: str) -> str:
    if not _ADDRESS.match(value):
        raise ValueError(f"address {value!r} is not HOST:PORT")
    return value


class DepartmentEntry(_Strict):
    """A department's node and identity authority as the federation knows them."""

    enclave: str = Field(description="HOST:PORT of the department's enclave node")
    ca: Path = Field(description="the department's CA certificate (PEM), relative to this file")
    revocations: Path | None = Field(
        default=None, description="the department CA's revocation list (PEM), if it has one"
    )
    policy: Path = Field(
        description="the department's signed policy (YAML; signatures in POLICY.sig.json)"
    )
    officers: dict[Name, str] = Field(
        min_length=1,
        description="officer name to base64 Ed25519 public key: the only keys whose signatures "
        "make a policy or approval of this department valid",
    )
    signatures_required: int = Field(default=1, ge=1, description="officers needed per policy")

    _address = field_validator("enclave")(_check_address)


class CommitteeEntry(_Strict):
    """The executive committee's node: coordinator and aggregator."""

    name: Name = "committee"
    coordinator: str
    aggregator: str
    ca: Path
    revocations: Path | None = None

    _address = field_validator("coordinator", "aggregator")(_check_address)


class TableEntry(_Strict):
    """One logical table of the federation."""

    privacy_unit: Name
    holders: tuple[Name, ...] = Field(min_length=1)
    columns: dict[Name, str] = Field(min_length=1)

    @field_validator("columns")
    @classmethod
    def _types(cls, columns: dict[str, str]) -> dict[str, str]:
        for column, type_name in columns.items():
            if not SUPPORTED_COLUMN_TYPES.match(type_name):
                raise ValueError(f"column {column!r} has unsupported type {type_name!r}")
        return columns

    @model_validator(mode="after")
    def _unit_is_a_column(self) -> TableEntry:
        if self.privacy_unit not in self.columns:
            raise ValueError(f"privacy_unit {self.privacy_unit!r} is not one of the columns")
        if len(set(self.holders)) != len(self.holders):
            raise ValueError("holders lists a department twice")
        return self


_VKEY = re.compile(r"^[^+\s]+\+[0-9a-f]{8}\+[A-Za-z0-9+/]+={0,2}$")


def _check_vkey(value: str) -> str:
    # The form only; ledger.note parses the key itself (the kernel does not import the ledger).
    if not _VKEY.match(value):
        raise ValueError("not a verifier key <name>+<8 hex digits>+<base64>")
    return value


class LogWitnessEntry(_Strict):
    """One witness of the audit log: where it listens, its cosigning key, its CA."""

    address: str = Field(description="HOST:PORT of the witness's HTTPS (tlog-witness) endpoint")
    verifier_key: str = Field(description="the witness's cosignature (type 0x04) verifier key")
    ca: Path = Field(description="CA certificate (PEM) that issued the witness's TLS certificate")

    _address = field_validator("address")(_check_address)
    _vkey = field_validator("verifier_key")(_check_vkey)


class LogSection(_Strict):
    """The audit log: its origin line, the log's verifier key, the witnesses and the quorum."""

    origin: str = Field(pattern=r"^[^+\s]{1,200}$", description="the checkpoints' origin line")
    verifier_key: str = Field(description="the log's Ed25519 (type 0x01) verifier key")
    quorum: int = Field(ge=1, description="distinct witnesses that must cosign a checkpoint")
    witnesses: dict[Name, LogWitnessEntry] = Field(min_length=1)
    report_bound_seconds: int = Field(
        default=30,
        ge=1,
        le=86_400,
        description="how long an enclave's execution may stay out of the log before its witness "
        "refuses to cosign and the enclave stops serving",
    )

    _vkey = field_validator("verifier_key")(_check_vkey)

    @model_validator(mode="after")
    def _quorum_fits(self) -> LogSection:
        if self.quorum > len(self.witnesses):
            raise ValueError(
                f"quorum {self.quorum} is more than the {len(self.witnesses)} witnesses"
            )
        keys = [w.verifier_key for w in self.witnesses.values()]
        if len(set(keys)) != len(keys):
            raise ValueError("two witnesses share a verifier key")
        return self


_HEX32 = r"^[0-9a-f]{64}$"


class ReferenceEntry(_Strict):
    """What one enclave role's evidence must show."""

    measurement: str = Field(pattern=_HEX32, description="`dataisland enclave measure` prints it")
    signer: str = Field(pattern=_HEX32, description="hash of the enclave signer's identity")


class AttestationSection(_Strict):
    """The simulated vendor root every verifier pins, and the reference values per role.

    A debug enclave is accepted only when the federation is for development.
    """

    vendor_root: Path = Field(description="the (simulated) vendor root certificate (PEM)")
    minimum_svn: int = Field(default=1, ge=0, description="lowest acceptable security version")
    hpke_kem: Literal["x25519", "mlkem768-x25519"] = Field(
        default="x25519",
        description="the KEM partials are sealed with (RFC 9180 DHKEM(X25519), or the hybrid "
        "post-quantum ML-KEM-768 + X25519); every enclave's evidence must carry a key of it",
    )
    reference: dict[Literal["department", "aggregator"], ReferenceEntry]

    @model_validator(mode="after")
    def _both_roles(self) -> AttestationSection:
        missing = {"department", "aggregator"} - set(self.reference)
        if missing:
            raise ValueError(f"reference values missing for {sorted(missing)}")
        return self


class Federation(_Strict):
    """The whole federation file."""

    federation: Name
    development: bool = Field(
        default=False, description="development conveniences allowed (plaintext loopback)"
    )
    departments: dict[Name, DepartmentEntry] = Field(min_length=1)
    committee: CommitteeEntry
    tables: dict[Name, TableEntry] = Field(default_factory=dict)
    log: LogSection | None = Field(default=None, description="the audit log and its witnesses")
    attestation: AttestationSection | None = Field(
        default=None, description="the vendor root and reference values enclaves are held to"
    )

    @model_validator(mode="after")
    def _holders_exist(self) -> Federation:
        for name, table in self.tables.items():
            unknown = sorted(set(table.holders) - set(self.departments))
            if unknown:
                raise ValueError(f"table {name!r} lists unknown holders {unknown}")
        if self.committee.name in self.departments:
            raise ValueError(f"committee name {self.committee.name!r} is also a department")
        return self

    def authorities(self) -> dict[str, tuple[Path, Path | None]]:
        """Department (and committee) name to its CA certificate and revocation list paths."""
        out = {name: (entry.ca, entry.revocations) for name, entry in self.departments.items()}
        out[self.committee.name] = (self.committee.ca, self.committee.revocations)
        return out

    def officer_keys(self, department: str) -> dict[str, Ed25519PublicKey]:
        """The officer signing keys pinned for `department`.

        Raises:
            ConfigError: unknown department or a key that is not base64 Ed25519.
        """
        entry = self.departments.get(department)
        if entry is None:
            raise ConfigError(f"department {department!r} is not in the federation file")
        keys = {}
        for officer, text in entry.officers.items():
            try:
                keys[officer] = Ed25519PublicKey.from_public_bytes(
                    base64.b64decode(text, validate=True)
                )
            except (ValueError, binascii.Error):
                raise ConfigError(
                    f"officer {officer!r} of {department}: not a base64 Ed25519 public key"
                ) from None
        return keys

    def read_policy(self, department: str) -> tuple[bytes, bytes]:
        """The department's policy document and detached signatures, as bytes.

        Raises:
            ConfigError: either file cannot be read.
        """
        path = self.departments[department].policy
        signatures = path.with_name(path.name + ".sig.json")
        try:
            return path.read_bytes(), signatures.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {department}'s policy: {exc.strerror}") from None

    def dns_name(self, role: str, department: str) -> str:
        """The DNS SAN a node's certificate carries and its clients check, e.g.
        ``enclave.qingpu.demo.dataisland`` (underscores become hyphens)."""
        return f"{role}.{department}.{self.federation}.dataisland".replace("_", "-")

    def catalog(self) -> Catalog:
        """The logical tables as the SQL front and the planner see them."""
        return {
            name: TableInfo(
                name=name,
                columns=dict(table.columns),
                privacy_unit=table.privacy_unit,
                holders=frozenset(table.holders),
            )
            for name, table in self.tables.items()
        }


class TLSFiles(_Strict):
    """A node's own certificate and private key (PEM files)."""

    certificate: Path
    key: Path


class PlatformFiles(_Strict):
    """An enclave host's (simulated) platform key and its certificate from the vendor root."""

    certificate: Path
    key: Path


class NodeConfig(_Strict):
    """One process's configuration: its role and its own resources.

    Relative paths are resolved against the directory of the configuration file.
    """

    federation: Path
    role: Literal["department", "aggregator", "coordinator", "witness"]
    listen: str
    tls: TLSFiles
    department: Name | None = None
    shard: Path | None = None
    threads: int = Field(default=1, ge=1, le=64)
    memory_limit: str = Field(default="1GB", pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB)$")
    query_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    max_result_rows: int = Field(default=1_000_000, ge=1)
    retention_seconds: float = Field(default=3600.0, gt=0)
    retention_max_queries: int = Field(default=10_000, ge=1)
    max_unfinished_per_requester: int = Field(
        default=16, ge=1, description="queries one requester may have pending or running"
    )
    max_running_per_requester: int = Field(
        default=4,
        ge=1,
        description="coordinator: fan-outs of one requester run at once; the rest queue, so "
        "one requester's expensive queries cannot take every worker",
    )
    query_workers: int = Field(
        default=8, ge=1, le=256, description="coordinator: fan-outs running at once in total"
    )
    rate_per_caller: float = Field(
        default=50.0,
        gt=0,
        description="coordinator: RPCs per second one caller may make, sustained (token bucket)",
    )
    rate_burst: int = Field(
        default=100, ge=1, description="coordinator: RPCs one caller may make at once"
    )
    max_sql_bytes: int = Field(
        default=16_384,
        ge=64,
        le=16_384,
        description="the longest SQL text accepted (UTF-8 bytes); at most the envelope "
        "format's own 16 KiB",
    )
    max_request_bytes: int | None = Field(
        default=None,
        ge=1024,
        le=1 << 30,
        description="largest gRPC message this node receives; default 4 MiB, the aggregator "
        "256 MiB (it receives every partial of a query in one message)",
    )
    max_result_bytes: int = Field(
        default=64 << 20,
        ge=1024,
        description="aggregator: the largest released result (canonical cells), in bytes",
    )
    metrics_listen: str | None = Field(
        default=None, description="HOST:PORT of this node's Prometheus endpoint (mutual TLS)"
    )
    state_dir: Path | None = Field(
        default=None,
        description="coordinator: where queries waiting for approval are kept across restarts",
    )
    log_dir: Path | None = Field(default=None, description="coordinator: the audit log directory")
    log_key: Path | None = Field(default=None, description="coordinator: the log's Ed25519 key")
    witness_key: Path | None = Field(default=None, description="witness: its cosigning key")
    witness_state: Path | None = Field(default=None, description="witness: its state file")
    platform: PlatformFiles | None = Field(
        default=None, description="enclaves: the simulated platform key that signs evidence"
    )
    debug: bool = Field(
        default=False, description="enclaves: launched in debug mode (evidence says so)"
    )

    _address = field_validator("listen")(_check_address)

    @field_validator("metrics_listen")
    @classmethod
    def _metrics_address(cls, value: str | None) -> str | None:
        return None if value is None else _check_address(value)

    @property
    def request_limit(self) -> int:
        """The largest gRPC message this node accepts (`max_request_bytes` or its role's)."""
        if self.max_request_bytes is not None:
            return self.max_request_bytes
        return 256 << 20 if self.role == "aggregator" else 4 << 20

    @model_validator(mode="after")
    def _role_fields(self) -> NodeConfig:
        if self.role == "department" and (self.department is None or self.shard is None):
            raise ValueError("a department node needs 'department' and 'shard'")
        if self.role == "witness":
            if self.department is None or self.witness_key is None or self.witness_state is None:
                raise ValueError(
                    "a witness node needs 'department', 'witness_key', 'witness_state'"
                )
            if self.shard is not None:
                raise ValueError("a witness node takes no 'shard'")
        elif self.role != "department" and (self.department is not None or self.shard is not None):
            raise ValueError(f"a {self.role} node takes neither 'department' nor 'shard'")
        if self.role != "coordinator" and (self.log_dir is not None or self.log_key is not None):
            raise ValueError("only the coordinator takes 'log_dir' and 'log_key'")
        if (self.log_dir is None) != (self.log_key is None):
            raise ValueError("'log_dir' and 'log_key' go together")
        if self.role != "witness" and (
            self.witness_key is not None or self.witness_state is not None
        ):
            raise ValueError("only a witness takes 'witness_key' and 'witness_state'")
        if self.role != "coordinator" and self.state_dir is not None:
            raise ValueError("only the coordinator takes 'state_dir'")
        if self.role not in ("department", "aggregator") and (self.platform or self.debug):
            raise ValueError("only an enclave node takes 'platform' and 'debug'")
        return self


def _read_yaml(path: Path, what: str) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None


def _describe(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()
    )


def load_federation(path: Path) -> Federation:
    """Read and validate a federation file, resolving its relative paths against its directory.

    Raises:
        ConfigError: the file is missing, not YAML, or fails validation (every problem named).
    """
    data = _read_yaml(path, "federation file")
    try:
        federation = Federation.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"federation file {path}: {_describe(exc)}") from None
    base = path.resolve().parent

    def resolve(p: Path | None) -> Path | None:
        return None if p is None else base / p

    departments = {
        name: entry.model_copy(
            update={
                "ca": base / entry.ca,
                "revocations": resolve(entry.revocations),
                "policy": base / entry.policy,
            }
        )
        for name, entry in federation.departments.items()
    }
    committee = federation.committee.model_copy(
        update={
            "ca": base / federation.committee.ca,
            "revocations": resolve(federation.committee.revocations),
        }
    )
    log = federation.log
    if log is not None:
        witnesses = {
            name: entry.model_copy(update={"ca": base / entry.ca})
            for name, entry in log.witnesses.items()
        }
        log = log.model_copy(update={"witnesses": witnesses})
    attestation = federation.attestation
    if attestation is not None:
        attestation = attestation.model_copy(update={"vendor_root": base / attestation.vendor_root})
    return federation.model_copy(
        update={
            "departments": departments,
            "committee": committee,
            "log": log,
            "attestation": attestation,
        }
    )


def load_node_config(path: Path) -> NodeConfig:
    """Read and validate a node configuration file, resolving its relative paths.

    Raises:
        ConfigError: the file is missing, not YAML, or fails validation.
    """
    data = _read_yaml(path, "node configuration")
    try:
        config = NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"node configuration {path}: {_describe(exc)}") from None
    base = path.resolve().parent
    tls = TLSFiles(certificate=base / config.tls.certificate, key=base / config.tls.key)
    platform = config.platform
    if platform is not None:
        platform = PlatformFiles(certificate=base / platform.certificate, key=base / platform.key)
    return config.model_copy(
        update={
            "tls": tls,
            "platform": platform,
            "federation": base / config.federation,
            "shard": None if config.shard is None else base / config.shard,
            **{
                name: base / value
                for name in ("log_dir", "log_key", "witness_key", "witness_state", "state_dir")
                if (value := getattr(config, name)) is not None
            },
        }
    )
