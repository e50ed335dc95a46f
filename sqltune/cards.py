"""The card stage's logic: the model cards that ship with the merged model and with the adapter.

A card is a README.md: YAML front matter built with huggingface_hub (ModelCardData, EvalResult:
license, base model, datasets, tags and a model-index with the scores), then what the model is, its
prompt format, a usage snippet, base vs fine-tuned scores, the training params and how they were
scored. The stage reads params and the evaluate stage's headline metrics, no weights, so an
evaluation change reruns it (cheaply) and never the merge.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sqltune.config import CardParams, Params
from sqltune.data import EMBEDDED, is_local
from sqltune.errors import SqltuneError
from sqltune.io import atomic_dir
from sqltune.merging import PROMPT_FILE, eval_table
from sqltune.modeling import EMBEDDED_MODELS

# <out>/<kind>/README.md, kind -> the Hub's base_model_relation of a LoRA run; a full fine-tune's
# two folders (the trained fp32 weights and the shipped ones) are both the base fine-tuned.
KINDS = {"merged": "merge", "adapter": "adapter"}


def relation(params: Params, kind: str) -> str:
    return KINDS[kind] if params.train.peft else "finetune"
# The usage snippets name the model by this; `sqltune upload` puts the repo it pushes to in its place.
REPO_PLACEHOLDER = "<user>/<repo>"
# The snippets' question: a row of the embedded set.
EXAMPLE_SCHEMA = "CREATE TABLE book (book_id INTEGER, title VARCHAR, author_id INTEGER, pub_year INTEGER)"
EXAMPLE_QUESTION = "How many books were published after 2000?"
# The scores the model-index reports, as the evaluate stage names them -> their display names.
INDEX_METRICS = {"execution_accuracy": "execution accuracy", "exact_match": "exact match"}


def base_model_id(params: Params) -> str:
    """The base as the Hub knows it: an embedded model's upstream id, a hub id as given, and for a
    local folder only its name (a path on this machine means nothing on the Hub). Decided from
    params alone, as resolving the model would convert an embedded one first."""
    p = params.model
    if p.source == "local" or (p.source == "auto" and Path(p.name).is_dir()):
        return Path(p.name).resolve().name
    if p.source in ("auto", "embedded") and p.name in EMBEDDED_MODELS:
        return EMBEDDED_MODELS[p.name][2]
    return p.name


def hub_dataset(spec: str | None) -> str | None:
    """``spec`` when it names a hub dataset, None for the embedded set and local files."""
    return None if spec is None or spec == EMBEDDED or is_local(spec) else spec


def read_metrics(metrics_file: str | Path) -> dict:
    """The evaluate stage's headline metrics, refused unless they hold the fine-tuned model's scores."""
    path = Path(metrics_file)
    what = f"{metrics_file} (the evaluate stage's metrics)"
    if not path.is_file():
        raise SqltuneError(f"{what} not found; run `dvc repro evaluate` first")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SqltuneError(f"{what} is not valid JSON; rerun `dvc repro -f evaluate`") from None
    scores = metrics.get("finetuned") if isinstance(metrics, dict) else None
    # A score is a number, or null when no row was decidable.
    if not (isinstance(scores, dict) and type(scores.get("n")) is int
            and all(k in scores and (scores[k] is None or type(scores[k]) in (int, float)) for k in INDEX_METRICS)):
        raise SqltuneError(f"{what} has no fine-tuned n, {' and '.join(INDEX_METRICS)}; rerun `dvc repro -f evaluate`")
    return metrics


def card_data(params: Params, kind: str, scores: dict, model_name: str):
    """The card's front matter: huggingface_hub's ModelCardData with an EvalResult per score of the
    fine-tuned model (a score without decidable rows, None, is left out)."""
    from huggingface_hub import EvalResult

    p, card = params.prepare, params.card
    test_source = p.test_dataset or p.dataset
    revision = p.revision if test_source == p.dataset and hub_dataset(p.dataset) else None
    results = [
        EvalResult(task_type="text-generation", task_name="Text-to-SQL", dataset_type=test_source,
                   dataset_name=test_source, dataset_split=p.test_split or "test", dataset_revision=revision,
                   dataset_args={"rows": scores["n"]}, metric_type=key, metric_name=name, metric_value=scores[key])
        for key, name in INDEX_METRICS.items() if scores.get(key) is not None
    ]
    datasets = [d for d in (hub_dataset(p.dataset), *(hub_dataset(m.dataset) for m in p.mix)) if d] or None
    return CardParams.metadata(base_model_id(params), relation(params, kind), extra_tags=card.tags, license=card.license,
                               language=list(card.language), datasets=datasets, model_name=model_name,
                               eval_results=results or None)


def _fenced(text: str, lang: str = "") -> str:
    """``text`` in a code fence longer than any run of backticks inside it (a prompt may hold some)."""
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    return f"{fence}{lang}\n{text}\n{fence}\n"


def usage(kind: str, base: str, system_prompt: str) -> str:
    """A runnable snippet: a model (merged, or fully fine-tuned) through transformers' pipeline on
    chat messages, an adapter through PEFT onto its base."""
    messages = (
        f"system_prompt = {system_prompt!r}\n"
        f"schema = {EXAMPLE_SCHEMA!r}\n"
        "messages = [\n"
        '    {"role": "system", "content": system_prompt.format(context=schema)},\n'
        f'    {{"role": "user", "content": {EXAMPLE_QUESTION!r}}},\n'
        "]\n"
    )
    if kind != "adapter":
        return (
            "from transformers import pipeline\n\n"
            f'generator = pipeline("text-generation", model="{REPO_PLACEHOLDER}")\n'
            f"{messages}"
            "answer = generator(messages, max_new_tokens=128, do_sample=False)[0][\"generated_text\"][-1][\"content\"]\n"
            "print(answer)"
        )
    return (
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({json.dumps(base)}), "{REPO_PLACEHOLDER}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{REPO_PLACEHOLDER}")  # the chat template it was trained with\n'
        f"{messages}"
        "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\",\n"
        "                                       return_dict=True)\n"
        "out = model.generate(**inputs, max_new_tokens=128, do_sample=False)\n"
        "print(tokenizer.decode(out[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))"
    )


def how_scored(params: Params, n: int) -> str:
    e, p = params.evaluate, params.prepare
    where = ("on the real SQLite database of each row" if e.db_dir is not None else
             f"on {e.n_databases} SQLite databases synthesized from each row's schema")
    case = " with text values compared case-blind" if e.value_case == "insensitive" else ""
    return (
        f"Each model in the table wrote one greedy answer for each of the {n} test rows (from {p.test_dataset or p.dataset}"
        f"{f', split {p.test_split}' if p.test_split else ''}). "
        f"Exact match compares the answer with the gold query after sqlglot "
        f"normalizes both; execution accuracy runs both {where}{case} and counts the answer right only when "
        "the results agree on every database, leaving out rows on which the gold query decides nothing."
        + (" Before scoring, a compared text value a letter or two off the question's words took those words "
           "(`sqltune predict` and `sqltune ask` do the same; plain `generate` as above does not)."
           if e.snap_values else "")
        + "\n"
    )


def training_summary(params: Params) -> str:
    import yaml

    p, t = params.prepare, params.train
    data = (p.train_sources() if p.mix or p.dataset_split else
            p.dataset + (f" (revision {p.revision})" if p.revision and hub_dataset(p.dataset) else ""))
    test = (f"; test rows from {p.test_dataset}" + (f" (split {p.test_split})" if p.test_split else "")
            if p.test_dataset else "")
    weights = (f"{t.quantization.quant_type} 4-bit base weights (QLoRA)" if t.method == "qlora"
               else "full-precision base weights")
    targets = t.lora.target_modules if isinstance(t.lora.target_modules, str) else ", ".join(t.lora.target_modules)
    method = (f"- **LoRA:** r {t.lora.r}, alpha {t.lora.alpha:g}, dropout {t.lora.dropout:g}, on {targets}; {weights}\n"
              if t.peft else "- **Full fine-tune:** every weight trained, its master copy kept in fp32\n")
    tr = t.trainer
    return (
        f"- **Data:** {data}, {p.train_size} train rows{' of the first' if p.mix else ''}, {p.split} split, "
        f"seed {params.seed}{test}\n"
        f"{method}"
        f"- **Schedule:** {tr.epochs:g} epochs at learning rate {tr.learning_rate:g} ({tr.lr_scheduler}), "
        f"{tr.per_device_batch_size} x {tr.max_length}-token sequences per device step"
        f"{', packed' if tr.packing else ''}; loss on the answer "
        f"{'only' if tr.completion_only_loss else 'and the prompt'}\n\n"
        f"All training params:\n\n" + _fenced(yaml.safe_dump(t.model_dump(), sort_keys=False).rstrip(), "yaml")
    )


def model_card(params: Params, kind: str, metrics: dict) -> str:
    """README.md of the merged model (kind ``merged``) or of the adapter (``adapter``)."""
    from huggingface_hub import ModelCard

    base, lora = base_model_id(params), params.train.lora
    model_name = f"{base.rsplit('/', 1)[-1]}-sqltune-{kind}"
    scores = metrics["finetuned"]
    if not params.train.peft:
        what = (f"{base} with every weight fine-tuned{' (fp32, as trained)' if kind == 'adapter' else ''}: a "
                "standalone model that answers a question about SQL tables with one SQLite query, fine-tuned "
                "with sqltune.")
        prompt_file = f" (`{PROMPT_FILE}` beside the weights holds it, as `system_prompt`)"
    elif kind == "merged":
        what = (f"{base} with a LoRA adapter (r {lora.r}) merged into its weights: a standalone model that "
                "answers a question about SQL tables with one SQLite query, fine-tuned with sqltune.")
        prompt_file = f" (`{PROMPT_FILE}` beside the weights holds it, as `system_prompt`)"
    else:
        what = (f"A LoRA adapter (r {lora.r}) for {base} that makes it answer a question about SQL tables with "
                "one SQLite query, fine-tuned with sqltune. The tokenizer beside it holds the chat template "
                "it was trained with.")
        prompt_file = ""
    e = params.evaluate
    labels = {"base": f"base ({base})", "finetuned": "fine-tuned (this model), greedy decoding",
              "finetuned_guided": f"fine-tuned (this model), {e.num_candidates} {e.decoding} candidates "
                                  "and execution-guided selection"}
    body = (
        f"# {model_name}\n\n{what}\n\n"
        "## Prompt format\n\n"
        "Chat messages: a system message with the tables, the user's question, and the SQL as the assistant's "
        "answer. The system message is this text with `{context}` replaced by the CREATE TABLE statements"
        f"{prompt_file}:\n\n{_fenced(params.prepare.system_prompt, 'text')}\n"
        "## Usage\n\n" + _fenced(usage(kind if params.train.peft else "merged", base, params.prepare.system_prompt), "python") + "\n"
        "## Evaluation\n\n" + eval_table(metrics, labels) + "\n" + how_scored(params, scores["n"]) + "\n"
        "## Training\n\n" + training_summary(params)
    )
    data = card_data(params, kind, scores, model_name)
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def for_repo(card: str, repo_id: str) -> str:
    """The card as pushed to ``repo_id``: its usage snippet names that repo."""
    return card.replace(REPO_PLACEHOLDER, repo_id)


def write_cards(params: Params, metrics_file: str | Path, out_dir: str | Path) -> list[Path]:
    """<out_dir>/merged/README.md and <out_dir>/adapter/README.md, written together or not at all."""
    metrics = read_metrics(metrics_file)
    cards = {kind: model_card(params, kind, metrics) for kind in KINDS}
    with atomic_dir(out_dir) as tmp:
        for kind, text in cards.items():
            (tmp / kind).mkdir()
            (tmp / kind / "README.md").write_text(text, encoding="utf-8")
    return [Path(out_dir) / kind / "README.md" for kind in KINDS]
