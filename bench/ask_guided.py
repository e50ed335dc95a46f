"""`sqltune ask` on a real database, greedy against execution-guided decoding: how many of N
questions each answers right. Each question goes through ask's own path (the schema read from the
database and rendered as training data renders it, the model's saved prompt, then `predict_sql` or
`guided_sql`), and each answer is scored against the gold query on the same database by the
evaluator (`sqltune.scoring.score_rows`, the real-database rule).

Usage (GeoQuery's test split against its geography database, after `dvc repro` of
presets/gpu-smollm2-geoquery.yaml):
  python bench/ask_guided.py --model models/merged --questions data/raw/geography.jsonl --split test \\
      --db data/databases/geography.sqlite --n 20 --out bench/results/ask_guided-geoquery.json
The result carries the machine, date, commit and command; --record names the pipeline record of the
model (its run in metrics/runs/), --code the commit where the tree is no git checkout.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import card_name  # noqa: E402

from sqltune import ask  # noqa: E402
from sqltune.data import rows_of_split  # noqa: E402
from sqltune.io import read_jsonl, write_json  # noqa: E402
from sqltune.scoring import score_rows  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/merged")
    ap.add_argument("--questions", required=True, help="a .jsonl of question/answer rows (answer: the gold SQL)")
    ap.add_argument("--split", default=None, help="only the rows whose `split` field is this")
    ap.add_argument("--db", required=True, help="the SQLite database the questions are about")
    ap.add_argument("--n", type=int, default=20, help="the first N questions (file order)")
    ap.add_argument("--decoding", default="beam", choices=["beam", "sample"])
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--selection", default="first", choices=["first", "vote"])
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument("--record", default=None, help="the pipeline record the model comes from, stated in the result")
    ap.add_argument("--code", default=None, help="the code's commit, where the tree is no git checkout of it")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    db = Path(args.db)
    rows = rows_of_split(read_jsonl(args.questions), args.split, args.questions, "--split")[: args.n]
    e = ask.decoding_settings(args.max_new_tokens, args.decoding, args.candidates, args.temperature, args.selection)
    conn = ask.open_read_only(db)
    schema = ask.schema_of(conn)
    conn.close()
    model, tok, prompt = ask.load_model_dir(args.model)
    greedy, guided = [], []
    for row in rows:
        ask.check_prompt_fits(model, tok, prompt, schema, row["question"], args.max_new_tokens)
        greedy.append(ask.predict_sql(model, tok, prompt, schema, row["question"], args.max_new_tokens))
        guided.append(ask.guided_sql(model, tok, prompt, schema, row["question"], db, e, args.timeout)["sql"])
    # Scored on the database itself: each row names it by its file name, in its folder.
    gold = [{"question": r["question"], "context": schema, "answer": r["answer"], "db_id": db.stem} for r in rows]
    results = {}
    for name, preds in (("greedy", greedy), ("guided", guided)):
        summary, per_row = score_rows(gold, preds, db_dir=str(db.parent), value_case="exact", timeout_s=args.timeout)
        results[name] = {"right": summary["n_correct"], "of": len(rows), "execution_accuracy": summary["execution_accuracy"],
                         "answers": [{"question": r["question"], "sql": p, "right": bool(v["execution_match"])}
                                     for r, p, v in zip(rows, preds, per_row)]}
    model_name = args.model if args.record is None else f"{args.model} of {args.record}"
    write_json(args.out, {**run_card(args), "model": model_name, "questions": args.questions, "split": args.split, "db": str(db),
                          "n": len(rows), "decoding": {"mode": args.decoding, "candidates": args.candidates,
                                                       "selection": args.selection}, **results})
    print(f"greedy: {results['greedy']['right']} of {len(rows)} right; "
          f"execution-guided ({args.candidates} {args.decoding} candidates, {args.selection}): "
          f"{results['guided']['right']} of {len(rows)} right")


def run_card(args) -> dict:
    """What a reader needs to reproduce the result: the machine, the date, the code and the command."""
    code = args.code or subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                       capture_output=True, text=True).stdout.strip() or None
    return {"card": card_name(), "date": datetime.date.today().isoformat(), "code": code,
            "command": shlex.join(["python", "bench/ask_guided.py", *sys.argv[1:]])}


if __name__ == "__main__":
    main()
