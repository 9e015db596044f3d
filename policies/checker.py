"""The policy checker: is a parsed query allowed by every owning department's policy, and why.

`check` is pure: given a query the SQL front accepted, the requester, the declared purpose, the
active policies, the catalog and the time, it returns a `Decision` (ALLOW, NEEDS_APPROVAL or
DENY) whose reasons each name the rule, department, table, column and function involved.

Deny by default. The checker walks the tree itself, with its own allow-list of node kinds and
functions (a subset of the SQL front's), and judges every column use by its class in each
owner's policy and by where it appears:

- dimension: anywhere but inside aggregates (except COUNT(column));
- filter: only in WHERE, JOIN ON, FILTER (WHERE ...) and CASE conditions inside aggregates;
- measure: only inside the aggregates its policy lists;
- identity: nowhere (a template may exempt `column = literal` in WHERE; JOIN ON identity =
  identity links units without exposing them and is allowed);
- hidden (every column not listed): nowhere.

The privacy unit column is treated as `identity` unless the table sets `group_by_privacy_unit`
and classes it `dimension` (readings whose units are stations, not people).

Error oracles: whether a query fails must never depend on one row's value, so row-level
operations must be total. CAST of a non-constant is refused (TRY_CAST is total); `/` needs a
non-zero constant divisor (a column divisor can single out a value through infinity); `//` and
`%` need an integer constant divisor other than 0 and -1; `+`, `-`, `*`, unary minus and ABS on
non-constants are allowed only where DuckDB cannot overflow (a DOUBLE operand, or `+`/`-`
between DECIMALs, which DuckDB widens); comparisons, IN, BETWEEN, COALESCE, LEAST, GREATEST,
NULLIF and CASE branches must not make DuckDB cast a column to another type (a VARCHAR column
against a number fails on some values). Arithmetic over aggregates runs on released aggregates
and may use any divisor with `/`.

This module does not parse SQL (policies.sqlfront does), apply release rules (the aggregator
does), check approvals or signatures, or read a clock, file or network.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from sqlglot import exp

from dataisland.catalog import Catalog, TableInfo
from dataisland.errors import DataislandError, InvalidInputError
from dataisland.identity import Principal
from policies.document import AccessRule, ColumnClass, MeasureColumn, Policy, TablePolicy, Template
from policies.sqlfront import DIALECT, ParsedQuery, table_refs
from policies.templates import compile_template, match_template


class Verdict(enum.Enum):
    """The checker's answer."""

    ALLOW = "ALLOW"
    NEEDS_APPROVAL = "NEEDS_APPROVAL"
    DENY = "DENY"


@dataclass(frozen=True)
class Reason:
    """One finding: why a query is denied or needs approval.

    Attributes:
        rule: a stable rule id, e.g. `column.hidden` or `access.purpose` (docs/policies.md).
        message: a sentence for people; names constructs and columns, never data values.
        department: the owner whose policy this reason comes from.
        table, column, function: what the rule is about, when it is about one.
        denies: whether this reason alone makes the verdict DENY (False for approval notes).
    """

    rule: str
    message: str
    department: str | None = None
    table: str | None = None
    column: str | None = None
    function: str | None = None
    denies: bool = True

    def __str__(self) -> str:
        where = ", ".join(
            f"{label} {value}"
            for label, value in (
                ("department", self.department),
                ("table", self.table),
                ("column", self.column),
                ("function", self.function),
            )
            if value
        )
        return f"[{self.rule}] {self.message}" + (f" ({where})" if where else "")


@dataclass(frozen=True)
class TemplateUse:
    """The template a query was judged by.

    Attributes:
        table: the table whose policy holds the template.
        name: the template's name.
        template_hashes: owning department to the hash of its template (what approvals bind).
        canonical_sql: the template's canonical SQL with `$name` placeholders (log this, not the
            bound query: the values are for commitments only).
        parameters: the bound values as text (secret to the requester and the enclaves).
    """

    table: str
    name: str
    template_hashes: Mapping[str, str]
    canonical_sql: str
    parameters: Mapping[str, str] = field(repr=False)


@dataclass(frozen=True)
class Decision:
    """The checker's verdict and its explanation.

    Attributes:
        verdict: ALLOW, NEEDS_APPROVAL or DENY.
        reasons: every finding, denying ones first; empty for a plain ALLOW.
        policy_hashes: owning department to the hash of the policy that judged the query.
        k: owning department to the k its rules require for this query.
        template: the template the query matched, if every owner judged it by one.
    """

    verdict: Verdict
    reasons: tuple[Reason, ...]
    policy_hashes: Mapping[str, str]
    k: Mapping[str, int]
    template: TemplateUse | None = None

    @property
    def strictest_k(self) -> int | None:
        """The largest k among the owners (the total a released cell needs), or None."""
        return max(self.k.values()) if self.k else None

    def explain(self) -> str:
        """A few lines for people: the verdict, then one line per reason."""
        lines = [self.verdict.value]
        lines += [f"  {reason}" for reason in self.reasons]
        return "\n".join(lines)


# --- types, as far as totality needs them -------------------------------------------------

_INT_TYPES = re.compile(
    r"^(TINYINT|SMALLINT|INTEGER|INT|BIGINT|HUGEINT|UTINYINT|USMALLINT|"
    r"UINTEGER|UBIGINT|UHUGEINT)$"
)
_DECIMAL_TYPE = re.compile(r"^DECIMAL\((\d{1,2}),\s*(\d{1,2})\)$")


@dataclass(frozen=True)
class _Ty:
    """What the checker knows of an expression's value.

    family: int, decimal, float, string, temporal, bool, interval, null or unknown.
    """

    family: str
    const: bool = False
    agg: bool = False
    precision: int | None = None

    @property
    def numeric(self) -> bool:
        return self.family in ("int", "decimal", "float")


_NUMERIC_RESULT = {"int": 0, "decimal": 1, "float": 2}


def _family_of_type(type_name: str) -> _Ty:
    name = type_name.upper().strip()
    if _INT_TYPES.match(name):
        return _Ty("int")
    decimal = _DECIMAL_TYPE.match(name)
    if decimal:
        return _Ty("decimal", precision=int(decimal.group(1)))
    if name in ("FLOAT", "DOUBLE", "REAL"):
        return _Ty("float")
    if name in ("VARCHAR", "TEXT", "CHAR", "STRING"):
        return _Ty("string")
    if name.startswith(("DATE", "TIMESTAMP")):
        return _Ty("temporal")
    if name == "BOOLEAN":
        return _Ty("bool")
    if name == "INTERVAL":
        return _Ty("interval")
    return _Ty("unknown")


def _family_of_datatype(datatype: exp.Expr | None) -> _Ty:
    if not isinstance(datatype, exp.DataType):
        return _Ty("unknown")
    return _family_of_type(datatype.sql(dialect=DIALECT))


def _compatible(left: _Ty, right: _Ty) -> bool:
    """Whether DuckDB compares or mixes these without casting a column value (which can fail)."""
    if left.const and right.const:
        return True
    if "null" in (left.family, right.family):
        return True
    # A string constant is cast once, at bind time: failing or not never depends on data.
    if (left.const and left.family == "string") or (right.const and right.family == "string"):
        return True
    if left.numeric and right.numeric:
        return True
    return left.family == right.family and left.family != "unknown"


def _merge(tys: Sequence[_Ty]) -> _Ty:
    const = all(t.const for t in tys)
    agg = any(t.agg for t in tys)
    families = [
        t.family for t in tys if t.family != "null" and not (t.const and t.family == "string")
    ]
    if not families:
        families = [t.family for t in tys if t.family != "null"] or ["null"]
    numeric = [f for f in families if f in _NUMERIC_RESULT]
    if numeric and len(numeric) == len(families):
        family = max(numeric, key=lambda f: _NUMERIC_RESULT[f])
    else:
        family = families[0]
    return _Ty(family, const=const, agg=agg)


# --- contexts -----------------------------------------------------------------------------


class _Ctx(enum.Enum):
    OUTPUT = "the select list"
    GROUP = "GROUP BY"
    ORDER = "ORDER BY"
    HAVING = "HAVING"
    WHERE = "WHERE"
    JOIN = "JOIN ... ON"
    FILTER = "a FILTER (WHERE ...) clause"
    AGG = "an aggregate's argument"
    AGG_COND = "a condition inside an aggregate"


_EXPOSED = frozenset({_Ctx.OUTPUT, _Ctx.GROUP, _Ctx.ORDER, _Ctx.HAVING})
_PREDICATE = frozenset({_Ctx.WHERE, _Ctx.JOIN, _Ctx.FILTER, _Ctx.AGG_COND})
_ROW_LEVEL = frozenset({_Ctx.WHERE, _Ctx.JOIN, _Ctx.FILTER, _Ctx.AGG, _Ctx.AGG_COND, _Ctx.GROUP})

_AGGREGATE_NAMES: dict[type[exp.Expr], tuple[str, str]] = {
    exp.Count: ("count", "count"),
    exp.Sum: ("sum", "sum"),
    exp.Avg: ("avg", "avg"),
    exp.Min: ("min", "min"),
    exp.Max: ("max", "max"),
    exp.Variance: ("var", "var_samp"),
    exp.VariancePop: ("var", "var_pop"),
    exp.Stddev: ("stddev", "stddev"),
    exp.StddevSamp: ("stddev", "stddev_samp"),
    exp.StddevPop: ("stddev", "stddev_pop"),
}
"""Aggregate node kind to (the policy's name for it, the SQL name reasons show)."""

_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)
_DATE_PART_UNITS = frozenset(
    {
        "year",
        "quarter",
        "month",
        "week",
        "day",
        "dayofweek",
        "dow",
        "isodow",
        "dayofyear",
        "doy",
        "hour",
        "minute",
        "second",
        "yearweek",
        "isoyear",
        "decade",
        "century",
        "millennium",
        "epoch",
        "millisecond",
        "microsecond",
    }
)
_TEMPORAL_UNARY: frozenset[type[exp.Expr]] = frozenset(
    {
        exp.Year,
        exp.Month,
        exp.Day,
        exp.Quarter,
        exp.DayOfWeek,
        exp.DayOfMonth,
        exp.DayOfYear,
        exp.Week,
        exp.WeekOfYear,
        exp.LastDay,
        exp.Hour,
        exp.Minute,
        exp.Second,
        exp.Monthname,
        exp.Dayname,
        exp.DayOfWeekIso,
    }
)
_TEMPORAL_ANONYMOUS = frozenset(
    {"hour", "minute", "second", "isodow", "yearweek", "monthname", "dayname"}
)
_STRING_PREDICATES = frozenset({"starts_with", "ends_with", "contains", "prefix", "suffix"})


class _Judge:
    """Judges one query for one owning department (tables it holds, with its policy)."""

    def __init__(
        self,
        *,
        department: str,
        owned: Mapping[str, TablePolicy],
        catalog: Catalog,
        parsed: ParsedQuery,
        identity_literal_ok: bool,
    ) -> None:
        self.department = department
        self.owned = owned
        self.catalog = catalog
        self.select = parsed.tree
        self.identity_literal_ok = identity_literal_ok
        self.reasons: list[Reason] = []
        self.refs = table_refs(self.select)
        self.tables = sorted(set(self.refs.values()))
        self.aliases: dict[str, exp.Expr] = {}
        self._alias_stack: list[str] = []

    # reasons

    def deny(
        self,
        rule: str,
        message: str,
        *,
        table: str | None = None,
        column: str | None = None,
        function: str | None = None,
    ) -> None:
        reason = Reason(
            rule,
            message,
            department=self.department,
            table=table,
            column=column,
            function=function,
        )
        if reason not in self.reasons:
            self.reasons.append(reason)

    # entry

    def run(self) -> list[Reason]:
        select = self.select
        self._check_clauses()
        outputs = select.expressions
        for output in outputs:
            if isinstance(output, exp.Alias):
                self.aliases[str(output.alias).lower()] = output.this
        for output in outputs:
            self._check_alias(output)
        for output in outputs:
            target = output.this if isinstance(output, exp.Alias) else output
            self.expr(target, _Ctx.OUTPUT)
        joins = select.args.get("joins") or []
        for join in joins:
            on = join.args.get("on")
            if on is not None:
                self.expr(on, _Ctx.JOIN)
        where = select.args.get("where")
        if where is not None:
            self.expr(where.this, _Ctx.WHERE)
        group = select.args.get("group")
        if group is not None:
            for item in group.expressions:
                self._group_item(item, outputs)
        having = select.args.get("having")
        if having is not None:
            self.expr(having.this, _Ctx.HAVING)
        order = select.args.get("order")
        if order is not None:
            for ordered in order.expressions:
                self._order_item(ordered, outputs)
        return self.reasons

    def _check_clauses(self) -> None:
        select = self.select
        allowed = {
            "expressions",
            "from",
            "from_",
            "joins",
            "where",
            "group",
            "having",
            "order",
            "limit",
        }
        for key, value in select.args.items():
            if value in (None, False, []) or key in allowed:
                continue
            self.deny("node.not_allowed", f"the {key.upper()} clause is not allowed")
        group = select.args.get("group")
        if group is not None:
            for key, value in group.args.items():
                if key != "expressions" and value not in (None, False, []):
                    rule = "group.all" if key == "all" else "node.not_allowed"
                    self.deny(rule, f"GROUP BY {key.upper()} is not allowed; name the keys")
        limit = select.args.get("limit")
        if limit is not None:
            value = limit.args.get("expression")
            if not (isinstance(value, exp.Literal) and not value.is_string):
                self.deny("limit.not_literal", "LIMIT takes only an integer literal")
        for join in select.args.get("joins") or []:
            if not isinstance(join.this, exp.Table):
                self.deny("node.not_allowed", "only base tables may be joined")

    def _check_alias(self, output: exp.Expr) -> None:
        if not isinstance(output, exp.Alias):
            self.deny("alias.missing", "every output must be named (the SQL front names them)")
            return
        name = str(output.alias).lower()
        holders = [t for t in self.tables if name in self._columns(t)]
        if not holders:
            return
        target = output.this
        referenced = any(
            not column.table and str(column.name).lower() == name
            for column in self.select.find_all(exp.Column)
            if not _within(column, output)
        )
        if not referenced:
            return  # only an output name: nothing else in the query could bind to it
        same = (
            isinstance(target, exp.Column)
            and str(target.name).lower() == name
            and len(holders) == 1
            and (not target.table or self.refs.get(str(target.table).lower()) == holders[0])
        )
        if not same:
            self.deny(
                "alias.shadows_column",
                f"output alias '{name}' is also a column of {holders[0]}: GROUP BY would bind "
                "the column and ORDER BY the alias, so the name is ambiguous; rename the alias",
                table=holders[0],
                column=name,
            )

    def _group_item(self, item: exp.Expr, outputs: list[exp.Expr]) -> None:
        if isinstance(item, exp.Literal) and not item.is_string:
            text = str(item.this)
            if not text.isdigit() or not 1 <= int(text) <= len(outputs):
                self.deny("group.positional", f"GROUP BY {text} does not name an output")
                return
            target = outputs[int(text) - 1]
            target = target.this if isinstance(target, exp.Alias) else target
            if _has_aggregate(target):
                self.deny("group.positional", f"GROUP BY {text} refers to an aggregate")
                return
            # A position resolves to exactly one output expression, judged as a group key.
            self.expr(target, _Ctx.GROUP)
            return
        if isinstance(item, exp.PositionalColumn):
            self.deny("group.positional", "GROUP BY #n is not allowed; name the key")
            return
        self.expr(item, _Ctx.GROUP)

    def _order_item(self, ordered: exp.Expr, outputs: list[exp.Expr]) -> None:
        if not isinstance(ordered, exp.Ordered):
            self.deny("node.not_allowed", "ORDER BY items must be expressions")
            return
        item = ordered.this
        if isinstance(item, exp.Literal) and not item.is_string:
            text = str(item.this)
            if not text.isdigit() or not 1 <= int(text) <= len(outputs):
                self.deny("order.positional", f"ORDER BY {text} does not name an output")
            # Otherwise it orders by an output already judged (and ordering runs on released rows).
            return
        if isinstance(item, (exp.Var, exp.PositionalColumn)):
            self.deny("order.shorthand", "ORDER BY ALL and ORDER BY #n are not allowed")
            return
        self.expr(item, _Ctx.ORDER)

    # columns

    def _columns(self, table: str) -> Mapping[str, str]:
        info = self.catalog.get(table)
        return {c.lower(): t for c, t in info.columns.items()} if info else {}

    def _resolve(self, column: exp.Column) -> str | None:
        name = str(column.name).lower()
        if column.table:
            table = self.refs.get(str(column.table).lower())
            return table if table is not None and name in self._columns(table) else None
        holders = [t for t in self.tables if name in self._columns(t)]
        return holders[0] if len(holders) == 1 else None

    def _class_of(self, table: str, column: str) -> ColumnClass:
        rules = self.owned[table]
        klass = rules.column_class(column)
        info: TableInfo | None = self.catalog.get(table)
        is_unit = info is not None and column == info.privacy_unit.lower()
        if is_unit and not (rules.group_by_privacy_unit and klass == "dimension"):
            return "identity"
        return klass

    def column(self, node: exp.Column, ctx: _Ctx, function: str | None) -> _Ty:
        name = str(node.name).lower()
        table = self._resolve(node)
        if table is None:
            target = None if node.table else self.aliases.get(name)
            if target is None:
                self.deny("column.unknown", f"column '{name}' is unknown or ambiguous", column=name)
                return _Ty("unknown")
            return self._alias_ref(name, target, ctx, function)
        ty = _family_of_type(self._columns(table)[name])
        if table not in self.owned:
            return ty  # another owner's table: that owner's judge decides
        klass = self._class_of(table, name)
        where = ctx.value
        info = self.catalog.get(table)
        is_unit = info is not None and name == info.privacy_unit.lower()
        if klass == "hidden":
            self.deny(
                "column.hidden",
                f"column '{name}' is hidden (not listed in the policy) and may not be used in "
                f"{where}",
                table=table,
                column=name,
                function=function,
            )
        elif klass == "identity":
            if ctx is _Ctx.GROUP and is_unit:
                self.deny(
                    "group.privacy_unit",
                    f"grouping by the privacy unit '{name}' would make every group one unit",
                    table=table,
                    column=name,
                    function=function,
                )
            else:
                self.deny(
                    "column.identity",
                    f"identity column '{name}' may not be used in {where}",
                    table=table,
                    column=name,
                    function=function,
                )
        elif klass == "filter":
            if ctx not in _PREDICATE:
                self.deny(
                    "column.filter",
                    f"filter column '{name}' may be used only in WHERE, JOIN ON and FILTER "
                    f"conditions, not in {where}",
                    table=table,
                    column=name,
                    function=function,
                )
        elif klass == "dimension":
            if ctx is _Ctx.AGG and not (function == "count" and _direct_count_arg(node)):
                self.deny(
                    "dimension.in_aggregate",
                    f"dimension '{name}' may be grouped, output or filtered, not aggregated "
                    f"with {function}",
                    table=table,
                    column=name,
                    function=function,
                )
        elif isinstance(klass, MeasureColumn):
            allowed = klass.measure.aggregates
            if ctx is not _Ctx.AGG:
                self.deny(
                    "measure.outside_aggregate",
                    f"measure '{name}' may be used only inside its allowed aggregates "
                    f"({', '.join(allowed)}), not in {where}",
                    table=table,
                    column=name,
                    function=function,
                )
            elif function not in allowed:
                self.deny(
                    "measure.aggregate_not_allowed",
                    f"measure '{name}' allows {', '.join(allowed)}, not {function}",
                    table=table,
                    column=name,
                    function=function,
                )
        return ty

    def _alias_ref(self, name: str, target: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
        if name in self._alias_stack:
            self.deny("alias.cycle", f"alias '{name}' refers to itself")
            return _Ty("unknown")
        if ctx in _ROW_LEVEL and _has_aggregate(target):
            self.deny(
                "alias.aggregate",
                f"alias '{name}' names an aggregate and may not be used in {ctx.value}",
            )
            return _Ty("unknown", agg=True)
        self._alias_stack.append(name)
        try:
            return self.expr(target, ctx, function)
        finally:
            self._alias_stack.pop()

    # expressions

    def expr(self, node: exp.Expr, ctx: _Ctx, function: str | None = None) -> _Ty:
        handler = _HANDLERS.get(type(node))
        if handler is not None:
            return handler(self, node, ctx, function)
        if type(node) in _AGGREGATE_NAMES:
            return self.aggregate(node, ctx)
        name = _function_name(node)
        if isinstance(node, exp.Func):
            self.deny("function.not_allowed", f"function '{name}' is not allowed", function=name)
        else:
            self.deny("node.not_allowed", f"{name} is not allowed in {ctx.value}", function=name)
        return _Ty("unknown")

    def children(self, node: exp.Expr, ctx: _Ctx, function: str | None) -> list[_Ty]:
        return [self.expr(child, ctx, function) for child in node.iter_expressions()]

    def aggregate(self, node: exp.Expr, ctx: _Ctx) -> _Ty:
        policy_name, sql_name = _AGGREGATE_NAMES[type(node)]
        if ctx in _ROW_LEVEL:
            self.deny(
                "aggregate.place",
                f"aggregate {sql_name} may not be used in {ctx.value}",
                function=sql_name,
            )
            return _Ty("unknown", agg=True)
        for key, value in node.args.items():
            if key not in ("this", "big_int") and value not in (None, False, []):
                self.deny(
                    "aggregate.modifier",
                    f"{sql_name} with {key.upper()} is not allowed",
                    function=sql_name,
                )
        arg = node.this
        if arg is None or isinstance(arg, exp.Star):
            if not isinstance(node, exp.Count):
                self.deny("aggregate.star", f"{sql_name}(*) is not allowed", function=sql_name)
            return _Ty("int", agg=True)
        ty = self.expr(arg, _Ctx.AGG, policy_name)
        if policy_name in ("count",):
            return _Ty("int", agg=True)
        if policy_name in ("avg", "var", "stddev"):
            return _Ty("float", agg=True)
        if policy_name == "sum" and ty.family == "decimal":
            return _Ty("decimal", agg=True, precision=38)
        return _Ty(ty.family, agg=True)


def _within(node: exp.Expr, ancestor: exp.Expr) -> bool:
    parent: exp.Expr | None = node
    while parent is not None:
        if parent is ancestor:
            return True
        parent = parent.parent
    return False


def _direct_count_arg(node: exp.Expr) -> bool:
    parent = node.parent
    while isinstance(parent, exp.Paren):
        parent = parent.parent
    return isinstance(parent, exp.Count)


def _has_aggregate(node: exp.Expr) -> bool:
    return any(type(n) in _AGGREGATE_NAMES for n in node.walk())


def _function_name(node: exp.Expr) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    if isinstance(node, exp.Func):
        return str(node.sql_name()).lower()
    return type(node).__name__


_OPERATOR_NAMES: dict[type[exp.Expr], str] = {
    exp.EQ: "=",
    exp.NEQ: "<>",
    exp.GT: ">",
    exp.GTE: ">=",
    exp.LT: "<",
    exp.LTE: "<=",
    exp.Like: "like",
    exp.ILike: "ilike",
    exp.In: "in",
    exp.Between: "between",
}


def _op_name(node: exp.Expr) -> str:
    """The name reasons give an operator or function."""
    return _OPERATOR_NAMES.get(type(node)) or _function_name(node)


def _unparen(node: exp.Expr) -> exp.Expr:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def _const_number(node: exp.Expr) -> int | float | None:
    node = _unparen(node)
    negative = False
    if isinstance(node, exp.Neg):
        negative, node = True, _unparen(node.this)
    if not (isinstance(node, exp.Literal) and not node.is_string):
        return None
    text = str(node.this)
    try:
        value: int | float = int(text) if text.isdigit() else float(text)
    except ValueError:
        return None
    return -value if negative else value


# --- handlers -----------------------------------------------------------------------------

_Handler = Callable[[_Judge, exp.Expr, _Ctx, str | None], _Ty]
_HANDLERS: dict[type[exp.Expr], _Handler] = {}


def _handles(*kinds: type[exp.Expr]) -> Callable[[_Handler], _Handler]:
    def register(handler: _Handler) -> _Handler:
        for kind in kinds:
            _HANDLERS[kind] = handler
        return handler

    return register


@_handles(exp.Column)
def _column(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    assert isinstance(node, exp.Column)
    if not isinstance(node.this, exp.Identifier):
        judge.deny("shorthand.star", "column shorthands (*, COLUMNS) are not allowed")
        return _Ty("unknown")
    return judge.column(node, ctx, function)


@_handles(exp.Literal)
def _literal(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    assert isinstance(node, exp.Literal)
    if node.is_string:
        return _Ty("string", const=True)
    text = str(node.this).lower()
    if "e" in text:
        return _Ty("float", const=True)
    return _Ty("decimal" if "." in text else "int", const=True)


@_handles(exp.Null)
def _null(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    return _Ty("null", const=True)


@_handles(exp.Boolean)
def _boolean(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    return _Ty("bool", const=True)


@_handles(exp.Paren)
def _paren(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    return judge.expr(node.this, ctx, function)


@_handles(exp.Star)
def _star(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    judge.deny("shorthand.star", "* is allowed only as COUNT(*)")
    return _Ty("unknown")


@_handles(exp.Filter)
def _filter(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    inner = node.this
    if type(inner) not in _AGGREGATE_NAMES:
        judge.deny("filter.not_aggregate", "FILTER applies only to an aggregate", function="filter")
        return _Ty("unknown")
    ty = judge.aggregate(inner, ctx)
    where = node.expression
    if isinstance(where, exp.Where):
        judge.expr(where.this, _Ctx.FILTER, "filter")
    else:
        judge.deny("filter.shape", "FILTER must be FILTER (WHERE ...)", function="filter")
    return ty


@_handles(exp.Add, exp.Sub, exp.Mul)
def _arith(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    left = judge.expr(node.this, ctx, function)
    right = judge.expr(node.expression, ctx, function)
    op = "+" if isinstance(node, exp.Add) else "-" if isinstance(node, exp.Sub) else "*"
    merged = _merge([left, right])
    if merged.const:
        return merged
    for side in (left, right):
        fits = side.numeric or side.family in ("null", "unknown") or side.const
        if not fits:
            judge.deny(
                "type.mismatch",
                f"'{op}' on a {side.family} value is not allowed (date arithmetic can overflow "
                "and text would be cast)",
                function=op,
            )
            return merged
    if left.agg or right.agg:
        return merged  # arithmetic on released aggregates
    if _total_arithmetic(op, left, right):
        if merged.family == "decimal":
            width = max(left.precision or 0, right.precision or 0) + 1
            return _Ty("decimal", precision=width)
        return merged
    judge.deny(
        "arithmetic.overflow",
        f"'{op}' on {left.family} and {right.family} values can overflow on one row's value; "
        "use a DOUBLE operand (e.g. TRY_CAST(x AS DOUBLE)) or aggregate first",
        function=op,
    )
    return merged


def _total_arithmetic(op: str, left: _Ty, right: _Ty) -> bool:
    """Whether DuckDB computes `left op right` on row values without any possible error."""
    if "float" in (left.family, right.family):
        return True  # DOUBLE arithmetic gives infinities, never errors
    if op == "*":
        return False
    # DuckDB widens DECIMAL + and - by one digit, so they cannot overflow below 38 digits.
    sides = (left, right)
    if not any(s.family == "decimal" for s in sides):
        return False
    return all(
        (s.family == "decimal" and s.precision is not None and s.precision < 37)
        or (s.family == "int" and s.const)
        for s in sides
    )


@_handles(exp.Div)
def _div(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    left = judge.expr(node.this, ctx, function)
    right = judge.expr(node.expression, ctx, function)
    for side in (left, right):
        if not (side.numeric or side.family == "null"):
            judge.deny("type.mismatch", f"'/' on a {side.family} value", function="/")
    const = left.const and right.const
    if const or left.agg or right.agg:
        return _Ty("float", const=const, agg=left.agg or right.agg)
    divisor = _const_number(node.expression)
    if divisor is None or divisor == 0:
        judge.deny(
            "division.unsafe",
            "division of row values is allowed only by a non-zero number literal: a divisor "
            "that depends on a row can single out one value (x / 0 is infinite)",
            function="/",
        )
    return _Ty("float")


@_handles(exp.IntDiv, exp.Mod)
def _intdiv(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    op = "//" if isinstance(node, exp.IntDiv) else "%"
    left = judge.expr(node.this, ctx, function)
    right = judge.expr(node.expression, ctx, function)
    for side in (left, right):
        if not (side.numeric or side.family == "null"):
            judge.deny("type.mismatch", f"'{op}' on a {side.family} value", function=op)
    if left.const and right.const:
        return _merge([left, right])
    divisor = _const_number(node.expression)
    if (
        divisor is None
        or divisor in (0, -1)
        or (isinstance(divisor, float) and right.family == "float")
    ):
        judge.deny(
            "division.unsafe",
            f"'{op}' needs a non-zero integer literal divisor other than -1 (otherwise it "
            "fails on some values)",
            function=op,
        )
    return _merge([left, right])


@_handles(exp.Neg)
def _neg(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    ty = judge.expr(node.this, ctx, function)
    if ty.const or ty.agg:
        return ty
    if ty.family not in ("float", "decimal", "null"):
        judge.deny(
            "arithmetic.overflow",
            f"unary minus on a {ty.family} value can overflow on one value",
            function="-",
        )
    return ty


def _identity_literal(
    judge: _Judge, node: exp.Expr, ctx: _Ctx, operands: Sequence[exp.Expr | None] | None = None
) -> bool:
    """Handle `identity_column <op> literal`; True when fully handled here."""
    if operands is None:
        operands = [node.this, node.args.get("expression")]
        if isinstance(node, exp.In):
            operands = [node.this, *node.expressions]
        elif isinstance(node, exp.Between):
            operands = [node.this, node.args.get("low"), node.args.get("high")]
    columns = [
        o for o in (_unparen(x) for x in operands if x is not None) if isinstance(o, exp.Column)
    ]
    for column in columns:
        table = judge._resolve(column)
        if table is None or table not in judge.owned:
            continue
        name = str(column.name).lower()
        if judge._class_of(table, name) != "identity":
            continue
        others = [o for o in operands if o is not None and _unparen(o) is not column]
        if not others or not all(_is_const(o) for o in others):
            continue
        op = _op_name(node)
        if isinstance(node, exp.EQ) and ctx is _Ctx.WHERE and judge.identity_literal_ok:
            return True
        judge.deny(
            "identity.literal_comparison",
            f"comparing identity column '{name}' with a literal ({op}) singles out one subject; "
            "only a template exempting identity_literal_comparison may (with =, in WHERE)",
            table=table,
            column=name,
            function=op,
        )
        return True
    return False


def _is_const(node: exp.Expr) -> bool:
    return not any(isinstance(n, (exp.Column, exp.Star)) for n in node.walk())


@_handles(*_COMPARISONS)
def _comparison(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    if _identity_literal(judge, node, ctx):
        return _Ty("bool")
    if ctx is _Ctx.JOIN and isinstance(node, exp.EQ) and _identity_join(judge, node):
        return _Ty("bool")
    left = judge.expr(node.this, ctx, function)
    right = judge.expr(node.expression, ctx, function)
    if not _compatible(left, right):
        judge.deny(
            "type.mismatch",
            f"comparing a {left.family} value with a {right.family} value makes DuckDB cast "
            "each value, which can fail on some values",
            function=_op_name(node),
        )
    return _Ty("bool", const=left.const and right.const, agg=left.agg or right.agg)


def _identity_join(judge: _Judge, node: exp.Expr) -> bool:
    left, right = _unparen(node.this), _unparen(node.expression)
    if not (isinstance(left, exp.Column) and isinstance(right, exp.Column)):
        return False
    sides = []
    for column in (left, right):
        table = judge._resolve(column)
        if table is None:
            return False
        name = str(column.name).lower()
        owned = table in judge.owned
        sides.append((owned and judge._class_of(table, name) == "identity", owned))
    # Equality of two identity columns links units without exposing either value.
    return all(identity or not owned for identity, owned in sides) and any(i for i, _ in sides)


@_handles(exp.Between)
def _between(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    if _identity_literal(judge, node, ctx):
        return _Ty("bool")
    this = judge.expr(node.this, ctx, function)
    for key in ("low", "high"):
        bound = node.args.get(key)
        if bound is None:
            continue
        ty = judge.expr(bound, ctx, function)
        if not _compatible(this, ty):
            judge.deny(
                "type.mismatch",
                f"BETWEEN a {this.family} value and a {ty.family} bound makes DuckDB cast each "
                "value",
                function="between",
            )
    return _Ty("bool", const=this.const, agg=this.agg)


@_handles(exp.In)
def _in(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    assert isinstance(node, exp.In)
    if _identity_literal(judge, node, ctx):
        return _Ty("bool")
    for key in ("query", "unnest", "field"):
        if node.args.get(key) is not None:
            judge.deny("node.not_allowed", "IN is allowed only over a list of literals")
    this = judge.expr(node.this, ctx, function)
    for item in node.expressions:
        if not _is_const(item):
            judge.deny("node.not_allowed", "IN is allowed only over a list of literals")
        ty = judge.expr(item, ctx, function)
        if not _compatible(this, ty):
            judge.deny(
                "type.mismatch",
                f"IN compares a {this.family} value with a {ty.family} literal",
                function="in",
            )
    return _Ty("bool", const=this.const, agg=this.agg)


@_handles(exp.Like, exp.ILike)
def _like(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    name = "like" if isinstance(node, exp.Like) else "ilike"
    if _identity_literal(judge, node, ctx):
        return _Ty("bool")
    for key in node.args:
        if key not in ("this", "expression") and node.args[key] not in (None, False, []):
            judge.deny("node.not_allowed", f"{name.upper()} with {key.upper()} is not allowed")
    this = judge.expr(node.this, ctx, function)
    pattern = node.args.get("expression")
    if pattern is None or not _is_const(pattern):
        judge.deny("like.pattern", f"the {name.upper()} pattern must be a literal", function=name)
    if pattern is not None:
        judge.expr(pattern, ctx, function)
    if this.family != "string" and not this.const:
        judge.deny("type.mismatch", f"{name.upper()} applies to text values", function=name)
    return _Ty("bool", const=this.const, agg=this.agg)


@_handles(exp.Is)
def _is(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    this = judge.expr(node.this, ctx, function)
    if not isinstance(node.expression, (exp.Null, exp.Boolean)):
        judge.deny("node.not_allowed", "IS is allowed only with NULL, TRUE or FALSE")
    return _Ty("bool", const=this.const, agg=this.agg)


@_handles(exp.And, exp.Or, exp.Not)
def _logic(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    tys = judge.children(node, ctx, function)
    return _Ty("bool", const=all(t.const for t in tys), agg=any(t.agg for t in tys))


def _condition_ctx(ctx: _Ctx) -> _Ctx:
    return _Ctx.AGG_COND if ctx in (_Ctx.AGG, _Ctx.AGG_COND) else ctx


def _same_family(judge: _Judge, tys: Sequence[_Ty], what: str) -> None:
    for i, a in enumerate(tys):
        for b in tys[i + 1 :]:
            if not _compatible(a, b):
                judge.deny(
                    "type.mismatch",
                    f"{what} mixes {a.family} and {b.family} values, which makes DuckDB cast "
                    "values (which can fail on some)",
                    function=what.lower(),
                )
                return


@_handles(exp.Case)
def _case(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    cond_ctx = _condition_ctx(ctx)
    subject = node.args.get("this")
    subject_ty = judge.expr(subject, cond_ctx, function) if subject is not None else None
    results: list[_Ty] = []
    for branch in node.args.get("ifs") or []:
        if not isinstance(branch, exp.If):
            judge.deny("node.not_allowed", "malformed CASE branch", function="case")
            continue
        cond = judge.expr(branch.this, cond_ctx, function)
        if subject_ty is not None and not _compatible(subject_ty, cond):
            judge.deny("type.mismatch", "CASE compares values of different types", function="case")
        results.append(judge.expr(branch.args["true"], ctx, function))
    default = node.args.get("default")
    if default is not None:
        results.append(judge.expr(default, ctx, function))
    _same_family(judge, results, "CASE")
    return _merge(results) if results else _Ty("null", const=True)


@_handles(exp.If)
def _if(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    judge.expr(node.this, _condition_ctx(ctx), function)
    results = [judge.expr(node.args["true"], ctx, function)]
    false = node.args.get("false")
    if false is not None:
        results.append(judge.expr(false, ctx, function))
    _same_family(judge, results, "IF")
    return _merge(results)


@_handles(exp.Coalesce, exp.Least, exp.Greatest, exp.Nullif)
def _variadic(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    tys = judge.children(node, ctx, function)
    name = _function_name(node)
    for key in node.args:
        if key not in ("this", "expressions", "expression") and node.args[key] not in (
            None,
            False,
            [],
        ):
            judge.deny("function.not_allowed", f"{name} with {key} is not allowed", function=name)
    _same_family(judge, tys, name.upper())
    return _merge(tys)


@_handles(exp.DPipe)
def _concat(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    tys = judge.children(node, ctx, function)
    return _Ty("string", const=all(t.const for t in tys), agg=any(t.agg for t in tys))


@_handles(exp.Lower, exp.Upper, exp.Length, exp.Trim)
def _string_fn(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    name = _function_name(node)
    for key in node.args:
        if key != "this" and node.args[key] not in (None, False, []):
            judge.deny("function.not_allowed", f"{name} with {key} is not allowed", function=name)
    ty = judge.expr(node.this, ctx, function)
    if ty.family not in ("string", "null") and not ty.const:
        judge.deny("type.mismatch", f"{name} applies to text values", function=name)
    family = "int" if isinstance(node, exp.Length) else "string"
    return _Ty(family, const=ty.const, agg=ty.agg)


@_handles(exp.Abs, exp.Sign, exp.Floor, exp.Ceil, exp.Round)
def _numeric_fn(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    name = _function_name(node)
    ty = judge.expr(node.this, ctx, function)
    for key, value in node.args.items():
        if key == "this" or value in (None, False, []):
            continue
        if key in ("decimals", "expression") and isinstance(value, exp.Expr):
            if _const_number(value) is None or isinstance(_const_number(value), float):
                judge.deny(
                    "function.argument",
                    f"{name}'s precision must be an integer literal",
                    function=name,
                )
            continue
        judge.deny("function.not_allowed", f"{name} with {key} is not allowed", function=name)
    if not (ty.numeric or ty.family == "null") and not ty.const:
        judge.deny("type.mismatch", f"{name} applies to numbers", function=name)
    if isinstance(node, exp.Abs) and not (ty.const or ty.agg) and ty.family == "int":
        judge.deny(
            "arithmetic.overflow",
            "abs of an integer can overflow on one value; use a DOUBLE operand",
            function=name,
        )
    if isinstance(node, exp.Sign):
        return _Ty("int", const=ty.const, agg=ty.agg)
    return ty


def _unit_ok(node: exp.Expr | None) -> bool:
    node = _unparen(node) if node is not None else None
    if isinstance(node, exp.Var):
        return str(node.name).lower() in _DATE_PART_UNITS
    if isinstance(node, exp.Literal) and node.is_string:
        return str(node.this).lower() in _DATE_PART_UNITS
    return False


def _temporal_arg(
    judge: _Judge, node: exp.Expr | None, ctx: _Ctx, function: str | None, name: str
) -> _Ty:
    if node is None:
        judge.deny("function.argument", f"{name} needs a date argument", function=name)
        return _Ty("unknown")
    ty = judge.expr(node, ctx, function)
    if ty.family not in ("temporal", "null") and not ty.const:
        judge.deny("type.mismatch", f"{name} applies to dates and timestamps", function=name)
    return ty


@_handles(exp.DateTrunc, exp.TimestampTrunc)
def _date_trunc(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    name = "date_trunc"
    unit = node.args.get("unit")
    if not _unit_ok(unit):
        judge.deny("function.argument", f"{name} needs a literal unit", function=name)
    for key, value in node.args.items():
        if key not in ("this", "unit") and value not in (None, False, []):
            judge.deny("function.not_allowed", f"{name} with {key} is not allowed", function=name)
    ty = _temporal_arg(judge, node.this, ctx, function, name)
    return _Ty("temporal", const=ty.const, agg=ty.agg)


@_handles(exp.Extract)
def _extract(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    if not _unit_ok(node.this):
        judge.deny("function.argument", "extract needs a literal unit", function="extract")
    ty = _temporal_arg(judge, node.expression, ctx, function, "extract")
    return _Ty("int", const=ty.const, agg=ty.agg)


@_handles(*_TEMPORAL_UNARY)
def _date_part_fn(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    name = _function_name(node)
    for key, value in node.args.items():
        if key != "this" and value not in (None, False, []):
            judge.deny("function.not_allowed", f"{name} with {key} is not allowed", function=name)
    ty = _temporal_arg(judge, node.this, ctx, function, name)
    family = "temporal" if isinstance(node, exp.LastDay) else "int"
    if isinstance(node, (exp.Monthname, exp.Dayname)):
        family = "string"
    return _Ty(family, const=ty.const, agg=ty.agg)


@_handles(exp.DateDiff)
def _datediff(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    if not _unit_ok(node.args.get("unit")):
        judge.deny("function.argument", "datediff needs a literal unit", function="datediff")
    for key, value in node.args.items():
        if key not in ("this", "expression", "unit") and value not in (None, False, []):
            judge.deny("function.not_allowed", f"datediff with {key}", function="datediff")
    a = _temporal_arg(judge, node.this, ctx, function, "datediff")
    b = _temporal_arg(judge, node.expression, ctx, function, "datediff")
    return _Ty("int", const=a.const and b.const, agg=a.agg or b.agg)


@_handles(exp.Anonymous)
def _anonymous(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    assert isinstance(node, exp.Anonymous)
    name = str(node.name).lower()
    args = list(node.expressions)
    if name in _TEMPORAL_ANONYMOUS and len(args) == 1:
        ty = _temporal_arg(judge, args[0], ctx, function, name)
        family = "string" if name in ("monthname", "dayname") else "int"
        return _Ty(family, const=ty.const, agg=ty.agg)
    if name in ("date_part", "datepart") and len(args) == 2:
        if not _unit_ok(args[0]):
            judge.deny("function.argument", f"{name} needs a literal unit", function=name)
        ty = _temporal_arg(judge, args[1], ctx, function, name)
        return _Ty("int", const=ty.const, agg=ty.agg)
    if name == "ifnull" and len(args) == 2:
        tys = [judge.expr(a, ctx, function) for a in args]
        _same_family(judge, tys, "IFNULL")
        return _merge(tys)
    if name in ("trunc", "even", "isnan", "isinf", "isfinite") and len(args) == 1:
        ty = judge.expr(args[0], ctx, function)
        if not (ty.numeric or ty.family == "null") and not ty.const:
            judge.deny("type.mismatch", f"{name} applies to numbers", function=name)
        if name == "even" and ty.family == "int" and not (ty.const or ty.agg):
            judge.deny("arithmetic.overflow", "even of an integer can overflow", function=name)
        if name.startswith("is"):
            return _Ty("bool", const=ty.const, agg=ty.agg)
        return ty
    if name in _STRING_PREDICATES and len(args) == 2:
        return _string_predicate_args(judge, node, name, args, ctx, function)
    judge.deny("function.not_allowed", f"function '{name}' is not allowed", function=name)
    return _Ty("unknown")


@_handles(exp.StartsWith, exp.EndsWith, exp.Contains)
def _string_predicate(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    name = _function_name(node)
    for key, value in node.args.items():
        if key not in ("this", "expression") and value not in (None, False, []):
            judge.deny("function.not_allowed", f"{name} with {key} is not allowed", function=name)
    args = [node.this, node.args.get("expression")]
    if any(a is None for a in args):
        judge.deny("function.argument", f"{name} takes two arguments", function=name)
        return _Ty("bool")
    return _string_predicate_args(
        judge, node, name, [a for a in args if a is not None], ctx, function
    )


def _string_predicate_args(
    judge: _Judge,
    node: exp.Expr,
    name: str,
    args: list[exp.Expr],
    ctx: _Ctx,
    function: str | None,
) -> _Ty:
    if _identity_literal(judge, node, ctx, operands=args):
        return _Ty("bool")
    a = judge.expr(args[0], ctx, function)
    b = judge.expr(args[1], ctx, function)
    if not _is_const(args[1]):
        judge.deny("like.pattern", f"{name}'s second argument must be a literal", function=name)
    if a.family != "string" and not a.const:
        judge.deny("type.mismatch", f"{name} applies to text values", function=name)
    return _Ty("bool", const=a.const and b.const, agg=a.agg)


@_handles(exp.Trunc, exp.IsNan, exp.IsInf)
def _numeric_unary(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    name = _function_name(node)
    for key, value in node.args.items():
        if key != "this" and value not in (None, False, []):
            judge.deny("function.not_allowed", f"{name} with {key} is not allowed", function=name)
    ty = judge.expr(node.this, ctx, function)
    if not (ty.numeric or ty.family == "null") and not ty.const:
        judge.deny("type.mismatch", f"{name} applies to numbers", function=name)
    if isinstance(node, (exp.IsNan, exp.IsInf)):
        return _Ty("bool", const=ty.const, agg=ty.agg)
    return ty


@_handles(exp.TryCast)
def _try_cast(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    ty = judge.expr(node.this, ctx, function)
    target = _family_of_datatype(node.args.get("to") or exp.Null())
    return _Ty(target.family, const=ty.const, agg=ty.agg, precision=target.precision)


@_handles(exp.Cast)
def _cast(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    ty = judge.expr(node.this, ctx, function)
    target = _family_of_datatype(node.args.get("to") or exp.Null())
    if not ty.const:
        judge.deny(
            "cast.not_total",
            "CAST of a value can fail on one row's value; use TRY_CAST",
            function="cast",
        )
    return _Ty(target.family, const=ty.const, agg=ty.agg, precision=target.precision)


@_handles(exp.Interval)
def _interval(judge: _Judge, node: exp.Expr, ctx: _Ctx, function: str | None) -> _Ty:
    if not _is_const(node):
        judge.deny("node.not_allowed", "INTERVAL takes only literals", function="interval")
    return _Ty("interval", const=True)


# --- the check ----------------------------------------------------------------------------


def _access_reasons(
    rules: Sequence[AccessRule],
    *,
    requester: Principal,
    purpose: str,
    department: str,
    table: str,
    where: str,
) -> list[Reason]:
    def deny(rule: str, message: str) -> list[Reason]:
        return [Reason(rule, message, department=department, table=table)]

    by_department = [r for r in rules if requester.department in r.departments]
    if not by_department:
        return deny(
            "access.department",
            f"department {requester.department} may not query {table} ({where}.access)",
        )
    by_role = [r for r in by_department if requester.role in r.roles]
    if not by_role:
        return deny(
            "access.role",
            f"role {requester.role} of {requester.department} may not query {table} "
            f"({where}.access)",
        )
    if not any(purpose in r.purposes for r in by_role):
        return deny(
            "access.purpose",
            f"purpose {purpose!r} is not allowed for {requester.department}/{requester.role} "
            f"on {table} ({where}.access)",
        )
    return []


def _find_template(
    policy: Policy, tables: Sequence[str], parsed: ParsedQuery
) -> tuple[str, str, Template, str, dict[str, str]] | None:
    for table in tables:
        for name, template in sorted(policy.tables[table].templates.items()):
            try:
                shape = compile_template(template.sql, template.parameters)
            except DataislandError:
                continue  # `policy lint` reports it; a broken template matches nothing
            values = match_template(shape, parsed)
            if values is not None:
                return table, name, template, shape.canonical_sql, values
    return None


def check(
    parsed: ParsedQuery,
    *,
    requester: Principal,
    purpose: str,
    policies: Mapping[str, Policy],
    catalog: Catalog,
    now: dt.datetime,
    only: Collection[str] | None = None,
) -> Decision:
    """Judge a parsed query against the policy of every department holding its tables.

    Every owner's policy must allow the query; each owner's k is reported and the release uses
    the largest in total and each owner's own on its share. A query with the exact shape of an
    owner's template (parameters bound as literals) is judged by that template's access,
    approval, k and exemptions instead of the table's.

    Args:
        parsed: a query the SQL front accepted (parameters already bound).
        requester: who asks (from its verified certificate).
        purpose: the purpose the requester declared (signed in its envelope).
        policies: department to its active, verified policy.
        catalog: the federation's tables (holders, privacy units, column types).
        now: the time the decision is made (aware).
        only: judge only these owners (a department enclave judges by its own policy alone;
            the other owners' enclaves judge by theirs). None judges every owner.

    Returns:
        The decision; a DENY lists every problem found, not only the first.

    Raises:
        InvalidInputError: `now` is naive.
    """
    if not isinstance(now, dt.datetime) or now.utcoffset() is None:
        raise InvalidInputError("now must be an aware datetime")
    reasons: list[Reason] = []
    hashes: dict[str, str] = {}
    ks: dict[str, int] = {}
    owners: dict[str, list[str]] = {}
    for table in parsed.tables:
        info = catalog.get(table)
        if info is None:
            reasons.append(
                Reason("table.unknown", f"table {table} is not in the catalog", table=table)
            )
            continue
        for department in sorted(info.holders):
            owners.setdefault(department, []).append(table)
    if not owners and not reasons:
        reasons.append(Reason("table.no_owner", "the query reads no table a department holds"))
    uses: dict[str, tuple[str, str, str, dict[str, str]]] = {}
    approvals: list[Reason] = []
    for department, tables in sorted(owners.items()):
        if only is not None and department not in only:
            continue
        policy = policies.get(department)
        if policy is None:
            reasons.append(
                Reason(
                    "policy.missing",
                    f"no active policy of {department}, which holds {', '.join(tables)}",
                    department=department,
                    table=tables[0],
                )
            )
            continue
        if policy.department != department:
            reasons.append(
                Reason(
                    "policy.department_mismatch",
                    f"the policy given for {department} is {policy.department}'s",
                    department=department,
                )
            )
            continue
        hashes[department] = policy.hash
        if not policy.is_valid_at(now):
            reasons.append(
                Reason(
                    "policy.not_valid",
                    f"{department}'s policy version {policy.version} is valid from "
                    f"{policy.document.valid_from} until {policy.document.valid_until}, "
                    "not now",
                    department=department,
                )
            )
        missing = [t for t in tables if t not in policy.tables]
        for table in missing:
            reasons.append(
                Reason(
                    "policy.no_table_rules",
                    f"{department}'s policy has no rules for {table}: nothing may be asked",
                    department=department,
                    table=table,
                )
            )
        if missing:
            continue
        found = _find_template(policy, tables, parsed)
        exempt = False
        if found is not None:
            table, name, template, canonical_sql, values = found
            release = template.release
            exempt = bool(
                release
                and release.exemptions
                and release.exemptions.identity_literal_comparison == "allow"
            )
            reasons += _access_reasons(
                template.access,
                requester=requester,
                purpose=purpose,
                department=department,
                table=table,
                where=f"tables.{table}.templates.{name}",
            )
            k = release.k if release and release.k is not None else policy.tables[table].k
            ks[department] = max([k] + [policy.tables[t].k for t in tables if t != table])
            if template.approval == "manual":
                approvals.append(
                    Reason(
                        "approval.manual",
                        f"template {name} of {department} needs an officer's approval",
                        department=department,
                        table=table,
                        denies=False,
                    )
                )
            uses[department] = (table, name, canonical_sql, values)
        else:
            ks[department] = max(policy.tables[t].k for t in tables)
            for table in tables:
                reasons += _access_reasons(
                    policy.tables[table].access,
                    requester=requester,
                    purpose=purpose,
                    department=department,
                    table=table,
                    where=f"tables.{table}",
                )
                if policy.tables[table].approval == "manual":
                    approvals.append(
                        Reason(
                            "approval.manual",
                            f"{department} requires an officer's approval for queries on {table}",
                            department=department,
                            table=table,
                            denies=False,
                        )
                    )
        judge = _Judge(
            department=department,
            owned={t: policy.tables[t] for t in tables},
            catalog=catalog,
            parsed=parsed,
            identity_literal_ok=exempt,
        )
        try:
            reasons += judge.run()
        except RecursionError:
            reasons.append(
                Reason("query.too_deep", "the query is nested too deeply", department=department)
            )
    judged = owners if only is None else {d: t for d, t in owners.items() if d in only}
    template_use = _template_use(uses, judged, policies)
    if any(r.denies for r in reasons):
        verdict = Verdict.DENY
    elif approvals:
        verdict = Verdict.NEEDS_APPROVAL
    else:
        verdict = Verdict.ALLOW
    return Decision(
        verdict=verdict,
        reasons=tuple(reasons + approvals),
        policy_hashes=MappingProxyType(dict(sorted(hashes.items()))),
        k=MappingProxyType(dict(sorted(ks.items()))),
        template=template_use,
    )


def _template_use(
    uses: Mapping[str, tuple[str, str, str, dict[str, str]]],
    owners: Mapping[str, list[str]],
    policies: Mapping[str, Policy],
) -> TemplateUse | None:
    if not uses or set(uses) != set(owners):
        return None
    first = next(iter(uses.values()))
    if any((u[0], u[1], u[2]) != first[:3] for u in uses.values()):
        return None
    table, name, canonical_sql, values = first
    return TemplateUse(
        table=table,
        name=name,
        template_hashes=MappingProxyType(
            {d: policies[d].template_hash(table, name) for d in sorted(uses)}
        ),
        canonical_sql=canonical_sql,
        parameters=MappingProxyType(dict(values)),
    )
