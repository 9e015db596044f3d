"""The policy document: what a department's officers write and sign for the tables it owns.

A policy is YAML (JSON is YAML too) validated by strict pydantic models: unknown fields are
errors, nothing is coerced ("5" is not 5), and every security-relevant choice (k, who may ask,
approval mode, a measure's aggregates) must be written out; only `required_signatures` (1) and a
table's `templates` (none) and `group_by_privacy_unit` (false) have defaults.

The canonical policy is the RFC 8785 JSON of the mapping exactly as the officers wrote it
(defaults are never filled in), so adding an optional field to these models never changes an
existing policy's bytes or hash. `schema_version` is required in the document, so the canonical
bytes always name it.

This module parses and validates; it does not check signatures (`policies.signing`), judge
queries (`policies.checker`), read files, or read a clock (callers pass `now`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dataisland.canonical import canonical_json
from dataisland.errors import CanonicalEncodingError, ConfigError, InvalidInputError

SCHEMA_VERSION = 1
"""The policy language version this code reads."""

MAX_POLICY_BYTES = 1_000_000
"""Larger policy texts are refused before parsing (a bound on parser work)."""

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
_RFC3339 = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$"
)
_DECIMAL = re.compile(r"^-?[0-9]{1,30}(\.[0-9]{1,30})?$")

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
"""Departments, roles, tables, columns, templates and parameters: lower-case identifiers."""

Purpose = Annotated[str, Field(pattern=r"^[a-z][a-z0-9 _.\-]{0,127}$")]
"""A purpose a requester declares, matched exactly (lower case, letters, digits, space, _.-)."""

AggregateName = Literal["sum", "avg", "count", "min", "max", "var", "stddev"]
"""The aggregates a measure may allow: `var` covers VAR_SAMP and VAR_POP, `stddev` both
STDDEV_SAMP and STDDEV_POP."""

ParameterType = Literal["varchar", "bigint", "date", "boolean"]
"""The types a template parameter may have (see `policies.templates`)."""


class PolicyDocumentError(InvalidInputError):
    """A policy document does not parse or does not validate (every problem named)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _unique(values: tuple[str, ...], what: str) -> tuple[str, ...]:
    if len(set(values)) != len(values):
        raise ValueError(f"{what} lists a value twice")
    return values


class MeasureSpec(_Strict):
    """A measure column: aggregated only with the listed functions."""

    aggregates: tuple[AggregateName, ...] = Field(
        min_length=1, strict=False, description="the aggregates this measure may appear in"
    )
    bounds: tuple[int | str, int | str] | None = Field(
        default=None,
        strict=False,
        description="[lo, hi]: the values the officers expect; integers or decimal strings",
    )

    @field_validator("aggregates")
    @classmethod
    def _aggregates_unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _unique(value, "aggregates")

    @field_validator("bounds")
    @classmethod
    def _bounds(
        cls, value: tuple[int | str, int | str] | None
    ) -> tuple[int | str, int | str] | None:
        if value is None:
            return None
        lo, hi = (_as_decimal(v) for v in value)
        if lo > hi:
            raise ValueError("bounds must be [lo, hi] with lo <= hi")
        return value

    def bound_values(self) -> tuple[Decimal, Decimal] | None:
        """The bounds as exact decimals, or None."""
        if self.bounds is None:
            return None
        return (_as_decimal(self.bounds[0]), _as_decimal(self.bounds[1]))


def _as_decimal(value: int | str) -> Decimal:
    if isinstance(value, bool):
        raise ValueError("a bound must be a number")  # noqa: TRY004 (pydantic reports ValueError)
    if isinstance(value, int):
        return Decimal(value)
    if not _DECIMAL.match(value):
        raise ValueError(f"bound {value!r} is not a decimal number string like '12.50'")
    try:
        return Decimal(value)
    except InvalidOperation:
        raise ValueError(f"bound {value!r} is not a decimal number") from None


class MeasureColumn(_Strict):
    """The `{measure: {...}}` form of a column class."""

    measure: MeasureSpec


SimpleClass = Literal["identity", "dimension", "filter", "hidden"]
ColumnClass = SimpleClass | MeasureColumn
_SIMPLE_CLASSES = frozenset({"identity", "dimension", "filter", "hidden"})
"""A column's class: one of the four words, or a measure with its aggregates."""


class AccessRule(_Strict):
    """Who may ask, and why: a requester matches when its department, role and purpose are all
    listed."""

    departments: tuple[Name, ...] = Field(min_length=1, strict=False)
    roles: tuple[Name, ...] = Field(min_length=1, strict=False)
    purposes: tuple[Purpose, ...] = Field(min_length=1, strict=False)

    @field_validator("departments", "roles", "purposes")
    @classmethod
    def _no_repeats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _unique(value, "an access rule")


class Exemptions(_Strict):
    """Exemptions a template grants from the ordinary rules; each must be written as `allow`."""

    identity_literal_comparison: Literal["allow"] | None = Field(
        default=None,
        description="allow `identity_column = literal` in WHERE (a yes/no check about one subject)",
    )


class TemplateRelease(_Strict):
    """A template's own release rules."""

    k: int | None = Field(default=None, ge=1, description="overrides the table's k for this query")
    exemptions: Exemptions | None = None


class Template(_Strict):
    """A named, parameterised query the officers approved, judged by its own rules."""

    description: str | None = Field(default=None, max_length=2000)
    sql: str = Field(min_length=1, max_length=16_384, description="SQL with $name parameters")
    parameters: dict[Name, ParameterType] = Field(default_factory=dict)
    access: tuple[AccessRule, ...] = Field(min_length=1, strict=False)
    approval: Literal["auto", "manual"]
    release: TemplateRelease | None = None


class TablePolicy(_Strict):
    """One table's rules in one department's policy."""

    description: str | None = Field(default=None, max_length=2000)
    k: int = Field(ge=1, description="least distinct privacy units behind a released cell")
    columns: dict[Name, ColumnClass] = Field(
        description="column to class; columns not listed are hidden"
    )
    access: tuple[AccessRule, ...] = Field(
        strict=False, description="who may ask; an empty list allows no one"
    )
    approval: Literal["auto", "manual"]
    group_by_privacy_unit: bool = Field(
        default=False,
        description="allow grouping by (and outputting) the privacy unit column when it is "
        "classed `dimension`: for tables whose units are not people (k = 1 readings)",
    )
    templates: dict[Name, Template] = Field(default_factory=dict)

    @field_validator("columns", mode="before")
    @classmethod
    def _column_words(cls, value: object) -> object:
        if isinstance(value, Mapping):
            for column, klass in value.items():
                if isinstance(klass, str) and klass not in _SIMPLE_CLASSES:
                    hint = " (a measure is written {measure: {aggregates: [...]}})"
                    hint = hint if klass == "measure" else ""
                    raise ValueError(
                        f"column {column!r}: unknown class {klass!r}; one of identity, "
                        f"dimension, filter, hidden or a measure{hint}"
                    )
        return value

    def column_class(self, column: str) -> ColumnClass:
        """The class of `column` (`hidden` when not listed)."""
        return self.columns.get(column, "hidden")


class PolicyDocument(_Strict):
    """A department's whole policy document."""

    schema_version: Literal[1]
    department: Name
    version: int = Field(ge=1, le=2**53 - 1, description="only goes up")
    valid_from: str = Field(description="RFC 3339, with an offset or Z")
    valid_until: str = Field(description="RFC 3339, with an offset or Z")
    required_signatures: int = Field(default=1, ge=1, le=64)
    description: str | None = Field(default=None, max_length=4000)
    tables: dict[Name, TablePolicy] = Field(min_length=1)

    @field_validator("valid_from", "valid_until")
    @classmethod
    def _rfc3339(cls, value: str) -> str:
        parse_timestamp(value)
        return value

    @model_validator(mode="after")
    def _window(self) -> PolicyDocument:
        if parse_timestamp(self.valid_from) >= parse_timestamp(self.valid_until):
            raise ValueError("valid_from must be before valid_until")
        return self


def parse_timestamp(text: str) -> dt.datetime:
    """Parse an RFC 3339 timestamp with an explicit offset (or Z) to an aware datetime.

    Raises:
        ValueError: not RFC 3339 with an offset, or not a real date and time.
    """
    if not _RFC3339.match(text):
        raise ValueError(f"{text!r} is not RFC 3339 like 2025-01-01T00:00:00Z")
    head, _, rest = text.partition(".")
    if rest:
        # Python keeps microseconds: nanosecond digits are cut, never rounded up past a second.
        digits = re.match(r"[0-9]+", rest)
        assert digits is not None
        text = f"{head}.{digits.group()[:6].ljust(6, '0')}{rest[digits.end() :]}"
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- YAML: strict loading ------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader without implicit timestamps and with duplicate keys refused.

    Timestamps stay strings so the canonical form holds exactly what the officers wrote;
    duplicate keys would let two readers of one file disagree about what was signed.
    """


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    if any(key.tag == "tag:yaml.org,2002:merge" for key, _ in node.value):
        raise yaml.constructor.ConstructorError(
            None, None, "merge keys (<<) are not allowed", node.start_mark
        )
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None, None, f"mapping keys must be text, not {key!r}", key_node.start_mark
            )
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_policy_mapping(text: bytes | str) -> dict[str, Any]:
    """Parse policy YAML to the raw mapping the officers wrote (nothing filled in).

    Anchors and aliases, merge keys, duplicate keys, non-text keys, floats and tags other than
    YAML's plain ones are refused: each could make what officers read differ from what they sign.

    Raises:
        PolicyDocumentError: the text is too long, not UTF-8, not YAML or not a mapping.
    """
    if isinstance(text, (bytes, bytearray)):
        if len(text) > MAX_POLICY_BYTES:
            raise PolicyDocumentError(f"the policy is larger than {MAX_POLICY_BYTES} bytes")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyDocumentError("the policy is not UTF-8 text") from None
    if not isinstance(text, str):
        raise PolicyDocumentError("the policy must be text")
    if len(text) > MAX_POLICY_BYTES:
        raise PolicyDocumentError(f"the policy is larger than {MAX_POLICY_BYTES} characters")
    try:
        _check_events(yaml.parse(text, Loader=_Loader))
        documents = list(yaml.load_all(text, Loader=_Loader))
    except PolicyDocumentError:
        raise
    except (yaml.YAMLError, RecursionError, ValueError) as exc:
        raise PolicyDocumentError(f"the policy is not valid YAML: {_yaml_message(exc)}") from None
    if len(documents) != 1:
        raise PolicyDocumentError("a policy file holds exactly one YAML document")
    raw = documents[0]
    if not isinstance(raw, dict):
        raise PolicyDocumentError("a policy document is a mapping at the top level")
    return raw


def _check_events(events: Iterator[yaml.Event]) -> None:
    for event in events:
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise PolicyDocumentError("YAML anchors and aliases are not allowed in a policy")
        tag = getattr(event, "tag", None)
        if tag is not None and not str(tag).startswith("tag:yaml.org,2002:"):
            raise PolicyDocumentError(f"YAML tag {tag!r} is not allowed in a policy")


def _yaml_message(exc: BaseException) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        where = f" (line {exc.problem_mark.line + 1})" if exc.problem_mark else ""
        return f"{exc.problem or exc.context or type(exc).__name__}{where}"
    return type(exc).__name__


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming where in the document it is."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        parts.append(f"{loc or '(top)'}: {err['msg']}")
    return "; ".join(parts)


# --- the loaded policy ---------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """A validated policy with its canonical bytes and hash.

    Attributes:
        document: the validated model (defaults visible here, never in the canonical bytes).
        canonical_bytes: RFC 8785 JSON of the mapping as written.
        hash: hex SHA-256 of `canonical_bytes`.
    """

    document: PolicyDocument
    canonical_bytes: bytes
    hash: str
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Policy:
        """Validate a raw mapping (as `load_policy_mapping` returns it).

        Raises:
            PolicyDocumentError: the mapping fails validation or has no canonical form (floats).
        """
        if not isinstance(raw, Mapping):
            raise PolicyDocumentError("a policy document is a mapping at the top level")
        try:
            canonical = canonical_json(raw)
        except CanonicalEncodingError as exc:
            raise PolicyDocumentError(
                f"the policy has no canonical form ({exc}); write decimals as strings"
            ) from None
        try:
            document = PolicyDocument.model_validate(dict(raw))
        except ValidationError as exc:
            raise PolicyDocumentError(describe_validation_error(exc)) from None
        return cls(
            document=document,
            canonical_bytes=canonical,
            hash=hashlib.sha256(canonical).hexdigest(),
            raw=raw,
        )

    @classmethod
    def from_yaml(cls, text: bytes | str) -> Policy:
        """Parse and validate a policy document.

        Raises:
            PolicyDocumentError: naming every problem found.
        """
        return cls.from_mapping(load_policy_mapping(text))

    @property
    def department(self) -> str:
        """The department whose officers wrote this policy."""
        return self.document.department

    @property
    def version(self) -> int:
        """The policy's version (only goes up)."""
        return self.document.version

    @property
    def tables(self) -> Mapping[str, TablePolicy]:
        """Table name to its rules."""
        return self.document.tables

    @property
    def valid_from(self) -> dt.datetime:
        """Start of validity (inclusive)."""
        return parse_timestamp(self.document.valid_from)

    @property
    def valid_until(self) -> dt.datetime:
        """End of validity (exclusive)."""
        return parse_timestamp(self.document.valid_until)

    def is_valid_at(self, now: dt.datetime) -> bool:
        """Whether `now` (aware) is within [valid_from, valid_until).

        Raises:
            InvalidInputError: `now` is naive.
        """
        if now.utcoffset() is None:
            raise InvalidInputError("now must be an aware datetime")
        return self.valid_from <= now < self.valid_until

    def template_hash(self, table: str, name: str) -> str:
        """Hex SHA-256 of a template as its officers wrote it, bound to department and table.

        Raises:
            PolicyDocumentError: no such template.
        """
        tables = self.raw.get("tables")
        entry = tables.get(table) if isinstance(tables, Mapping) else None
        templates = entry.get("templates") if isinstance(entry, Mapping) else None
        template = templates.get(name) if isinstance(templates, Mapping) else None
        if template is None:
            raise PolicyDocumentError(f"no template {name!r} on table {table!r}")
        bound = {
            "department": self.department,
            "schema_version": SCHEMA_VERSION,
            "table": table,
            "template": template,
            "template_name": name,
        }
        return hashlib.sha256(canonical_json(bound)).hexdigest()


class PolicyRollbackError(ConfigError):
    """A policy is older than one already seen (version monotonicity)."""


def check_not_older(policy: Policy, highest_seen_version: int | None) -> None:
    """Refuse a policy whose version is lower than the highest version already seen.

    The same version is accepted (a restart reloading what it holds); whether an equal version
    with different bytes is acceptable is the caller's choice, made on the policy hash.

    Raises:
        PolicyRollbackError: `policy.version < highest_seen_version`.
    """
    if highest_seen_version is not None and policy.version < highest_seen_version:
        raise PolicyRollbackError(
            f"policy version {policy.version} of {policy.department} is older than version "
            f"{highest_seen_version} already seen"
        )


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema published for editors (policies/schema/policy.schema.json)."""
    schema = PolicyDocument.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://dataisland.invalid/schema/policy.schema.json"
    schema["title"] = "dataisland policy document"
    return schema
