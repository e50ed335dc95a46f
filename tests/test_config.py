from pathlib import Path

import pytest
import yaml

from sqltune.config import load_params, parse_params
from sqltune.errors import SqltuneError

ROOT = Path(__file__).resolve().parents[1]


def base() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("path", [ROOT / "params.yaml", *sorted((ROOT / "presets").glob("*.yaml"))],
                         ids=lambda p: p.name)
def test_shipped_params_and_presets_validate(path):
    p = load_params(path)
    assert p.train.lora.r > 0 and p.prepare.test_size > 0


@pytest.mark.parametrize("path", [ROOT / "params.yaml", *sorted((ROOT / "presets").glob("*.yaml"))],
                         ids=lambda p: p.name)
def test_shipped_params_and_presets_hold_every_param_a_stage_declares(path):
    """DVC fails a stage whose declared param is missing from params.yaml, even where the code has
    a default for it: a preset copied over params.yaml must hold every declared key."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    declared = {k for stage in stages.values() for k in stage.get("params", []) if isinstance(k, str)}
    params = yaml.safe_load(path.read_text())
    missing = []
    for key in sorted(declared):
        node = params
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                missing.append(key)
                break
            node = node[part]
    assert not missing, missing


def test_default_is_the_offline_embedded_run():
    p = load_params(ROOT / "params.yaml")
    assert p.model.name == "smollm2-135m-instruct" and p.prepare.dataset == "embedded"
    assert p.train.method == "lora" and p.train.quantized is None and p.train.peft


def test_reference_preset_matches_the_recipe():
    p = load_params(ROOT / "presets" / "llama-3.1-8b.yaml")
    q, lora, t = p.train.quantization, p.train.lora, p.train.trainer
    assert p.model.name == "meta-llama/Llama-3.1-8B"
    assert (p.train.method, p.train.quantized, q.quant_type, q.double_quant) == ("qlora", q, "nf4", True)
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules) == (256, 128, 0.05, "all-linear")
    assert (t.epochs, t.learning_rate, t.lr_scheduler, t.gradient_accumulation_steps) == (3, 2e-4, "constant", 8)
    assert t.gradient_checkpointing and t.precision == "bf16"
    assert (p.prepare.dataset, p.prepare.train_size, p.prepare.test_size) == ("b-mc2/sql-create-context", 10000, 2500)


def test_unknown_key_at_depth_is_named_with_full_path():
    d = base()
    d["train"]["lora"]["rank"] = 8
    with pytest.raises(SqltuneError, match=r"train\.lora\.rank: unknown key"):
        parse_params(d)


def test_every_problem_is_listed_in_one_message():
    d = base()
    d["train"]["trainer"]["learning_rate"] = -1
    d["train"]["lora"]["r"] = 0
    d["evaluate"]["batch_tokens"] = "sixteen"
    d["prepare"]["typo"] = 1
    with pytest.raises(SqltuneError) as exc:
        parse_params(d, "params.yaml")
    msg = str(exc.value)
    assert msg.startswith("params.yaml has 4 problems")
    for path in ("train.trainer.learning_rate", "train.lora.r", "evaluate.batch_tokens", "prepare.typo"):
        assert path in msg


def test_missing_section_and_bad_choice():
    d = base()
    del d["model"]
    d["prepare"]["split"] = "by_vibes"
    msg = str(pytest.raises(SqltuneError, parse_params, d).value)
    assert "model: required key is missing" in msg and "prepare.split" in msg


def test_system_prompt_needs_context_placeholder():
    d = base()
    d["prepare"]["system_prompt"] = "Write SQL."
    with pytest.raises(SqltuneError, match="{context}"):
        parse_params(d)


def test_invalid_yaml_names_the_line(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("seed: 1\nmodel: [unclosed\n")
    with pytest.raises(SqltuneError, match=r"not valid YAML at line \d+"):
        load_params(f)


def test_missing_params_file(tmp_path):
    with pytest.raises(SqltuneError, match="not found"):
        load_params(tmp_path / "nope.yaml")



def test_partial_checkpointing_needs_a_positive_layer_stride():
    d = base()
    d["train"]["trainer"]["checkpoint_every_n_layers"] = 0
    with pytest.raises(SqltuneError, match=r"train\.trainer\.checkpoint_every_n_layers"):
        parse_params(d)


@pytest.mark.parametrize("value", ["sixteen", 0, -4, True, 1.5])
def test_eval_batch_budget_is_tokens_or_auto(value):
    d = base()
    d["evaluate"]["batch_tokens"] = value
    with pytest.raises(SqltuneError, match=r"evaluate\.batch_tokens: .*a positive number of tokens or 'auto'"):
        parse_params(d)
    for ok in ("auto", 8192):
        d["evaluate"]["batch_tokens"] = ok
        assert parse_params(d).evaluate.batch_tokens == ok


def test_eval_compile_needs_a_static_cache():
    d = base()
    d["evaluate"].update(compile=True, cache="dynamic")
    with pytest.raises(SqltuneError, match="compile: true needs cache: static"):
        parse_params(d)
    d["evaluate"]["cache"] = "static"
    assert parse_params(d).evaluate.compile


def test_test_offset_needs_a_test_dataset():
    d = base()
    d["prepare"]["test_offset"] = 100
    with pytest.raises(SqltuneError, match="test_offset needs test_dataset"):
        parse_params(d)
    d["prepare"]["test_dataset"] = "dev.jsonl"
    assert parse_params(d).prepare.test_offset == 100


def test_case_insensitive_values_are_for_synthesized_databases_only():
    d = base()
    d["evaluate"].update(value_case="insensitive", db_dir="dbs")
    with pytest.raises(SqltuneError, match="value_case: insensitive applies to synthesized databases only"):
        parse_params(d)
    d["evaluate"]["db_dir"] = None
    assert parse_params(d).evaluate.value_case == "insensitive"
