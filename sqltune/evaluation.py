"""The evaluate stage's logic: generate SQL with the base and the fine-tuned model, score both; with
evaluate.decoding beam or sample, also the fine-tuned model's execution-guided choice among candidates."""

from __future__ import annotations

import time
from pathlib import Path

from sqltune.config import Params
from sqltune.generation import generate, generate_candidates
from sqltune.guided import select_rows
from sqltune.io import read_jsonl, require_inside
from sqltune.modeling import attach_adapter, is_adapter, load_base_for_inference, load_full_for_inference
from sqltune.scoring import score_rows
from sqltune.snap import snap_values
from sqltune.sql import extract_sql


def _snapped(rows: list[dict], queries: list[str], params: Params) -> tuple[list[str], int]:
    """The extracted queries with their copied values snapped to each row's question
    (evaluate.snap_values), and how many values were snapped."""
    if not params.evaluate.snap_values:
        return queries, 0
    out = [snap_values(sql, r["question"], r.get("context")) for sql, r in zip(queries, rows)]
    return [sql for sql, _ in out], sum(n for _, n in out)


def _score(rows: list[dict], preds: list[str], params: Params, name: str | None) -> tuple[dict, list[dict]]:
    e = params.evaluate
    return score_rows(rows, preds, n_databases=e.n_databases, seed=params.seed, timeout_s=e.query_timeout_s,
                      db_dir=e.db_dir, value_case=e.value_case, workers=e.score_workers,
                      desc=name and f"{name}: scoring")


def predict_and_score(model, tok, rows: list[dict], params: Params, name: str | None = None) -> tuple[dict, list[dict]]:
    """``name`` (the model's) labels the progress bars; without it there are none."""
    e = params.evaluate
    t0 = time.perf_counter()
    preds = generate(model, tok, [r["prompt"] for r in rows], e, desc=name and f"{name}: generating")
    gen_s = time.perf_counter() - t0
    raw = [extract_sql(p) for p in preds]
    preds, snapped = _snapped(rows, raw, params)
    summary, per_example = _score(rows, preds, params, name)
    for row, before, after in zip(per_example, raw, preds):
        if before != after:
            row["unsnapped"] = before  # the model's own query, before its values were snapped
    summary["snapped_values"] = snapped
    summary["scoring_seconds"] = round(time.perf_counter() - t0 - gen_s, 2)
    summary["generation_seconds"] = round(gen_s, 2)
    summary["samples_per_second"] = round(len(rows) / gen_s, 2) if gen_s > 0 else None
    return summary, per_example


def guided_predict_and_score(model, tok, rows: list[dict], params: Params, name: str) -> tuple[dict, list[dict]]:
    """evaluate.decoding's candidates, one chosen per row by execution-guided selection, then scored
    as greedy predictions are; the summary adds the selection's time and how often it changed the
    model's first candidate."""
    e = params.evaluate
    t0 = time.perf_counter()
    cands = generate_candidates(model, tok, [r["prompt"] for r in rows], e, e.decoding, params.seed,
                                desc=f"{name}: generating {e.num_candidates} candidates")
    t1 = time.perf_counter()
    if e.snap_values:
        cands = [_snapped([r] * len(x), [extract_sql(c) for c in x], params)[0] for r, x in zip(rows, cands)]
    chosen = select_rows(rows, cands, seed=params.seed, timeout_s=e.query_timeout_s, db_dir=e.db_dir,
                         value_case=e.value_case, rule=e.selection, workers=e.score_workers,
                         desc=f"{name}: selecting")
    t2 = time.perf_counter()
    summary, per_example = _score(rows, [c["sql"] for c in chosen], params, name)
    for row, c in zip(per_example, chosen):
        row["selection"] = {k: c[k] for k in ("candidates", "valid", "agreeing")}
    summary["decoding"] = {"mode": e.decoding, "num_candidates": e.num_candidates, "selection": e.selection,
                           "temperature": e.temperature if e.decoding == "sample" else None,
                           "changed_first_candidate": sum(c["sql"] != extract_sql(x[0] if x else "")
                                                          for c, x in zip(chosen, cands))}
    summary["generation_seconds"] = round(t1 - t0, 2)
    summary["selection_seconds"] = round(t2 - t1, 2)
    summary["scoring_seconds"] = round(time.perf_counter() - t2, 2)
    summary["samples_per_second"] = round(len(rows) / (t2 - t0), 2) if t2 > t0 else None
    return summary, per_example


def evaluate(params: Params, test_file: str | Path, adapter_dir: str | Path, base_cache: str | Path,
             databases: str | Path | None = None):
    """Return the scored test rows and {"base": (summary, per_example)?, "finetuned": (summary, per_example)}.
    ``databases``: the DVC-tracked folder that evaluate.db_dir must be inside (None: no such rule)."""
    if databases is not None:
        require_inside(params.evaluate.db_dir, databases, "evaluate.db_dir")
    rows = read_jsonl(test_file)[: params.evaluate.limit]
    adapter, results = is_adapter(adapter_dir), {}
    if adapter or params.evaluate.score_base:  # a full fine-tune alone needs no base weights
        model, tok = load_base_for_inference(params, base_cache, params.evaluate.dtype)
    if params.evaluate.score_base:
        results["base"] = predict_and_score(model, tok, rows, params, "base")
    if adapter:
        # Merged in memory: the same weights the merge stage ships, and no LoRA matmuls per token
        # (tests/test_generation.py checks that greedy output equals the unmerged adapter's).
        model = attach_adapter(model, adapter_dir)
    else:  # a full fine-tune: its own weights, in the dtype the merge stage ships them in too
        model = None  # the base's weights go before the fine-tune's load
        model, tok = load_full_for_inference(params, adapter_dir, params.evaluate.dtype)
    results["finetuned"] = predict_and_score(model, tok, rows, params, "finetuned")
    if params.evaluate.decoding != "greedy":
        results["finetuned_guided"] = guided_predict_and_score(model, tok, rows, params, "finetuned_guided")
    return rows, results
