"""The merge stage's logic: fold the adapter into full-precision base weights, check parity."""

from __future__ import annotations

import json
from pathlib import Path

from sqltune.config import Params
from sqltune.modeling import attach_adapter, load_base_for_inference
from sqltune.generation import generate
from sqltune.io import atomic_path, read_jsonl

PROMPT_FILE = "sqltune.json"  # the system prompt the model was trained with, for predict/ask


def eval_section(metrics_file: str | Path | None) -> str:
    """The model card's evaluation table, from the evaluate stage's metrics (empty without them)."""
    if metrics_file is None or not Path(metrics_file).is_file():
        return ""
    m = json.loads(Path(metrics_file).read_text())
    rows = [f"| {name} | {s['execution_accuracy']:.3f} | {s['exact_match']:.3f} | {s['n']} |"
            for name, s in m.items() if isinstance(s, dict) and "execution_accuracy" in s]
    return "\n## Evaluation\n\n| model | execution accuracy | exact match | n |\n|---|---|---|---|\n" + \
        "\n".join(rows) + "\n"


def model_card(params: Params, eval_metrics: str | Path | None = None) -> str:
    """README.md of the merged model: base, data, training params and the eval metrics. The card
    shows the metrics, so the merge stage depends on them: an evaluate change reruns merge too."""
    import yaml

    p = params.prepare
    return (
        f"---\nbase_model: {params.model.name}\nlibrary_name: transformers\ntags: [text-to-sql, sqltune, lora]\n---\n"
        f"# {params.model.name}, fine-tuned for text-to-SQL with sqltune\n\n"
        f"- **Base model:** {params.model.name}\n"
        f"- **Data:** {p.dataset} ({p.train_size} train / {p.test_size} test rows, {p.split} split, seed {params.seed})\n"
        f"- **Adapter merged into** full-precision weights; prompt format in `{PROMPT_FILE}`.\n\n"
        f"## Training params\n\n```yaml\n{yaml.safe_dump(params.train.model_dump(), sort_keys=False)}```\n"
        + eval_section(eval_metrics)
    )


def merge(params: Params, adapter_dir: str | Path, out_dir: str | Path, base_cache: str | Path,
          test_file: str | Path, eval_metrics: str | Path | None = None) -> dict:
    """Merge into bf16 (GPU) / fp32 (CPU) weights, never into 4-bit ones, and measure how often the
    merged model's greedy SQL equals the adapter-on-base SQL on test prompts."""
    import torch

    base, tok = load_base_for_inference(params, base_cache)
    if params.merge.dtype != "auto":
        base = base.to(getattr(torch, params.merge.dtype))
    peft_model = attach_adapter(base, adapter_dir, merge=False)
    prompts = [r["prompt"] for r in read_jsonl(test_file)[: params.merge.parity_samples]]
    # Evaluate's batching, but always the plain dynamic cache: parity is about weights, not speed.
    gen = params.evaluate.model_copy(update={"cache": "dynamic", "compile": False})
    before = generate(peft_model, tok, prompts, gen)
    merged = peft_model.merge_and_unload()
    after = generate(merged, tok, prompts, gen)
    with atomic_path(out_dir) as tmp:
        merged.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(params, eval_metrics))
        (tmp / PROMPT_FILE).write_text(json.dumps({"system_prompt": params.prepare.system_prompt}))
    same = sum(a == b for a, b in zip(before, after))
    return {"parity": same / len(prompts) if prompts else None, "parity_samples": len(prompts),
            "dtype": str(merged.dtype).removeprefix("torch.")}
