"""Does flex_attention compile again whenever a packed batch's length changes?

The packed SmolLM2 run under `model.attn_implementation: flex_attention` trained at 2.48 steps/s in
the train stage, against 3.76 in the throughput bench, whose warm-up steps are not timed. This runs
the stage's attention path (transformers' flex_attention integration, padding-free packed rows:
position_ids restart per sample) on batches of changing total length and counts what dynamo
compiles at each step. A tiny random Llama on CPU: compilation happens per input shape, whatever
the device. CPU flex_attention has no backward, so forward only.

Usage: python bench/flex_recompiles.py [--steps 12]
Writes bench/results/flex_recompiles-cpu.json and prints one line per step.
"""

import argparse
import json
import random
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "flex_recompiles-cpu.json"


def packed_batch(rng: random.Random, vocab: int):
    import torch

    lens = [rng.randint(20, 200) for _ in range(rng.randint(3, 8))]
    ids = torch.randint(0, vocab, (1, sum(lens)))
    return ids, torch.cat([torch.arange(n) for n in lens]).unsqueeze(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args()

    import torch
    from torch._dynamo.utils import counters
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="flex_attention")
    rng, rows = random.Random(0), []
    for step in range(args.steps):
        ids, pos = packed_batch(rng, cfg.vocab_size)
        t0 = time.perf_counter()
        with torch.no_grad():
            model(input_ids=ids, position_ids=pos)
        rows.append({"step": step, "tokens": ids.shape[1], "seconds": round(time.perf_counter() - t0, 3),
                     "graphs_compiled_so_far": counters["stats"]["unique_graphs"]})
        print(rows[-1], flush=True)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"torch": torch.__version__, "device": "cpu", "steps": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
