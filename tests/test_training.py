import json

import pytest
import torch

from sqltune.training import FINGERPRINT, mark_run, usable_checkpoint


def make_ckpt(root, step, files=("trainer_state.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt")):
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    for f in files:
        (d / f).write_text("{}" if f.endswith(".json") else "x")
    return d


def test_newest_complete_checkpoint_wins(tmp_path):
    mark_run(tmp_path, "fp")
    make_ckpt(tmp_path, 10)
    good = make_ckpt(tmp_path, 20)
    make_ckpt(tmp_path, 30, files=("trainer_state.json", "optimizer.pt"))  # killed mid-save
    warnings = []
    assert usable_checkpoint(tmp_path, "fp", warnings.append) == good
    assert len(warnings) == 1 and "checkpoint-30" in warnings[0] and "adapter_model.safetensors" in warnings[0]


def test_unreadable_state_is_skipped(tmp_path):
    mark_run(tmp_path, "fp")
    good = make_ckpt(tmp_path, 5)
    bad = make_ckpt(tmp_path, 9)
    (bad / "trainer_state.json").write_text("{truncated")
    assert usable_checkpoint(tmp_path, "fp", lambda m: None) == good


def test_checkpoints_of_other_params_are_cleared(tmp_path):
    mark_run(tmp_path, "old")
    make_ckpt(tmp_path, 10)
    warnings = []
    assert usable_checkpoint(tmp_path, "new", warnings.append) is None
    assert not tmp_path.exists() and "other params or data" in warnings[0]


def test_packed_batch_loss_equals_one_by_one(tiny_model_dir):
    """Packing must leak nothing: each sample's loss in a packed, padding-free batch (built by
    the train stage's own collator) equals its loss when run alone, in fp32."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    samples = [torch.randint(3, 49000, (n,)).tolist() for n in (7, 19, 12)]
    examples = [{"input_ids": s, "completion_mask": [0] * 3 + [1] * (len(s) - 3)} for s in samples]
    for e in examples:
        e["labels"] = [t if m else -100 for t, m in zip(e["input_ids"], e["completion_mask"])]
    collate = DataCollatorForLanguageModeling(pad_token_id=2, padding_free=True)
    packed = collate(examples)
    assert "attention_mask" not in packed and packed["input_ids"].shape == (1, sum(map(len, samples)))

    def per_token_loss(logits, labels):
        return torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="none")

    with torch.no_grad():
        # use_cache=False as SFTTrainer.compute_loss sets it: with a KV cache transformers does not
        # derive the block-diagonal mask from position_ids.
        out = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False)
        packed_tok = per_token_loss(out.logits, packed["labels"])
        start = 0
        for e in examples:
            n = len(e["input_ids"])
            alone = model(input_ids=torch.tensor([e["input_ids"]])).logits
            alone_loss = per_token_loss(alone, torch.tensor([e["labels"]]))
            mask = torch.tensor(e["labels"][1:]) != -100
            seg = packed_tok[start:start + n - 1]
            a, b = seg[mask].mean(), alone_loss[mask].mean()
            assert torch.allclose(a, b, rtol=1e-4), (a, b)
            start += n
    # And a packed run with the boundaries ignored differs: the check above has teeth.
    with torch.no_grad():
        leaky = model(input_ids=packed["input_ids"], position_ids=torch.arange(packed["input_ids"].shape[1])[None],
                      use_cache=False)
    seg = per_token_loss(leaky.logits, packed["labels"])[len(samples[0]):len(samples[0]) + len(samples[1]) - 1]
    alone = per_token_loss(model(input_ids=torch.tensor([samples[1]])).logits, torch.tensor([examples[1]["labels"]]))
    assert not torch.allclose(seg[3:].mean(), alone[3:].mean(), rtol=1e-4)


def test_fingerprint_covers_params_data_and_code(tmp_path, monkeypatch):
    import yaml

    from sqltune import training
    from sqltune.config import parse_params

    params = parse_params(yaml.safe_load(open(training.Path(__file__).parents[1] / "params.yaml")))
    data = tmp_path / "train.jsonl"
    data.write_text('{"a": 1}\n')
    fp = training.run_fingerprint(params, data)
    assert fp == training.run_fingerprint(params, data)
    assert fp != training.run_fingerprint(params.model_copy(update={"seed": 7}), data)
    data.write_text('{"a": 2}\n')
    assert fp != training.run_fingerprint(params, data)
    data.write_text('{"a": 1}\n')
    assert any(f.name == "training.py" for f in training.code_files())
    fake = tmp_path / "training.py"
    fake.write_text("# edited")
    monkeypatch.setattr(training, "code_files", lambda: [fake])
    assert fp != training.run_fingerprint(params, data)
