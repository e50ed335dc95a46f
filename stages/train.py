"""train stage: LoRA, QLoRA or full fine-tuning (train.method) with TRL's SFTTrainer; resumes after a kill."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sqltune.config import load_params  # noqa: E402
from sqltune.errors import run_main  # noqa: E402
from sqltune.launch import launch_if_asked, log_name  # noqa: E402
from sqltune.metrics_log import write_train_metrics  # noqa: E402
from sqltune.runtime import keep_freed_memory  # noqa: E402
from sqltune.training import train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", required=True, help="train.jsonl from prepare")
    ap.add_argument("--adapter", required=True, help="output folder for the LoRA adapter (train.method full: the whole model)")
    ap.add_argument("--checkpoints", required=True, help="persistent folder for resumable checkpoints")
    ap.add_argument("--live", required=True, help="dvclive folder for training curves")
    ap.add_argument("--metrics", help="JSON file for the headline training metrics (a DVC metric); "
                    "without it, only dvclive's files in --live are written")
    ap.add_argument("--base-cache", required=True, help="where embedded GGUF models are converted once")
    args = ap.parse_args()

    params = load_params(args.params)
    # train.launcher asks for several processes or machines: this process becomes `accelerate launch`
    # of this script (after claiming GPUs when SQLTUNE_GPU_POOL is set)
    launch_if_asked(params.train, Path(__file__).resolve(), sys.argv[1:])
    keep_freed_memory()
    warn = lambda msg: print(f"train: {msg}", file=sys.stderr)  # noqa: E731
    summary = train(params, args.data, args.adapter, args.checkpoints, args.live, args.base_cache, warn)
    if summary["main_process"]:
        if args.metrics:
            write_train_metrics(args.metrics, args.live, summary["train_sequences"])
        print(f"train: done at step {summary['global_step']} on {summary['world_size']} process(es), "
              f"{summary['train_sequences']} training sequences, loss {summary.get('train_loss', float('nan')):.4f}, "
              f"{summary.get('train_runtime', 0):.0f}s")


if __name__ == "__main__":
    run_main(main, log=log_name("train", sys.argv[1:]))  # machines k > 0 log to logs/train-machine<k>.log
