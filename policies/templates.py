"""Templates: officer-approved parameterised queries, bound to values and recognised by shape.

A template's SQL names its parameters as `$name`. A requester's query is judged by a template's
rules when, after the requester's values are bound as literals (`bind_parameters`), its checked
tree has exactly the template's shape: the same tree, with a literal of the declared type where
the template has each parameter (and the same literal wherever one parameter repeats).

Parameter types and the literals that fit them:
- `varchar`: a string literal;
- `bigint`: an integer literal (optionally negated) within 64 bits;
- `date`: a string literal `YYYY-MM-DD` naming a real date;
- `boolean`: TRUE or FALSE.

This module does not judge whether a template is allowed (the checker does, with the template's
exemptions) and does not count runs or check approvals.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass

import sqlglot
from sqlglot import exp

from dataisland.envelopes import CheckedEnvelope
from dataisland.errors import InvalidInputError, MalformedQueryError, UnsupportedQueryError
from policies.document import ParameterType
from policies.sqlfront import DIALECT, ParseCache, ParsedQuery, parse_query

_SENTINEL = "__dataisland_parameter__:"
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_INT64 = 2**63

BindValue = str | int | bool | dt.date
"""A Python value a parameter may be bound to."""


class TemplateError(UnsupportedQueryError):
    """A template's SQL or parameters are not usable (named in the message)."""


@dataclass(frozen=True)
class TemplateShape:
    """A template compiled for matching.

    Attributes:
        parsed: the template checked by the SQL front, each parameter a sentinel literal.
        parameters: parameter name to declared type.
        canonical_sql: the canonical SQL with `$name` where each parameter goes: what the log
            and officers see (never the values).
    """

    parsed: ParsedQuery
    parameters: Mapping[str, ParameterType]
    canonical_sql: str


def _placeholders(tree: exp.Expr) -> list[exp.Placeholder]:
    return [node for node in tree.walk() if isinstance(node, exp.Placeholder)]


def _parse_one(sql: str) -> exp.Expr:
    try:
        statements = [s for s in sqlglot.parse(sql, dialect=DIALECT) if s is not None]
    except RecursionError:
        raise MalformedQueryError("the query is nested too deeply") from None
    except Exception as error:  # sqlglot raises many kinds on hostile text
        raise MalformedQueryError(f"the query does not parse ({type(error).__name__})") from None
    if len(statements) != 1:
        raise MalformedQueryError("exactly one statement is expected")
    return statements[0]


@functools.lru_cache(maxsize=512)
def _compile(sql: str, parameters: tuple[tuple[str, ParameterType], ...]) -> TemplateShape:
    declared = dict(parameters)
    if _SENTINEL in sql:
        raise TemplateError("the template text contains a reserved marker")
    tree = _parse_one(sql)
    seen: set[str] = set()
    for node in _placeholders(tree):
        name = str(node.this or "")
        if not name or name.isdigit():
            raise TemplateError("template parameters are named: write $name, not ? or $1")
        if name not in declared:
            raise TemplateError(f"parameter ${name} is not declared under `parameters`")
        seen.add(name)
        node.replace(exp.Literal.string(_SENTINEL + name))
    unused = sorted(set(declared) - seen)
    if unused:
        raise TemplateError(f"declared parameters {unused} are not used in the SQL")
    parsed = parse_query(tree.sql(dialect=DIALECT))
    for output in parsed.tree.expressions:
        if _SENTINEL in str(output.alias):
            raise TemplateError("an output that uses a parameter must have an alias (AS name)")
    display = parsed.tree.copy()
    for literal in list(display.find_all(exp.Literal)):
        param = _sentinel_name(literal)
        if param is not None:
            literal.replace(exp.Placeholder(this=param))
    return TemplateShape(
        parsed=parsed, parameters=declared, canonical_sql=display.sql(dialect=DIALECT)
    )


def compile_template(sql: str, parameters: Mapping[str, ParameterType]) -> TemplateShape:
    """Check a template's SQL with the SQL front and prepare it for matching.

    Raises:
        TemplateError: a parameter is undeclared, unused or unnamed, or a parameterised output
            has no alias.
        MalformedQueryError, UnsupportedQueryError: the SQL front refuses the template.
    """
    return _compile(sql, tuple(sorted(parameters.items())))


def _sentinel_name(node: exp.Expr) -> str | None:
    if isinstance(node, exp.Literal) and node.is_string and str(node.this).startswith(_SENTINEL):
        return str(node.this)[len(_SENTINEL) :]
    return None


def literal_fits(node: exp.Expr, kind: ParameterType) -> str | None:
    """The literal's value as text when `node` is a literal fitting `kind`, else None."""
    if kind == "boolean":
        return ("true" if node.this else "false") if isinstance(node, exp.Boolean) else None
    if kind in ("varchar", "date"):
        if not (isinstance(node, exp.Literal) and node.is_string):
            return None
        text = str(node.this)
        if kind == "date":
            if not _DATE.match(text):
                return None
            try:
                dt.date.fromisoformat(text)
            except ValueError:
                return None
        return text
    negative = False
    if isinstance(node, exp.Neg):
        negative, node = True, node.this
    if not (isinstance(node, exp.Literal) and not node.is_string):
        return None
    text = str(node.this)
    if not text.isdigit() or len(text) > 19:
        return None
    value = -int(text) if negative else int(text)
    return str(value) if -_INT64 <= value < _INT64 else None


def _scalar_args_equal(left: object, right: object) -> bool:
    def norm(value: object) -> object:
        return None if value is False or value in ([], "") else value

    return norm(left) == norm(right)


def _match(template: exp.Expr, query: exp.Expr, shape: TemplateShape, out: dict[str, str]) -> bool:
    name = _sentinel_name(template)
    if name is not None:
        value = literal_fits(query, shape.parameters[name])
        if value is None or out.get(name, value) != value:
            return False
        out[name] = value
        return True
    if type(template) is not type(query):
        return False
    for key in set(template.args) | set(query.args):
        left, right = template.args.get(key), query.args.get(key)
        if isinstance(left, exp.Expr) or isinstance(right, exp.Expr):
            if not (isinstance(left, exp.Expr) and isinstance(right, exp.Expr)):
                return False
            if not _match(left, right, shape, out):
                return False
        elif isinstance(left, list) or isinstance(right, list):
            if not (isinstance(left, list) and isinstance(right, list)):
                return False
            if len(left) != len(right):
                return False
            for a, b in zip(left, right, strict=True):
                if isinstance(a, exp.Expr) and isinstance(b, exp.Expr):
                    if not _match(a, b, shape, out):
                        return False
                elif not _scalar_args_equal(a, b):
                    return False
        elif not _scalar_args_equal(left, right):
            return False
    return True


def match_template(shape: TemplateShape, parsed: ParsedQuery) -> dict[str, str] | None:
    """Whether `parsed` has the template's shape; if so, the bound values as text.

    Args:
        shape: a compiled template.
        parsed: the requester's query with its parameters bound as literals.

    Returns:
        Parameter name to the literal's value as text, or None when the shapes differ.
    """
    values: dict[str, str] = {}
    try:
        matched = _match(shape.parsed.tree, parsed.tree, shape, values)
    except RecursionError:
        return None
    return values if matched and set(values) == set(shape.parameters) else None


def _literal_for(name: str, value: BindValue) -> exp.Expr:
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise TemplateError(f"parameter ${name} is outside 64-bit integers")
        literal = exp.Literal.number(abs(value))
        return exp.Neg(this=literal) if value < 0 else literal
    if isinstance(value, dt.datetime):
        raise TemplateError(f"parameter ${name}: timestamps are not a template parameter type")
    if isinstance(value, dt.date):
        return exp.Literal.string(value.isoformat())
    if isinstance(value, str):
        if _SENTINEL in value:
            raise TemplateError(f"parameter ${name} contains a reserved marker")
        return exp.Literal.string(value)
    raise TemplateError(f"parameter ${name} has unsupported type {type(value).__name__}")


def bind_parameters(sql: str, values: Mapping[str, BindValue]) -> str:
    """Replace each `$name` in `sql` with its value as a SQL literal (quoted by sqlglot).

    Binding happens on the parsed tree, never by string pasting, so a value cannot change the
    query's shape. The result is then parsed and checked like any query.

    Raises:
        TemplateError: a parameter has no value, a value is unused, or a value has an
            unsupported type.
        MalformedQueryError: `sql` does not parse as one statement.
    """
    tree = _parse_one(sql)
    used: set[str] = set()
    for node in _placeholders(tree):
        name = str(node.this or "")
        if name not in values:
            raise TemplateError(f"no value for parameter ${name or '?'}")
        used.add(name)
        node.replace(_literal_for(name, values[name]))
    unused = sorted(set(values) - used)
    if unused:
        raise TemplateError(f"values given for parameters the query does not use: {unused}")
    return tree.sql(dialect=DIALECT)


def parse_envelope_query(checked: CheckedEnvelope, parse: ParseCache) -> ParsedQuery:
    """Parse the envelope's SQL, its parameters bound into the tree (never pasted as text).

    Raises:
        MalformedQueryError, UnsupportedQueryError, UnknownTableError: as the SQL front says.
        TemplateError: the parameters do not fit the SQL's placeholders.
    """
    sql = checked.envelope.sql
    if checked.params:
        values = {}
        for param in checked.params:
            value = param.python_value()
            if not isinstance(value, str | int | bool | dt.date):
                raise InvalidInputError(
                    f"parameter {param.name} has an unsupported type {param.type}"
                )
            values[param.name] = value
        sql = bind_parameters(sql, values)
    return parse(sql)


def logged_sql(checked: CheckedEnvelope, parsed: ParsedQuery) -> str:
    """The canonical SQL the log shows and every query hash covers.

    For a query without parameters, the parsed query's canonical SQL; for one with parameters,
    the envelope's SQL checked and canonicalised with `$name` where each value goes, so that
    no parameter value (a person's id, say) enters a hash: parameters enter only through the
    envelope's salted commitment. Coordinator, enclaves and aggregator all compute it this way,
    so their hashes agree.

    Raises:
        TemplateError, MalformedQueryError, UnsupportedQueryError: the SQL with placeholders
            does not compile (it parsed with its values bound, so this does not happen for
            SQL the enclaves accept).
    """
    if not checked.params:
        return parsed.canonical_sql
    names: dict[str, ParameterType] = {p.name: "varchar" for p in checked.params}
    return compile_template(checked.envelope.sql, names).canonical_sql
