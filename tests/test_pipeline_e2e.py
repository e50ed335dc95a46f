"""End to end: `dvc repro` in a temp copy of the project on a tiny config, with the real embedded model."""

import json
from pathlib import Path

import pytest

from dvc_project import make_project, run, stages_run
from sqltune.merging import eval_section

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
    assert stages_run(out) == ["prepare", "train", "evaluate", "merge"]
    return proj


def test_outputs(project):
    for f in ("data/prepared/train.jsonl", "data/prepared/test.jsonl", "models/adapter/adapter_model.safetensors",
              "models/merged/config.json", "models/merged/chat_template.jinja", "dvc.lock",
              "metrics/predictions.jsonl", "models/merged/README.md", "models/merged/sqltune.json"):
        assert (project / f).is_file(), f
    ev = json.loads((project / "metrics/eval/metrics.json").read_text())
    for model in ("base", "finetuned"):
        assert ev[model]["n"] == 8 and 0 <= ev[model]["execution_accuracy_all"] <= 1
    assert json.loads((project / "metrics/prepare.json").read_text())["train_rows"] == 24
    assert "by_feature" in json.loads((project / "metrics/eval/details.json").read_text())["finetuned"]
    # The merged model's card holds no evaluation (merge does not depend on it); upload adds it.
    assert "## Evaluation" not in (project / "models/merged/README.md").read_text()
    section = eval_section(project / "metrics/eval/metrics.json", project / "dvc.lock")
    assert f"| finetuned | {ev['finetuned']['execution_accuracy']:.3f} |" in section
    assert 0 <= json.loads((project / "metrics/merge.json").read_text())["parity"] <= 1
    preds = [json.loads(line) for line in (project / "metrics/predictions.jsonl").read_text().splitlines()]
    assert {p["model"] for p in preds} == {"base", "finetuned"} and len(preds) == 16


def test_training_curve_is_at_global_steps(project):
    loss = (project / "metrics/train/plots/metrics/loss.tsv").read_text().splitlines()
    steps = [int(line.split("\t")[0]) for line in loss[1:]]
    final = json.loads((project / "metrics/train/metrics.json").read_text())["step"]
    assert len(steps) >= 2 and steps == list(range(1, len(steps) + 1))  # logging_steps=1: every global step
    assert final == steps[-1]


def test_second_repro_is_a_noop(project):
    assert stages_run(run(["dvc", "repro"], project)) == []


def test_evaluate_param_reruns_evaluate_only(project):
    out = run(["dvc", "exp", "run", "-S", "evaluate.n_databases=3"], project)
    assert stages_run(out) == ["evaluate"]
    shown = run(["dvc", "exp", "show", "--no-pager", "--csv"], project).splitlines()[0].split(",")
    assert "finetuned.execution_accuracy" in shown and "evaluate.n_databases" in shown
    assert not any("by_feature" in c or "seconds" in c for c in shown)  # breakdowns and timings are no metrics
    assert "finetuned.exact_match" in run(["dvc", "metrics", "show"], project)
    plots = json.loads(run(["dvc", "plots", "show", "--json"], project))
    assert any(name.endswith("loss.tsv") for name in plots["data"])


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
    assert stages_run(out) == ["train", "evaluate", "merge"]


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
                          env={**env(), "SQLTUNE_GPU_WS": str(project), "SQLTUNE_GPU_STATE": str(state), "OUT": str(out)},
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
