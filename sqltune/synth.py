"""Test-suite style database synthesis for schema-only contexts.

After Zhong, Yu & Klein (2020), "Semantic Evaluation for Text-to-SQL with
Distilled Test Suites": instead of one database, several small random
ones whose values are chosen so that near-miss queries disagree with the gold
query on at least one of them.

How values are chosen (all deterministic given ``seed``, the context and the
gold query):

* Columns are grouped into *value pools*: same-named columns share a pool, and
  so do columns compared with each other anywhere in the gold query (JOIN ON,
  WHERE ``a = b``, ``x IN (SELECT y ...)``, ``x = (SELECT MAX(y) ...)``), so
  that joins and nested comparisons produce rows.
* Every literal the gold query compares a column with seeds the column's pool
  with the literal and its neighbours: numbers ``v-1, v, v+1`` (and floor/ceil
  of non-integers); strings their upper/lower/title-case variants, for range
  comparisons a string just below and just above; LIKE patterns a few strings
  that match (in different case) and the pattern's text. So ``>`` vs ``>=`` vs
  ``<``, a changed literal, ``=`` vs ``LIKE`` all get told apart.
* Target rows: every literal value is planted in 1-2 rows of every database,
  and a third of the other rows are target rows too; a target row satisfies all of the gold
  query's literal conditions on its table at once (so conjunctions select
  something). Half of the target rows are *near misses*: one condition's
  column takes a neighbour value instead, so a dropped or shifted condition
  shows. The remaining rows mix seeds and fillers.
* Fillers follow the pool's type: if a member column has INTEGER/REAL/NUMERIC
  affinity, or a TEXT column is only compared with numbers (sql-create-context
  declares many numeric columns VARCHAR), the pool holds numbers (SQLite's
  affinity stores them as text in a TEXT column and ``no = 21`` still matches
  ``'21'``); otherwise strings tagged with the column name, so that two
  different text columns never hold the same value. Columns used in AVG/SUM
  or arithmetic hold numbers whatever their declared type. Columns used in
  ORDER BY or MIN/MAX get mostly distinct values (fewer ties).
* Databases differ: 5-15 rows per table, chosen independently per table and
  database; every other database has ~10% NULLs; some rows are duplicated;
  a joined column draws from all of its pool's values or from a random subset
  (so anti-joins / NOT IN / EXCEPT find unmatched values). When the gold query
  compares COUNT(...) with a number N (``HAVING count(*) > 10``), every other
  database has N+1..2N+4 rows per table (N capped at 100) and fewer distinct
  values, so that groups that large exist. In every fourth database, pools
  of joined columns are larger and each table's joined column is, half of
  the time, key-like (distinct values), giving 1:1 / 1:N joins.

Constraints (PRIMARY KEY, NOT NULL, FOREIGN KEY) are not enforced; tables are
created with the column's SQLite affinity as its type.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import sqlite3
from dataclasses import dataclass, field

from sqlglot import exp

from sqltune.sandbox import harden
from sqltune.sql import resolved_shared, schema_types

ROWS_MIN, ROWS_MAX = 5, 15
NULL_RATE = 0.1
TARGET_RATE = 0.33
SEED_RATE = 0.3
DUPLICATE_RATE = 0.08
NEAR_MISS_RATE = 0.5
MAX_COUNT_THRESHOLD = 100
_WORDS = ("alpha", "bravo", "delta", "echo", "gamma", "kilo", "lima", "mike", "oscar", "sierra", "tango", "zulu")
_NUM_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_RANGE_OPS = (exp.GT, exp.GTE, exp.LT, exp.LTE)
_EQ_OPS = (exp.EQ, exp.NEQ, exp.Is, exp.NullSafeEQ) if hasattr(exp, "NullSafeEQ") else (exp.EQ, exp.NEQ, exp.Is)
_CMP_OPS = _EQ_OPS + _RANGE_OPS + (exp.Like, exp.ILike, exp.Glob)


@dataclass
class _Pool:
    label: str
    numeric: bool = False  # a member column has numeric affinity
    real: bool = False
    joined: bool = False
    wide: bool = False
    seeds: list = field(default_factory=list)
    number_literals: int = 0
    string_literals: int = 0
    base: int = 0

    def add_seed(self, v) -> None:
        if v is not None and v not in self.seeds:
            self.seeds.append(v)


@dataclass
class Plan:
    """What to generate: tables, each column's pool, each table's target values."""

    tables: list[tuple[str, list[tuple[str, str]]]]
    pool_of: dict[tuple[str, str], int]
    pools: list[_Pool]
    targets: dict[str, dict[str, list]]
    digest: str
    count_threshold: int = 0


# ------------------------------------------------------------------ literal logic


def _number(v: str):
    f = float(v)
    if math.isfinite(f) and f == int(f) and not re.search(r"[.eE]", v):
        return int(v)
    return f


def _literal_value(node: exp.Expression | None):
    """Python value of a constant operand, or a sentinel when not a constant."""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Literal):
        if node.is_string:
            return node.this
        try:
            return _number(node.this)
        except ValueError:
            return _NOT_CONST
    if isinstance(node, exp.Neg):
        v = _literal_value(node.this)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v
    return _NOT_CONST


_NOT_CONST = object()


def _numeric_text(v) -> float | None:
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, str) and _NUM_RE.match(v.strip()):
        try:
            return _number(v.strip())
        except ValueError:
            return None
    return None


def _number_neighbours(v) -> list:
    out = [v, v - 1, v + 1]
    if isinstance(v, float) and v != int(v):
        out += [math.floor(v), math.ceil(v)]
    return out


def _string_variants(s: str) -> list[str]:
    out = [s, s.upper(), s.lower(), s.title(), s.swapcase()]
    return list(dict.fromkeys(out))


def _string_neighbours(s: str) -> list[str]:
    """A string just below and just above ``s`` in binary collation."""
    out = [s, s + "0"]
    if s and ord(s[-1]) > 33:
        out.append(s[:-1] + chr(ord(s[-1]) - 1))
    return out


def _like_instances(pattern: str) -> list[str]:
    core = pattern.replace("%", " ").replace("_", "a").strip() or "x"
    full = pattern.replace("%", "").replace("_", "a")
    fills = [pattern.replace("%", "").replace("_", "e"), pattern.replace("%", " zz ").replace("_", "o").strip()]
    out = [full, full.upper(), full.lower()] + fills + [core]
    return list(dict.fromkeys(x for x in out if x != ""))


def _satisfying(op: type, v):
    """A value that satisfies ``column <op> v`` (for target rows)."""
    if isinstance(v, str):
        n = _numeric_text(v)
        if n is None:
            return {exp.GT: v + "0", exp.GTE: v, exp.LT: (v[:-1] + chr(ord(v[-1]) - 1)) if v and ord(v[-1]) > 33 else "", exp.LTE: v}.get(op, v)
        return _satisfying(op, n) if op in (exp.GT, exp.LT) else v
    return {exp.GT: v + 1, exp.LT: v - 1}.get(op, v)


# ----------------------------------------------------------------------- planning


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict = {}

    def find(self, x):
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a, b) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def _first_column(node: exp.Expression | None) -> exp.Column | None:
    """The column an operand is about: a bare column, or the single column in a
    scalar function of it (``lower(name)``) or in a subquery's first output."""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Column) and not isinstance(node.this, exp.Star):
        return node
    if isinstance(node, exp.Subquery):
        inner = node.this
        if isinstance(inner, exp.Select) and inner.expressions:
            return _first_column(inner.expressions[0])
        return None
    if isinstance(node, exp.Alias):
        return _first_column(node.this)
    if isinstance(node, (exp.Func, exp.Cast)) and not isinstance(node, exp.Count):
        cols = [c for c in node.find_all(exp.Column) if not isinstance(c.this, exp.Star)]
        if len(cols) == 1:
            return cols[0]
    return None


@dataclass
class _GoldFacts:
    """What the gold query says about columns, as (table, column) keys."""

    literal_conds: list[tuple[list[tuple[str, str]], type, object]] = field(default_factory=list)
    joined_keys: set[tuple[str, str]] = field(default_factory=set)
    wide_keys: set[tuple[str, str]] = field(default_factory=set)
    numeric_keys: set[tuple[str, str]] = field(default_factory=set)
    count_threshold: int = 0


def _name_unions(affinity: dict[tuple[str, str], str]) -> _UnionFind:
    """Union-find over columns in which same-named columns are already joined."""
    uf = _UnionFind()
    by_name: dict[str, tuple[str, str]] = {}
    for key in affinity:
        uf.find(key)
        first = by_name.setdefault(key[1], key)
        uf.union(first, key)
    return uf


def _key_resolver(node: exp.Expression, schema: dict, columns_of: dict[str, set[str]]):
    """A function mapping a column of the gold query to the (table, column)
    keys it may refer to: through aliases, else the query's tables, else any table."""
    alias_map: dict[str, set[str]] = {}
    query_tables: set[str] = set()
    for t in node.find_all(exp.Table):
        name = t.name.lower()
        if name in schema:
            query_tables.add(name)
            alias_map.setdefault((t.alias or t.name).lower(), set()).add(name)

    def keys(col: exp.Column | None) -> list[tuple[str, str]]:
        if col is None:
            return []
        name = col.name.lower()
        if col.table:
            cands = alias_map.get(col.table.lower(), set()) | ({col.table.lower()} & set(schema))
        else:
            cands = {t for t in query_tables if name in columns_of[t]} or {
                t for t in schema if name in columns_of[t]
            }
        return [(t, name) for t in sorted(cands) if name in columns_of[t]]

    return keys


def _scan_comparisons(node: exp.Expression, keys, uf: _UnionFind, facts: _GoldFacts) -> None:
    for cmp in node.find_all(*_CMP_OPS):
        left, right = cmp.this, cmp.expression
        lk, rk = keys(_first_column(left)), keys(_first_column(right))
        if lk and rk:
            for a in lk:
                for b in rk:
                    uf.union(a, b)
            facts.joined_keys.update(lk + rk)
            continue
        for ks, other, flipped in ((lk, right, False), (rk, left, True)):
            if not ks:
                continue
            v = _literal_value(other)
            if v is _NOT_CONST:
                continue
            op = type(cmp)
            if flipped:
                op = {exp.GT: exp.LT, exp.LT: exp.GT, exp.GTE: exp.LTE, exp.LTE: exp.GTE}.get(op, op)
            facts.literal_conds.append((ks, op, v))


def _scan_in(node: exp.Expression, keys, uf: _UnionFind, facts: _GoldFacts) -> None:
    for node_in in node.find_all(exp.In):
        ks = keys(_first_column(node_in.this))
        query = node_in.args.get("query")
        if query is not None:
            inner = query.this if isinstance(query, exp.Subquery) else query
            first = inner.expressions[0] if isinstance(inner, exp.Select) and inner.expressions else None
            sub = keys(_first_column(first))
            for a in ks:
                for b in sub:
                    uf.union(a, b)
            facts.joined_keys.update(ks + sub)
        for e in node_in.expressions:
            v = _literal_value(e)
            if ks and v is not _NOT_CONST:
                facts.literal_conds.append((ks, exp.In, v))


def _scan_between(node: exp.Expression, keys, facts: _GoldFacts) -> None:
    for between in node.find_all(exp.Between):
        ks = keys(_first_column(between.this))
        lo, hi = _literal_value(between.args.get("low")), _literal_value(between.args.get("high"))
        for v, op in ((lo, exp.GTE), (hi, exp.LTE)):
            if ks and v is not _NOT_CONST:
                facts.literal_conds.append((ks, op, v))


def _count_threshold(node: exp.Expression) -> int:
    """The largest N the gold query compares a COUNT(...) with (capped)."""
    count_threshold = 0
    for cmp in node.find_all(*_RANGE_OPS, exp.EQ):
        for side, other in ((cmp.this, cmp.expression), (cmp.expression, cmp.this)):
            v = _literal_value(other)
            if isinstance(side, exp.Count) and isinstance(v, int) and not isinstance(v, bool):
                count_threshold = max(count_threshold, min(v, MAX_COUNT_THRESHOLD))
    return count_threshold


def _scan_gold(node: exp.Expression, schema: dict, columns_of: dict[str, set[str]], uf: _UnionFind) -> _GoldFacts:
    """Collect the gold query's facts; column comparisons also join pools in ``uf``."""
    facts = _GoldFacts()
    keys = _key_resolver(node, schema, columns_of)
    # the order of unions decides each pool's root and so its label: keep it
    _scan_comparisons(node, keys, uf, facts)
    _scan_in(node, keys, uf, facts)
    _scan_between(node, keys, facts)
    facts.count_threshold = _count_threshold(node)
    for o in node.find_all(exp.Ordered, exp.Max, exp.Min):
        for c in o.find_all(exp.Column):
            facts.wide_keys.update(keys(c))
    for o in node.find_all(exp.Avg, exp.Sum, exp.Add, exp.Sub, exp.Mul, exp.Div):
        for c in o.find_all(exp.Column):
            facts.numeric_keys.update(keys(c))
    return facts


def _make_pools(
    affinity: dict[tuple[str, str], str], uf: _UnionFind, facts: _GoldFacts
) -> tuple[list[_Pool], dict[tuple[str, str], int]]:
    """One pool per union-find class, numbered in schema order."""
    roots: dict = {}
    pools: list[_Pool] = []
    pool_of: dict[tuple[str, str], int] = {}
    for key in affinity:
        r = uf.find(key)
        if r not in roots:
            roots[r] = len(pools)
            pools.append(_Pool(label=r[1]))
        pool_of[key] = roots[r]
    for key, idx in pool_of.items():
        p = pools[idx]
        if affinity[key] in ("INTEGER", "REAL", "NUMERIC"):
            p.numeric = True
        if affinity[key] == "REAL":
            p.real = True
        if key in facts.joined_keys:
            p.joined = True
    for key in facts.wide_keys:
        pools[pool_of[key]].wide = True
    for key in facts.numeric_keys:
        pools[pool_of[key]].numeric = True
    return pools, pool_of


def _seed_literal(pool: _Pool, op: type, v):
    """Seed ``pool`` with ``v`` and its neighbours; returns the value a target
    row uses for ``column <op> v``."""
    n = _numeric_text(v)
    if isinstance(v, str) and n is None:
        pool.string_literals += 1
        if op in (exp.Like, exp.ILike, exp.Glob):
            variants = _like_instances(v)
        elif op in _RANGE_OPS:
            variants = _string_neighbours(v) + _string_variants(v)
        else:
            variants = _string_variants(v)
        for x in variants:
            pool.add_seed(x)
        return variants[0] if op in (exp.Like, exp.ILike, exp.Glob) else _satisfying(op, v)
    pool.number_literals += 1
    if isinstance(v, str):
        pool.add_seed(v)
    for x in _number_neighbours(n):
        pool.add_seed(x)
    return _satisfying(op, v)


def _seed_targets(
    literal_conds: list, pools: list[_Pool], pool_of: dict[tuple[str, str], int]
) -> dict[str, dict[str, list]]:
    """Seed the pools from the literal conditions; returns table -> column -> target values."""
    targets: dict[str, dict[str, list]] = {}
    for ks, op, v in literal_conds:
        for key in ks:
            target = _seed_literal(pools[pool_of[key]], op, v)
            if op is not exp.NEQ and target is not None:
                targets.setdefault(key[0], {}).setdefault(key[1], [])
                if target not in targets[key[0]][key[1]]:
                    targets[key[0]][key[1]].append(target)
    return targets


def build_plan(context: str, gold_sql: str) -> Plan:
    """Value pools and target values for ``context`` + ``gold_sql``.

    Raises ``SqltuneError`` if the context is not valid DDL. A gold query that
    does not parse just gives random databases.
    """
    schema = schema_types(context)
    tables = list(schema.items())
    columns_of = {t: {c for c, _ in cols} for t, cols in tables}
    affinity = {(t, c): a for t, cols in tables for c, a in cols}
    uf = _name_unions(affinity)

    node = resolved_shared(gold_sql, context) if gold_sql else None
    facts = _scan_gold(node, schema, columns_of, uf) if node is not None else _GoldFacts()
    pools, pool_of = _make_pools(affinity, uf, facts)
    targets = _seed_targets(facts.literal_conds, pools, pool_of)

    digest = hashlib.sha1(f"{context}\x00{gold_sql}".encode()).hexdigest()[:16]
    for i, p in enumerate(pools):
        p.base = int(hashlib.sha1(f"{digest}:{i}".encode()).hexdigest()[:6], 16) % 90
    return Plan(tables=tables, pool_of=pool_of, pools=pools, targets=targets, digest=digest,
                count_threshold=facts.count_threshold)


# --------------------------------------------------------------------- generation


def _filler(pool: _Pool, rng: random.Random):
    numeric = pool.numeric or (pool.number_literals > 0 and pool.string_literals == 0)
    if numeric:
        nums = [x for x in (_numeric_text(s) for s in pool.seeds) if x is not None]
        if nums:
            lo, hi = math.floor(min(nums)) - 10, math.ceil(max(nums)) + 10
        else:
            lo, hi = pool.base, pool.base + (1000 if pool.wide else 30)
        if pool.wide:
            hi = max(hi, lo + 1000)
        if pool.real:
            return round(rng.uniform(lo, hi), 2)
        return rng.randint(lo, hi)
    if pool.wide:
        return f"{pool.label} {rng.randint(0, 9999)}"
    return f"{pool.label} {rng.choice(_WORDS)}"


def _db_pool_values(plan: Plan, rng: random.Random, big: bool, keyed: bool) -> list[list]:
    """Each pool's distinct filler values in this database."""
    db_pools = []
    for pool in plan.pools:
        if big:
            k = rng.randint(1, 3)
        elif keyed and pool.joined:
            k = ROWS_MAX + 5
        else:
            k = rng.randint(2, 6)
        values = [_filler(pool, rng) for _ in range(k)]
        db_pools.append(list(dict.fromkeys(values)))
    return db_pools


def _column_values(
    plan: Plan, table: str, cols: list[tuple[str, str]], db_pools: list[list], rng: random.Random, keyed: bool
) -> tuple[list[list], dict[int, list]]:
    """Per column, the values it draws from, and for key-like columns the
    distinct values to hand out one by one."""
    # each column draws from all of its pool's values or from a subset, so
    # that joins / IN / EXCEPT also meet values missing on the other side
    col_values = []
    distinct: dict[int, list] = {}
    for ci, (col, _aff) in enumerate(cols):
        pool_idx = plan.pool_of[(table, col)]
        vals = db_pools[pool_idx]
        if keyed and plan.pools[pool_idx].joined:
            if rng.random() < 0.5:  # key-like: distinct values in this table
                distinct[ci] = rng.sample(vals, len(vals))
        elif plan.pools[pool_idx].joined and len(vals) > 1 and rng.random() < 0.5:
            vals = rng.sample(vals, rng.randint(1, len(vals) - 1))
        col_values.append(vals)
    return col_values, distinct


def _row(
    plan: Plan,
    table: str,
    cols: list[tuple[str, str]],
    tgt: dict[str, list],
    forced: tuple | None,
    near_miss: str | None,
    is_target: bool,
    null_rate: float,
    col_values: list[list],
    distinct: dict[int, list],
    rng: random.Random,
) -> tuple:
    row = []
    for ci, (col, _aff) in enumerate(cols):
        pool_idx = plan.pool_of[(table, col)]
        pool = plan.pools[pool_idx]
        if forced is not None and col == forced[0]:
            row.append(forced[1])
        elif null_rate and rng.random() < null_rate:
            row.append(None)
        elif col == near_miss and pool.seeds:
            row.append(rng.choice(pool.seeds))
        elif is_target and col in tgt:
            row.append(rng.choice(tgt[col]))
        elif pool.seeds and rng.random() < SEED_RATE:
            row.append(rng.choice(pool.seeds))
        elif pool.wide and not pool.joined:
            row.append(_filler(pool, rng))
        else:
            row.append(distinct[ci].pop() if distinct.get(ci) else rng.choice(col_values[ci]))
    return tuple(row)


def _table_rows(
    plan: Plan,
    table: str,
    cols: list[tuple[str, str]],
    n: int,
    col_values: list[list],
    distinct: dict[int, list],
    null_rate: float,
    rng: random.Random,
) -> list[tuple]:
    tgt = plan.targets.get(table, {})
    # planted rows: every target value of every column shows up (1-2 times)
    planted = [(c, v) for c in sorted(tgt) for v in tgt[c] for _ in range(rng.randint(1, 2))]
    rng.shuffle(planted)
    planted = planted[: max(1, n // 2)]
    rows: list[tuple] = []
    for i in range(n):
        forced = planted[i] if i < len(planted) else None
        if forced is None and rows and rng.random() < DUPLICATE_RATE:
            rows.append(rng.choice(rows))
            continue
        is_target = forced is not None or (bool(tgt) and rng.random() < TARGET_RATE)
        # a near-target row misses exactly one condition, by a neighbour value
        near_miss = rng.choice(sorted(tgt)) if is_target and rng.random() < NEAR_MISS_RATE else None
        if forced is not None and near_miss == forced[0]:
            near_miss = None
        rows.append(_row(plan, table, cols, tgt, forced, near_miss, is_target, null_rate, col_values, distinct, rng))
    rng.shuffle(rows)
    return rows


def plan_rows(plan: Plan, db_index: int, seed: int) -> dict[str, list[tuple]]:
    """Rows of every table for database ``db_index`` (deterministic)."""
    # one generator for the whole database: the order of its draws is part of
    # the output, so helpers below must not reorder them
    rng = random.Random(f"{seed}|{db_index}|{plan.digest}")
    null_rate = NULL_RATE if db_index % 2 == 1 else 0.0
    big = plan.count_threshold > 0 and db_index % 2 == 0
    keyed = db_index % 4 == 3
    db_pools = _db_pool_values(plan, rng, big, keyed)
    data: dict[str, list[tuple]] = {}
    for table, cols in plan.tables:
        if big:
            thr = plan.count_threshold
            n = rng.randint(thr + 1, 2 * thr + 4)
        else:
            n = rng.randint(ROWS_MIN, ROWS_MAX)
        col_values, distinct = _column_values(plan, table, cols, db_pools, rng, keyed)
        data[table] = _table_rows(plan, table, cols, n, col_values, distinct, null_rate, rng)
    return data


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


UNICODE_NOCASE = "SQLTUNE_NOCASE"


def _unicode_nocase(a: str, b: str) -> int:
    # SQLite's own NOCASE folds ASCII only; str.lower folds every script (Cyrillic, accents).
    a, b = a.lower(), b.lower()
    return (a > b) - (a < b)


def _text_collation(data: dict[str, list[tuple]], ascii_queries: bool) -> str:
    """SQLite's built-in NOCASE runs in C and, on ASCII text, matches and orders exactly as str.lower
    does; a Python collation is called per comparison (about twice the scoring time), so it is used
    only where a value or a query has non-ASCII text."""
    ascii_data = all(v.isascii() for rows in data.values() for row in rows for v in row if isinstance(v, str))
    return "NOCASE" if ascii_queries and ascii_data else UNICODE_NOCASE


def _column_def(name: str, affinity: str, collation: str | None) -> str:
    collate = f" COLLATE {collation}" if collation and affinity == "TEXT" else ""
    return f"{_quote(name)} {affinity}{collate}"


def build_database(plan: Plan, data: dict[str, list[tuple]], nocase: bool = False,
                   ascii_queries: bool = False) -> sqlite3.Connection:
    """A hardened in-memory SQLite database holding ``data``. ``nocase``: text columns compare
    case-blind (=, IN, ORDER BY, GROUP BY), as WikiSQL's evaluator does; ``ascii_queries``: the
    queries to run are ASCII, which allows SQLite's faster built-in fold (see _text_collation)."""
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    collation = _text_collation(data, ascii_queries) if nocase else None
    if collation == UNICODE_NOCASE:
        conn.create_collation(UNICODE_NOCASE, _unicode_nocase)
    for table, cols in plan.tables:
        conn.execute(f"CREATE TABLE {_quote(table)} ({', '.join(_column_def(c, a, collation) for c, a in cols)})")
        rows = data.get(table) or []
        if rows:
            marks = ", ".join("?" * len(cols))
            conn.executemany(f"INSERT INTO {_quote(table)} VALUES ({marks})", rows)
    conn.commit()
    return harden(conn)


def synthesize(context: str, gold_sql: str, n_databases: int = 8, seed: int = 0,
               nocase: bool = False, ascii_queries: bool = False) -> list[sqlite3.Connection]:
    """``n_databases`` hardened in-memory databases for ``context`` whose values
    are seeded from ``gold_sql`` (see the module docstring). Deterministic given
    ``seed``. Raises ``SqltuneError`` if the context is not valid DDL."""
    plan = build_plan(context, gold_sql)
    return [build_database(plan, plan_rows(plan, i, seed), nocase, ascii_queries) for i in range(n_databases)]
