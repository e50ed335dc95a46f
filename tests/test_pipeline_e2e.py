"""End to end: `dvc repro` in a temp copy of the project on a tiny config, with the real embedded model."""

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from dvc_project import ROOT, make_project, run, stages_run
from sqltune.cards import REPO_PLACEHOLDER, for_repo, model_card
from sqltune.config import CardParams, parse_params
from sqltune.merging import eval_section
from sqltune.modeling import EMBEDDED_MODELS
from sqltune.upload import shipped_card

BASE_ID = EMBEDDED_MODELS["smollm2-135m-instruct"][2]

TINY = {
    "prepare": {"train_size": 24, "test_size": 8},
    "train": {"trainer": {"epochs": 1, "max_length": 512, "per_device_batch_size": 2, "logging_steps": 1,
                          "save_steps": 4}},
    "evaluate": {"max_new_tokens": 24, "batch_tokens": 2048, "n_databases": 2},
    "merge": {"parity_samples": 4},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    proj = make_project(tmp_path_factory.mktemp("proj"), TINY)
    out = run(["dvc", "repro"], proj)
    ran = stages_run(out)
    assert ran[:3] == ["prepare", "train", "evaluate"] and sorted(ran[3:]) == ["card", "merge"]
    return proj


def test_each_stage_logs_and_evaluate_writes_the_declared_plot_data(project):
    import re

    import yaml

    for stage in ("prepare", "train", "evaluate", "merge", "card"):
        lines = (project / "logs" / f"{stage}.log").read_text().splitlines()
        assert lines and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line) for line in lines), stage
    assert any("train: done at step" in line for line in (project / "logs/train.log").read_text().splitlines())
    assert "execution_accuracy" in (project / "logs/evaluate.log").read_text()
    spec = yaml.safe_load((project / "dvc.yaml").read_text())["plots"]
    eval_files = sorted({f for entry in spec for body in entry.values() if isinstance(body, dict)
                         for f in (body.get("y") or {}) if isinstance(body.get("y"), dict) and f.startswith("metrics/eval/")})
    assert eval_files, "dvc.yaml declares no evaluation plots"
    for f in eval_files:
        data = json.loads((project / f).read_text())
        assert data, f


def test_outputs(project):
    for f in ("data/prepared/train.jsonl", "data/prepared/test.jsonl", "models/adapter/adapter_model.safetensors",
              "models/merged/config.json", "models/merged/chat_template.jinja", "dvc.lock",
              "metrics/predictions.jsonl", "models/merged/README.md", "models/merged/sqltune.json",
              "models/cards/merged/README.md", "models/cards/adapter/README.md", "models/adapter/README.md"):
        assert (project / f).is_file(), f
    ev = json.loads((project / "metrics/eval/metrics.json").read_text())
    for model in ("base", "finetuned"):
        assert ev[model]["n"] == 8 and 0 <= ev[model]["execution_accuracy_all"] <= 1
    assert json.loads((project / "metrics/prepare.json").read_text())["train_rows"] == 24
    assert "by_feature" in json.loads((project / "metrics/eval/details.json").read_text())["finetuned"]
    # The README that merge writes holds no evaluation (merge does not depend on it); the card stage's does.
    assert "## Evaluation" not in (project / "models/merged/README.md").read_text()
    section = eval_section(project / "metrics/eval/metrics.json", project / "dvc.lock")
    assert f"| finetuned | {ev['finetuned']['execution_accuracy']:.3f} |" in section
    assert 0 <= json.loads((project / "metrics/merge.json").read_text())["parity"] <= 1
    preds = [json.loads(line) for line in (project / "metrics/predictions.jsonl").read_text().splitlines()]
    assert {p["model"] for p in preds} == {"base", "finetuned"} and len(preds) == 16


def python_block(card: str) -> str:
    (code,) = re.findall(r"```python\n(.*?)\n```", card, flags=re.S)
    return code


def test_cards_carry_hub_metadata_and_the_finetuned_scores(project):
    from huggingface_hub import ModelCard

    ft = json.loads((project / "metrics/eval/metrics.json").read_text())["finetuned"]
    for kind, relation, library in (("merged", "merge", "transformers"), ("adapter", "adapter", "peft")):
        data = ModelCard.load(project / f"models/cards/{kind}/README.md").data
        assert (data.license, data.base_model, data.base_model_relation) == ("apache-2.0", BASE_ID, relation)
        assert (data.pipeline_tag, data.library_name, data.language) == ("text-generation", library, ["en"])
        assert data.tags == ["text-to-sql", "sql", "sqltune", "lora"]
        assert data.datasets is None  # the embedded set is no hub dataset
        scores = {r.metric_type: r.metric_value for r in data.eval_results}
        assert scores == {"execution_accuracy": ft["execution_accuracy"], "exact_match": ft["exact_match"]}
        assert {(r.dataset_name, r.dataset_split, r.dataset_args["rows"]) for r in data.eval_results} == {
            ("embedded", "test", ft["n"])}
        # dvc.lock ties the card to the model it ships with: upload takes it.
        assert shipped_card(project / "models/cards", kind, project / "dvc.lock")[1] == (
            project / f"models/cards/{kind}/README.md").read_text()
    # The READMEs that train and merge write have the metadata but, made before evaluate, no scores.
    for folder, relation in (("adapter", "adapter"), ("merged", "merge")):
        card = ModelCard.load(project / f"models/{folder}/README.md")
        assert (card.data.base_model, card.data.base_model_relation) == (BASE_ID, relation)
        assert card.data.eval_results is None and "More Information Needed" not in card.text


def test_cards_for_a_hub_dataset_a_local_base_and_extra_tags(tmp_path):
    """The card params and the kind of data and base decide the metadata, with no pipeline run."""
    preset = yaml.safe_load((ROOT / "presets/llama-3.1-8b.yaml").read_text())
    metrics = {"base": {"n": 5, "execution_accuracy": 0.2, "exact_match": 0.0},
               "finetuned": {"n": 5, "execution_accuracy": 0.8, "exact_match": None}}
    (tmp_path / "my-base").mkdir()
    cases = [
        (preset, "meta-llama/Llama-3.1-8B", ["b-mc2/sql-create-context"], "llama3.1"),
        ({**preset, "model": {"name": str(tmp_path / "my-base"), "source": "local"},
          "prepare": {**preset["prepare"], "dataset": "data/raw/mine.jsonl", "revision": None},
          "card": {"license": "mit", "language": ["en", "fr"], "tags": ["spider"]}}, "my-base", None, "mit"),
    ]
    from huggingface_hub import ModelCard

    for raw, base, datasets, license_ in cases:
        params = parse_params(raw)
        path = tmp_path / "README.md"
        path.write_text(model_card(params, "adapter", metrics))
        data = ModelCard.load(path).data
        assert (data.base_model, data.datasets, data.license) == (base, datasets, license_)
        assert data.tags == [*CardParams.base_tags("adapter"), *params.card.tags] and data.language == params.card.language
        # exact match had no score: only execution accuracy is in the model-index
        (result,) = data.eval_results
        assert (result.metric_type, result.metric_value) == ("execution_accuracy", 0.8)
        assert result.dataset_revision == (preset["prepare"]["revision"] if datasets else None)
        assert f'AutoModelForCausalLM.from_pretrained("{base}")' in python_block(path.read_text())
    assert for_repo(f"x {REPO_PLACEHOLDER} y", "ada/m") == "x ada/m y"


@pytest.mark.parametrize("metrics, card, message", [
    (None, {}, "metrics.json (the evaluate stage's metrics) not found; run `dvc repro evaluate` first"),
    ("{not json", {}, "is not valid JSON; rerun `dvc repro -f evaluate`"),
    ({"base": {"n": 2, "execution_accuracy": 0.5, "exact_match": 0.5}}, {},
     "has no fine-tuned n, execution_accuracy and exact_match; rerun `dvc repro -f evaluate`"),
    ({"finetuned": {"n": 2, "execution_accuracy": "0.5", "exact_match": 0.5}}, {}, "has no fine-tuned n"),
    ({"finetuned": {"n": 2, "execution_accuracy": 0.5, "exact_match": None}}, {"license": "Apache 2.0"},
     "card.license: must be a Hub license identifier in lower case, such as apache-2.0"),
    ({"finetuned": {"n": 2, "execution_accuracy": 0.5, "exact_match": None}}, {"tags": ["sql", "my tag"]},
     "card.tags: 'my tag': not tags"),
])
def test_card_stage_refuses_bad_input_clearly_and_writes_nothing(tmp_path, metrics, card, message):
    import subprocess
    import sys

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["card"] = {**params["card"], **card}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    if metrics is not None:
        (tmp_path / "metrics.json").write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
    done = subprocess.run([sys.executable, str(ROOT / "stages/card.py"), "--metrics", "metrics.json", "--out", "cards"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    # One line; a params file's problems come as config.py lists them, under one heading line.
    assert lines[0].startswith("error: ") and len(lines) == (2 if card else 1) and message in lines[-1]
    assert not (tmp_path / "cards").exists()


def test_merged_config_and_tokenizer_are_clean(project):
    config = json.loads((project / "models/merged/config.json").read_text())
    tok = json.loads((project / "models/merged/tokenizer_config.json").read_text())
    base = json.loads((project / "models/base/smollm2-135m-instruct/config.json").read_text())
    # the GGUF's free-text model name ("Smollm2 135M ...") is dropped at conversion and at merge
    for cfg in (config, base):
        assert "_model_name_or_path" not in cfg and "Smollm2" not in json.dumps(cfg)
    assert config.get("_name_or_path", BASE_ID) == BASE_ID
    assert tok["model_max_length"] == config["max_position_embeddings"] == 8192


def test_merged_card_snippet_runs_the_merged_model_through_a_pipeline(project, capsys):
    """The merged card's usage snippet, pointed at the merged folder: transformers.pipeline on chat
    messages returns text."""
    card = (project / "models/cards/merged/README.md").read_text()
    code = python_block(for_repo(card, str(project / "models/merged")))
    assert 'pipeline("text-generation", model=' in code
    exec(compile(code, "card snippet", "exec"), {})  # noqa: S102 - the card's own snippet
    assert capsys.readouterr().out.strip()


def greedy(model, tok, prompt) -> list[int]:
    import torch

    ids = tok.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    return out[0, ids["input_ids"].shape[1]:].tolist()


AUTO_PEFT = """
import json, sys
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer
import torch

copy, prompt, snippet = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
model = AutoPeftModelForCausalLM.from_pretrained(copy)
tok = AutoTokenizer.from_pretrained(copy)
ids = tok.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
with torch.inference_mode():
    out = model.generate(**ids, max_new_tokens=16, do_sample=False)
print(json.dumps(out[0, ids["input_ids"].shape[1]:].tolist()))
exec(snippet, {})
"""


def test_adapter_copy_loads_offline_from_its_base_by_hub_id(project, tmp_path):
    """The adapter moved out of the project still loads: onto a given base with PeftModel, and on
    its own with AutoPeftModelForCausalLM, whose base (named by hub id) comes from a local Hugging
    Face cache; both give the project's adapter's greedy output. The adapter card's snippet runs
    against that cache too."""
    import subprocess
    import sys

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dvc_project import env

    base_dir = project / "models/base/smollm2-135m-instruct"
    copy = Path(shutil.copytree(project / "models/adapter", tmp_path / "elsewhere/adapter"))
    prompt = json.loads((project / "data/prepared/test.jsonl").read_text().splitlines()[0])["prompt"]
    tok = AutoTokenizer.from_pretrained(copy)
    ref = greedy(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), project / "models/adapter"),
                 tok, prompt)
    assert greedy(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), copy), tok, prompt) == ref
    config = json.loads((copy / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == BASE_ID
    # Saved in a fixed order, not the set order of the hash seed: the same weights, the same hash.
    assert len(config["target_modules"]) > 2 and config["target_modules"] == sorted(config["target_modules"])

    # A Hugging Face cache holding the base under its hub id, as a download leaves it.
    hf_home, commit = tmp_path / "hf", "0123456789abcdef0123456789abcdef01234567"
    repo = hf_home / "hub" / ("models--" + BASE_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in base_dir.iterdir():
        (snapshot / f.name).symlink_to(f)
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text(commit)
    cache_env = {k: v for k, v in env().items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE")}
    cache_env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

    snippet = python_block(for_repo((project / "models/cards/adapter/README.md").read_text(), str(copy)))
    done = subprocess.run([sys.executable, "-c", AUTO_PEFT, str(copy), json.dumps(prompt), snippet], env=cache_env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ids, answer = done.stdout.split("\n", 1)
    assert json.loads(ids) == ref and answer.strip()  # the card's snippet printed the adapter's answer


def test_training_curve_is_at_global_steps(project):
    loss = (project / "metrics/train/plots/metrics/loss.tsv").read_text().splitlines()
    steps = [int(line.split("\t")[0]) for line in loss[1:]]
    final = json.loads((project / "metrics/train/metrics.json").read_text())["step"]
    assert len(steps) >= 2 and steps == list(range(1, len(steps) + 1))  # logging_steps=1: every global step
    assert final == steps[-1]


def test_second_repro_is_a_noop(project):
    assert stages_run(run(["dvc", "repro"], project)) == []


def test_evaluate_param_reruns_evaluate_and_card_only(project):
    out = run(["dvc", "exp", "run", "-S", "evaluate.n_databases=3"], project)
    assert stages_run(out) == ["evaluate", "card"]  # the model is not merged again
    assert "on 3 SQLite databases" in (project / "models/cards/merged/README.md").read_text()
    shown = run(["dvc", "exp", "show", "--no-pager", "--csv"], project).splitlines()[0].split(",")
    assert "finetuned.execution_accuracy" in shown and "evaluate.n_databases" in shown
    assert not any("by_feature" in c or "seconds" in c for c in shown)  # breakdowns and timings are no metrics
    assert "finetuned.exact_match" in run(["dvc", "metrics", "show"], project)
    plots = json.loads(run(["dvc", "plots", "show", "--json"], project))
    assert any(name.endswith("loss.tsv") for name in plots["data"])


def test_guided_decoding_is_scored_beside_greedy_without_retraining(project):
    out = run(["dvc", "exp", "run", "-S", "evaluate.decoding=beam", "-S", "evaluate.num_candidates=2"], project)
    assert stages_run(out) == ["evaluate", "card"]
    metrics = json.loads((project / "metrics/eval/metrics.json").read_text())
    assert set(metrics) == {"base", "finetuned", "finetuned_guided"}
    assert metrics["finetuned_guided"]["n"] == metrics["finetuned"]["n"]
    details = json.loads((project / "metrics/eval/details.json").read_text())["finetuned_guided"]
    assert details["decoding"]["mode"] == "beam" and details["selection_seconds"] >= 0
    rows = [json.loads(x) for x in (project / "metrics/predictions.jsonl").read_text().splitlines()]
    guided = [r for r in rows if r["model"] == "finetuned_guided"]
    assert len(guided) == metrics["finetuned"]["n"] and all(r["selection"]["candidates"] == 2 for r in guided)
    assert "2 beam candidates and execution-guided selection" in (project / "models/cards/merged/README.md").read_text()


def test_merged_model_loads_and_answers_with_its_chat_template(project):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = project / "models/merged"
    model = AutoModelForCausalLM.from_pretrained(merged)
    tok = AutoTokenizer.from_pretrained(merged)
    row = json.loads((project / "data/prepared/test.jsonl").read_text().splitlines()[0])
    ids = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answer.strip()


def test_lora_param_reruns_train_and_downstream_not_prepare(project):
    out = run(["dvc", "exp", "run", "-S", "train.lora.r=8"], project)
    ran = stages_run(out)
    assert ran[:2] == ["train", "evaluate"] and sorted(ran[2:]) == ["card", "merge"]


def test_gpu_exp_script_runs_a_named_experiment_and_packs_exp_show(project, tmp_path):
    """scripts/gpu/exp.sh, as the GPU run used it: `dvc exp run -n NAME -S ...` from the baseline
    params (not the previous experiment's), then `dvc exp show` and the metrics in one tarball."""
    import subprocess
    import tarfile

    from dvc_project import ROOT, env

    state, out = tmp_path / "state", tmp_path / "out"
    state.mkdir()
    (state / "baseline-params.yaml").write_text((project / "params.yaml").read_text())
    (project / "params.yaml").write_text((project / "params.yaml").read_text().replace("n_databases: 2", "n_databases: 5"))
    done = subprocess.run(["bash", str(ROOT / "scripts/gpu/exp.sh"), "gpu-like", "evaluate", "evaluate.n_databases=4"],
                          env={**env(), "SQLTUNE_GPU_WS": str(project), "SQLTUNE_GPU_STATE": str(state), "SQLTUNE_GPU_RESULTS": str(out)},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    with tarfile.open(out / "exps.tar.gz") as tar:
        names = set(tar.getnames())
        shown = json.load(tar.extractfile("exps/exp-show.json"))
        info = json.load(tar.extractfile("exps/gpu-like/run-info.json"))
    assert {"exps/gpu-like/metrics/eval/metrics.json", "exps/gpu-like/dvc.lock", "exps/exp-show.md"} <= names
    assert info["rc"] == 0 and info["overrides"] == ["evaluate.n_databases=4"]
    exps = [e for rev in shown for e in (rev.get("experiments") or []) if e.get("name") == "gpu-like"]
    assert exps, "the experiment is not in dvc exp show"
    params = exps[0]["revs"][0]["data"]["params"]["params.yaml"]["data"]
    assert params["evaluate"]["n_databases"] == 4  # the override, on the baseline's params (not the 5 left in the workspace)
    assert params["evaluate"]["max_new_tokens"] == 24
