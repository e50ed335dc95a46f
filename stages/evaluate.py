"""evaluate stage: greedy SQL from the base and the fine-tuned model on the test split, scored alike."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sqltune.config import load_params  # noqa: E402
from sqltune.errors import run_main  # noqa: E402
from sqltune.evaluation import evaluate  # noqa: E402
from sqltune.io import write_jsonl  # noqa: E402
from sqltune.launch import claim_pooled_gpus  # noqa: E402
from sqltune.metrics_log import example_lines, score_text, write_eval_metrics, write_eval_plots  # noqa: E402
from sqltune.sandbox import ERROR_KINDS  # noqa: E402

# Every kind a scored prediction can carry: the sandbox's verdicts on the prediction, and the gold
# query failing. The error chart shows each one, at 0 when no prediction got it.
SCORED_ERROR_KINDS = (*ERROR_KINDS, "gold_error")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", required=True, help="test.jsonl from prepare")
    ap.add_argument("--adapter", required=True, help="LoRA adapter folder from train")
    ap.add_argument("--base-cache", required=True, help="where embedded GGUF models are converted once")
    ap.add_argument("--databases", required=True,
                    help="the folder DVC tracks for real databases; evaluate.db_dir must be inside it")
    ap.add_argument("--metrics", required=True, help="JSON file for the headline metrics (a DVC metric)")
    ap.add_argument("--details", required=True, help="JSON file for breakdowns, settings and timings")
    ap.add_argument("--predictions", required=True, help="per-example JSONL output")
    ap.add_argument("--plots", help="folder for the plot data files that dvc.yaml's plots draw "
                                    "(default: plots/ beside --metrics)")
    args = ap.parse_args()

    params = load_params(args.params)
    claim_pooled_gpus()  # SQLTUNE_GPU_POOL set (parallel sweeps): one free GPU of the pool, before CUDA starts
    test_rows, results = evaluate(params, args.data, args.adapter, args.base_cache, args.databases)
    # Question and gold beside each verdict, so a user sees where exact match and execution disagree.
    per_example = [
        {"model": name, "question": src["question"], "gold": src["answer"], **row}
        for name, (_, rows) in results.items() for src, row in zip(test_rows, rows)
    ]
    write_jsonl(args.predictions, per_example)
    summaries = {name: summary for name, (summary, _) in results.items()}
    write_eval_metrics(args.metrics, args.details, summaries)
    write_eval_plots(args.plots or Path(args.metrics).parent / "plots", summaries, SCORED_ERROR_KINDS)
    for name, s in summaries.items():
        print(f"evaluate: {name:9s} exact_match {score_text(s['exact_match'])}  "
              f"execution_accuracy {score_text(s['execution_accuracy'])}  n={s['n']}")
    finetuned = [row for row in per_example if row["model"] == "finetuned"]
    print(f"evaluate: the fine-tuned model's first right and wrong predictions (all are in {args.predictions}):")
    print("\n".join(example_lines(finetuned)) or "  none decidable")


if __name__ == "__main__":
    run_main(main, log="evaluate")
