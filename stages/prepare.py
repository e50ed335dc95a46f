"""prepare stage: load the dataset, drop unusable and duplicate rows, format chat prompts, split."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sqltune.config import load_params  # noqa: E402
from sqltune.data import build_splits, flat_stats, to_messages  # noqa: E402
from sqltune.errors import run_main  # noqa: E402
from sqltune.io import write_json, write_jsonl  # noqa: E402


def _dropped(stats: dict, prefix: str = "", where: str = "") -> str:
    reasons = stats[prefix + "dropped"]
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or "none"
    return (f"dropped {sum(reasons.values())} of {stats[prefix + 'loaded']} ({detail}); "
            f"{stats[prefix + 'duplicate_rows']} duplicate rows removed{where}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", required=True, help="folder for train.jsonl and test.jsonl")
    ap.add_argument("--stats", required=True, help="JSON file for dataset stats")
    ap.add_argument("--raw", default=None, help="the folder DVC tracks for datasets; local datasets must be inside it")
    args = ap.parse_args()

    params = load_params(args.params)
    p = params.prepare
    train, test, stats = build_splits(p, params.seed, args.raw)
    out = Path(args.out)
    write_jsonl(out / "train.jsonl", ({**r, **to_messages(r, p.system_prompt)} for r in train))
    write_jsonl(out / "test.jsonl", ({**r, **to_messages(r, p.system_prompt)} for r in test))
    write_json(args.stats, flat_stats(stats))
    line = (f"prepare: {stats['train_rows']} train / {stats['test_rows']} test rows; {_dropped(stats)}; "
            f"{stats['train_rows_in_test']} train rows dropped for sharing a test row's question and schema")
    if "mixed_rows" in stats:
        line += f"; {stats['mixed_rows']} rows mixed in from prepare.mix"
    if "test_loaded" in stats:
        line += f"; test source: {_dropped(stats, 'test_', ' from the test slice')}"
    print(line)


if __name__ == "__main__":
    run_main(main, log="prepare")
