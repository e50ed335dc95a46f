"""train.method: full fine-tuning runs through the same stages, checkpoints and resume as LoRA;
evaluate scores the trained weights themselves, merge ships them in its dtype with nothing to
merge, and the cards say what the model is. (LoRA is what every other pipeline test runs; QLoRA
needs CUDA, and its refusal on a CPU is in test_bad_input.py.)"""

import json
import shutil
from pathlib import Path

import pytest

from dvc_project import make_project, run, stages_run, tiny_llama
from sqltune.config import CardParams, parse_params
from sqltune.errors import SqltuneError


def full_config(model_dir: Path) -> dict:
    # fp32 and unpacked rows: deterministic on CPU, and enough steps for a checkpoint mid-run.
    return {
        "model": {"name": str(model_dir), "source": "local"},
        "prepare": {"train_size": 24, "test_size": 6},
        "train": {"method": "full",
                  "trainer": {"epochs": 1, "max_length": 256, "per_device_batch_size": 2, "packing": False,
                              "logging_steps": 1, "save_steps": 4, "save_total_limit": 10, "precision": "fp32"}},
        "evaluate": {"max_new_tokens": 16, "batch_tokens": 2048, "n_databases": 2},
        "merge": {"parity_samples": 4},
    }


@pytest.fixture(scope="module")
def base_dir(tokenizer_dir, tmp_path_factory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("base"), tokenizer_dir)


@pytest.fixture(scope="module")
def project(base_dir, tmp_path_factory) -> Path:
    proj = make_project(tmp_path_factory.mktemp("full"), full_config(base_dir))
    ran = stages_run(run(["dvc", "repro"], proj))
    assert ran[:3] == ["prepare", "train", "evaluate"] and sorted(ran[3:]) == ["card", "merge"]
    return proj


def tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_full_saves_the_whole_model_with_every_weight_trained(project, base_dir):
    trained = project / "models/adapter"
    assert not (trained / "adapter_config.json").exists() and (trained / "config.json").is_file()
    after, before = tensors(trained), tensors(base_dir)
    assert after.keys() == before.keys()
    untouched = [k for k in before if bool((after[k] == before[k]).all())]
    assert not untouched, untouched  # embeddings, norms and every projection moved
    assert {str(t.dtype) for t in after.values()} == {"torch.float32"}
    # usable as it is (ask, predict, upload --skip-merge): its prompt beside it, the KV cache on
    prompt = json.loads((trained / "sqltune.json").read_text())["system_prompt"]
    assert prompt == json.loads((project / "models/merged/sqltune.json").read_text())["system_prompt"]
    assert json.loads((trained / "config.json").read_text())["use_cache"] is True


def test_evaluate_scores_the_trained_weights(project):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sqltune.config import load_params
    from sqltune.generation import generate
    from sqltune.io import read_jsonl
    from sqltune.modeling import inference_dtype

    params = load_params(project / "params.yaml")
    rows = read_jsonl(project / "data/prepared/test.jsonl")
    dtype = inference_dtype(params.evaluate.dtype)  # the dtype evaluate generates in
    model = AutoModelForCausalLM.from_pretrained(project / "models/adapter", dtype=dtype)
    tok = AutoTokenizer.from_pretrained(project / "models/adapter")
    expected = generate(model, tok, [r["prompt"] for r in rows], params.evaluate)
    preds = [r for r in read_jsonl(project / "metrics/predictions.jsonl") if r["model"] == "finetuned"]
    assert [p["prediction"] for p in preds] == expected
    base = [r["prediction"] for r in read_jsonl(project / "metrics/predictions.jsonl") if r["model"] == "base"]
    assert base != expected  # the base was scored on its own weights


def test_evaluate_without_the_base_loads_no_base_weights(project, monkeypatch):
    """A full fine-tune scored alone needs only its own folder: no base load (a hub base would need
    the network), and the same predictions as the stage's run with the base."""
    from sqltune import evaluation
    from sqltune.config import load_params
    from sqltune.io import read_jsonl

    def no_base(*args, **kwargs):
        raise AssertionError("the base was loaded")

    monkeypatch.setattr(evaluation, "load_base_for_inference", no_base)
    params = load_params(project / "params.yaml")
    params = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"score_base": False})})
    _, results = evaluation.evaluate(params, project / "data/prepared/test.jsonl", project / "models/adapter",
                                     project / "models/base")
    assert set(results) == {"finetuned"}
    ran = [r["prediction"] for r in read_jsonl(project / "metrics/predictions.jsonl") if r["model"] == "finetuned"]
    assert [r["prediction"] for r in results["finetuned"][1]] == ran


def test_merge_ships_the_trained_weights_with_nothing_to_merge(project):
    from sqltune.config import load_params
    from sqltune.modeling import inference_dtype

    # the merge dtype follows the machine at auto (bf16 on a CPU with bf16 units, else fp32)
    dtype = inference_dtype(load_params(project / "params.yaml").merge.dtype)
    shipped, trained = tensors(project / "models/merged"), tensors(project / "models/adapter")
    assert shipped.keys() == trained.keys()
    assert all(shipped[k].dtype == dtype and bool((shipped[k] == trained[k].to(dtype)).all()) for k in trained)
    merge = json.loads((project / "metrics/merge.json").read_text())
    assert (merge["parity"], merge["parity_samples"], merge["dtype"]) == (None, 0, str(dtype).removeprefix("torch."))
    assert "nothing to merge" in (project / "logs/merge.log").read_text()
    assert json.loads((project / "models/merged/sqltune.json").read_text())["system_prompt"]


def test_cards_call_it_a_finetune_and_show_transformers_usage(project, base_dir):
    from huggingface_hub import ModelCard

    for path in ("models/cards/merged", "models/cards/adapter", "models/adapter", "models/merged"):
        card = ModelCard.load(project / path / "README.md")
        assert (card.data.base_model, card.data.base_model_relation) == (base_dir.name if "cards" in path
                                                                         else str(base_dir), "finetune"), path
        assert card.data.library_name == "transformers" and "lora" not in card.data.tags, path
        assert card.data.tags[:3] == list(CardParams.BASE_TAGS), path
        assert "PeftModel" not in card.text and "LoRA" not in card.text, path
    shipped = ModelCard.load(project / "models/cards/merged/README.md").text
    assert 'pipeline("text-generation"' in shipped and "every weight" in shipped


def test_a_killed_full_run_resumes_from_its_checkpoint_to_the_same_weights(project, base_dir, tmp_path):
    """A second project holds what a run killed after step 4 leaves (checkpoint-4 and the run's
    marker); `dvc repro train` resumes there: model, optimizer and schedule all come back."""
    from sqltune.training import FINGERPRINT, FULL_CHECKPOINT_FILES, usable_checkpoint

    proj = make_project(tmp_path, full_config(base_dir))
    run(["dvc", "repro", "prepare"], proj)
    src, dst = project / "models/checkpoints", proj / "models/checkpoints"
    dst.mkdir(parents=True)
    shutil.copytree(src / "checkpoint-4", dst / "checkpoint-4")
    shutil.copy(src / FINGERPRINT, dst / FINGERPRINT)
    assert usable_checkpoint(dst, json.loads((dst / FINGERPRINT).read_text())["fingerprint"],
                             required=FULL_CHECKPOINT_FILES) == dst / "checkpoint-4"
    out = run(["dvc", "repro", "train"], proj)
    assert stages_run(out) == ["train"] and "resuming from" in out
    a, b = tensors(proj / "models/adapter"), tensors(project / "models/adapter")
    worst = max(float((a[k] - b[k]).abs().max()) for k in b)
    assert worst <= 1e-6, worst
    steps = [int(r.split("\t")[0]) for r in (proj / "metrics/train/plots/metrics/loss.tsv").read_text().splitlines()[1:]]
    assert steps == list(range(5, steps[-1] + 1)) and steps[-1] == 12  # steps 5 to 12, once each


def test_method_settings_are_checked(tmp_path):
    import yaml

    from dvc_project import ROOT

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"]["method"] = "full"
    raw["train"]["launcher"]["strategy"] = "fsdp"
    with pytest.raises(SqltuneError, match="method full trains with launcher.strategy ddp"):
        parse_params(raw)
    raw["train"]["method"] = "adapter"
    raw["train"]["launcher"]["strategy"] = "ddp"
    with pytest.raises(SqltuneError, match="train.method"):
        parse_params(raw)
    raw["train"]["method"] = "lora"
    raw["train"]["quantization"]["load_in_4bit"] = True  # the switch train.method replaced
    with pytest.raises(SqltuneError, match="set train.method: qlora"):
        parse_params(raw)
