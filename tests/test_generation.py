import pytest
import torch

from sqltune.config import EvaluateParams
from sqltune.generation import bytes_per_token, generate, generate_ids, plan_batches, token_budget

QUESTIONS = ["How many?", "List every name of every singer older than forty, please.", "Max age?",
             "Which concerts took place in 2014 or later, sorted by year?", "Count rows."]
PROMPTS = [[{"role": "system", "content": "CREATE TABLE singer (name VARCHAR, age INTEGER)"},
            {"role": "user", "content": q}] for q in QUESTIONS]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def settings(**kw) -> EvaluateParams:
    return EvaluateParams(max_new_tokens=12, **kw)


def test_budget_sets_the_batch_sizes():
    # Longest first; each batch is as many rows as fit at its first (longest) row's length + new tokens.
    lengths = [10, 50, 30, 30, 20, 40]
    assert plan_batches(lengths, 10, 100, 8) == [[1], [5, 2], [3, 4], [0]]
    assert plan_batches(lengths, 10, 120, 8) == [[1, 5], [2, 3, 4], [0]]
    assert plan_batches(lengths, 10, 120, 2) == [[1, 5], [2, 3], [4, 0]]  # max_batch_size caps
    assert plan_batches(lengths, 10, 10, 8) == [[i] for i in (1, 5, 2, 3, 4, 0)]  # never below one row
    assert plan_batches(lengths, 10, 250, 8, row_tokens=60) == [[1, 5, 2, 3], [4, 0]]  # static: one shape


def test_budget_auto_on_cpu_and_explicit(tiny):
    model, _ = tiny
    assert token_budget(model, "auto") == 4096 and token_budget(model, 777) == 777
    # 2 layers x 2 KV heads x 16 dims x K and V, plus one layer's prefill activations, in fp32
    assert bytes_per_token(model.config, 4) == (2 * 2 * 2 * 16 + 4 * 64 + 3 * 128) * 4


def test_batched_equals_unbatched_greedy(tiny):
    """Left padding and token-budget batching must not change greedy answers."""
    model, tok = tiny
    one_by_one = generate(model, tok, PROMPTS, settings(max_batch_size=1))
    assert all(one_by_one) and len(set(one_by_one)) > 1  # real, prompt-dependent outputs
    lengths = [len(x) for x in tok([tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
                                    for p in PROMPTS], add_special_tokens=False)["input_ids"]]
    sizes = set()
    for budget in (60, 150, 200, 10_000):  # from one row per batch to all rows in one
        sizes |= {len(b) for b in plan_batches(lengths, 12, budget, 256)}
        assert generate(model, tok, PROMPTS, settings(batch_tokens=budget)) == one_by_one, budget
    assert sizes >= {1, 2, 5}, sizes  # the budgets really produced different batch sizes
    # A static cache (one shape for every batch, the last one padded with repeats) gives the same.
    assert generate(model, tok, PROMPTS, settings(batch_tokens=150, cache="static")) == one_by_one


def test_each_sequence_stops_at_its_eos(tiny):
    model, tok = tiny
    eos = model.generation_config.eos_token_id
    out = generate_ids(model, tok, PROMPTS, settings(batch_tokens=10_000))
    for ids in out:
        assert eos not in ids[:-1] and 0 < len(ids) <= 12
    assert generate_ids(model, tok, [], settings()) == []


def test_merged_in_memory_equals_the_unmerged_adapter(tiny):
    """The evaluate stage merges the LoRA into the base weights in memory; greedy output must equal
    the adapter applied on the fly (PeftModel), for a random adapter that really changes outputs."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    model, tok = tiny
    s = settings(batch_tokens=150)
    base_out = generate(model, tok, PROMPTS, s)
    torch.manual_seed(1)
    # init_lora_weights=False: random A and B, so the adapter is not the identity.
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                                 init_lora_weights=False))
    unmerged = generate(peft_model, tok, PROMPTS, s)
    merged = generate(peft_model.merge_and_unload(), tok, PROMPTS, s)
    assert merged == unmerged
    assert sum(a != b for a, b in zip(unmerged, base_out)) >= 3  # the adapter changes most answers


@pytest.mark.parametrize("bf16_units", [True, False])
def test_inference_dtype_auto_is_bf16_on_a_cpu_with_bf16_units_else_fp32(tiny_model_dir, monkeypatch, bf16_units):
    """evaluate.dtype and merge.dtype go through one rule in the loaders: at auto, evaluate scores the
    weights that merge ships, in the dtype training computed in (bf16 on a CPU with bf16 units)."""
    import yaml
    from pathlib import Path

    from sqltune import modeling
    from sqltune.config import parse_params

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: bf16_units)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    want = torch.bfloat16 if bf16_units else torch.float32
    assert modeling.amp_dtype("auto") == want
    data = yaml.safe_load(open(Path(__file__).parents[1] / "params.yaml"))
    data["model"].update(name=str(tiny_model_dir), source="local")
    params = parse_params(data)
    base, _ = modeling.load_base_for_inference(params, tiny_model_dir / "cache", params.evaluate.dtype)
    full, _ = modeling.load_full_for_inference(params, tiny_model_dir, params.merge.dtype)
    assert {p.dtype for p in base.parameters()} == {p.dtype for p in full.parameters()} == {want}
    fp32, _ = modeling.load_base_for_inference(params, tiny_model_dir / "cache", "float32")
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}  # a set dtype wins
