"""SQL utilities for evaluation, built on sqlglot (dialect ``sqlite``).

Rules (also used by :mod:`sqltune.scoring`):

* ``extract_sql``: model output -> one SQL string. If the text holds a fenced
  block (```` ```sql ... ``` ````) the first block is taken; then a leading
  ``SQL:`` / ``SQLite:`` / ``Query:`` / ``Answer:`` label is dropped, surrounding
  whitespace and trailing ``;`` are stripped. Nothing else: prose stays prose
  (and then fails to parse), several statements stay several statements.
* Double-quoted strings: SQLite reads ``"abc"`` as an identifier and, when no
  column of that name is in scope, falls back to the string ``'abc'``
  (sql-create-context gold relies on this: ``WHERE x = "abc"``). We mirror it:
  with a ``context`` (CREATE TABLE text), an *unqualified* double-quoted
  column reference whose name (case-insensitively) is neither a column of any
  context table nor an alias defined in the query is a string literal.
  Without a context a narrower heuristic applies: a double-quoted bare name on
  the right-hand side of a comparison / LIKE / IN-list whose left side is a
  column is a string literal.
* ``normalize``: parse, apply the double-quote rule, lowercase identifiers
  (SQLite identifiers are case-insensitive), quote every identifier, and
  regenerate with sqlglot (upper-case keywords, single spaces, ``<>`` for
  ``!=``, explicit ``AS``). String literals keep their case (SQLite ``=`` is
  case-sensitive).
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Iterable

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

from sqltune.errors import SqltuneError

DIALECT = "sqlite"
FEATURES = ("join", "aggregate", "group_by", "order_limit", "nested", "plain_where")
ROWID_NAMES = frozenset({"rowid", "oid", "_rowid_"})

# sqlglot logs a warning whenever it falls back to an opaque ``Command``; for
# model output that is noise (such statements count as unparseable anyway).
logging.getLogger("sqlglot").setLevel(logging.ERROR)

_FENCE_RE = re.compile(r"```[ \t]*(?:[A-Za-z0-9_+-]+[ \t]*\n|\n)?(.*?)(?:```|\Z)", re.DOTALL)
_LABEL_RE = re.compile(r"^\s*(?:sql|sqlite|query|sql query|answer)\s*:\s*", re.IGNORECASE)
_CREATE_SPLIT_RE = re.compile(r"(?i)(?=\bcreate\s+(?:temp\s+|temporary\s+)?(?:virtual\s+)?table\b)")

_STATEMENT_TYPES: tuple[type, ...] = tuple(
    t
    for t in (
        getattr(exp, name, None)
        for name in (
            "Query", "DDL", "DML", "Drop", "Pragma", "Attach", "Detach", "Alter",
            "Transaction", "Commit", "Rollback", "Analyze", "Set", "Use", "Describe",
            "TruncateTable",
        )
    )
    if t is not None
)
_SEMICOLON: type | tuple = getattr(exp, "Semicolon", ())
_CMP_TYPES = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Like, exp.ILike, exp.Glob)


# --------------------------------------------------------------------------- text


def extract_sql(text: str | None) -> str:
    """Model output -> one SQL string (see module docstring for the exact rule)."""
    if not text:
        return ""
    text = str(text)
    fence = _FENCE_RE.search(text)
    if fence:
        text = fence.group(1)
    text = _LABEL_RE.sub("", text, count=1).strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    return text


# ------------------------------------------------------------------------ parsing


@functools.lru_cache(maxsize=8192)
def _parse_all(sql: str) -> tuple[exp.Expression, ...] | None:
    """All statements of ``sql`` (cached; never mutate the result), None on error."""
    if not sql or not sql.strip():
        return None
    try:
        statements = sqlglot.parse(sql, read=DIALECT)
    except (SqlglotError, RecursionError, ValueError, TypeError, AttributeError):
        return None
    # ``Semicolon`` holds a comment after the last ``;``: not a statement
    out = tuple(s for s in statements if s is not None and not isinstance(s, _SEMICOLON))
    return out or None


def _is_statement(node: exp.Expression) -> bool:
    if isinstance(node, exp.Command) or not isinstance(node, _STATEMENT_TYPES):
        return False
    if isinstance(node, exp.Select) and not node.expressions:
        return False  # a bare "SELECT"
    return True


def _parse_shared(sql: str) -> exp.Expression | None:
    statements = _parse_all(sql)
    if not statements or len(statements) != 1 or not _is_statement(statements[0]):
        return None
    return statements[0]


def parse(sql: str) -> exp.Expression | None:
    """Parse exactly one SQL statement; None if empty, unparseable, several
    statements, or not a statement at all (e.g. a bare word)."""
    node = _parse_shared(sql)
    return node.copy() if node is not None else None


# ------------------------------------------------------------------------- schema


def _affinity(type_name: str) -> str:
    """SQLite column affinity of a declared type (sqlite.org/datatype3.html 3.1)."""
    t = type_name.upper()
    if "INT" in t:
        return "INTEGER"
    if "CHAR" in t or "CLOB" in t or "TEXT" in t or "STRING" in t:
        return "TEXT"
    if not t or "BLOB" in t:
        return "BLOB"
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return "REAL"
    return "NUMERIC"


_DIGIT_COLUMN_RE = re.compile(r"(?<=[(,])(\s*)(\d\w*)(?=\s)")


def _parse_ddl(chunk: str) -> list[exp.Expression]:
    try:
        return [s for s in sqlglot.parse(chunk, read=DIALECT) if s is not None]
    except (SqlglotError, RecursionError, ValueError):
        # sql-create-context has column names starting with a digit
        # (``18_49_Rating_Share VARCHAR``): accept them as if double-quoted.
        repaired = _DIGIT_COLUMN_RE.sub(lambda m: f'{m.group(1)}"{m.group(2)}"', chunk)
        if repaired == chunk:
            raise
        return [s for s in sqlglot.parse(repaired, read=DIALECT) if s is not None]


@functools.lru_cache(maxsize=4096)
def _schema(context: str) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    """((table, ((column, affinity), ...)), ...) in declaration order, all lower-case."""
    if not isinstance(context, str) or not context.strip():
        raise SqltuneError(
            "the context is empty; give the CREATE TABLE statements of the tables the query uses"
        )
    tables: dict[str, list[tuple[str, str]]] = {}
    for chunk in _CREATE_SPLIT_RE.split(context):
        chunk = chunk.strip().rstrip(";").strip()
        if not chunk:
            continue
        try:
            statements = _parse_ddl(chunk)
        except (SqlglotError, RecursionError, ValueError) as exc:
            raise SqltuneError(
                f"the context is not valid CREATE TABLE DDL (sqlglot: {str(exc).splitlines()[0]}) "
                f"near {chunk[:80]!r}; fix the row's 'context' field"
            ) from None
        for st in statements:
            if not isinstance(st, exp.Create) or str(st.args.get("kind") or "").upper() != "TABLE":
                continue  # e.g. INSERT sample rows: ignored
            schema = st.this
            if not isinstance(schema, exp.Schema) or not isinstance(schema.this, exp.Table):
                raise SqltuneError(
                    f"the context has a CREATE TABLE without a column list near {chunk[:80]!r}; "
                    "fix the row's 'context' field"
                )
            cols: list[tuple[str, str]] = []
            for cd in schema.expressions:
                if isinstance(cd, exp.ColumnDef):
                    kind = cd.args.get("kind")
                    if kind is None:
                        type_name = ""
                    elif isinstance(kind, exp.DataType) and kind.this != exp.DataType.Type.USERDEFINED:
                        type_name = kind.this.name
                    else:
                        type_name = kind.sql(DIALECT)
                    cols.append((cd.name.lower(), _affinity(type_name)))
                elif isinstance(cd, exp.Identifier):
                    cols.append((cd.name.lower(), "BLOB"))
                # table constraints (PRIMARY KEY (...), FOREIGN KEY ...) are skipped
            tables.setdefault(schema.this.name.lower(), cols)
    if not tables:
        raise SqltuneError(
            f"the context has no CREATE TABLE statement ({context[:80]!r}); "
            "give the CREATE TABLE statements of the tables the query uses"
        )
    return tuple((t, tuple(c)) for t, c in tables.items())


def schema_tables(context: str) -> dict[str, list[str]]:
    """``{table_lower: [column_lower, ...]}`` from CREATE TABLE statements.

    Statements may be separated by ``;`` or simply follow each other; other
    statements (e.g. INSERT sample rows) are ignored; a bare column name that
    starts with a digit (seen in sql-create-context) is read as if quoted.
    Raises ``SqltuneError`` when the context is not valid DDL or has no
    CREATE TABLE.
    """
    return {t: [c for c, _ in cols] for t, cols in _schema(context)}


def schema_types(context: str) -> dict[str, list[tuple[str, str]]]:
    """``{table_lower: [(column_lower, affinity), ...]}``; affinity is one of
    INTEGER, TEXT, REAL, NUMERIC, BLOB (SQLite's rules on the declared type)."""
    return {t: list(cols) for t, cols in _schema(context)}


# Declared types as the training data (sql-create-context) spells them; others keep their own name.
_TRAINING_TYPES = {"INT": "INTEGER", "BIGINT": "INTEGER", "SMALLINT": "INTEGER", "TINYINT": "INTEGER",
                   "MEDIUMINT": "INTEGER", "UBIGINT": "INTEGER", "UINT": "INTEGER", "VARCHAR": "VARCHAR",
                   "NVARCHAR": "VARCHAR", "CHAR": "VARCHAR", "NCHAR": "VARCHAR", "DOUBLE": "REAL",
                   "FLOAT": "REAL"}
_PLAIN_NAME_RE = re.compile(r"[A-Za-z0-9_]+")  # unquoted in the data, even with a leading digit


def _training_name(name: str) -> str:
    return name if _PLAIN_NAME_RE.fullmatch(name) else '"' + name.replace('"', '""') + '"'


def training_schema(context: str) -> str:
    """CREATE TABLE statements in the one-line form of the training data, whatever the DDL's style:
    `CREATE TABLE t (a INTEGER, b VARCHAR); CREATE TABLE u (...)`: names as declared (quoted only
    when they must be), each column with its type in the data's spelling, and no keys, REFERENCES,
    defaults, constraints or comments, which a small model was never shown."""
    _schema(context)  # the same checks, and messages, as every other reader of a context
    out = []
    for chunk in _CREATE_SPLIT_RE.split(context):
        chunk = chunk.strip().rstrip(";").strip()
        for st in _parse_ddl(chunk) if chunk else []:
            if not isinstance(st, exp.Create) or str(st.args.get("kind") or "").upper() != "TABLE":
                continue
            cols = []
            for cd in st.this.expressions:
                if not isinstance(cd, (exp.ColumnDef, exp.Identifier)):
                    continue  # a table constraint
                kind = cd.args.get("kind") if isinstance(cd, exp.ColumnDef) else None
                if isinstance(kind, exp.DataType) and kind.this != exp.DataType.Type.USERDEFINED:
                    type_name = _TRAINING_TYPES.get(kind.this.name, kind.this.name)
                else:
                    type_name = kind.sql(DIALECT).split("(")[0].upper() if kind is not None else "VARCHAR"
                cols.append(f"{_training_name(cd.name)} {type_name}")
            out.append(f"CREATE TABLE {_training_name(st.this.this.name)} ({', '.join(cols)})")
    return "; ".join(out)


@functools.lru_cache(maxsize=4096)
def _context_columns(context: str) -> frozenset[str]:
    return frozenset(c for _, cols in _schema(context) for c, _ in cols)


# ------------------------------------------------------------- double-quote rule


def _query_aliases(node: exp.Expression) -> set[str]:
    names = {a.alias.lower() for a in node.find_all(exp.Alias) if a.alias}
    for ta in node.find_all(exp.TableAlias):
        names.update(c.name.lower() for c in ta.columns)
    return names


def _bare_dq(col: exp.Expression) -> bool:
    return (
        isinstance(col, exp.Column)
        and not col.table
        and isinstance(col.this, exp.Identifier)
        and bool(col.this.quoted)
    )


def _resolve_double_quotes(node: exp.Expression, context_columns: frozenset[str] | None) -> exp.Expression:
    """Turn double-quoted bare names that SQLite would read as strings into
    string literals (in place; returns the possibly replaced root)."""
    candidates = [c for c in node.find_all(exp.Column) if _bare_dq(c)]
    if not candidates:
        return node
    if context_columns is not None:
        known = set(context_columns) | _query_aliases(node)
        targets = [c for c in candidates if c.name.lower() not in known]
    else:
        targets = []
        for c in candidates:
            parent = c.parent
            if isinstance(parent, _CMP_TYPES) and parent.expression is c and isinstance(parent.this, exp.Column) and not _bare_dq(parent.this):
                targets.append(c)
            elif isinstance(parent, exp.In) and c in parent.expressions and isinstance(parent.this, exp.Column):
                targets.append(c)
    for c in targets:
        lit = exp.Literal.string(c.name)
        if c is node:
            return lit
        c.replace(lit)
    return node


def _resolved(sql: str, context: str | None) -> exp.Expression | None:
    """Fresh parsed copy of ``sql`` with the double-quote rule applied."""
    node = parse(sql)
    if node is None:
        return None
    cols = _context_columns(context) if context is not None else None
    return _resolve_double_quotes(node, cols)


@functools.lru_cache(maxsize=8192)
def resolved_shared(sql: str, context: str | None) -> exp.Expression | None:
    """Cached :func:`_resolved`; callers must not mutate the result."""
    return _resolved(sql, context)


# ------------------------------------------------------------------ normalization


@functools.lru_cache(maxsize=8192)
def normalize(sql: str, context: str | None = None) -> str | None:
    """Canonical text of ``sql`` (None if it does not parse as one statement).

    Applies the double-quote rule (with ``context`` when given), lower-cases
    and quotes identifiers, and regenerates with sqlglot; literal case is kept.
    Raises ``SqltuneError`` only when ``context`` is given and is not valid DDL.
    """
    node = _resolved(sql, context)
    if node is None:
        return None
    try:
        node = normalize_identifiers(node, dialect=DIALECT)
        for ident in node.find_all(exp.Identifier):
            ident.set("quoted", True)
        return node.sql(dialect=DIALECT, identify=True, comments=False)
    except (SqlglotError, RecursionError, ValueError, TypeError, AttributeError):
        return None


def exact_match(pred: str, gold: str, context: str | None = None) -> bool:
    """True when both parse and their normalized forms are identical."""
    p = normalize(pred, context)
    return p is not None and p == normalize(gold, context)


# --------------------------------------------------------------- schema validity


def _output_names(query: exp.Expression) -> set[str] | None:
    """Output column names of a query, None if unknown (``*``)."""
    if isinstance(query, exp.Subquery):
        return _output_names(query.this)
    if isinstance(query, exp.SetOperation):
        return _output_names(query.this)
    if isinstance(query, exp.Select):
        names: set[str] = set()
        for e in query.expressions:
            if isinstance(e, exp.Star) or (isinstance(e, exp.Column) and isinstance(e.this, exp.Star)):
                return None
            name = e.alias_or_name
            if name:
                names.add(name.lower())
        return names
    return None


def _inside(node: exp.Expression, ancestor: exp.Expression) -> bool:
    p = node.parent
    while p is not None:
        if p is ancestor:
            return True
        p = p.parent
    return False


def _enclosing_query(node: exp.Expression) -> exp.Expression | None:
    p = node.parent
    while p is not None and not isinstance(p, (exp.Select, exp.SetOperation)):
        p = p.parent
    return p


def _sources(select: exp.Select, tables: dict[str, list[str]], ctes: dict[str, set[str] | None]):
    """{alias_lower: column set or None (unknown)}; False if a table is unknown."""
    out: dict[str, set[str] | None] = {}
    items = []
    frm = select.args.get("from_") or select.args.get("from")
    if frm is not None:
        items.append(frm.this)
    for j in select.args.get("joins") or []:
        items.append(j.this)
    for it in items:
        if isinstance(it, exp.Table) and isinstance(it.this, exp.Identifier):
            name = it.name.lower()
            alias = (it.alias or it.name).lower()
            if name in ctes and not it.args.get("db"):
                out[alias] = ctes[name]
            elif name in tables:
                out[alias] = set(tables[name]) | ROWID_NAMES
            else:
                return False
        elif isinstance(it, exp.Subquery):
            out[(it.alias or "").lower()] = _output_names(it.this)
        else:
            alias = getattr(it, "alias", "") or ""
            out[alias.lower()] = None
    return out


def schema_valid(pred: str, context: str) -> bool:
    """Every table and column ``pred`` names exists in ``context``.

    Handles table aliases, CTE names (and their column lists), ``*`` and
    ``t.*``, subquery aliases and their output names, correlated references to
    outer queries, select-list aliases used elsewhere (ORDER BY, HAVING ...),
    ``rowid``, and the double-quote rule. False when ``pred`` does not parse or
    is not a query. Raises ``SqltuneError`` if ``context`` is not valid DDL.
    """
    tables = schema_tables(context)
    node = resolved_shared(pred, context)
    if node is None or not isinstance(node, exp.Query):
        return False
    try:
        ctes: dict[str, set[str] | None] = {}
        for cte in node.find_all(exp.CTE):
            alias = cte.args.get("alias")
            cols = [c.name.lower() for c in alias.columns] if alias is not None else []
            ctes[cte.alias.lower()] = set(cols) if cols else _output_names(cte.this)
        for t in node.find_all(exp.Table):
            if isinstance(t.this, exp.Identifier):
                if t.name.lower() not in tables and t.name.lower() not in ctes:
                    return False
        source_cache: dict[int, dict | bool] = {}

        def sources_of(q: exp.Select):
            key = id(q)
            if key not in source_cache:
                source_cache[key] = _sources(q, tables, ctes)
            return source_cache[key]

        for col in node.find_all(exp.Column):
            is_star = isinstance(col.this, exp.Star)
            name = None if is_star else col.name.lower()
            qualifier = col.table.lower() if col.table else ""
            q = _enclosing_query(col)
            if q is None:
                return False
            if isinstance(q, exp.SetOperation):
                outs = _output_names(q)
                if qualifier or outs is None or name in outs:
                    continue
                return False
            chain: list[exp.Select] = []
            while q is not None:
                if isinstance(q, exp.Select):
                    chain.append(q)
                q = _enclosing_query(q)
            ok = False
            if qualifier:
                for sel in chain:
                    srcs = sources_of(sel)
                    if srcs is False:
                        return False
                    if qualifier in srcs:
                        cols = srcs[qualifier]
                        ok = is_star or cols is None or name in cols
                        break
            else:
                for e in chain[0].expressions:
                    if isinstance(e, exp.Alias) and e.alias.lower() == name and not _inside(col, e):
                        ok = True
                        break
                for sel in chain:
                    if ok:
                        break
                    srcs = sources_of(sel)
                    if srcs is False:
                        return False
                    for cols in srcs.values():
                        if cols is None or name in cols:
                            ok = True
                            break
            if not ok:
                return False
        return True
    except (SqlglotError, RecursionError, ValueError, TypeError, AttributeError):
        return False


# ----------------------------------------------------------------------- features


@functools.lru_cache(maxsize=8192)
def _features(sql: str) -> frozenset[str]:
    node = _parse_shared(sql)
    if node is None:
        return frozenset()
    out: set[str] = set()
    if any(True for _ in node.find_all(exp.Join)):
        out.add("join")
    if any(True for _ in node.find_all(exp.AggFunc)):
        out.add("aggregate")
    if any(True for _ in node.find_all(exp.Group, exp.Having)):
        out.add("group_by")
    if any(True for _ in node.find_all(exp.Order, exp.Limit)):
        out.add("order_limit")
    if (
        any(True for _ in node.find_all(exp.Subquery, exp.SetOperation, exp.With))
        or any(s is not node for s in node.find_all(exp.Select))
    ):
        out.add("nested")
    if not out and any(True for _ in node.find_all(exp.Where)):
        out.add("plain_where")
    return frozenset(out)


def features(sql: str) -> set[str]:
    """Structural features of a query, a subset of :data:`FEATURES`.

    join: any JOIN (including comma joins); aggregate: any aggregate function;
    group_by: GROUP BY or HAVING; order_limit: ORDER BY or LIMIT; nested: a
    subquery, CTE or set operation (UNION/INTERSECT/EXCEPT); plain_where: a
    WHERE clause and none of the others. Empty set for ``SELECT a FROM t`` and
    for SQL that does not parse.
    """
    return set(_features(sql))


# ---------------------------------------------------------------------- read-only

_WRITE_NODES = tuple(
    t
    for t in (
        getattr(exp, n, None)
        for n in ("DML", "DDL", "Drop", "Pragma", "Attach", "Detach", "Alter", "Command",
                  "Transaction", "Commit", "Rollback", "Analyze", "Set", "Use", "Into")
    )
    if t is not None
)


def is_read_only(sql: str) -> bool:
    """Exactly one statement and it is a SELECT, WITH ... SELECT or set
    operation with no write / schema / pragma / attach node anywhere inside."""
    node = _parse_shared(sql)
    if node is None or not isinstance(node, (exp.Select, exp.SetOperation, exp.Subquery)):
        return False
    return not any(isinstance(n, _WRITE_NODES) for n in node.walk())


def iter_literals(node: exp.Expression) -> Iterable[exp.Literal]:
    """String and number literals of a parsed query (helper for synthesis)."""
    return node.find_all(exp.Literal)


def clear_caches() -> None:
    """Drop the parse / schema / normalization caches (for benchmarks and tests)."""
    for fn in (_parse_all, _schema, _context_columns, resolved_shared, normalize, _features):
        fn.cache_clear()
