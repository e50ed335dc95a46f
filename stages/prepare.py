"""prepare stage: load the dataset, drop unparsable rows, format chat prompts, split."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sqltune.config import load_params  # noqa: E402
from sqltune.data import build_splits, to_messages  # noqa: E402
from sqltune.errors import run_main  # noqa: E402
from sqltune.io import write_json, write_jsonl  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", required=True, help="folder for train.jsonl and test.jsonl")
    ap.add_argument("--stats", required=True, help="JSON file for dataset stats")
    args = ap.parse_args()

    params = load_params(args.params)
    p = params.prepare
    train, test, stats = build_splits(p, params.seed)
    out = Path(args.out)
    write_jsonl(out / "train.jsonl", ({**r, **to_messages(r, p.system_prompt)} for r in train))
    write_jsonl(out / "test.jsonl", ({**r, **to_messages(r, p.system_prompt)} for r in test))
    write_json(args.stats, stats)
    dropped = sum(stats["dropped"].values())
    print(f"prepare: {stats['train_rows']} train / {stats['test_rows']} test rows; "
          f"dropped {dropped} of {stats['loaded']} ({stats['dropped'] or 'none'})")


if __name__ == "__main__":
    run_main(main)
