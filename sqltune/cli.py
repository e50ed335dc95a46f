"""Command-line interface: ``sqltune <command> ...``.

Subcommands are registered in :data:`COMMANDS` (name -> (add_arguments, run));
add a new one by writing those two functions and adding an entry.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

from sqltune.errors import SqltuneError, run_main


# ------------------------------------------------------------------------ helpers


def read_jsonl(path: str | os.PathLike, required: tuple[str, ...], what: str) -> list[dict]:
    """Rows of a JSONL file; blank lines are skipped. Errors name file and line."""
    p = Path(path)
    if not p.is_file():
        raise SqltuneError(f"{what} file {p} does not exist; check the path")
    rows: list[dict] = []
    try:
        with p.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SqltuneError(
                        f"{p} line {lineno}: invalid JSON ({exc.msg}); each line must be one JSON object"
                    ) from None
                if not isinstance(row, dict):
                    raise SqltuneError(f"{p} line {lineno}: expected a JSON object, got {type(row).__name__}")
                missing = [k for k in required if k not in row]
                if missing:
                    raise SqltuneError(
                        f"{p} line {lineno}: missing key(s) {', '.join(repr(k) for k in missing)}; "
                        f"each {what} row needs {', '.join(required)}"
                    )
                rows.append(row)
    except UnicodeDecodeError:
        raise SqltuneError(f"{p} is not UTF-8 text; save it as UTF-8 JSONL") from None
    return rows


def write_jsonl_atomic(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write JSONL to a temp file next to ``path`` then rename it into place."""
    p = Path(path)
    if not p.parent.is_dir():
        raise SqltuneError(f"output folder {p.parent} does not exist; create it or change --out")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# -------------------------------------------------------------------------- score


def _add_score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="JSONL rows with question, context, answer (+ db_id, source)")
    p.add_argument("--predictions", required=True, help="JSONL rows with 'prediction', line for line with --data")
    p.add_argument("--db-dir", default=None, help="folder of <db_id>.sqlite files: rows with db_id run on a copy of the real DB")
    p.add_argument("--out", default=None, help="write per-example verdicts (JSONL) here")
    p.add_argument("--n-databases", type=int, default=8, help="synthesized databases per example (default 8)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds per query (default 2.0)")
    p.add_argument("--seed", type=int, default=0, help="seed for database synthesis (default 0)")


def _run_score(args: argparse.Namespace) -> int:
    from sqltune.scoring import score_rows

    data = read_jsonl(args.data, ("question", "context", "answer"), "data")
    preds = read_jsonl(args.predictions, ("prediction",), "predictions")
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
    if args.db_dir is not None and not Path(args.db_dir).is_dir():
        raise SqltuneError(f"--db-dir {args.db_dir} is not a directory; point it at the folder of <db_id>.sqlite files")
    summary, per_example = score_rows(
        data,
        [r["prediction"] for r in preds],
        n_databases=args.n_databases,
        seed=args.seed,
        timeout_s=args.timeout,
        db_dir=args.db_dir,
    )
    if args.out:
        write_jsonl_atomic(args.out, per_example)
    try:
        print(json.dumps(summary, indent=2))
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into `head`: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


# ----------------------------------------------------------------------- dispatch

Command = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]

COMMANDS: dict[str, Command] = {
    "score": (_add_score_args, _run_score, "score predictions against gold SQL (exact + execution match)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sqltune", description="sqltune: text-to-SQL fine-tuning and evaluation")
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
