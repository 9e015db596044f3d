"""The federation file and node configuration files: strict models, loading, and the catalog.

A federation file lists the departments, the executive committee's node, and the logical tables
(schema, privacy unit column, which departments hold shards). A node configuration file says
which role one process plays and where its own resources are. Both are YAML that people edit;
unknown fields are errors so a typo never silently becomes a default.

This module reads files; it does not open shards, bind ports or check certificates.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
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
    """A department's node as the federation knows it."""

    enclave: str = Field(description="HOST:PORT of the department's enclave node")

    _address = field_validator("enclave")(_check_address)


class CommitteeEntry(_Strict):
    """The executive committee's node: coordinator and aggregator."""

    name: Name = "committee"
    coordinator: str
    aggregator: str

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


class Federation(_Strict):
    """The whole federation file."""

    federation: Name
    development: bool = Field(
        default=False, description="development conveniences allowed (plaintext loopback)"
    )
    departments: dict[Name, DepartmentEntry] = Field(min_length=1)
    committee: CommitteeEntry
    tables: dict[Name, TableEntry] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _holders_exist(self) -> Federation:
        for name, table in self.tables.items():
            unknown = sorted(set(table.holders) - set(self.departments))
            if unknown:
                raise ValueError(f"table {name!r} lists unknown holders {unknown}")
        if self.committee.name in self.departments:
            raise ValueError(f"committee name {self.committee.name!r} is also a department")
        return self

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


class NodeConfig(_Strict):
    """One process's configuration: its role and its own resources.

    Relative paths are resolved against the directory of the configuration file.
    """

    federation: Path
    role: Literal["department", "aggregator", "coordinator"]
    listen: str
    department: Name | None = None
    shard: Path | None = None
    threads: int = Field(default=1, ge=1, le=64)
    memory_limit: str = Field(default="1GB", pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB)$")
    query_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    max_result_rows: int = Field(default=1_000_000, ge=1)
    retention_seconds: float = Field(default=3600.0, gt=0)
    retention_max_queries: int = Field(default=10_000, ge=1)

    _address = field_validator("listen")(_check_address)

    @model_validator(mode="after")
    def _role_fields(self) -> NodeConfig:
        if self.role == "department" and (self.department is None or self.shard is None):
            raise ValueError("a department node needs 'department' and 'shard'")
        if self.role != "department" and (self.department is not None or self.shard is not None):
            raise ValueError(f"a {self.role} node takes neither 'department' nor 'shard'")
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
    """Read and validate a federation file.

    Raises:
        ConfigError: the file is missing, not YAML, or fails validation (every problem named).
    """
    data = _read_yaml(path, "federation file")
    try:
        return Federation.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"federation file {path}: {_describe(exc)}") from None


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
    return config.model_copy(
        update={
            "federation": base / config.federation,
            "shard": None if config.shard is None else base / config.shard,
        }
    )
