"""The SQL front: parse a query once, refuse what dataisland cannot answer, regenerate it.

`parse_query` parses SQL text with sqlglot's DuckDB dialect, walks the tree against an explicit
allow-list of node kinds (deny by default), checks the shape of an aggregate query (every output
is an aggregate or a GROUP BY key), and regenerates the canonical SQL from the checked tree.

The supported language is one aggregate SELECT over base tables:
- aggregates COUNT(*), COUNT(expr), SUM, AVG (alias MEAN), MIN, MAX, VAR_SAMP (VARIANCE),
  VAR_POP, STDDEV_SAMP (STDDEV), STDDEV_POP, each with an optional FILTER (WHERE ...);
- scalar expressions: columns, literals, arithmetic, comparisons, AND/OR/NOT, BETWEEN, IN over
  literal lists, LIKE/ILIKE, IS [NOT] NULL, CASE/IF, casts to scalar types, intervals, date
  functions and a small allow-list of scalar functions;
- WHERE, GROUP BY (columns, expressions, ordinals, output aliases), HAVING, ORDER BY, LIMIT with a
  non-negative integer literal; INNER/LEFT JOIN ... ON between base tables.

This module does not: open a database, import DuckDB, decide whether a query is *allowed* (the
policy checker does that), plan the federated execution (enclave/planner.py does), or accept
OFFSET, DISTINCT, QUALIFY, CTEs, subqueries, set operations, window functions, table functions,
schema-qualified tables, query parameters or DuckDB's expanding shorthands (*, COLUMNS(),
EXCLUDE, GROUP BY ALL, ORDER BY ALL). OFFSET is refused on purpose: paging a released result is
the coordinator's job, and an offset over suppressed rows would be misleading.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass

import sqlglot
from sqlglot import exp

from dataisland.catalog import Catalog
from dataisland.errors import (
    MalformedQueryError,
    ResourceLimitError,
    UnknownTableError,
    UnsupportedQueryError,
)

DIALECT = "duckdb"
"""The one SQL dialect dataisland parses and regenerates."""

MAX_SQL_CHARS = 100_000
"""Longer query texts are refused before parsing (a bound on parser work, not a data limit)."""

AGGREGATES: dict[type[exp.Expr], str] = {
    exp.Count: "count",
    exp.Sum: "sum",
    exp.Avg: "avg",
    exp.Min: "min",
    exp.Max: "max",
    exp.Variance: "variance",
    exp.VariancePop: "var_pop",
    exp.Stddev: "stddev",
    exp.StddevSamp: "stddev_samp",
    exp.StddevPop: "stddev_pop",
}
"""Supported aggregate node kinds and the name DuckDB gives them in the canonical SQL."""

# Aggregates people reach for that cannot be merged exactly from per-shard pieces, or that
# reveal individual values; named here only to give a precise refusal.
_REFUSED_AGGREGATE_NAMES = frozenset(
    {
        "string_agg",
        "listagg",
        "group_concat",
        "list",
        "array_agg",
        "mode",
        "first",
        "last",
        "any_value",
        "arg_min",
        "arg_max",
        "argmin",
        "argmax",
        "min_by",
        "max_by",
        "histogram",
        "quantile",
        "quantile_cont",
        "quantile_disc",
        "median",
        "approx_count_distinct",
        "approx_quantile",
        "product",
        "bool_and",
        "bool_or",
        "bit_and",
        "bit_or",
        "entropy",
        "kurtosis",
        "skewness",
        "corr",
        "covar_pop",
        "covar_samp",
        "regr_slope",
    }
)

# Scalar functions that sqlglot parses into typed nodes and that cannot fail on a value
# (a data-dependent error would be a per-row oracle) and return scalars.
_SCALAR_FUNCTIONS: frozenset[type[exp.Expr]] = frozenset(
    {
        exp.Abs,
        exp.Round,
        exp.Floor,
        exp.Ceil,
        exp.Sign,
        exp.Coalesce,
        exp.Least,
        exp.Greatest,
        exp.Lower,
        exp.Upper,
        exp.Length,
        exp.Trim,
        exp.Nullif,
        exp.If,
        exp.TimestampTrunc,
        exp.DateTrunc,
        exp.Extract,
        exp.Year,
        exp.Month,
        exp.Day,
        exp.Quarter,
        exp.DayOfWeek,
        exp.DayOfMonth,
        exp.DayOfYear,
        exp.Week,
        exp.WeekOfYear,
        exp.DateDiff,
        exp.LastDay,
    }
)

# Functions sqlglot leaves anonymous; lower-case names. Same criteria as above.
_ANONYMOUS_FUNCTIONS = frozenset(
    {
        "mean",
        "date_part",
        "datepart",
        "hour",
        "minute",
        "second",
        "isodow",
        "yearweek",
        "ifnull",
        "trunc",
        "even",
        "isnan",
        "isinf",
        "isfinite",
        "monthname",
        "dayname",
        "starts_with",
        "ends_with",
        "contains",
        "prefix",
        "suffix",
    }
)

_OPERATORS: frozenset[type[exp.Expr]] = frozenset(
    {
        exp.Add,
        exp.Sub,
        exp.Mul,
        exp.Div,
        exp.Mod,
        exp.IntDiv,
        exp.Neg,
        exp.EQ,
        exp.NEQ,
        exp.GT,
        exp.GTE,
        exp.LT,
        exp.LTE,
        exp.And,
        exp.Or,
        exp.Not,
        exp.Paren,
        exp.Between,
        exp.In,
        exp.Like,
        exp.ILike,
        exp.Is,
        exp.Case,
        exp.If,
        exp.DPipe,
    }
)

_STRUCTURE: frozenset[type[exp.Expr]] = frozenset(
    {
        exp.Select,
        exp.From,
        exp.Join,
        exp.Table,
        exp.TableAlias,
        exp.Column,
        exp.Identifier,
        exp.Alias,
        exp.Where,
        exp.Group,
        exp.Having,
        exp.Order,
        exp.Ordered,
        exp.Limit,
        exp.Filter,
        exp.Literal,
        exp.Null,
        exp.Boolean,
        exp.Interval,
        exp.Cast,
        exp.TryCast,
        exp.DataType,
        exp.DataTypeParam,
        exp.Var,
        exp.Star,
        exp.Anonymous,
    }
)

ALLOWED_NODES: frozenset[type[exp.Expr]] = (
    _STRUCTURE | _OPERATORS | _SCALAR_FUNCTIONS | frozenset(AGGREGATES)
)
"""Every sqlglot node kind a supported query may contain; any other kind is refused."""

_SCALAR_TYPES = frozenset(
    {
        exp.DataType.Type.BOOLEAN,
        exp.DataType.Type.TINYINT,
        exp.DataType.Type.SMALLINT,
        exp.DataType.Type.INT,
        exp.DataType.Type.BIGINT,
        exp.DataType.Type.INT128,
        exp.DataType.Type.UTINYINT,
        exp.DataType.Type.USMALLINT,
        exp.DataType.Type.UINT,
        exp.DataType.Type.UBIGINT,
        exp.DataType.Type.FLOAT,
        exp.DataType.Type.DOUBLE,
        exp.DataType.Type.DECIMAL,
        exp.DataType.Type.VARCHAR,
        exp.DataType.Type.TEXT,
        exp.DataType.Type.CHAR,
        exp.DataType.Type.DATE,
        exp.DataType.Type.TIMESTAMP,
        exp.DataType.Type.TIMESTAMPTZ,
        exp.DataType.Type.INTERVAL,
    }
)

# A CAST of a non-constant to these never fails on a value; other targets can (e.g. VARCHAR
# to INTEGER), which would make whether an error happens depend on one person's data.
_TOTAL_CAST_TARGETS = frozenset(
    {
        exp.DataType.Type.DOUBLE,
        exp.DataType.Type.FLOAT,
        exp.DataType.Type.VARCHAR,
        exp.DataType.Type.TEXT,
        exp.DataType.Type.INT128,
    }
)

_NAMED_CONSTRUCTS: dict[type[exp.Expr], str] = {
    exp.Window: "window functions are not supported",
    exp.Subquery: "subqueries are not supported",
    exp.Exists: "subqueries are not supported (EXISTS)",
    exp.Union: "set operations (UNION) are not supported",
    exp.Intersect: "set operations (INTERSECT) are not supported",
    exp.Except: "set operations (EXCEPT) are not supported",
    exp.With: "common table expressions (WITH) are not supported",
    exp.CTE: "common table expressions (WITH) are not supported",
    exp.Columns: "COLUMNS(...) is not supported",
    exp.Distinct: "DISTINCT is not supported",
    exp.Qualify: "QUALIFY is not supported",
    exp.Offset: "OFFSET is not supported",
    exp.Placeholder: "query parameters are not supported",
    exp.Parameter: "query parameters are not supported",
    exp.Unnest: "UNNEST is not supported",
    exp.Lateral: "LATERAL is not supported",
    exp.Values: "VALUES lists are not supported",
    exp.Lambda: "lambda functions are not supported",
    exp.Tuple: "row values (tuples) are not supported",
    exp.Struct: "STRUCT values are not supported",
    exp.Array: "list/array values are not supported",
    exp.Bracket: "subscripts ([...]) are not supported",
    exp.Dot: "field access (a.b.c) is not supported",
}

_SIMPLE_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
_RESERVED_PREFIX = "__"


@dataclass(frozen=True)
class ParsedQuery:
    """A checked, supported query.

    Attributes:
        tree: the checked sqlglot tree (canonicalised: every output has an explicit alias,
            MEAN is AVG and COUNT() is COUNT(*)). Treat it as read-only; copy before changing.
        canonical_sql: the SQL regenerated from `tree` in the DuckDB dialect; parsing it again
            gives the same text.
        tables: the logical tables referenced, lower-cased, sorted, without repeats.
        output_names: the output column names, in select-list order.
    """

    tree: exp.Select
    canonical_sql: str
    tables: tuple[str, ...]
    output_names: tuple[str, ...]


def parse_query(sql: str, *, catalog: Catalog | None = None) -> ParsedQuery:
    """Parse, check and canonicalise one aggregate query.

    Args:
        sql: the requester's SQL text (DuckDB dialect).
        catalog: the federation's logical tables; when given, tables and columns are resolved
            against it.

    Returns:
        The checked query with its canonical SQL.

    Raises:
        MalformedQueryError: the text is empty, does not parse, holds more than one statement,
            or is not a query.
        UnsupportedQueryError: the query uses a construct dataisland refuses (named in the
            message), or names a column the catalog does not define.
        UnknownTableError: `catalog` is given and a table is not in it.
        ResourceLimitError: the text is longer than `MAX_SQL_CHARS`.
    """
    if not isinstance(sql, str):
        raise MalformedQueryError("the query must be text")
    if len(sql) > MAX_SQL_CHARS:
        raise ResourceLimitError(f"the query is longer than {MAX_SQL_CHARS} characters")
    if not sql.strip():
        raise MalformedQueryError("the query is empty")
    try:
        return _parse_query(sql, catalog)
    except RecursionError:
        raise MalformedQueryError("the query is nested too deeply") from None


class ParseCache:
    """`parse_query` against one service's catalog, remembering recent answers.

    A department service sends the same few queries again and again: parsing and checking one
    costs about 2 ms, a lookup microseconds. Answers are shared, so callers treat them as
    read-only, as `ParsedQuery` says; refusals are not remembered (they raise each time).
    """

    def __init__(self, catalog: Catalog, size: int = 1024) -> None:
        self.catalog = catalog
        self._parse = functools.lru_cache(maxsize=size)(self._parse_uncached)

    def _parse_uncached(self, sql: str) -> ParsedQuery:
        return parse_query(sql, catalog=self.catalog)

    def __call__(self, sql: str) -> ParsedQuery:
        """The checked query for `sql`; raises as `parse_query` does."""
        return self._parse(sql)


def _parse_query(sql: str, catalog: Catalog | None) -> ParsedQuery:
    try:
        statements = [s for s in sqlglot.parse(sql, dialect=DIALECT) if s is not None]
    except RecursionError:
        raise
    except Exception as error:  # sqlglot raises many kinds on hostile text; all mean "malformed"
        raise MalformedQueryError(f"the query does not parse ({type(error).__name__})") from None
    if not statements:
        raise MalformedQueryError("the query is empty")
    if len(statements) > 1:
        raise MalformedQueryError("only one statement is allowed; found more than one")
    root = statements[0]
    select = _check_statement(root)
    try:
        _check_nodes(select)
        select = _normalise_synonyms(select)
        tables = _check_shape(select, catalog)
        canonical = _canonicalise(select.copy())
        canonical_sql = canonical.sql(dialect=DIALECT)
    except (UnsupportedQueryError, UnknownTableError, MalformedQueryError):
        raise
    except RecursionError:
        raise
    except Exception as error:  # an unexpected tree shape is refused, never a raw error
        raise UnsupportedQueryError(
            f"the query has a shape dataisland does not support ({type(error).__name__})"
        ) from None
    names = tuple(a.alias for a in canonical.expressions)
    return ParsedQuery(
        tree=canonical, canonical_sql=canonical_sql, tables=tables, output_names=names
    )


def _check_statement(root: exp.Expr) -> exp.Select:
    if isinstance(root, exp.Select):
        return root
    message = _NAMED_CONSTRUCTS.get(type(root))
    if message is not None:
        raise UnsupportedQueryError(message)
    if isinstance(root, exp.Subquery):
        raise UnsupportedQueryError("subqueries are not supported")
    kind = type(root).__name__.upper()
    if isinstance(root, exp.Command):
        kind = str(root.this).upper()
    raise MalformedQueryError(f"{kind} statements are not queries: only one SELECT is accepted")


def _describe(node: exp.Expr) -> str:
    if isinstance(node, exp.Anonymous):
        return f"function '{str(node.name).lower()}'"
    if isinstance(node, exp.Func):
        return f"function '{node.sql_name().lower()}'"
    return f"{type(node).__name__} (in {_snippet(node)})"


def _snippet(node: exp.Expr) -> str:
    try:
        text = node.sql(dialect=DIALECT)
    except Exception:  # rendering is only for the message
        return type(node).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def _check_nodes(select: exp.Select) -> None:
    """Deny by default: every node must be of an allowed kind, in an allowed place."""
    for node in select.walk():
        kind = type(node)
        if kind is exp.Window:
            raise UnsupportedQueryError(
                f"window functions are not supported (OVER in {_snippet(node)})"
            )
        if kind in (exp.Select, exp.Subquery) and node is not select:
            raise UnsupportedQueryError("subqueries are not supported")
        if kind is exp.Anonymous:
            name = str(node.name).lower()
            if name in _REFUSED_AGGREGATE_NAMES:
                raise UnsupportedQueryError(f"aggregate function '{name}' is not supported")
            if name not in _ANONYMOUS_FUNCTIONS:
                raise UnsupportedQueryError(f"function '{name}' is not allowed")
            continue
        if kind in (exp.IgnoreNulls, exp.RespectNulls) and isinstance(node.this, exp.Func):
            raise UnsupportedQueryError(
                f"aggregate function '{node.this.sql_name().lower()}' is not supported"
            )
        if kind not in ALLOWED_NODES:
            message = _NAMED_CONSTRUCTS.get(kind)
            if message is not None:
                raise UnsupportedQueryError(message)
            if issubclass(kind, exp.AggFunc):
                name = node.sql_name().lower() if isinstance(node, exp.Func) else kind.__name__
                raise UnsupportedQueryError(f"aggregate function '{name}' is not supported")
            raise UnsupportedQueryError(f"{_describe(node)} is not allowed")
        _check_node(select, node)


def _truthy_args(node: exp.Expr) -> Iterator[str]:
    for key, value in node.args.items():
        if value is None or value is False or value == []:
            continue
        yield key


_ALLOWED_ARGS: dict[type[exp.Expr], frozenset[str]] = {
    exp.Select: frozenset(
        {"expressions", "from_", "from", "joins", "where", "group", "having", "order", "limit"}
    ),
    exp.Table: frozenset({"this", "alias"}),
    exp.TableAlias: frozenset({"this"}),
    exp.Join: frozenset({"this", "on", "side", "kind"}),
    exp.Column: frozenset({"this", "table"}),
    exp.Group: frozenset({"expressions"}),
    exp.Limit: frozenset({"expression"}),
    exp.Ordered: frozenset({"this", "desc", "nulls_first"}),
    exp.Order: frozenset({"expressions"}),
    exp.Filter: frozenset({"this", "expression"}),
    exp.Alias: frozenset({"this", "alias"}),
    exp.In: frozenset({"this", "expressions"}),
    exp.Count: frozenset({"this", "big_int"}),
}

_SELECT_ARG_MESSAGES = {
    "distinct": "DISTINCT is not supported",
    "with": "common table expressions (WITH) are not supported",
    "with_": "common table expressions (WITH) are not supported",
    "qualify": "QUALIFY is not supported",
    "offset": "OFFSET is not supported",
    "windows": "window functions are not supported (WINDOW clause)",
    "sample": "TABLESAMPLE is not supported",
    "exclude": "SELECT * EXCLUDE is not supported",
    "kind": "SELECT AS STRUCT/VALUE is not supported",
    "laterals": "LATERAL is not supported",
    "into": "SELECT INTO is not supported",
}


def _check_args(node: exp.Expr, allowed: frozenset[str]) -> None:
    for key in _truthy_args(node):
        if key in allowed:
            continue
        if isinstance(node, exp.Select) and key in _SELECT_ARG_MESSAGES:
            raise UnsupportedQueryError(_SELECT_ARG_MESSAGES[key])
        if isinstance(node, exp.Group) and key == "all":
            raise UnsupportedQueryError("GROUP BY ALL is not supported; name the keys")
        if isinstance(node, exp.Group):
            raise UnsupportedQueryError(f"GROUP BY {key.upper()} is not supported")
        if isinstance(node, exp.Limit):
            raise UnsupportedQueryError(f"LIMIT with {key.upper()} is not supported")
        if isinstance(node, exp.Join) and key == "using":
            raise UnsupportedQueryError("JOIN ... USING is not supported; use JOIN ... ON")
        if isinstance(node, exp.Table) and key in ("db", "catalog"):
            raise UnsupportedQueryError(
                f"schema- or catalog-qualified tables are not supported ({_snippet(node)})"
            )
        if isinstance(node, exp.Column) and key in ("db", "catalog"):
            raise UnsupportedQueryError(f"qualified column '{_snippet(node)}' is not supported")
        if isinstance(node, exp.In) and key in ("query", "unnest", "field"):
            raise UnsupportedQueryError("IN is supported only over a list of literals")
        raise UnsupportedQueryError(
            f"{type(node).__name__} with {key.upper()} is not supported ({_snippet(node)})"
        )


def _is_constant(node: exp.Expr) -> bool:
    return not any(isinstance(n, (exp.Column, exp.Star)) for n in node.walk())


def _is_literal_value(node: exp.Expr) -> bool:
    if isinstance(node, (exp.Literal, exp.Null, exp.Boolean)):
        return True
    if isinstance(node, (exp.Neg, exp.Paren)):
        return _is_literal_value(node.this)
    if isinstance(node, (exp.Cast, exp.TryCast)):
        return _is_literal_value(node.this)
    return False


def _check_node(select: exp.Select, node: exp.Expr) -> None:
    allowed = _ALLOWED_ARGS.get(type(node))
    if allowed is not None:
        _check_args(node, allowed)
    elif type(node) in AGGREGATES:
        _check_args(node, frozenset({"this"}))
    if isinstance(node, exp.Identifier) and str(node.this).startswith(_RESERVED_PREFIX):
        raise UnsupportedQueryError(
            f"identifiers beginning with '{_RESERVED_PREFIX}' are reserved ('{node.this}')"
        )
    if isinstance(node, exp.Star):
        parent = node.parent
        if not (isinstance(parent, exp.Count) and parent.this is node):
            raise UnsupportedQueryError("SELECT * is not supported; name the columns")
    elif isinstance(node, exp.Column):
        if not isinstance(node.this, exp.Identifier):
            raise UnsupportedQueryError(f"SELECT * is not supported ({_snippet(node)})")
    elif isinstance(node, exp.Table):
        if not isinstance(node.this, exp.Identifier):
            raise UnsupportedQueryError(f"table functions are not supported ({_snippet(node)})")
        if not isinstance(node.parent, (exp.From, exp.Join)):
            raise UnsupportedQueryError(f"a table reference is not allowed here ({node.name})")
        # DuckDB reads files named in FROM ('x.csv', "x.parquet") through replacement scans;
        # logical table names are plain identifiers, so anything else is refused.
        if not _SIMPLE_IDENTIFIER.match(str(node.name).lower()):
            raise UnsupportedQueryError(
                f"table name {_snippet(node)} is not a plain identifier (file reads are "
                "not supported)"
            )
    elif isinstance(node, exp.Join):
        _check_join(node)
    elif isinstance(node, exp.Alias):
        if node.parent is not select:
            raise UnsupportedQueryError(f"an alias is not allowed here ({_snippet(node)})")
    elif isinstance(node, (exp.Where, exp.Group, exp.Having, exp.Order, exp.Limit, exp.From)):
        if node.parent is not select and not (
            isinstance(node, exp.Where) and isinstance(node.parent, exp.Filter)
        ):
            raise UnsupportedQueryError(
                f"{type(node).__name__.upper()} is not allowed inside an expression"
            )
    elif isinstance(node, exp.Ordered):
        if isinstance(node.this, exp.Var) and str(node.this.name).upper() == "ALL":
            raise UnsupportedQueryError("ORDER BY ALL is not supported; name the keys")
    elif isinstance(node, exp.Limit):
        pass
    elif isinstance(node, exp.In):
        for item in node.expressions:
            if not _is_literal_value(item):
                raise UnsupportedQueryError(
                    f"IN is supported only over a list of literals ({_snippet(node)})"
                )
    elif isinstance(node, (exp.Cast, exp.TryCast)):
        _check_cast(node)
    elif isinstance(node, exp.Var):
        if not isinstance(
            node.parent,
            (exp.Interval, exp.Extract, exp.DateTrunc, exp.TimestampTrunc, exp.DateDiff),
        ):
            raise UnsupportedQueryError(f"keyword '{node.name}' is not allowed here")
    elif isinstance(node, exp.DataType):
        if not isinstance(node.parent, (exp.Cast, exp.TryCast)):
            raise UnsupportedQueryError(f"type name {_snippet(node)} is not allowed here")
    elif isinstance(node, exp.Filter):
        if type(node.this) not in AGGREGATES:
            raise UnsupportedQueryError("FILTER is supported only on supported aggregates")
        if not isinstance(node.expression, exp.Where):
            raise UnsupportedQueryError("FILTER must be FILTER (WHERE ...)")
    elif type(node) in AGGREGATES:
        if isinstance(node, exp.Count) and isinstance(node.this, exp.Distinct):
            raise UnsupportedQueryError("COUNT(DISTINCT ...) is not supported")
        if node.this is None and not isinstance(node, exp.Count):
            raise MalformedQueryError(f"aggregate {AGGREGATES[type(node)]} needs an argument")
        if any(type(n) in AGGREGATES for n in node.this.walk()) if node.this else False:
            raise UnsupportedQueryError(f"nested aggregates are not supported ({_snippet(node)})")
        _check_aggregate_place(select, node)
    if isinstance(node, exp.Limit):
        value = node.expression
        if not (
            isinstance(value, exp.Literal)
            and not value.is_string
            and str(value.this).isdigit()
            and len(str(value.this)) <= 18
        ):
            raise UnsupportedQueryError("LIMIT takes only a non-negative integer literal")


def _check_join(join: exp.Join) -> None:
    side = str(join.side or "").upper()
    kind = str(join.kind or "").upper()
    if kind not in ("", "INNER") or side not in ("", "LEFT"):
        construct = " ".join(p for p in (join.args.get("method"), side, kind) if p)
        raise UnsupportedQueryError(f"{construct or 'this'} JOIN is not supported")
    if join.args.get("method"):
        raise UnsupportedQueryError(f"{str(join.args['method']).upper()} JOIN is not supported")
    if join.args.get("on") is None:
        raise UnsupportedQueryError("joins without ON (cross joins, comma joins) are not supported")


def _check_cast(node: exp.Cast | exp.TryCast) -> None:
    target = node.args.get("to")
    if not isinstance(target, exp.DataType) or target.this not in _SCALAR_TYPES:
        raise UnsupportedQueryError(
            f"casts to {_snippet(target) if target else '?'} are not supported"
        )
    if any(isinstance(p, exp.DataType) for p in target.expressions):
        raise UnsupportedQueryError("casts to nested types are not supported")
    for key in _truthy_args(node):
        if key not in ("this", "to", "_type", "safe"):
            raise UnsupportedQueryError(f"CAST with {key.upper()} is not supported")
    if (
        type(node) is exp.Cast
        and not _is_constant(node.this)
        and target.this not in _TOTAL_CAST_TARGETS
    ):
        raise UnsupportedQueryError(
            f"CAST of a column to {_snippet(target)} can fail on a value; use TRY_CAST"
        )


def _check_aggregate_place(select: exp.Select, agg: exp.Expr) -> None:
    node: exp.Expr | None = agg.parent
    child: exp.Expr = agg
    while node is not None and node is not select:
        if isinstance(node, exp.Where):
            place = "FILTER (WHERE ...)" if isinstance(node.parent, exp.Filter) else "WHERE"
            raise UnsupportedQueryError(f"aggregate functions are not allowed in {place}")
        if isinstance(node, exp.Group):
            raise UnsupportedQueryError("aggregate functions are not allowed in GROUP BY")
        if isinstance(node, exp.Join):
            raise UnsupportedQueryError("aggregate functions are not allowed in JOIN ... ON")
        if type(node) in AGGREGATES and child is not node.args.get("where"):
            raise UnsupportedQueryError(f"nested aggregates are not supported ({_snippet(node)})")
        child = node
        node = node.parent


# --- shape: tables, columns, grouping -------------------------------------------------------


def _from_tables(select: exp.Select) -> list[exp.Table]:
    from_ = select.args.get("from_") or select.args.get("from")
    if from_ is None:
        raise UnsupportedQueryError("queries without FROM are not supported")
    tables = [from_.this]
    tables.extend(j.this for j in select.args.get("joins") or [])
    for table in tables:
        if not isinstance(table, exp.Table):
            raise UnsupportedQueryError(f"only base tables may appear in FROM ({_snippet(table)})")
    return tables


def table_refs(select: exp.Select) -> dict[str, str]:
    """Map each name a query may qualify columns with (alias or table) to its logical table.

    Args:
        select: a checked query tree.

    Returns:
        Reference name (lower case) to logical table name (lower case), in FROM order.

    Raises:
        UnsupportedQueryError: two tables share a reference name.
    """
    refs: dict[str, str] = {}
    for table in _from_tables(select):
        name = str(table.name).lower()
        ref = str(table.alias_or_name).lower()
        if ref in refs:
            raise UnsupportedQueryError(f"table reference '{ref}' appears twice; alias one")
        refs[ref] = name
    return refs


def is_aggregate(node: exp.Expr) -> bool:
    """Whether `node` is a supported aggregate call or a FILTER around one."""
    return type(node) in AGGREGATES or (
        isinstance(node, exp.Filter) and type(node.this) in AGGREGATES
    )


def contains_aggregate(node: exp.Expr) -> bool:
    """Whether any node under `node` (itself included) is an aggregate."""
    return any(type(n) in AGGREGATES for n in node.walk())


def expression_key(node: exp.Expr, single_table: str | None) -> str:
    """A comparison key for matching expressions against GROUP BY keys.

    Parentheses are dropped and, in a single-table query, column qualifiers too, so that
    `t.a` and `a` match.
    """
    copy = node.copy()
    for paren in list(copy.find_all(exp.Paren)):
        if paren is copy:
            copy = paren.unnest()
        else:
            paren.replace(paren.unnest())
    if single_table is not None:
        for column in copy.find_all(exp.Column):
            column.set("table", None)
    if isinstance(copy, exp.Paren):
        copy = copy.unnest()
    return copy.sql(dialect=DIALECT, normalize=True)


def resolve_group_keys(select: exp.Select, columns: frozenset[str] | None = None) -> list[exp.Expr]:
    """Resolve GROUP BY items to expressions (ordinals and output aliases replaced).

    A bare name resolves to a table column before an output alias, as in DuckDB.

    Args:
        select: a checked query tree.
        columns: the lower-cased column names of the tables in FROM, or None when unknown
            (then a bare name matching an output alias is taken as the alias).

    Returns:
        One expression per GROUP BY item, in order.

    Raises:
        UnsupportedQueryError: an ordinal is out of range or names an aggregate.
    """
    group = select.args.get("group")
    if group is None:
        return []
    outputs = select.expressions
    aliases = {str(e.alias).lower(): e.this for e in outputs if isinstance(e, exp.Alias)}
    keys: list[exp.Expr] = []
    for item in group.expressions:
        if isinstance(item, exp.Literal) and not item.is_string:
            text = str(item.this)
            if not text.isdigit() or not 1 <= int(text) <= len(outputs):
                raise UnsupportedQueryError(f"GROUP BY position {text} is out of range")
            target = outputs[int(text) - 1]
            target = target.this if isinstance(target, exp.Alias) else target
            if contains_aggregate(target):
                raise UnsupportedQueryError(f"GROUP BY {text} refers to an aggregate")
            keys.append(target.copy())
        elif (
            isinstance(item, exp.Column)
            and not item.table
            and str(item.name).lower() in aliases
            and (columns is None or str(item.name).lower() not in columns)
        ):
            target = aliases[str(item.name).lower()]
            if contains_aggregate(target):
                raise UnsupportedQueryError(f"GROUP BY {item.name} refers to an aggregate")
            keys.append(target.copy())
        else:
            keys.append(item.copy())
    return keys


def _check_shape(select: exp.Select, catalog: Catalog | None) -> tuple[str, ...]:
    refs = table_refs(select)
    columns: frozenset[str] | None = None
    if catalog is not None:
        all_columns: set[str] = set()
        for name in refs.values():
            if name not in catalog:
                raise UnknownTableError(f"unknown table '{name}'")
            all_columns.update(c.lower() for c in catalog[name].columns)
        columns = frozenset(all_columns)
        _check_columns(select, refs, catalog)
    else:
        for column in select.find_all(exp.Column):
            if column.table and str(column.table).lower() not in refs:
                raise UnsupportedQueryError(
                    f"column '{_snippet(column)}' names a table that is not in FROM"
                )
    keys = resolve_group_keys(select, columns)
    single = next(iter(refs.values())) if len(refs) == 1 else None
    key_set = {expression_key(k, single) for k in keys}
    aliases = {str(e.alias).lower() for e in select.expressions if isinstance(e, exp.Alias)}
    has_aggregate = any(contains_aggregate(e) for e in select.expressions)
    if not keys and not has_aggregate:
        outputs = ", ".join(_snippet(e) for e in select.expressions)
        raise UnsupportedQueryError(
            f"the query must aggregate: non-aggregate output ({outputs}) needs an aggregate "
            "function or GROUP BY"
        )
    for output in select.expressions:
        name = output.alias_or_name
        _check_grouped(
            output.this if isinstance(output, exp.Alias) else output,
            key_set,
            single,
            f"output column '{name}'",
            set(),
        )
    having = select.args.get("having")
    if having is not None:
        _check_grouped(having.this, key_set, single, "HAVING", aliases)
    order = select.args.get("order")
    if order is not None:
        for ordered in order.expressions:
            item = ordered.this
            if isinstance(item, exp.Literal) and not item.is_string:
                text = str(item.this)
                if not text.isdigit() or not 1 <= int(text) <= len(select.expressions):
                    raise UnsupportedQueryError(f"ORDER BY position {text} is out of range")
                continue
            _check_grouped(item, key_set, single, "ORDER BY", aliases)
    return tuple(sorted(set(refs.values())))


def _check_grouped(
    node: exp.Expr, keys: set[str], single: str | None, where: str, aliases: set[str]
) -> None:
    if is_aggregate(node):
        return
    if expression_key(node, single) in keys:
        return
    if isinstance(node, exp.Column):
        if not node.table and str(node.name).lower() in aliases:
            return
        if where.startswith("output column"):
            raise UnsupportedQueryError(
                f"non-aggregate output column '{node.name}' is not a GROUP BY key"
            )
        raise UnsupportedQueryError(f"column '{node.name}' in {where} is not a GROUP BY key")
    for child in node.iter_expressions():
        _check_grouped(child, keys, single, where, aliases)


def _check_columns(select: exp.Select, refs: dict[str, str], catalog: Catalog) -> None:
    aliases = {str(e.alias).lower() for e in select.expressions if isinstance(e, exp.Alias)}
    for column in select.find_all(exp.Column):
        name = str(column.name).lower()
        if column.table:
            ref = str(column.table).lower()
            if ref not in refs:
                raise UnsupportedQueryError(
                    f"column '{_snippet(column)}' names a table that is not in FROM"
                )
            if name not in {c.lower() for c in catalog[refs[ref]].columns}:
                raise UnsupportedQueryError(f"unknown column '{name}' in table '{refs[ref]}'")
            continue
        holders = [t for t in refs.values() if name in {c.lower() for c in catalog[t].columns}]
        if len(holders) > 1:
            raise UnsupportedQueryError(f"column '{name}' is ambiguous; qualify it")
        if not holders and name not in aliases:
            raise UnsupportedQueryError(f"unknown column '{name}'")


# --- canonical form -------------------------------------------------------------------------


def _normalise_synonyms(select: exp.Select) -> exp.Select:
    """Spell synonyms one way (MEAN as AVG, COUNT() as COUNT(*)) so later checks see one kind."""
    for node in list(select.walk()):
        if isinstance(node, exp.Anonymous) and str(node.name).lower() == "mean":
            if len(node.expressions) != 1:
                raise UnsupportedQueryError("mean takes exactly one argument")
            node.replace(exp.Avg(this=node.expressions[0]))
        elif isinstance(node, exp.Count) and node.this is None:
            node.set("this", exp.Star())
    return select


def _canonicalise(select: exp.Select) -> exp.Select:
    """Give every output an explicit alias: the name DuckDB would have given it."""
    outputs: list[exp.Expr] = []
    for output in select.expressions:
        if isinstance(output, exp.Alias):
            outputs.append(output)
            continue
        name = duckdb_column_name(output)
        outputs.append(exp.alias_(output, _identifier(name)))
    select.set("expressions", outputs)
    return select


def _identifier(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=not _SIMPLE_IDENTIFIER.match(name) or None)


_BINARY_SYMBOLS: dict[type[exp.Expr], str] = {
    exp.Add: "+",
    exp.Sub: "-",
    exp.Mul: "*",
    exp.Div: "/",
    exp.Mod: "%",
    exp.IntDiv: "//",
    exp.EQ: "=",
    exp.NEQ: "!=",
    exp.GT: ">",
    exp.GTE: ">=",
    exp.LT: "<",
    exp.LTE: "<=",
    exp.And: "AND",
    exp.Or: "OR",
    exp.DPipe: "||",
    exp.Like: "~~",
    exp.ILike: "~~*",
}


def duckdb_column_name(node: exp.Expr) -> str:
    """The name DuckDB gives an unaliased output expression, for the supported core.

    DuckDB names an output by its own rendering of the expression; this reproduces that for
    columns, literals, the supported aggregates (with FILTER) and arithmetic and comparison
    operators, and falls back to sqlglot's rendering for anything else.

    Args:
        node: an output expression without an alias.

    Returns:
        The column name.
    """
    if isinstance(node, exp.Alias):
        return str(node.alias)
    if isinstance(node, exp.Column):
        return str(node.name)
    if isinstance(node, exp.Paren):
        return duckdb_column_name(node.this)
    if isinstance(node, exp.Literal):
        return f"'{node.this}'" if node.is_string else str(node.this)
    if isinstance(node, exp.Neg):
        inner = node.this
        if isinstance(inner, exp.Literal) and not inner.is_string:
            return f"-{inner.this}"
        return f"(-({duckdb_column_name(inner)}))"
    if isinstance(node, exp.Count) and (node.this is None or isinstance(node.this, exp.Star)):
        return "count_star()"
    if isinstance(node, exp.Anonymous) and str(node.name).lower() == "mean":
        return f"mean({duckdb_column_name(node.expressions[0])})"
    if type(node) in AGGREGATES:
        return f"{AGGREGATES[type(node)]}({duckdb_column_name(node.this)})"
    if isinstance(node, exp.Filter):
        condition = node.expression.this
        return f"{duckdb_column_name(node.this)} FILTER (WHERE {duckdb_column_name(condition)})"
    if isinstance(node, exp.Boolean):
        return "true" if node.this else "false"
    if isinstance(node, exp.Null):
        return "NULL"
    if isinstance(node, exp.Not):
        inner = node.this
        if isinstance(inner, exp.Is):
            return f"({duckdb_column_name(inner.this)} IS NOT NULL)"
        if isinstance(inner, (exp.Like, exp.ILike)):
            negated = "!~~" if isinstance(inner, exp.Like) else "!~~*"
            left = duckdb_column_name(inner.this)
            return f"({left} {negated} {duckdb_column_name(inner.expression)})"
        return f"(NOT {duckdb_column_name(inner)})"
    if isinstance(node, exp.Is):
        return f"({duckdb_column_name(node.this)} IS NULL)"
    if isinstance(node, exp.Between):
        return (
            f"({duckdb_column_name(node.this)} BETWEEN {duckdb_column_name(node.args['low'])}"
            f" AND {duckdb_column_name(node.args['high'])})"
        )
    if isinstance(node, exp.In):
        items = ", ".join(duckdb_column_name(e) for e in node.expressions)
        return f"({duckdb_column_name(node.this)} IN ({items}))"
    if isinstance(node, exp.Cast) and _is_literal_value(node.this):
        return f"CAST({duckdb_column_name(node.this)} AS {node.to.sql(dialect=DIALECT)})"
    if isinstance(node, exp.Case) and node.this is None:
        text: str = "CASE "
        for branch in node.args.get("ifs") or []:
            condition = duckdb_column_name(branch.this)
            text += f" WHEN ({condition}) THEN ({duckdb_column_name(branch.args['true'])})"
        default = node.args.get("default")
        text += f" ELSE {duckdb_column_name(default) if default is not None else 'NULL'} END"
        return text
    symbol = _BINARY_SYMBOLS.get(type(node))
    if symbol is not None:
        left = duckdb_column_name(node.this)
        right = duckdb_column_name(node.expression)
        return f"({left} {symbol} {right})"
    return node.sql(dialect=DIALECT)
