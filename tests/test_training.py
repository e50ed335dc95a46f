from pathlib import Path
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


def stage_trainer(model, tok, rows, out_dir, **trainer_params):
    """The train stage's SFTTrainer (build_trainer) on the default params.yaml with these
    train.trainer keys changed, for one step."""
    import yaml

    from sqltune.config import parse_params
    from sqltune.training import build_trainer

    data = yaml.safe_load(open(Path(__file__).parents[1] / "params.yaml"))
    data["train"]["trainer"].update(trainer_params)
    return build_trainer(parse_params(data), model, tok, rows, out_dir, max_steps=1)


def first_batch(model_dir, tok, rows, out_dir, **trainer_params):
    """The stage's fp32 trainer on a fresh copy of the model at model_dir, and its first batch."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = stage_trainer(model, tok, rows, out_dir, precision="fp32", **trainer_params)
    return trainer, next(iter(trainer.get_train_dataloader()))


def chat_rows(questions, answers=None):
    """A prompt-completion chat dataset, the shape the prepare stage writes: one user question and
    one assistant answer (SELECT 1 unless given) per row."""
    from datasets import Dataset

    answers = answers or ["SELECT 1"] * len(questions)
    return Dataset.from_list([{"prompt": [{"role": "user", "content": q}],
                               "completion": [{"role": "assistant", "content": a}]} for q, a in zip(questions, answers)])


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
    assert not tmp_path.exists() and "other params, data or code" in warnings[0]


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


def test_trainer_levers_reach_the_sft_config(tmp_path, monkeypatch):
    """Partial checkpointing reaches the trainer; Liger is off where it can't run (no CUDA here)."""
    import importlib.util

    from sqltune.config import TrainerParams
    from sqltune.errors import SqltuneError
    from sqltune.training import sft_config

    tp = TrainerParams(epochs=1, learning_rate=1e-3, per_device_batch_size=1, gradient_checkpointing=True,
                       checkpoint_every_n_layers=2)
    cfg = sft_config(tp, tmp_path, 0, None)
    assert cfg.gradient_checkpointing and cfg.gradient_checkpointing_kwargs["every_n_layers"] == 2
    assert cfg.use_liger_kernel is False  # auto, no CUDA
    off = sft_config(tp.model_copy(update={"gradient_checkpointing": False}), tmp_path, 0, None)
    assert not off.gradient_checkpointing
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(SqltuneError, match="pip install liger-kernel"):
        sft_config(tp.model_copy(update={"use_liger_kernel": True}), tmp_path, 0, None)


def test_partial_checkpointing_recomputes_every_nth_layer(tiny_model_dir, tmp_path):
    """Through the stage's own trainer: with every_n_layers=2, one of the two layers is checkpointed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = chat_rows([f"q{i}" for i in range(4)])
    trainer = stage_trainer(model, tok, rows, tmp_path, gradient_checkpointing=True, checkpoint_every_n_layers=2,
                            max_length=64, per_device_batch_size=1, precision="fp32")
    trainer.train()
    flags = [layer.gradient_checkpointing for layer in trainer.model.get_base_model().model.layers]
    assert flags.count(True) == 1 and len(flags) == 2


def test_group_by_length_batches_rows_of_similar_length(tiny_model_dir, tmp_path):
    """group_by_length reaches the stage's trainer, whose batches then carry far less padding than
    the same rows in random order; tokenize_procs becomes TRL's dataset_num_proc."""
    import random

    from transformers import AutoModelForCausalLM, AutoTokenizer

    rng = random.Random(0)
    rows = chat_rows(["word " * rng.choice((2, 40, 90)) for _ in range(96)])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)

    def padding_share(group: bool) -> float:
        trainer = stage_trainer(model, tok, rows, tmp_path / str(group), packing=False, group_by_length=group,
                                per_device_batch_size=8, precision="fp32", tokenize_procs=2 if group else 1)
        assert trainer.args.dataset_num_proc == (2 if group else None)
        masks = [b["attention_mask"] for b in trainer.get_train_dataloader()]
        return 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)

    grouped, shuffled = padding_share(True), padding_share(False)
    assert grouped < shuffled / 2, (grouped, shuffled)


def test_completion_only_loss_param_decides_which_tokens_carry_loss(tiny_model_dir, tmp_path):
    """train.trainer.completion_only_loss reaches TRL: true masks the prompt out of the loss, false
    trains on every token of the row."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = chat_rows([f"how many rows in t{i}" for i in range(4)])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)

    def trained_share(completion_only: bool) -> float:
        trainer = stage_trainer(model, tok, rows, tmp_path / str(completion_only), packing=False,
                                per_device_batch_size=4, precision="fp32", completion_only_loss=completion_only)
        batch = next(iter(trainer.get_train_dataloader()))
        real = batch["attention_mask"].bool()
        return float((batch["labels"][real] != -100).float().mean())

    only, full = trained_share(True), trained_share(False)
    assert full == 1.0 and 0 < only < 0.5, (only, full)


def test_lora_layers_keep_bf16_inputs_under_autocast_and_compute_the_same(tiny_model_dir, tmp_path):
    """With mixed precision the stage's trainer stops PEFT casting LoRA inputs to the adapter's fp32
    (autocast casts them straight back); fp32 training keeps PEFT's default. The outputs and the
    adapter's gradients are the same either way."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sqltune.training import keep_lora_inputs

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = chat_rows([f"how many rows in t{i}" for i in range(4)])

    def lora_casts(precision: str, dtype):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype)
        trainer = stage_trainer(model, tok, rows, tmp_path / precision, packing=False, per_device_batch_size=4,
                                precision=precision)
        return trainer, {m.cast_input_dtype_enabled for m in trainer.model.modules() if isinstance(m, BaseTunerLayer)}

    trainer, casts = lora_casts("bf16", torch.bfloat16)
    assert casts == {False}
    assert lora_casts("fp32", torch.float32)[1] == {True}

    model = trainer.model.eval()  # LoRA dropout off: with it on, its multiply runs in bf16, not fp32
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 for p in lora)  # the adapter itself stays fp32
    for p in lora:  # lora_B starts at zero, which would hide a difference in lora_A's gradient
        torch.nn.init.normal_(p, std=0.02)
    batch = {k: v for k, v in next(iter(trainer.get_train_dataloader())).items()
             if k in ("input_ids", "attention_mask")}

    def run(cast: bool):
        keep_lora_inputs(model, keep=not cast)
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(**batch).logits
        logits.float().pow(2).mean().backward()
        return logits.detach(), [p.grad.clone() for p in lora]

    (out_cast, grads_cast), (out_kept, grads_kept) = run(True), run(False)
    assert torch.equal(out_cast, out_kept)
    assert all(torch.equal(a, b) for a, b in zip(grads_cast, grads_kept))
    assert any(g.abs().sum() > 0 for g in grads_kept)
    assert keep_lora_inputs(model) == sum(isinstance(m, BaseTunerLayer) for m in model.modules())


def test_dataloader_workers_collate_in_worker_processes(tiny_model_dir, tmp_path):
    """train.trainer.dataloader_workers reaches the trainer's DataLoader, whose batches then come
    from worker processes, identical to the in-process ones."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = chat_rows(["word " * (i % 7) for i in range(16)])
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)

    def batches(workers: int):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        trainer = stage_trainer(model, tok, rows, tmp_path / str(workers), packing=False, per_device_batch_size=4,
                                precision="fp32", dataloader_workers=workers)
        loader = trainer.get_train_dataloader()
        assert loader.num_workers == workers or getattr(loader, "base_dataloader", loader).num_workers == workers
        return [b["input_ids"] for b in loader]

    inline, parallel = batches(0), batches(2)
    assert len(inline) == 4 and all(torch.equal(a, b) for a, b in zip(inline, parallel))


@pytest.mark.parametrize("packing", [False, True])
def test_end_of_turn_carries_loss_even_when_it_is_the_pad_token(tiny_model_dir, tmp_path, packing):
    """EOS handling: every completion ends with the chat template's end-of-turn, which the model
    must learn to emit to stop. The pad token is that same token here, so a collator that masked
    labels by token id would drop it from the loss in every row; the stage's trainer keeps it in
    each row (padded or packed) and masks only the padding after it."""
    from sqltune.modeling import ResolvedModel, load_tokenizer

    tok = load_tokenizer(ResolvedModel(str(tiny_model_dir), "local"))
    assert tok.pad_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    answers = ["SELECT 1", "SELECT name FROM singer WHERE age > 30 ORDER BY name", "SELECT COUNT(*) FROM t"]
    rows = chat_rows([f"question {i}" for i in range(len(answers))], answers)
    _, batch = first_batch(tiny_model_dir, tok, rows, tmp_path, packing=packing, per_device_batch_size=3, max_length=256)
    end = tok.pad_token_id
    trained_ends = int(((batch["input_ids"] == end) & (batch["labels"] != -100)).sum())
    assert trained_ends == len(answers), batch["labels"]
    if not packing:  # the padding after the shorter rows' end-of-turn carries no loss
        pad = batch["attention_mask"] == 0
        assert pad.any() and (batch["labels"][pad] == -100).all()


@pytest.mark.parametrize("packing", [False, True])
def test_end_of_turn_loss_false_masks_only_the_end_of_turn(tiny_model_dir, tmp_path, packing):
    """The EOS ablation (train.trainer.end_of_turn_loss: false) drops exactly the end-of-turn from
    the loss: every other label, and the inputs, match the stage's normal batch. It runs in the
    dataloader workers too, so it must survive being pickled to them."""
    import pickle

    from sqltune.modeling import ResolvedModel, load_tokenizer

    tok = load_tokenizer(ResolvedModel(str(tiny_model_dir), "local"))
    answers = ["SELECT 1", "SELECT name FROM singer WHERE age > 30", "SELECT COUNT(*) FROM t"]
    rows = chat_rows([f"question {i}" for i in range(len(answers))], answers)

    def batch(end_of_turn_loss, out):
        trainer, first = first_batch(tiny_model_dir, tok, rows, tmp_path / out, packing=packing, per_device_batch_size=3,
                                     max_length=256, end_of_turn_loss=end_of_turn_loss)
        pickle.loads(pickle.dumps(trainer.data_collator))
        return first

    kept, masked = batch(True, "kept"), batch(False, "masked")
    assert torch.equal(kept["input_ids"], masked["input_ids"])
    end = kept["input_ids"] == tok.eos_token_id
    changed = kept["labels"] != masked["labels"]
    assert int((end & (kept["labels"] != -100)).sum()) == len(answers)
    assert torch.equal(changed, end & (kept["labels"] != -100))
    assert (masked["labels"][end] == -100).all()


def test_pad_to_multiple_of_rounds_the_batch_length_up(tiny_model_dir, tmp_path):
    """train.trainer.pad_to_multiple_of reaches TRL's collator: the batch is padded to a multiple of
    it (fewer distinct shapes), and the extra positions are masked and carry no loss."""
    from sqltune.modeling import ResolvedModel, load_tokenizer

    tok = load_tokenizer(ResolvedModel(str(tiny_model_dir), "local"))
    rows = chat_rows(["question one", "a longer question about the singers"], ["SELECT 1", "SELECT name FROM singer"])

    def batch(multiple, out):
        return first_batch(tiny_model_dir, tok, rows, tmp_path / out, packing=False, per_device_batch_size=2,
                           max_length=256, pad_to_multiple_of=multiple)[1]

    plain, padded = batch(None, "plain"), batch(64, "padded")
    width = plain["input_ids"].shape[1]
    assert width % 64 and padded["input_ids"].shape[1] == 64 * -(-width // 64)
    assert torch.equal(padded["input_ids"][:, :width], plain["input_ids"])
    assert (padded["attention_mask"][:, width:] == 0).all() and (padded["labels"][:, width:] == -100).all()
    assert torch.equal(padded["labels"][:, :width], plain["labels"])


def test_lm_head_projects_only_labelled_positions_on_cpu_with_the_same_loss_and_gradients(
        tiny_model_dir, tmp_path, monkeypatch):
    """On a CPU the stage's trainer sends only the positions that carry a label through TRL's fused
    LM head (TRL itself projects every position off CUDA); the loss, the logged metrics and every
    gradient equal those of projecting them all."""
    import trl.trainer.utils as tu
    from transformers import AutoTokenizer

    from sqltune.training import head_on_labelled_positions

    monkeypatch.setattr(tu, "_use_triton", tu._use_triton)  # whatever was there before comes back afterwards
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = chat_rows([f"how many rows are in table t{i} where the id is over {i}" for i in range(6)],
                     [f"SELECT COUNT(*) FROM t{i} WHERE id > {i}" for i in range(6)])
    trainer, batch = first_batch(tiny_model_dir, tok, rows, tmp_path)
    assert tu._use_triton(torch.device("cpu"))  # build_trainer switched it on
    model = trainer.model.eval()
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:  # lora_B starts at zero, which would hide a difference in lora_A's gradient
        torch.nn.init.normal_(p, std=0.02)
    projected = []
    real = tu._ChunkedLogProbFunction

    class Spy:
        @staticmethod
        def apply(hidden, *args):
            projected.append(hidden.shape[0])
            return real.apply(hidden, *args)

    monkeypatch.setattr(tu, "_ChunkedLogProbFunction", Spy)

    def run(labelled_only: bool):
        head_on_labelled_positions(labelled_only)
        trainer._metrics["eval"].clear()  # eval mode (no dropout): the metrics go under eval
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        metrics = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
        return loss.detach(), metrics, [p.grad.clone() for p in trainable]

    dense, compact = run(False), run(True)
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    positions = batch["input_ids"][:, 1:].numel()
    assert projected == [positions, labelled] and labelled < positions / 2
    assert torch.allclose(dense[0], compact[0], rtol=1e-5, atol=1e-6)
    assert dense[1].keys() == compact[1].keys() >= {"entropy", "mean_token_accuracy"}
    assert all(abs(dense[1][k] - compact[1][k]) < 1e-5 for k in dense[1])
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(dense[2], compact[2]))
    assert any(g.abs().sum() > 0 for g in compact[2])


def test_sdpa_packed_equals_each_sample_alone_and_the_dense_mask_in_loss_and_gradients(tiny_model_dir):
    """sdpa_packed runs SDPA on each sample of a packed row by itself: the logits equal each sample
    run alone, and loss and every gradient equal SDPA under transformers' block-diagonal mask."""
    from transformers import AutoModelForCausalLM

    from sqltune.modeling import pick_attn

    assert pick_attn("sdpa_packed") == "sdpa_packed"  # registers it with transformers
    torch.manual_seed(0)
    lens = (7, 19, 12)
    ids = torch.randint(3, 49000, (1, sum(lens)))
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    models = {}
    for attn in ("sdpa", "sdpa_packed"):
        m = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=attn)
        for p in m.parameters():  # a tiny random model's weights are small: make attention matter
            torch.nn.init.normal_(p, std=0.2)
        models[attn] = m
    models["sdpa_packed"].load_state_dict(models["sdpa"].state_dict())
    outs = {}
    for attn, m in models.items():
        out = m(input_ids=ids, position_ids=pos, labels=ids, use_cache=False)
        out.loss.backward()
        outs[attn] = (out.logits.detach(), out.loss.detach(), [p.grad.clone() for p in m.parameters()])
    m = models["sdpa"]
    with torch.no_grad():
        starts = [0, lens[0], lens[0] + lens[1]]
        alone = torch.cat([m(input_ids=ids[:, a:a + n]).logits for a, n in zip(starts, lens)], dim=1)
        leaky = m(input_ids=ids, use_cache=False).logits  # no boundaries: the samples see each other
    packed, dense = outs["sdpa_packed"], outs["sdpa"]
    assert torch.allclose(packed[0], alone, atol=1e-4)
    assert not torch.allclose(leaky, alone, atol=1e-2)  # the comparison has teeth
    assert torch.allclose(packed[1], dense[1], rtol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(packed[2], dense[2]))


def test_sdpa_packed_leaves_padded_batches_and_decoding_to_sdpa(tiny_model_dir):
    """Without packed position ids (a padded batch, generation with a KV cache) sdpa_packed is SDPA."""
    from transformers import AutoModelForCausalLM

    from sqltune.modeling import pick_attn

    pick_attn("sdpa_packed")
    torch.manual_seed(0)
    a = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    b = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                             attn_implementation="sdpa_packed").eval()
    b.load_state_dict(a.state_dict())
    ids = torch.randint(3, 49000, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    with torch.no_grad():
        assert torch.allclose(a(input_ids=ids, attention_mask=mask).logits,
                              b(input_ids=ids, attention_mask=mask).logits, atol=1e-5)
        ga = a.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
        gb = b.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(ga, gb)


def test_auto_attention_is_per_sample_for_packed_training_off_cuda_and_sdpa_for_inference(monkeypatch):
    from sqltune.config import ModelParams
    from sqltune.modeling import inference_attn, pick_attn

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_attn("auto", packed=True) == "sdpa_packed"
    assert pick_attn("auto", packed=False) == "sdpa"
    assert pick_attn("sdpa", packed=True) == "sdpa"  # an explicit choice stands
    p = ModelParams(name="m", attn_implementation="sdpa_packed")
    assert inference_attn(p).attn_implementation == "sdpa"
