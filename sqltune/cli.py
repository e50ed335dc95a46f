"""Command-line interface: ``sqltune <command> ...``.

Subcommands are registered in :data:`COMMANDS` (name -> (add_arguments, run));
add a new one by writing those two functions and adding an entry.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Callable

import sqltune
from sqltune import io
from sqltune.errors import SqltuneError, run_main


# ------------------------------------------------------------------------ helpers


def read_jsonl(path: str | os.PathLike, required: tuple[str, ...], what: str, skip_blank: bool = True) -> list[dict]:
    """Rows of a JSONL file (sqltune.io names a bad line), each checked for the ``required`` keys."""
    rows = io.read_jsonl(path, skip_blank=skip_blank)
    for lineno, row in enumerate(rows, 1):
        missing = [k for k in required if k not in row]
        if missing:
            raise SqltuneError(
                f"{path} row {lineno}: missing key(s) {', '.join(repr(k) for k in missing)}; "
                f"each {what} row needs {', '.join(required)}"
            )
    return rows


def _positive(flag: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise SqltuneError(f"{flag} must be a positive number (got {value})")


# score's flags, by the evaluate params whose rules they follow
SCORE_FLAGS = {"n_databases": "--n-databases", "query_timeout_s": "--timeout", "db_dir": "--db-dir",
               "value_case": "--value-case", "score_workers": "--workers"}


def _workers(value: str) -> int | str:
    return int(value) if value.isdigit() else value  # checked by evaluate.score_workers' rule


# -------------------------------------------------------------------------- score


def _add_score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="JSONL rows with question, context, answer (+ db_id, source)")
    p.add_argument("--predictions", required=True, help="JSONL rows with 'prediction', line for line with --data")
    p.add_argument("--db-dir", default=None, help="folder of <db_id>.sqlite files: rows with db_id run on a copy of the real DB")
    p.add_argument("--out", default=None, help="write per-example verdicts (JSONL) here")
    p.add_argument("--n-databases", type=int, default=8, help="synthesized databases per example (default 8)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds per query (default 2.0)")
    p.add_argument("--seed", type=int, default=0, help="seed for database synthesis (default 0)")
    p.add_argument("--value-case", choices=("exact", "insensitive"), default="exact",
                   help="insensitive: text values compare case-blind in synthesized databases (WikiSQL's rule)")
    p.add_argument("--workers", default="auto",
                   help="sandbox processes that score in parallel (default auto: one per core)")


def _run_score(args: argparse.Namespace) -> int:
    from sqltune.scoring import score_rows

    from sqltune.config import scoring_settings

    scoring_settings(names=SCORE_FLAGS, n_databases=args.n_databases, query_timeout_s=args.timeout,
                     db_dir=args.db_dir, value_case=args.value_case, score_workers=_workers(args.workers))
    if args.out:
        io.check_file_target(args.out)  # before scoring, which may take minutes
    # Lines correspond one to one: a blank line would shift every later prediction against its row.
    data = read_jsonl(args.data, ("question", "context", "answer"), "data", skip_blank=False)
    preds = read_jsonl(args.predictions, ("prediction",), "predictions", skip_blank=False)
    if not data:
        raise SqltuneError(f"{args.data} has no rows; give at least one example")
    if len(data) != len(preds):
        raise SqltuneError(
            f"{args.data} has {len(data)} rows but {args.predictions} has {len(preds)}; "
            "give exactly one prediction per data row, in the same order"
        )
    for i, row in enumerate(preds, 1):
        if row["prediction"] is not None and not isinstance(row["prediction"], str):
            raise SqltuneError(
                f"{args.predictions} prediction {i}: 'prediction' must be a string (or null), "
                f"got {type(row['prediction']).__name__}"
            )
    summary, per_example = score_rows(
        data,
        [r["prediction"] for r in preds],
        n_databases=args.n_databases,
        seed=args.seed,
        timeout_s=args.timeout,
        db_dir=args.db_dir,
        value_case=args.value_case,
        workers=_workers(args.workers),
        desc="scoring" if sys.stderr.isatty() else None,
    )
    if args.out:
        io.write_jsonl(args.out, per_example)  # atomic: no partial file on failure
    try:
        print(json.dumps(summary, indent=2))
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into `head`: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


# ------------------------------------------------------------------ predict / ask
def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("question", help="the question, in natural language")
    p.add_argument("--model", default="models/merged", help="merged model folder (default models/merged)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--no-snap", dest="snap", action="store_false",
                   help="print the model's query as written: no snapping of a misspelled copied value to "
                        "the question's words (evaluate.snap_values)")


def _add_predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--schema", required=True, help='CREATE TABLE statements, e.g. "CREATE TABLE t (a INTEGER)"')
    _add_model_args(p)


def _run_predict(args: argparse.Namespace) -> int:
    from sqltune.ask import load_model_dir, predict_sql
    from sqltune.sql import schema_tables

    schema_tables(args.schema)  # a schema that is not DDL fails here, with its own message
    model, tok, prompt = load_model_dir(args.model)
    print(predict_sql(model, tok, prompt, args.schema, args.question, args.max_new_tokens, args.snap))
    return 0


def _add_ask_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", required=True, help="SQLite file; opened read-only")
    _add_model_args(p)
    p.add_argument("--timeout", type=float, default=5.0, help="seconds the query may run (default 5)")
    p.add_argument("--max-rows", type=int, default=1000, help="refuse results longer than this (default 1000)")
    p.add_argument("--tables", default=None,
                   help="comma-separated tables to show the model (default all); for schemas past its context")
    p.add_argument("--decoding", choices=("greedy", "beam", "sample"), default="greedy",
                   help="beam or sample: several candidates, the ones that fail or return nothing on the "
                        "database dropped, then a vote over the results (default greedy)")
    p.add_argument("--candidates", type=int, default=4, help="beam or sample: candidates to choose from (default 4)")
    p.add_argument("--temperature", type=float, default=0.7, help="sample: the sampling temperature (default 0.7)")
    p.add_argument("--selection", choices=("first", "vote"), default="first",
                   help="beam or sample: the best-ranked candidate that runs and returns rows (first, the "
                        "default), or the largest group of candidates with equal results (vote)")


def _run_ask(args: argparse.Namespace) -> int:
    from sqltune import ask

    _positive("--timeout", args.timeout)
    _positive("--max-rows", args.max_rows)
    e = ask.decoding_settings(args.max_new_tokens, args.decoding, args.candidates, args.temperature, args.selection)
    conn = ask.open_read_only(args.db)
    try:
        tables = [t.strip() for t in args.tables.split(",") if t.strip()] if args.tables else None
        schema = ask.schema_of(conn, tables)
    finally:
        conn.close()
    model, tok, prompt = ask.load_model_dir(args.model)
    ask.check_prompt_fits(model, tok, prompt, schema, args.question, args.max_new_tokens)
    if e.decoding == "greedy":
        sql = ask.predict_sql(model, tok, prompt, schema, args.question, args.max_new_tokens, args.snap)
        print(f"SQL: {sql}")
    else:
        chosen = ask.guided_sql(model, tok, prompt, schema, args.question, args.db, e, args.timeout, args.snap)
        sql = chosen["sql"]
        print(f"SQL: {sql}")
        print(f"  chosen from {chosen['candidates']} {e.decoding} candidates: {chosen['valid']} valid, "
              f"{chosen['agreeing']} agreeing on the result")
    names, rows = ask.run_read_only(args.db, sql, args.timeout, args.max_rows)
    print(ask.format_table(names, rows))
    return 0


# ------------------------------------------------------------------------- upload
def _add_upload_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", help="hub repo name or user/name (default HF_USERNAME/sqltune-merged; sqltune-adapter with --skip-merge)")
    p.add_argument("--merged", default="models/merged", help="merged model folder")
    p.add_argument("--adapter", default="models/adapter",
                   help="the train stage's folder: the LoRA adapter, or a full fine-tune's weights (with --skip-merge)")
    p.add_argument("--skip-merge", action="store_true",
                   help="push the train stage's output as it is (the LoRA adapter; a full fine-tune's fp32 weights), "
                        "merge nothing")
    p.add_argument("--skip-upload", action="store_true", help="run dvc repro evaluate merge card, then stop")
    p.add_argument("--public", action="store_true", help="create the hub repo as public (default: private)")
    p.add_argument("--yes", action="store_true", help="push without asking for confirmation")


def _run_upload(args: argparse.Namespace) -> int:
    from sqltune.upload import upload

    upload(args.repo, Path(args.merged), Path(args.adapter), args.skip_merge, args.skip_upload,
           private=not args.public, yes=args.yes)
    return 0


# ----------------------------------------------------------------------- dispatch

Command = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]

COMMANDS: dict[str, Command] = {
    "score": (_add_score_args, _run_score, "score predictions against gold SQL (exact + execution match)"),
    "predict": (_add_predict_args, _run_predict, "print the SQL a model writes for a question over a schema"),
    "ask": (_add_ask_args, _run_ask, "answer a question from a SQLite database, read-only"),
    "upload": (_add_upload_args, _run_upload, "merge and push the model (or the adapter) to the Hugging Face Hub"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sqltune", description="sqltune: text-to-SQL fine-tuning and evaluation")
    parser.add_argument("--version", action="version", version=f"sqltune {sqltune.version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (add_args, _run, help_text) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    _add, run, _help = COMMANDS[args.command]
    return run(args)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: errors print ``error: ...`` and exit 2."""
    run_main(lambda: _main(argv))


if __name__ == "__main__":
    main()
