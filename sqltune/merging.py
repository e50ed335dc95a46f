"""The merge stage's logic: fold the adapter into full-precision base weights, check parity."""

from __future__ import annotations

from pathlib import Path

from sqltune.config import Params
from sqltune.modeling import attach_adapter, load_base_for_inference
from sqltune.generation import generate
from sqltune.io import atomic_path, read_jsonl


def merge(params: Params, adapter_dir: str | Path, out_dir: str | Path, base_cache: str | Path,
          test_file: str | Path) -> dict:
    """Merge into bf16 (GPU) / fp32 (CPU) weights, never into 4-bit ones, and measure how often the
    merged model's greedy SQL equals the adapter-on-base SQL on test prompts."""
    import torch

    base, tok = load_base_for_inference(params, base_cache)
    if params.merge.dtype != "auto":
        base = base.to(getattr(torch, params.merge.dtype))
    peft_model = attach_adapter(base, adapter_dir, merge=False)
    prompts = [r["prompt"] for r in read_jsonl(test_file)[: params.merge.parity_samples]]
    max_new, bs = params.evaluate.max_new_tokens, params.evaluate.batch_size
    before = generate(peft_model, tok, prompts, max_new, bs) if prompts else []
    merged = peft_model.merge_and_unload()
    after = generate(merged, tok, prompts, max_new, bs) if prompts else []
    with atomic_path(out_dir) as tmp:
        merged.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    same = sum(a == b for a, b in zip(before, after))
    return {"parity": same / len(prompts) if prompts else None, "parity_samples": len(prompts),
            "dtype": str(merged.dtype).removeprefix("torch.")}
