"""The federated planner: one checked query becomes a per-shard partial and a merge, as SQL text.

`plan_query` splits every supported aggregate into decomposable pieces that each department
computes on its own shard (the partial), and writes the SQL that combines the pieces of all
departments into the answer one database holding all the rows would give (the merge):

- COUNT -> count, summed; SUM -> sum, summed; MIN/MAX -> min/max of the pieces;
- AVG -> sum and count;
- VAR_*/STDDEV_* -> count, mean and M2 (= var_pop * count) per shard, combined with the
  parallel formula of Chan, Golub and LeVeque, which is numerically stable: no sum of squares.

Each partial also carries, per group, the number of distinct privacy units (`__units`) and,
per aggregate cell that does not simply count the group's rows, the distinct units whose values
enter that cell (`__units_<j>`: those passing its FILTER and with a non-NULL argument, so a CASE
that keeps one person's value is counted as one unit). The plan has two partials: the exact one
(ADR 0010) and one that bounds every unit count from below by the shard's per-row unit masks
(ADR 0016: at most the distinct units, 0 only for no rows), as cheap as the plain query; a
department picks with `FederatedPlan.partial_sql_for`. `merge_partials` checks that every
expected department answered, stacks the partials with Arrow and runs the merge through an
engine it is given.

The release rules are part of the merge, before any arithmetic in the select list and before
HAVING, ORDER BY and LIMIT: a group is released only if every department's non-empty share has
at least that department's k units and the largest share has at least the strictest k (the
largest share is a proven lower bound of the distinct units in total, since one person may
appear in several departments); a failing group is dropped, key and all (a global aggregate
with no surviving share gives no row). A cell is checked the same way on its own units and,
when it fails, is NULL in every expression that uses it, HAVING and ORDER BY included.

This module does not: open a database or import DuckDB (engines are passed in) or check
policies. It plans joins only between tables held entirely by one department; anything needing
rows from two departments is refused, never answered approximately.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import pyarrow as pa
from sqlglot import exp

from dataisland.catalog import Catalog, TableInfo
from dataisland.errors import (
    InvalidInputError,
    MissingPartialError,
    SchemaMismatchError,
    UnknownTableError,
    UnsupportedQueryError,
)
from dataisland.unitmasks import MASK_COLUMNS, bound_reaches
from enclave.engine import EngineResult, MergeEngine
from policies.sqlfront import (
    DIALECT,
    ParsedQuery,
    expression_key,
    is_aggregate,
    resolve_group_keys,
    table_refs,
)

PARTIALS_RELATION = "partials"
"""The relation name the merge SQL reads: all departments' partials stacked."""

DEPARTMENT_COLUMN = "__department"
"""The column `merge_partials` adds to each partial, naming the department that sent it."""

UNITS_COLUMN = "__units"
"""The partial column holding the distinct privacy units of each group."""

K_COLUMN = "__k"
"""The column `merge_partials` adds to each partial: its department's threshold k."""

KMAX_COLUMN = "__kmax"
"""The column `merge_partials` adds to each partial: the strictest k of all departments."""

_INTEGER_TYPES = frozenset(
    {
        "TINYINT",
        "SMALLINT",
        "INTEGER",
        "INT",
        "BIGINT",
        "HUGEINT",
        "UTINYINT",
        "USMALLINT",
        "UINTEGER",
        "UBIGINT",
        "INT1",
        "INT2",
        "INT4",
        "INT8",
        "BOOLEAN",
    }
)


@dataclass(frozen=True)
class FederatedPlan:
    """What each department computes and how the aggregator combines it.

    Attributes:
        partial_sql: runs on each department's shard, where each logical table exists under
            its logical name.
        merge_sql: runs over `partials`, the union of all departments' partial results with
            an added `__department VARCHAR` column; its last two columns repeat, on every
            released row, what `suppression_sql` counts (`SUPPRESSION_COLUMNS`).
        departments: the departments that must each send exactly one partial.
        output_names: the merge's output column names, as DuckDB names them for the
            canonical query.
        unit_columns: the partial columns holding distinct privacy-unit counts
            (`__units`, then `__units_<j>` per aggregate cell with units of its own).
        partial_columns: every partial column, in order (`merge_partials` checks them).
        group_columns: the partial columns holding the GROUP BY keys (`__g0`, ...).
        suppression_sql: counts, over the same inputs as the merge, the groups dropped and the
            cells nulled by the release rules (before HAVING), as `SUPPRESSION_COLUMNS`
            (run on its own only when the merge releases no row).
        bound_partial_sql: the partial with unit counts bounded from below by the shard's
            unit masks (ADR 0016); `partial_sql_for` picks one.
        unit_table: the logical table whose privacy units the partial counts.
    """

    partial_sql: str
    merge_sql: str
    suppression_sql: str
    departments: frozenset[str]
    output_names: tuple[str, ...]
    unit_columns: tuple[str, ...]
    partial_columns: tuple[str, ...]
    group_columns: tuple[str, ...]
    bound_partial_sql: str = ""
    unit_table: str = ""
    bound_dense_partial_sql: str = ""
    dense_columns: frozenset[str] = frozenset()

    def partial_sql_for(
        self, *, k: int, masked: Collection[str], dense: Collection[tuple[str, str]] = ()
    ) -> str:
        """The partial a department with threshold `k` runs, given its tables with verified
        unit masks and its (table, column) pairs that hold no NULL: the lower-bound form where
        the masks exist and the bound reaches k reliably enough
        (`dataisland.unitmasks.bound_reaches`), the exact form otherwise. Where every column in
        `dense_columns` holds no NULL, the bound form that gives cells over those columns their
        group's bound (the same rows, so the same units) instead of masks of their own."""
        if not (self.bound_partial_sql and self.unit_table in masked and bound_reaches(k)):
            return self.partial_sql
        if self.bound_dense_partial_sql and all(
            (self.unit_table, column) in dense for column in self.dense_columns
        ):
            return self.bound_dense_partial_sql
        return self.bound_partial_sql


@dataclass
class _Aggregate:
    """One distinct aggregate of the query, its partial pieces and its merge expression."""

    pieces: list[tuple[str, str]]  # (partial column, partial SQL expression)
    merged: str
    window: list[tuple[str, str]]  # (column, window expression) computed before the merge
    combine: tuple[str, ...] = ()  # per piece, the aggregate re-combining it across units


def plan_query(parsed: ParsedQuery, catalog: Catalog) -> FederatedPlan:
    """Plan a checked query as per-shard partials and a merge.

    Args:
        parsed: the output of `policies.sqlfront.parse_query`.
        catalog: the federation's logical tables (schemas, privacy units, holders).

    Returns:
        The plan.

    Raises:
        UnknownTableError: a table of the query is not in `catalog`.
        UnsupportedQueryError: a table has no holders, or a join needs rows from more than one
            department (the message names the tables and departments).
    """
    tree = parsed.tree.copy()
    refs = table_refs(tree)
    infos: dict[str, TableInfo] = {}
    for name in refs.values():
        info = catalog.get(name)
        if info is None:
            raise UnknownTableError(f"unknown table '{name}'")
        if not info.holders:
            raise UnsupportedQueryError(f"table '{name}' has no holders in the federation")
        infos[name] = info
    departments = frozenset().union(*(i.holders for i in infos.values()))
    if (len(infos) > 1 and not all(len(i.holders) == 1 for i in infos.values())) or (
        len(infos) > 1 and len(departments) != 1
    ):
        held = "; ".join(
            f"'{n}' held by {', '.join(sorted(i.holders))}" for n, i in sorted(infos.items())
        )
        raise UnsupportedQueryError(
            f"joins are supported only between tables held entirely by one department ({held})"
        )
    from_ref = next(iter(refs))
    unit_sql = exp.column(infos[refs[from_ref]].privacy_unit, table=from_ref).sql(dialect=DIALECT)
    column_types = _column_types(refs, infos)
    columns = frozenset(c for c in column_types if "." not in c)
    single = refs[from_ref] if len(refs) == 1 else None

    keys = resolve_group_keys(tree, columns)
    key_index: dict[str, int] = {}
    for j, key in enumerate(keys):
        key_index.setdefault(expression_key(key, single), j)
    group_columns = tuple(f"__g{j}" for j in range(len(keys)))

    aggregates: dict[str, _Aggregate] = {}
    cells: dict[str, str] = {}  # aggregate key -> its unit column, when not the group's
    conditions: dict[str, str] = {}  # cell condition SQL -> its unit column
    dense: dict[str, str] = {}  # cell condition that is only "column IS NOT NULL" -> column
    for node in _aggregate_nodes(tree):
        agg_key = expression_key(node, single)
        if agg_key in aggregates:
            continue
        aggregates[agg_key] = _decompose(node, len(aggregates), column_types, group_columns)
        condition = _cell_condition(node)
        if condition is not None:
            column = conditions.setdefault(condition, f"{UNITS_COLUMN}_{len(conditions)}")
            cells[agg_key] = column
            argument = _plain_argument(node)
            if single is not None and argument is not None:
                dense[condition] = argument

    # --- partial -------------------------------------------------------------------------
    partial_columns = [
        *group_columns,
        *(column for agg in aggregates.values() for column, _ in agg.pieces),
        UNITS_COLUMN,
        *conditions.values(),
    ]
    unit_columns = [UNITS_COLUMN, *conditions.values()]
    from_sql = _from_sql(tree)
    key_sql = [k.sql(dialect=DIALECT) for k in keys]
    key_items = [f"{sql} AS {column}" for sql, column in zip(key_sql, group_columns, strict=True)]
    pieces = list(aggregates.values())

    def one_step(units: Callable[[str | None], str]) -> str:
        return _partial_one_step(key_items, key_sql, pieces, conditions, units, from_sql)

    if all(agg.combine for agg in pieces):
        partial_sql = _partial_by_unit(key_items, key_sql, pieces, conditions, unit_sql, from_sql)
    else:
        partial_sql = one_step(lambda condition: _units(unit_sql, condition))
    masks = [exp.column(m, table=from_ref).sql(dialect=DIALECT) for m in MASK_COLUMNS]
    bound_partial_sql = one_step(lambda condition: _bounded_units(masks, condition))
    # Where the shard holds no NULL in such a column, the cell's rows are the group's rows.
    bound_dense_partial_sql = (
        one_step(lambda condition: _bounded_units(masks, None if condition in dense else condition))
        if dense
        else ""
    )

    # --- merge ---------------------------------------------------------------------------
    def rewrite(node: exp.Expr) -> exp.Expr:
        if is_aggregate(node):
            agg_key = expression_key(node, single)
            merged = aggregates[agg_key].merged
            unit_column = cells.get(agg_key)
            if unit_column is not None:
                # A cell failing its own k is NULL wherever it is used.
                merged = f"CASE WHEN {_passes(unit_column)} THEN {merged} END"
            return exp.Paren(this=exp.maybe_parse(merged, dialect=DIALECT))
        j = key_index.get(expression_key(node, single))
        if j is not None:
            return exp.column(group_columns[j])
        new = node.copy()
        for child in list(new.iter_expressions()):
            child.replace(rewrite(child))
        return new

    outputs: list[str] = []
    alias_exprs: dict[str, exp.Expr] = {}
    for output in tree.expressions:
        assert isinstance(output, exp.Alias)  # the canonical form aliases every output
        rewritten = rewrite(output.this)
        alias_exprs.setdefault(str(output.alias).lower(), rewritten)
        outputs.append(f"{rewritten.sql(dialect=DIALECT)} AS {output.args['alias'].sql()}")

    def rewrite_post(node: exp.Expr) -> exp.Expr:
        # HAVING may name an output alias where no column of that name is a group key.
        if (
            isinstance(node, exp.Column)
            and not node.table
            and expression_key(node, single) not in key_index
            and str(node.name).lower() in alias_exprs
        ):
            return exp.Paren(this=alias_exprs[str(node.name).lower()].copy())
        if is_aggregate(node) or expression_key(node, single) in key_index:
            return rewrite(node)
        new = node.copy()
        for child in list(new.iter_expressions()):
            child.replace(rewrite_post(child))
        return new

    window_items = [w for agg in aggregates.values() for w in agg.window]
    source = PARTIALS_RELATION
    if window_items:
        extra = ", ".join(f"{sql} AS {column}" for column, sql in window_items)
        source = f"(SELECT *, {extra} FROM {PARTIALS_RELATION}) AS {PARTIALS_RELATION}"
    # What the release rules withhold rides along in two trailing columns of every released
    # row (a one-row cross join), so a merge is one statement; only a merge that releases no
    # row runs the suppression count on its own.
    suppression_sql = _suppression_sql(unit_columns, group_columns)
    counted = [f"{_COUNTS}.{column}" for column in SUPPRESSION_COLUMNS]
    merge_sql = (
        f"SELECT {', '.join(outputs)}, {', '.join(counted)} FROM {source} "
        f"CROSS JOIN ({suppression_sql}) AS {_COUNTS} GROUP BY "
        + ", ".join([*group_columns, *counted])
    )
    # The release rule for the whole row comes first; a global aggregate with no unit fails it
    # too (its max is NULL), so it gives no row.
    having_terms = [_passes(UNITS_COLUMN)]
    having = tree.args.get("having")
    if having is not None:
        having_terms.append(f"({rewrite_post(having.this).sql(dialect=DIALECT)})")
    merge_sql += " HAVING " + " AND ".join(having_terms)
    order = tree.args.get("order")
    if order is not None:
        terms = []
        for ordered in order.expressions:
            item = ordered.this
            if (isinstance(item, exp.Literal) and not item.is_string) or (
                isinstance(item, exp.Column)
                and not item.table
                and expression_key(item, single) not in key_index
                and str(item.name).lower() in alias_exprs
            ):
                target: exp.Expr = (
                    item.copy()
                )  # an ordinal or an output alias: valid in the merge as is
            else:
                target = rewrite(item)
            new = ordered.copy()
            new.set("this", target)
            terms.append(new.sql(dialect=DIALECT))
        merge_sql += " ORDER BY " + ", ".join(terms)
    limit = tree.args.get("limit")
    if limit is not None:
        merge_sql += " " + limit.sql(dialect=DIALECT)

    return FederatedPlan(
        partial_sql=partial_sql,
        merge_sql=merge_sql,
        suppression_sql=suppression_sql,
        departments=departments,
        output_names=parsed.output_names,
        unit_columns=tuple(unit_columns),
        partial_columns=tuple(partial_columns),
        group_columns=group_columns,
        bound_partial_sql=bound_partial_sql,
        unit_table=refs[from_ref],
        bound_dense_partial_sql=bound_dense_partial_sql,
        dense_columns=frozenset(dense.values()),
    )


class PlanCache:
    """`plan_query` against one service's catalog, remembering the plans of recent queries.

    Keyed by the canonical SQL, which determines the plan for a fixed catalog; planning costs
    about 5 ms, a lookup microseconds. Plans are immutable, so sharing them is safe.
    """

    def __init__(self, catalog: Catalog, size: int = 1024) -> None:
        self.catalog = catalog
        self._size = size
        self._plans: OrderedDict[str, FederatedPlan] = OrderedDict()
        self._lock = threading.Lock()

    def plan(self, parsed: ParsedQuery) -> FederatedPlan:
        """The plan of `parsed`; raises as `plan_query` does."""
        key = parsed.canonical_sql
        with self._lock:
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
                return plan
        plan = plan_query(parsed, self.catalog)
        with self._lock:
            self._plans[key] = plan
            if len(self._plans) > self._size:
                self._plans.popitem(last=False)
        return plan


def _cell_condition(node: exp.Expr) -> str | None:
    """Which rows' units a cell stands for, if not simply its group's rows.

    A FILTER restricts the cell to its condition; an argument restricts it to rows where the
    argument is not NULL (a CASE without ELSE keeps only the rows it selects).
    """
    terms = []
    base = node
    if isinstance(node, exp.Filter):
        terms.append(f"({node.expression.this.sql(dialect=DIALECT)})")
        base = node.this
    arg = base.this
    if arg is not None and not isinstance(arg, exp.Star):
        terms.append(f"({arg.sql(dialect=DIALECT)}) IS NOT NULL")
    return " AND ".join(terms) if terms else None


def _plain_argument(node: exp.Expr) -> str | None:
    """The column an aggregate without FILTER takes as its argument, if it is just a column
    (then its cell's rows are the group's rows wherever that column holds no NULL)."""
    if isinstance(node, exp.Filter):
        return None
    arg = node.this
    if isinstance(arg, exp.Paren):
        arg = arg.this
    if isinstance(arg, exp.Column) and not isinstance(arg.this, exp.Star):
        return str(arg.name).lower()
    return None


def _units(unit_sql: str, condition: str | None = None) -> str:
    """Distinct privacy units, with every row whose unit is NULL counted together as one.

    Counting NULL as a unit keeps 0 meaning "no rows", so rows without a unit can never hide
    in a share the release rules take for empty.
    """
    where = f" FILTER (WHERE {condition})" if condition else ""
    null_unit = f"COALESCE(max(CASE WHEN {unit_sql} IS NULL THEN 1 ELSE 0 END){where}, 0)"
    return f"(count(DISTINCT {unit_sql}){where} + {null_unit})"


def _partial_by_unit(
    key_items: list[str],
    key_sql: list[str],
    aggregates: list[_Aggregate],
    conditions: Mapping[str, str],
    unit_sql: str,
    from_sql: str,
) -> str:
    """The partial in two steps: aggregate per group and privacy unit, then per group.

    The first step's rows are the group's distinct units (rows whose unit is NULL fall in one
    row, counted as one unit, as `_units` does), so a group's units are its row count and a
    cell's units the rows where any of the unit's rows entered the cell. One hash aggregation
    instead of one `count(DISTINCT ...)` per group and per cell: about twice as fast, and
    exact. Only for aggregates whose pieces re-combine across units (not variances).
    """
    group_columns = [f"__g{j}" for j in range(len(key_sql))]
    inner = [*key_items, f"{unit_sql} AS __unit"]
    outer = list(group_columns)
    for agg in aggregates:
        for (column, sql), combine in zip(agg.pieces, agg.combine, strict=True):
            inner.append(f"{sql} AS {column}")
            outer.append(
                f"CAST(sum({column}) AS BIGINT) AS {column}"
                if combine == "count"
                else f"{combine}({column}) AS {column}"
            )
    outer.append(f"count(*) AS {UNITS_COLUMN}")
    for j, (condition, column) in enumerate(conditions.items()):
        inner.append(f"count(*) FILTER (WHERE {condition}) AS __entered{j}")
        outer.append(f"count(*) FILTER (WHERE __entered{j} > 0) AS {column}")
    sql = (
        f"SELECT {', '.join(outer)} FROM (SELECT {', '.join(inner)} FROM {from_sql} "
        f"GROUP BY {', '.join([*key_sql, unit_sql])}) AS __by_unit"
    )
    if group_columns:
        sql += " GROUP BY " + ", ".join(group_columns)
    return sql


def _bounded_units(masks: list[str], condition: str | None = None) -> str:
    """A proven lower bound of the distinct units of a group's (or cell's) rows.

    Each mask column holds one bit per row chosen by its unit's keyed hash, so the OR over rows
    has at most one bit per distinct unit: its popcount never exceeds the units, and neither
    does the largest popcount of the masks. No row gives 0; a NULL unit sets bits like any
    unit, so rows without a unit count as one, as `_units` counts them (ADR 0016).
    """
    where = f" FILTER (WHERE {condition})" if condition else ""
    counts = ", ".join(f"bit_count(bit_or({m}){where})" for m in masks)
    return f"CAST(COALESCE(greatest({counts}), 0) AS BIGINT)"


def _partial_one_step(
    key_items: list[str],
    key_sql: list[str],
    aggregates: list[_Aggregate],
    conditions: Mapping[str, str],
    units: Callable[[str | None], str],
    from_sql: str,
) -> str:
    """The partial in one step, with `units(condition)` counting (or bounding) the units of the
    group (condition None) and of each cell: by `count(DISTINCT ...)` for pieces that do not
    re-combine across units, or by `_bounded_units`, as cheap as the plain query plus one
    bit-OR per mask, group and cell."""
    items = list(key_items)
    for agg in aggregates:
        items.extend(f"{sql} AS {column}" for column, sql in agg.pieces)
    items.append(f"{units(None)} AS {UNITS_COLUMN}")
    items.extend(f"{units(c)} AS {column}" for c, column in conditions.items())
    sql = f"SELECT {', '.join(items)} FROM {from_sql}"
    if key_sql:
        sql += " GROUP BY " + ", ".join(key_sql)
    return sql


def _passes(unit_column: str) -> str:
    """Whether one group's (or cell's) units, over its departments' partial rows, may be released.

    Each department's non-empty share must reach that department's k; the largest share (a
    lower bound of the distinct units in total) must reach the strictest k of all departments.
    """
    return (
        f"COALESCE(bool_and({unit_column} = 0 OR {unit_column} >= {K_COLUMN}) "
        f"AND max({unit_column}) >= max({KMAX_COLUMN}), false)"
    )


SUPPRESSION_COLUMNS = ("__suppressed_rows", "__suppressed_cells")
"""The merge's two trailing columns: groups dropped and cells nulled by the release rules."""
_COUNTS = "__suppressed"


def _suppression_sql(unit_columns: list[str], group_columns: tuple[str, ...]) -> str:
    groups = f" GROUP BY {', '.join(group_columns)}" if group_columns else ""
    flags = ", ".join(f"{_passes(u)} AS ok{j}" for j, u in enumerate(unit_columns))
    cells = " + ".join(
        f"count(*) FILTER (WHERE ok0 AND NOT ok{j})" for j in range(1, len(unit_columns))
    )
    return (
        f"SELECT count(*) FILTER (WHERE NOT ok0) AS {SUPPRESSION_COLUMNS[0]}, "
        f"CAST({cells or '0'} AS BIGINT) AS {SUPPRESSION_COLUMNS[1]} "
        f"FROM (SELECT {flags} FROM {PARTIALS_RELATION}{groups})"
    )


def _column_types(refs: Mapping[str, str], infos: Mapping[str, TableInfo]) -> dict[str, str]:
    types: dict[str, str] = {}
    for ref, name in refs.items():
        for column, type_name in infos[name].columns.items():
            types.setdefault(column.lower(), type_name.upper())
            types[f"{ref}.{column.lower()}"] = type_name.upper()
    return types


def _from_sql(tree: exp.Select) -> str:
    from_ = tree.args.get("from_") or tree.args.get("from")
    assert from_ is not None  # the SQL front refuses queries without FROM
    text: str = from_.this.sql(dialect=DIALECT)
    for join in tree.args.get("joins") or []:
        text += " " + join.sql(dialect=DIALECT)
    where = tree.args.get("where")
    if where is not None:
        text += " " + where.sql(dialect=DIALECT)
    return text


def _aggregate_nodes(tree: exp.Select) -> list[exp.Expr]:
    """Every aggregate (FILTER included) in outputs, HAVING and ORDER BY, outermost first."""
    found: list[exp.Expr] = []
    roots: list[exp.Expr] = list(tree.expressions)
    for clause in ("having", "order"):
        part = tree.args.get(clause)
        if part is not None:
            roots.append(part)
    for root in roots:
        for node in root.walk():
            if is_aggregate(node) and not (
                isinstance(node.parent, exp.Filter) and node.parent.this is node
            ):
                found.append(node)
    return found


def _is_integral(node: exp.Expr, types: Mapping[str, str]) -> bool:
    """Whether `node` is of an integer type, for the supported scalar core (else False)."""
    if isinstance(node, exp.Column):
        name = str(node.name).lower()
        key = f"{str(node.table).lower()}.{name}" if node.table else name
        return types.get(key, "").split("(")[0] in _INTEGER_TYPES
    if isinstance(node, exp.Literal):
        return not node.is_string and str(node.this).isdigit()
    if isinstance(node, exp.Null):
        return True
    if isinstance(node, (exp.Paren, exp.Neg, exp.Abs)):
        return _is_integral(node.this, types)
    if isinstance(node, (exp.Add, exp.Sub, exp.Mul, exp.Mod, exp.IntDiv)):
        return _is_integral(node.this, types) and _is_integral(node.expression, types)
    if isinstance(node, exp.Case):
        branches = [i.args["true"] for i in node.args.get("ifs") or []]
        if node.args.get("default") is not None:
            branches.append(node.args["default"])
        return bool(branches) and all(_is_integral(b, types) for b in branches)
    if isinstance(node, exp.If):
        branches = [node.args["true"]]
        if node.args.get("false") is not None:
            branches.append(node.args["false"])
        return all(_is_integral(b, types) for b in branches)
    if isinstance(node, (exp.Cast, exp.TryCast)):
        target = node.args.get("to")
        return isinstance(target, exp.DataType) and target.is_type(*exp.DataType.INTEGER_TYPES)
    if isinstance(node, (exp.Coalesce, exp.Least, exp.Greatest)):
        return all(_is_integral(a, types) for a in [node.this, *node.expressions])
    return False


def _decompose(
    node: exp.Expr, i: int, types: Mapping[str, str], group_columns: tuple[str, ...]
) -> _Aggregate:
    base = node.this if isinstance(node, exp.Filter) else node
    suffix = ""
    if isinstance(node, exp.Filter):
        suffix = f" FILTER (WHERE {node.expression.this.sql(dialect=DIALECT)})"
    arg = base.this
    arg_sql = "*" if isinstance(arg, exp.Star) else arg.sql(dialect=DIALECT)
    p = f"__a{i}"

    def piece(function: str, argument: str = arg_sql) -> str:
        return f"{function}({argument}){suffix}"

    if isinstance(base, exp.Count):
        return _Aggregate(
            [(f"{p}_n", piece("count"))],
            f"CAST(COALESCE(sum({p}_n), 0) AS BIGINT)",
            [],
            ("count",),
        )
    if isinstance(base, exp.Sum):
        merged = f"sum({p}_s)"
        if _is_integral(arg, types):
            # The partial's HUGEINT arrives through Arrow as DECIMAL(38,0); DuckDB's SUM over
            # integers is HUGEINT, so restore the type.
            merged = f"CAST({merged} AS HUGEINT)"
        return _Aggregate([(f"{p}_s", piece("sum"))], merged, [], ("sum",))
    if isinstance(base, (exp.Min, exp.Max)):
        function = "min" if isinstance(base, exp.Min) else "max"
        return _Aggregate([(f"{p}_v", piece(function))], f"{function}({p}_v)", [], (function,))
    if isinstance(base, exp.Avg):
        merged = f"CASE WHEN sum({p}_n) > 0 THEN CAST(sum({p}_s) AS DOUBLE) / sum({p}_n) END"
        return _Aggregate(
            [(f"{p}_s", piece("sum")), (f"{p}_n", piece("count"))], merged, [], ("sum", "count")
        )
    as_double = f"CAST({arg_sql} AS DOUBLE)"
    pieces = [
        (f"{p}_n", piece("count")),
        (f"{p}_m", piece("avg", as_double)),
        (f"{p}_q", f"{piece('var_pop', as_double)} * {piece('count')}"),
    ]
    over = f"OVER (PARTITION BY {', '.join(group_columns)})" if group_columns else "OVER ()"
    window = [(f"{p}_gm", f"sum({p}_n * {p}_m) {over} / NULLIF(sum({p}_n) {over}, 0)")]
    n = f"sum({p}_n)"
    m2 = f"(sum({p}_q) + COALESCE(sum({p}_n * ({p}_m - {p}_gm) * ({p}_m - {p}_gm)), 0))"
    kinds: dict[type[exp.Expr], Callable[[], str]] = {
        exp.VariancePop: lambda: f"CASE WHEN {n} > 0 THEN {m2} / {n} END",
        exp.Variance: lambda: f"CASE WHEN {n} > 1 THEN {m2} / ({n} - 1) END",
        exp.StddevPop: lambda: f"CASE WHEN {n} > 0 THEN sqrt(greatest({m2} / {n}, 0)) END",
        exp.StddevSamp: lambda: f"CASE WHEN {n} > 1 THEN sqrt(greatest({m2} / ({n} - 1), 0)) END",
        exp.Stddev: lambda: f"CASE WHEN {n} > 1 THEN sqrt(greatest({m2} / ({n} - 1), 0)) END",
    }
    make = kinds.get(type(base))
    if make is None:
        raise UnsupportedQueryError(f"aggregate {type(base).__name__} cannot be planned")
    return _Aggregate(pieces, make(), window)


@dataclass(frozen=True)
class MergeOutcome:
    """The released result, and how much the release rules withheld (never shown as counts to
    the requester: it learns only whether anything was withheld)."""

    result: EngineResult
    suppressed_rows: int
    suppressed_cells: int

    @property
    def suppressed(self) -> bool:
        """Whether the release rules dropped a row or nulled a cell."""
        return self.suppressed_rows > 0 or self.suppressed_cells > 0


def merge_partials(
    plan: FederatedPlan,
    partials: Mapping[str, pa.Table],
    engine: MergeEngine,
    *,
    k: Mapping[str, int],
) -> MergeOutcome:
    """Stack every department's partial, apply the release rules and run the plan's merge.

    Args:
        plan: the plan the partials were computed for.
        partials: department name to that department's partial result.
        engine: runs the merge SQL over the stacked partials.
        k: each department's threshold, as its own signed partial declared it.

    Returns:
        The released result with its DuckDB column types, and what was suppressed.

    Raises:
        MissingPartialError: a department in `plan.departments` sent no partial.
        InvalidInputError: a partial came from a department the plan does not expect.
        SchemaMismatchError: a partial's columns are not the plan's partial columns, or the
            partials' column types differ.
        InvalidInputError: `k` does not give every department a threshold of at least 1.
    """
    if set(k) != set(plan.departments) or any(
        not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in k.values()
    ):
        raise InvalidInputError("every department's partial must declare a threshold k >= 1")
    missing = plan.departments - set(partials)
    if missing:
        raise MissingPartialError(f"no partial from department(s) {', '.join(sorted(missing))}")
    unexpected = set(partials) - plan.departments
    if unexpected:
        raise InvalidInputError(
            f"partial(s) from department(s) the plan does not expect: "
            f"{', '.join(sorted(unexpected))}"
        )
    stacked: list[pa.Table] = []
    for department in sorted(partials):
        table = partials[department]
        if tuple(table.column_names) != plan.partial_columns:
            raise SchemaMismatchError(
                f"the partial from {department} does not have the plan's columns"
            )
        rows = table.num_rows
        table = table.append_column(
            DEPARTMENT_COLUMN, pa.repeat(pa.scalar(department, pa.string()), rows)
        )
        table = table.append_column(K_COLUMN, pa.repeat(pa.scalar(k[department], pa.int64()), rows))
        stacked.append(
            table.append_column(
                KMAX_COLUMN, pa.repeat(pa.scalar(max(k.values()), pa.int64()), rows)
            )
        )
    try:
        union = pa.concat_tables(stacked, promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        raise SchemaMismatchError("the departments' partials have different column types") from None
    tables = {PARTIALS_RELATION: union}
    merged = engine.run(plan.merge_sql, tables)
    released = len(merged.types) - len(SUPPRESSION_COLUMNS)
    table = merged.table
    counts = table.slice(0, 1).select(list(range(released, table.num_columns))).to_pylist()
    if not counts:
        counts = engine.run(plan.suppression_sql, tables).table.to_pylist()
    return MergeOutcome(
        result=EngineResult(
            table=table.select(list(range(released))), types=merged.types[:released]
        ),
        suppressed_rows=int(counts[0][SUPPRESSION_COLUMNS[0]] or 0),
        suppressed_cells=int(counts[0][SUPPRESSION_COLUMNS[1]] or 0),
    )
