"""The merge stage's logic: fold the adapter into full-precision base weights, check parity."""

from __future__ import annotations

import json
from pathlib import Path

from sqltune.config import EvaluateParams, Params
from sqltune.errors import SqltuneError
from sqltune.modeling import attach_adapter, load_base_for_inference
from sqltune.generation import generate
from sqltune.io import atomic_dir, read_jsonl
from sqltune.metrics_log import score_text

PROMPT_FILE = "sqltune.json"  # the system prompt the model was trained with, for predict/ask
# Parity compares the merged weights with the adapter on base, so it needs no tuning: its generation
# settings are fixed here (the default batching, the dynamic cache, a budget long enough for a
# typical SQL answer) rather than taken from evaluate, whose changes must not re-merge the model.
PARITY_MAX_NEW_TOKENS = 64


def check_same_model(metrics_file: str | Path, lock_file: str | Path) -> None:
    """Refuse evaluation numbers of another model than the merged one. Merge does not depend on the
    evaluation (an evaluate setting must not re-merge the model), so dvc.lock is what ties them:
    every input that the evaluate and merge stages share (the adapter, the base model's params, the
    code) must have the same hash in both. Without both entries (stages run by hand) there is
    nothing to compare."""
    import yaml

    if not Path(lock_file).is_file():
        return
    try:
        lock = yaml.safe_load(Path(lock_file).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        raise SqltuneError(f"{lock_file} is not valid YAML; restore it (git checkout) or rerun `dvc repro`") from None
    stages = (lock.get("stages") if isinstance(lock, dict) else None) or {}
    if not isinstance(stages.get("evaluate"), dict) or not isinstance(stages.get("merge"), dict):
        return

    def inputs(stage: dict) -> dict:
        deps = {d.get("path"): d.get("md5") for d in stage.get("deps") or [] if isinstance(d, dict)}
        params = {key: value for values in (stage.get("params") or {}).values() if isinstance(values, dict)
                  for key, value in values.items()}
        return {**deps, **params}

    scored, merged = inputs(stages["evaluate"]), inputs(stages["merge"])
    differ = sorted(k for k in scored.keys() & merged.keys() if scored[k] != merged[k])
    if differ:
        raise SqltuneError(
            f"{metrics_file} scores another model than the merged one: in {lock_file}, evaluate and merge "
            f"ran on different {', '.join(differ)}; run `dvc repro` so that both are up to date"
        )


def eval_section(metrics_file: str | Path | None, lock_file: str | Path = "dvc.lock") -> str:
    """The model card's evaluation table, from the evaluate stage's metrics (empty without them),
    refused when they are not the merged model's (check_same_model)."""
    if metrics_file is None or not Path(metrics_file).is_file():
        return ""
    check_same_model(metrics_file, lock_file)
    m = json.loads(Path(metrics_file).read_text())
    rows = [f"| {name} | {score_text(s['execution_accuracy'])} | {score_text(s.get('exact_match'))} | {s.get('n')} |"
            for name, s in m.items() if isinstance(s, dict) and "execution_accuracy" in s]
    return "\n## Evaluation\n\n| model | execution accuracy | exact match | n |\n|---|---|---|---|\n" + \
        "\n".join(rows) + "\n"


def model_card(params: Params) -> str:
    """README.md of the merged model: base, training data and training params. It holds nothing
    that evaluate makes: `sqltune upload` adds the evaluation table (eval_section) to the card it
    pushes."""
    import yaml

    p = params.prepare
    return (
        f"---\nbase_model: {params.model.name}\nlibrary_name: transformers\ntags: [text-to-sql, sqltune, lora]\n---\n"
        f"# {params.model.name}, fine-tuned for text-to-SQL with sqltune\n\n"
        f"- **Base model:** {params.model.name}\n"
        f"- **Data:** {p.dataset} ({p.train_size} train rows, {p.split} split, seed {params.seed})\n"
        f"- **Adapter merged into** full-precision weights; prompt format in `{PROMPT_FILE}`.\n\n"
        f"## Training params\n\n```yaml\n{yaml.safe_dump(params.train.model_dump(), sort_keys=False)}```\n"
    )


def merge(params: Params, adapter_dir: str | Path, out_dir: str | Path, base_cache: str | Path,
          parity_file: str | Path) -> dict:
    """Merge into bf16 (GPU) / fp32 (CPU) weights, never into 4-bit ones, and measure how often the
    merged model's greedy SQL equals the adapter-on-base SQL on the first prompts of
    ``parity_file``: the train rows, which a change to the test rows leaves alone, so that such a
    change does not rerun merge."""
    import torch

    base, tok = load_base_for_inference(params, base_cache)
    if params.merge.dtype != "auto":
        base = base.to(getattr(torch, params.merge.dtype))
    peft_model = attach_adapter(base, adapter_dir, merge=False)
    prompts = [r["prompt"] for r in read_jsonl(parity_file)[: params.merge.parity_samples]]
    gen = EvaluateParams(max_new_tokens=PARITY_MAX_NEW_TOKENS)
    before = generate(peft_model, tok, prompts, gen)
    merged = peft_model.merge_and_unload()
    after = generate(merged, tok, prompts, gen)
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(params))
        (tmp / PROMPT_FILE).write_text(json.dumps({"system_prompt": params.prepare.system_prompt}))
    same = sum(a == b for a, b in zip(before, after))
    return {"parity": same / len(prompts) if prompts else None, "parity_samples": len(prompts),
            "dtype": str(merged.dtype).removeprefix("torch.")}
