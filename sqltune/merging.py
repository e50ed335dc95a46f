"""The merge stage's logic: fold the adapter into full-precision base weights, check parity; a full
fine-tune's weights are only converted to the merge dtype."""

from __future__ import annotations

import json
from pathlib import Path

from sqltune.config import PROMPT_FILE, CardParams, EvaluateParams, Params, write_prompt_file
from sqltune.errors import SqltuneError
from sqltune.modeling import attach_adapter, is_adapter, load_base_for_inference, load_full_for_inference
from sqltune.generation import generate
from sqltune.io import atomic_dir, read_jsonl
from sqltune.metrics_log import score_text

# Parity compares the merged weights with the adapter on base, so it needs no tuning: its generation
# settings are fixed here (the default batching, the dynamic cache, a budget long enough for a
# typical SQL answer) rather than taken from evaluate, whose changes must not re-merge the model.
PARITY_MAX_NEW_TOKENS = 64


# The stages whose dvc.lock entries must agree before a card is shipped with a model: the adapter
# (train), its scores (evaluate), the merged weights (merge) and the card (card).
SHIPPED_STAGES = ("train", "evaluate", "merge", "card")


def _stage_inputs(stage: dict) -> dict:
    """{path: md5} of a dvc.lock stage's deps and outs, and {key: value} of its params as listed."""
    files = {d.get("path"): d.get("md5") for d in (stage.get("deps") or []) + (stage.get("outs") or [])
             if isinstance(d, dict)}
    params = {key: value for values in (stage.get("params") or {}).values() if isinstance(values, dict)
              for key, value in values.items()}
    return {**files, **params}


def _lookup(inputs: dict, key: str) -> tuple[bool, object]:
    """A value of ``inputs`` by its key, or inside a listed section: one stage lists `evaluate`,
    another only `evaluate.n_databases`."""
    if key in inputs:
        return True, inputs[key]
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        node = inputs.get(".".join(parts[:cut]))
        for part in parts[cut:]:
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            return True, node
    return False, None


def check_same_model(what: str | Path, lock_file: str | Path, stages: tuple[str, ...] = ("evaluate", "merge"),
                     problem: str = "scores another model than the merged one") -> None:
    """Refuse ``what`` (evaluation numbers, a model card) when dvc.lock shows that ``stages`` ran on
    different inputs. Merge and card do not depend on one another nor merge on the evaluation (an
    evaluate setting must not re-merge the model), so dvc.lock is what ties them: every file (input
    or output) and param that two of these stages share must have the same hash or value in both.
    Stages without an entry (run by hand) have nothing to compare."""
    import yaml

    if not Path(lock_file).is_file():
        return
    try:
        lock = yaml.safe_load(Path(lock_file).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        raise SqltuneError(f"{lock_file} is not valid YAML; restore it (git checkout) or rerun `dvc repro`") from None
    entries = (lock.get("stages") if isinstance(lock, dict) else None) or {}
    ran = [(name, _stage_inputs(entries[name])) for name in stages if isinstance(entries.get(name), dict)]
    for i, (first, a) in enumerate(ran):
        for second, b in ran[i + 1:]:
            differ = []
            for key in sorted(a.keys() | b.keys()):
                (in_a, va), (in_b, vb) = _lookup(a, key), _lookup(b, key)
                if in_a and in_b and va != vb:
                    differ.append(key)
            if differ:
                raise SqltuneError(
                    f"{what} {problem}: in {lock_file}, {first} and {second} ran on different "
                    f"{', '.join(differ)}; run `dvc repro` so that both are up to date"
                )


def eval_table(metrics: dict, labels: dict[str, str] | None = None) -> str:
    """The evaluation table (markdown): one row per model of the evaluate stage's metrics,
    ``labels`` renaming rows (base, finetuned) for readers."""
    rows = [f"| {(labels or {}).get(name, name)} | {score_text(s['execution_accuracy'])} | "
            f"{score_text(s.get('exact_match'))} | {s.get('n')} |"
            for name, s in metrics.items() if isinstance(s, dict) and "execution_accuracy" in s]
    return "| model | execution accuracy | exact match | n |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"


def eval_section(metrics_file: str | Path | None, lock_file: str | Path = "dvc.lock") -> str:
    """An evaluation section from the evaluate stage's metrics (empty without them), refused when
    they are not the merged model's (check_same_model)."""
    if metrics_file is None or not Path(metrics_file).is_file():
        return ""
    check_same_model(metrics_file, lock_file)
    return "\n## Evaluation\n\n" + eval_table(json.loads(Path(metrics_file).read_text()))


def model_card(params: Params, base_model: str) -> str:
    """README.md of the merged model: metadata, base, training data and training params. It holds
    nothing that evaluate makes; the card stage writes the card that ships, with the evaluation."""
    import yaml

    p = params.prepare
    how = ("- **Adapter merged into** full-precision weights" if params.train.peft
           else "- **Full fine-tune:** every weight trained")
    return (
        f"---\n{CardParams.metadata(base_model, 'merge' if params.train.peft else 'finetune').to_yaml()}\n---\n"
        f"# {base_model}, fine-tuned for text-to-SQL with sqltune\n\n"
        f"- **Base model:** {base_model}\n"
        f"- **Data:** {p.train_sources() if p.mix or p.dataset_split else p.dataset} ({p.train_size} train rows"
        f"{' of the first' if p.mix else ''}, {p.split} split, seed {params.seed})\n"
        f"{how}; prompt format in `{PROMPT_FILE}`.\n\n"
        f"## Training params\n\n```yaml\n{yaml.safe_dump(params.train.model_dump(), sort_keys=False)}```\n"
    )


def _base_of_full(folder: str | Path) -> str:
    """The base a full fine-tune names in the README front matter that train wrote beside it."""
    from huggingface_hub import ModelCard

    readme = Path(folder) / "README.md"
    base = ModelCard.load(readme).data.base_model if readme.is_file() else None
    if not isinstance(base, str) or not base:
        raise SqltuneError(f"{readme} names no base_model; run `dvc repro -f train`")
    return base


def merge(params: Params, adapter_dir: str | Path, out_dir: str | Path, base_cache: str | Path,
          parity_file: str | Path) -> dict:
    """Merge into merge.dtype weights (auto: the dtype evaluate scores in), never into 4-bit ones, and measure how often the
    merged model's greedy SQL equals the adapter-on-base SQL on the first prompts of
    ``parity_file``: the train rows, which a change to the test rows leaves alone, so that such a
    change does not rerun merge."""
    if not is_adapter(adapter_dir):
        return _ship_full(params, adapter_dir, out_dir)
    base, tok = load_base_for_inference(params, base_cache, params.merge.dtype)
    peft_model = attach_adapter(base, adapter_dir, merge=False)
    prompts = [r["prompt"] for r in read_jsonl(parity_file)[: params.merge.parity_samples]]
    gen = EvaluateParams(max_new_tokens=PARITY_MAX_NEW_TOKENS)
    before = generate(peft_model, tok, prompts, gen)
    base_model = next(iter(peft_model.peft_config.values())).base_model_name_or_path  # as train named it
    merged = peft_model.merge_and_unload()
    after = generate(merged, tok, prompts, gen)
    _save(params, merged, tok, base_model, out_dir)
    same = sum(a == b for a, b in zip(before, after))
    return {"parity": same / len(prompts) if prompts else None, "parity_samples": len(prompts),
            "dtype": str(merged.dtype).removeprefix("torch.")}


def _ship_full(params: Params, folder: str | Path, out_dir: str | Path) -> dict:
    """A full fine-tune has nothing to merge: its weights go out in the merge dtype, as evaluate
    scored them, and there is no adapter to compare with (parity null)."""
    base_model = _base_of_full(folder)
    model, tok = load_full_for_inference(params, folder, params.merge.dtype)
    _save(params, model, tok, base_model, out_dir)
    return {"parity": None, "parity_samples": 0, "dtype": str(model.dtype).removeprefix("torch.")}


def _save(params: Params, model, tok, base_model: str, out_dir: str | Path) -> None:
    # A base converted from GGUF keeps the GGUF's free-text model name in its config; the shipped
    # config carries none, as the upstream's own does not.
    model.config.__dict__.pop("_model_name_or_path", None)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(params, base_model))
        write_prompt_file(tmp, params.prepare.system_prompt)
