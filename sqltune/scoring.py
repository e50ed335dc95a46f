"""Scoring predictions: exact match, execution match, breakdowns.

Rules:

* **Execution match.** Gold and prediction run on the same databases: a
  read-only snapshot of ``db_dir/<db_id>.sqlite`` (sqltune.sandbox) when the row has a
  ``db_id`` and ``db_dir`` is given (real-database mode), else ``n_databases``
  synthesized databases (:mod:`sqltune.synth`). The prediction matches when
  its result equals the gold result on *every* database.
* **Rows** are compared as multisets (duplicates count); order matters only
  when the gold query's outermost query has ORDER BY (then lists must be
  equal, ties included).
* **Columns**: both results must have the same number of columns; columns
  may appear in a different order (one permutation, the same on every
  database, as in the test-suite evaluation).
* **Floats** are rounded to 6 significant digits before comparing; an
  integral float equals the integer (``2.0 == 2``, so AVG vs SUM/COUNT
  arithmetic agrees).
* **Undecidable**: when the gold query returns no rows on every database, the
  example can't tell a right query from a wrong one. It is reported
  (``undecidable: true``), never counted as a pass, and left out of the
  ``execution_accuracy`` denominator: ``execution_accuracy = correct / (n -
  undecidable - gold_error)``; ``execution_accuracy_all = correct / n`` counts
  everything. ``gold_error`` (the gold query fails on a database) is handled
  the same way.
* **Bad predictions** (empty, prose, several statements, writes) never raise:
  anything sqlglot reads as a non-read-only statement is refused without
  running; everything else runs only inside the sandbox (which itself refuses
  writes/ATTACH/PRAGMA), so text sqlglot can't parse still gets SQLite's verdict.
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections import Counter, defaultdict
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Iterable, Sequence

from sqlglot import exp

from sqltune.errors import SqltuneError
from sqltune.sandbox import (
    DEFAULT_MAX_ROWS,
    NO_GUARD,
    Guard,
    QueryResult,
    Stop,
    cached_snapshot,
    database_path,
    open_snapshot,
    resolve_workers,
    run_query,
    schema_of,
    shared_pool,
)
from sqltune.sql import (
    FEATURES,
    _parse_shared,
    exact_match,
    extract_sql,
    features,
    is_read_only,
    normalize,
    schema_valid,
)
from sqltune.synth import synthesize

SIG_DIGITS = 6
MAX_PERMUTATIONS = 720
# A prediction longer than this is scored wrong unread: no gold query in the supported datasets is
# near it, and parsing and schema-checking text grows faster than its length.
MAX_PREDICTION_CHARS = 10_000


# --------------------------------------------------------------- result compare


def _norm_value(v):
    if isinstance(v, float):
        if math.isfinite(v):
            if v == int(v) and abs(v) < 2**53:
                return int(v)
            return float(f"{v:.{SIG_DIGITS}g}")
    return v


def _norm_rows(rows: Iterable[tuple]) -> list[tuple]:
    return [tuple(_norm_value(v) for v in r) for r in rows]


def _same(gold: list[tuple], pred: list[tuple], ordered: bool) -> bool:
    if len(gold) != len(pred):
        return False
    if ordered:
        return gold == pred
    return Counter(gold) == Counter(pred)


def _column_signature(results: Sequence[list[tuple]], j: int) -> tuple:
    return tuple(frozenset(Counter(r[j] for r in rows).items()) for rows in results)


def _permutations(gold_sig: list, pred_sig: list) -> Iterable[tuple[int, ...]]:
    n = len(gold_sig)
    cands = [[j for j in range(n) if pred_sig[j] == gold_sig[i]] for i in range(n)]
    if any(not c for c in cands):
        return
    chosen: list[int] = []
    used: set[int] = set()

    def rec(i: int):
        if i == n:
            yield tuple(chosen)
            return
        for j in cands[i]:
            if j not in used:
                used.add(j)
                chosen.append(j)
                yield from rec(i + 1)
                chosen.pop()
                used.discard(j)

    yield from rec(0)


def results_match(
    gold: Sequence[Sequence[tuple]],
    pred: Sequence[Sequence[tuple]],
    *,
    ordered: bool = False,
    gold_columns: int | None = None,
    pred_columns: int | None = None,
) -> bool:
    """Do the prediction's results equal the gold results on every database?

    ``gold``/``pred``: one row list per database. Rows are multisets unless
    ``ordered``; floats are rounded to 6 significant digits; columns may be
    permuted (one permutation for all databases) but their number must agree
    (``*_columns`` give it when all results are empty).
    """
    if len(gold) != len(pred):
        return False
    g = [_norm_rows(r) for r in gold]
    p = [_norm_rows(r) for r in pred]
    width_g = gold_columns if gold_columns is not None else next((len(r[0]) for r in g if r), None)
    width_p = pred_columns if pred_columns is not None else next((len(r[0]) for r in p if r), None)
    if width_g is not None and width_p is not None and width_g != width_p:
        return False
    if any(len(a) != len(b) for a, b in zip(g, p)):
        return False
    if all(_same(a, b, ordered) for a, b in zip(g, p)):
        return True
    n = width_g or width_p or 0
    if n < 2 or any(len(row) != n for rows in g + p for row in rows):
        return False
    gold_sig = [_column_signature(g, j) for j in range(n)]
    pred_sig = [_column_signature(p, j) for j in range(n)]
    for perm in islice(_permutations(gold_sig, pred_sig), MAX_PERMUTATIONS):
        if all(_same(a, [tuple(r[j] for j in perm) for r in b], ordered) for a, b in zip(g, p)):
            return True
    return False


def gold_is_ordered(gold_sql: str) -> bool:
    """True when the outermost query of ``gold_sql`` has ORDER BY."""
    node = _parse_shared(gold_sql)
    while isinstance(node, exp.Subquery):
        node = node.this
    return node is not None and node.args.get("order") is not None


# ------------------------------------------------------------------- databases


@lru_cache(maxsize=16)
def _snapshot_connection(snapshot: str) -> sqlite3.Connection:
    return open_snapshot(snapshot)


def real_database(db_dir: str | os.PathLike, db_id: str) -> sqlite3.Connection:
    """Hardened read-only connection to the snapshot of ``db_dir/<db_id>.sqlite`` (one snapshot per
    file version; safe to share because every connection refuses writes)."""
    return _snapshot_connection(str(cached_snapshot(database_path(db_dir, db_id))))


# --------------------------------------------------------------------- scoring


def _gold_sql(row: dict) -> str:
    gold = row.get("answer")
    if not isinstance(gold, str) or not gold.strip():
        raise SqltuneError("the row has no gold SQL in 'answer'; add it")
    return extract_sql(gold)


def _context_and_real_db(
    row: dict, db_id, db_dir: str | os.PathLike | None, snapshot: str | None = None
) -> tuple[str, list[sqlite3.Connection] | None]:
    """The schema text, plus the real database when there is one to score on
    (``None`` means databases have to be synthesized from the context)."""
    context = row.get("context")
    if bool(db_id) and db_dir is not None:
        dbs = [_snapshot_connection(snapshot) if snapshot else real_database(db_dir, str(db_id))]
        if not isinstance(context, str) or not context.strip():
            context = schema_of(dbs[0])
        return context, dbs
    if not isinstance(context, str) or not context.strip():
        raise SqltuneError(
            "the row has no 'context' (CREATE TABLE statements) and no db_id with --db-dir; "
            "add the context or pass --db-dir"
        )
    return context, None


def _blank_verdicts(row: dict, gold: str, pred: str, db_id) -> dict:
    """Every verdict False: the start of an example's verdicts, and all of them when its prediction
    could not be checked."""
    return {
        "prediction": pred,
        "parse_ok": False,
        "schema_valid": False,
        "exact_match": False,
        "execution_match": False,
        "undecidable": False,
        "gold_error": False,
        "error": None,
        "error_message": "",
        "features": sorted(features(gold)),
        "source": row.get("source") or (str(db_id) if db_id else "unknown"),
    }


def _static_verdicts(row: dict, gold: str, pred: str, context: str, db_id) -> dict:
    """The verdicts that need no database; execution ones start out False."""
    parse_ok = _parse_shared(pred) is not None
    out = _blank_verdicts(row, gold, pred, db_id)
    out.update({
        "parse_ok": parse_ok,
        "schema_valid": schema_valid(pred, context) if parse_ok else False,
        "exact_match": exact_match(pred, gold, context) if parse_ok else False,
    })
    if normalize(gold, context) is None:
        out["gold_error"] = True
        out["error"] = "gold_error"
        out["error_message"] = "gold SQL does not parse"
    return out


def _run_on_all(
    dbs: list[sqlite3.Connection], sql: str, timeout_s: float, max_rows: int, guard: Guard, phase: str
) -> tuple[list[QueryResult], QueryResult | None]:
    """Results on every database, stopping at the first failure (returned second)."""
    results: list[QueryResult] = []
    for db in dbs:
        with guard.limit(timeout_s, phase):
            r = run_query(db, sql, timeout_s=timeout_s, max_rows=max_rows)
        if not r.ok:
            return results, r
        results.append(r)
    return results, None


def _execution_verdicts(
    out: dict, dbs: list[sqlite3.Connection], gold: str, pred: str, timeout_s: float, max_rows: int,
    guard: Guard = NO_GUARD,
) -> dict:
    # gold runs even when it does not parse, so a gold run failure message wins
    gold_results, failed = _run_on_all(dbs, gold, timeout_s, max_rows, guard, "gold")
    if failed is not None:
        out.update(gold_error=True, error="gold_error", error_message=f"gold {failed.error}: {failed.message}")
        return out
    if out["gold_error"]:
        return out
    out["undecidable"] = all(not r.rows for r in gold_results)

    if not pred:
        out.update(error="error", error_message="empty prediction")
        return out
    if out["parse_ok"] and not is_read_only(pred):
        out.update(error="refused", error_message="not a single read-only query")
        return out
    pred_results, failed = _run_on_all(dbs, pred, timeout_s, max_rows, guard, "prediction")
    if failed is not None:
        out.update(error=failed.error, error_message=failed.message[:200])
        return out
    if out["undecidable"]:
        return out
    out["execution_match"] = results_match(
        [r.rows for r in gold_results],
        [r.rows for r in pred_results],
        ordered=gold_is_ordered(gold),
        gold_columns=gold_results[0].n_columns,
        pred_columns=pred_results[0].n_columns,
    )
    return out


def score_example(
    row: dict,
    prediction_text: str | None,
    *,
    n_databases: int = 8,
    seed: int = 0,
    timeout_s: float = 2.0,
    db_dir: str | os.PathLike | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    value_case: str = "exact",
    guard: Guard = NO_GUARD,
    snapshot: str | None = None,
) -> dict:
    """Verdicts for one example (see the module docstring for the rules).

    Returns ``prediction`` (the extracted SQL), ``parse_ok`` (sqlglot reads
    one statement), ``schema_valid``, ``exact_match``, ``execution_match``,
    ``undecidable``, ``gold_error``, ``error`` (None or one of ``refused``,
    ``timeout``, ``error``, ``row_limit`` for the prediction, ``gold_error``
    when the gold query fails), ``error_message``, ``features`` (of the gold
    query) and ``source``.

    Raises ``SqltuneError`` only for data problems (missing gold, invalid
    context DDL, a missing database file), never for a bad prediction.

    ``guard`` (from a :class:`sqltune.sandbox.WorkerPool`) bounds the checks and every query;
    ``snapshot`` is the real database's snapshot file, made once by the caller.
    """
    gold = _gold_sql(row)
    db_id = row.get("db_id")
    pred = extract_sql(prediction_text if isinstance(prediction_text, str) else "")
    context, real_dbs = _context_and_real_db(row, db_id, db_dir, snapshot)
    if len(pred) > MAX_PREDICTION_CHARS:
        out = _blank_verdicts(row, gold, pred, db_id)
        out.update(error="refused", error_message=f"prediction longer than {MAX_PREDICTION_CHARS} characters")
        return out
    with guard.limit(timeout_s, "check"):
        out = _static_verdicts(row, gold, pred, context, db_id)
    guard.checkpoint(out)
    if real_dbs is None:
        dbs = synthesize(context, gold, n_databases, seed, nocase=value_case == "insensitive",
                         ascii_queries=gold.isascii() and pred.isascii())
    else:
        dbs = real_dbs
    try:
        return _execution_verdicts(out, dbs, gold, pred, timeout_s, max_rows, guard)
    finally:
        # real databases are cached and reused; only synthesized ones are ours to close
        if real_dbs is None:
            for db in dbs:
                db.close()


def _fraction(num: int, den: int) -> float | None:
    return num / den if den else None


def _group_stats(items: list[dict]) -> dict:
    n = len(items)
    decidable = [e for e in items if not e["undecidable"] and not e["gold_error"]]
    return {
        "n": n,
        "exact_match": _fraction(sum(e["exact_match"] for e in items), n),
        "execution_accuracy": _fraction(sum(e["execution_match"] for e in decidable), len(decidable)),
    }


def summarize(per_example: list[dict]) -> dict:
    """Summary metrics; fractions are in [0, 1] (None when a denominator is 0).

    ``by_feature`` groups by the gold query's features (an example counts in
    each of its features; ``none`` holds examples with no feature), and
    ``by_source`` by the row's ``source`` (else ``db_id``, else ``unknown``);
    each group has ``n``, ``exact_match`` and ``execution_accuracy`` (same
    denominator rule as the overall number).
    """
    n = len(per_example)
    correct = sum(e["execution_match"] for e in per_example)
    undecidable = sum(e["undecidable"] for e in per_example)
    gold_errors = sum(e["gold_error"] for e in per_example)
    by_feature: dict[str, list[dict]] = defaultdict(list)
    by_source: dict[str, list[dict]] = defaultdict(list)
    for e in per_example:
        for f in e["features"] or ["none"]:
            by_feature[f].append(e)
        by_source[e["source"]].append(e)
    errors = Counter(e["error"] for e in per_example if e["error"])
    return {
        "n": n,
        "exact_match": _fraction(sum(e["exact_match"] for e in per_example), n),
        "execution_accuracy": _fraction(correct, n - undecidable - gold_errors),
        "execution_accuracy_all": _fraction(correct, n),
        "parse_rate": _fraction(sum(e["parse_ok"] for e in per_example), n),
        "schema_valid_rate": _fraction(sum(e["schema_valid"] for e in per_example), n),
        "undecidable": _fraction(undecidable, n),
        "gold_error": _fraction(gold_errors, n),
        "n_correct": correct,
        "n_decidable": n - undecidable - gold_errors,
        "errors": dict(sorted(errors.items())),
        "by_feature": {
            f: _group_stats(by_feature[f]) for f in (*FEATURES, "none") if f in by_feature
        },
        "by_source": {s: _group_stats(v) for s, v in sorted(by_source.items())},
    }


def _score_task(payload: tuple, guard: Guard) -> dict:
    """Worker task: one example's verdicts (see :func:`score_example`)."""
    i, row, pred, opts = payload
    try:
        result = score_example(row, pred, guard=guard, **opts)
    except SqltuneError as exc:
        raise SqltuneError(f"data row {i + 1}: {exc}") from None
    result["index"] = i
    if row.get("db_id"):
        result["db_id"] = row["db_id"]
    return result


def _stopped(payload: tuple, stop: Stop) -> dict:
    """The verdicts of an example whose worker was stopped: past the time limit, or out of memory."""
    i, row, pred, opts = payload
    kind = "timeout" if stop.kind == "timeout" else "memory_limit"
    message = f"ran longer than {opts['timeout_s']:g}s" if kind == "timeout" else stop.message
    out = stop.checkpoint or _blank_verdicts(row, _gold_sql(row), extract_sql(pred or ""), row.get("db_id"))
    if stop.phase == "gold":
        out.update(gold_error=True, error="gold_error", error_message=f"gold {kind}: {message}")
    else:
        where = "checking the prediction " if stop.phase == "check" else ""
        out.update(execution_match=False, error=kind, error_message=f"{where}{message}")
    out["index"] = i
    if row.get("db_id"):
        out["db_id"] = row["db_id"]
    return out


def _with_snapshot(i: int, row: dict, opts: dict) -> dict:
    """The row's options, with the snapshot of its real database (made once per file version)."""
    if not (row.get("db_id") and opts["db_dir"] is not None):
        return opts
    try:
        return {**opts, "snapshot": str(cached_snapshot(database_path(opts["db_dir"], row["db_id"])))}
    except SqltuneError as exc:
        raise SqltuneError(f"data row {i + 1}: {exc}") from None


def score_rows(
    rows: Sequence[dict],
    predictions: Sequence[str | None],
    *,
    n_databases: int = 8,
    seed: int = 0,
    timeout_s: float = 2.0,
    db_dir: str | os.PathLike | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    value_case: str = "exact",
    workers: int | str = "auto",
    desc: str | None = None,
) -> tuple[dict, list[dict]]:
    """Score ``predictions[i]`` against ``rows[i]``; returns (summary, per-example).
    ``value_case``: exact (SQLite's binary ``=``) or insensitive (text values compare case-blind in
    the synthesized databases; refused with ``db_dir``, whose databases keep their own collation).
    Examples are scored in ``workers`` sandbox processes (``auto``: one per core); the verdicts do
    not depend on their number. ``desc`` names a progress bar (none without it)."""
    from tqdm.auto import tqdm

    if len(rows) != len(predictions):
        raise SqltuneError(
            f"{len(rows)} data rows but {len(predictions)} predictions; give one prediction per row"
        )
    from sqltune.config import scoring_settings

    scoring_settings(names={"query_timeout_s": "timeout_s", "score_workers": "workers"}, n_databases=n_databases,
                     query_timeout_s=timeout_s, db_dir=None if db_dir is None else str(db_dir),
                     value_case=value_case, score_workers=workers)
    if db_dir is not None and not Path(db_dir).is_dir():
        raise SqltuneError(f"--db-dir {db_dir} is not a directory; point it at the folder of <db_id>.sqlite files")
    opts = dict(n_databases=n_databases, seed=seed, timeout_s=timeout_s, db_dir=db_dir, max_rows=max_rows,
                value_case=value_case)
    payloads = [(i, r, p, _with_snapshot(i, r, opts)) for i, (r, p) in enumerate(zip(rows, predictions))]
    n_workers = min(resolve_workers(workers), max(1, len(payloads)))
    with tqdm(total=len(payloads), desc=desc, unit="row", disable=desc is None, mininterval=1.0) as bar:
        per_example = shared_pool(n_workers).map("sqltune.scoring:_score_task", payloads, _stopped, bar.update)
    summary = summarize(per_example)
    summary["settings"] = {
        "n_databases": n_databases,
        "seed": seed,
        "timeout_s": timeout_s,
        "db_dir": str(db_dir) if db_dir is not None else None,
        "value_case": value_case,
    }
    return summary, per_example
