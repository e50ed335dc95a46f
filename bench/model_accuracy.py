"""The base model's accuracy on a prepared test file, generated and scored exactly as the evaluate
stage does (`sqltune.evaluation.predict_and_score`: same prompts, batching, greedy decoding, scorer
and `evaluate` params). For a GPU run whose evaluate stage skipped the base model
(`evaluate.score_base: false`), so that the base's numbers can stand beside it.

Usage (the GPU preset's rows need ../shared; prepare them first with the same params):
  python stages/prepare.py --params presets/gpu-smollm2-wikisql.yaml --out /tmp/prep --stats /tmp/prep/stats.json
  python bench/model_accuracy.py --params presets/gpu-smollm2-wikisql.yaml --data /tmp/prep/test.jsonl \\
      --out bench/results/base_accuracy-wikisql_dev.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqltune.config import load_params  # noqa: E402
from sqltune.evaluation import predict_and_score  # noqa: E402
from sqltune.io import read_jsonl, write_json  # noqa: E402
from sqltune.modeling import load_base_for_inference  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", required=True)
    ap.add_argument("--data", required=True, help="test.jsonl written by the prepare stage with these params")
    ap.add_argument("--base-cache", default=str(REPO / "models/base"))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch

    params = load_params(args.params)
    rows = read_jsonl(args.data)[: params.evaluate.limit]
    model, tok = load_base_for_inference(params, args.base_cache, params.evaluate.dtype)
    summary, _ = predict_and_score(model, tok, rows, params)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or 'x86_64'}, {torch.get_num_threads()} threads)"
    write_json(args.out, {"model": params.model.name, "params": args.params, "data": args.data,
                          "value_case": params.evaluate.value_case, "device": device, "base": summary})
    print(json.dumps({k: summary[k] for k in ("n", "exact_match", "execution_accuracy", "parse_rate",
                                               "generation_seconds", "scoring_seconds")}))


if __name__ == "__main__":
    main()
