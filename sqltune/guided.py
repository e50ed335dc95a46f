"""Execution-guided selection: one query out of a model's candidates (beam or sampled), gold unseen.

For each row, the candidates are checked in the model's order and dropped when they:
1. do not parse as one read-only statement, or name a table or column the schema lacks;
2. fail when run: on the row's real database when it has one (and there also when they return no
   rows: a question over real data has an answer), else on small databases synthesized from the
   schema with the *candidates'* own literals as seed values (sqltune.synth), never the gold query's.
Then the rule (evaluate.selection): `first` keeps the best-ranked survivor (execution-guided
decoding as in the WikiSQL literature); `vote` groups the survivors by their results on those
databases and the largest group wins (self-consistency over execution results), a tie going to the
group holding the best-ranked candidate, and the winner is that group's best-ranked member. When
nothing survives, the model's first candidate is kept.

Every query runs in a sandbox worker (sqltune.sandbox) under the per-query time limit; a row whose
worker is stopped keeps its first candidate.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Sequence

from sqltune.errors import SqltuneError
from sqltune.sandbox import (NO_GUARD, Guard, Stop, cached_snapshot, open_snapshot, resolve_workers, run_query,
                             shared_pool)
from sqltune.scoring import MAX_PREDICTION_CHARS, _norm_rows, _with_snapshot
from sqltune.sql import extract_sql, is_read_only, schema_valid
from sqltune.synth import synthesize

# Synthesized databases per surviving candidate (seeded with its literals), and the candidates that
# seed them: enough that two queries which differ in a condition disagree somewhere.
DBS_PER_SEED = 2
MAX_SEEDS = 4
MAX_SELECTION_ROWS = 1000


def _norm_result(rows: list[tuple]) -> tuple:
    """A result as a multiset of rows: row order and the Python type of equal numbers don't count."""
    # the scorer's value rules (sqltune.scoring), so results group as the scorer would compare them
    return tuple(sorted(map(repr, _norm_rows(rows))))


def _checked(candidates: Sequence[str], context: str | None) -> list[str]:
    """Distinct candidates, in order, that parse as one read-only query over the schema's names."""
    out: list[str] = []
    for text in candidates:
        sql = extract_sql(text or "")
        if not sql or len(sql) > MAX_PREDICTION_CHARS or sql in out or not is_read_only(sql):
            continue
        if context and not schema_valid(sql, context):
            continue
        out.append(sql)
    return out


def _signatures(queries: list[str], dbs: list[sqlite3.Connection], timeout_s: float, guard: Guard,
                drop_empty: bool) -> dict[int, tuple]:
    """Index -> results on every database, for the queries that run everywhere."""
    sigs = {}
    for k, sql in enumerate(queries):
        results = []
        for db in dbs:
            with guard.limit(timeout_s, "query"):
                r = run_query(db, sql, timeout_s=timeout_s, max_rows=MAX_SELECTION_ROWS)
            if not r.ok or (drop_empty and not r.rows):
                break
            results.append(_norm_result(r.rows))
        else:
            sigs[k] = tuple(results)
    return sigs


def _synthesized(context: str, seeds: list[str], seed: int, nocase: bool) -> list[sqlite3.Connection]:
    dbs: list[sqlite3.Connection] = []
    for k, sql in enumerate(seeds[:MAX_SEEDS]):
        try:
            dbs += synthesize(context, sql, DBS_PER_SEED, seed + k, nocase=nocase, ascii_queries=sql.isascii())
        except SqltuneError:  # a context synthesis can't read: selection falls back to the checks
            return dbs
    return dbs


def vote(queries: list[str], sigs: dict[int, tuple], rule: str = "vote") -> tuple[int | None, int]:
    """(index of the chosen query, size of its group of equal results); (None, 0) when no query has
    a signature. ``rule`` vote: the largest group; first: the best-ranked query's group."""
    groups: dict[tuple, list[int]] = {}
    for k in sorted(sigs):
        groups.setdefault(sigs[k], []).append(k)
    if not groups:
        return None, 0
    if rule == "first":
        best = min(groups.values(), key=lambda g: g[0])
    else:
        best = max(groups.values(), key=lambda g: (len(g), -g[0]))
    return best[0], len(best)


def select(row: dict, candidates: Sequence[str], *, seed: int = 0, timeout_s: float = 2.0,
           snapshot: str | None = None, value_case: str = "exact", rule: str = "first",
           guard: Guard = NO_GUARD) -> dict:
    """The chosen query for one row, and how it was chosen (see the module docstring)."""
    first = extract_sql(candidates[0] if candidates else "")
    context = row.get("context") if isinstance(row.get("context"), str) else None
    with guard.limit(timeout_s, "check"):
        queries = _checked(candidates, context)
    out = {"sql": first, "candidates": len(candidates), "valid": len(queries), "agreeing": 0}
    if not queries:
        return out
    out["sql"] = queries[0]
    guard.checkpoint(dict(out))
    if snapshot is not None:
        dbs, own = [open_snapshot(snapshot)], False
    elif context:
        dbs, own = _synthesized(context, queries, seed, value_case == "insensitive"), True
    else:
        return out
    try:
        chosen, agreeing = vote(queries, _signatures(queries, dbs, timeout_s, guard, drop_empty=not own), rule)
    finally:
        for db in dbs:
            db.close()
    if chosen is not None:
        out.update(sql=queries[chosen], agreeing=agreeing)
    return out


def _select_task(payload: tuple, guard: Guard) -> dict:
    i, row, candidates, opts = payload
    return {"index": i, **select(row, candidates, guard=guard, **opts)}


def _stopped(payload: tuple, stop: Stop) -> dict:
    i, _row, candidates, _opts = payload
    base = {"sql": extract_sql(candidates[0] if candidates else ""), "candidates": len(candidates),
            "valid": 0, "agreeing": 0}
    return {"index": i, **(stop.checkpoint or base), "stopped": stop.kind}


def select_rows(rows: Sequence[dict], candidates: Sequence[Sequence[str]], *, seed: int = 0,
                timeout_s: float = 2.0, db_dir: str | os.PathLike | None = None, value_case: str = "exact",
                rule: str = "first", workers: int | str = "auto", desc: str | None = None) -> list[dict]:
    """select() for every row, in sandbox workers; rows with a db_id run on ``db_dir``'s database."""
    from tqdm.auto import tqdm

    if len(rows) != len(candidates):
        raise SqltuneError(f"{len(rows)} rows but {len(candidates)} candidate lists; give one list per row")
    payloads = []
    for i, (row, cands) in enumerate(zip(rows, candidates)):
        snapshot = _with_snapshot(i, row, {"db_dir": db_dir}).get("snapshot")  # the scorer's own, per file version
        payloads.append((i, row, list(cands), dict(seed=seed, timeout_s=timeout_s, snapshot=snapshot,
                                                   value_case=value_case, rule=rule)))
    n_workers = min(resolve_workers(workers), max(1, len(payloads)))
    with tqdm(total=len(payloads), desc=desc, unit="row", disable=desc is None, mininterval=1.0) as bar:
        return shared_pool(n_workers).map("sqltune.guided:_select_task", payloads, _stopped, bar.update)


def select_on_database(db: str | os.PathLike, schema: str, candidates: Sequence[str], *, timeout_s: float,
                       rule: str = "first") -> dict:
    """`ask`'s choice: the candidates checked against ``schema`` and run on a snapshot of ``db``."""
    opts = dict(seed=0, timeout_s=timeout_s, snapshot=str(cached_snapshot(db)), value_case="exact", rule=rule)
    payload = (0, {"context": schema}, list(candidates), opts)
    return shared_pool(1).map("sqltune.guided:_select_task", [payload], _stopped)[0]
