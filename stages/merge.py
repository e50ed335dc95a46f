"""merge stage: merge the LoRA adapter into full-precision base weights -> a standalone model (a full
fine-tune's weights are only converted to merge.dtype)."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sqltune.config import load_params  # noqa: E402
from sqltune.errors import run_main  # noqa: E402
from sqltune.io import write_json  # noqa: E402
from sqltune.launch import claim_pooled_gpus  # noqa: E402
from sqltune.merging import merge  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--data", required=True, help="train.jsonl from prepare: its first prompts are the parity check's")
    ap.add_argument("--base-cache", required=True)
    ap.add_argument("--out", required=True, help="output folder for the merged model")
    ap.add_argument("--metrics", required=True, help="JSON file for the parity metric")
    args = ap.parse_args()

    params = load_params(args.params)
    claim_pooled_gpus()  # SQLTUNE_GPU_POOL set (parallel sweeps): one free GPU of the pool, before CUDA starts
    result = merge(params, args.adapter, args.out, args.base_cache, args.data)
    write_json(args.metrics, result)
    check = (f"parity {result['parity']} on {result['parity_samples']} prompts" if params.train.peft
             else "a full fine-tune: nothing to merge, no parity to check")
    print(f"merge: wrote {args.out} ({result['dtype']}); {check}")


if __name__ == "__main__":
    run_main(main, log="merge")
