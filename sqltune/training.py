"""The train stage's logic: LoRA, QLoRA or full SFT with TRL, dvclive logging and safe resume."""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import signal
import sys
from pathlib import Path

from sqltune.config import CardParams, LoraParams, Params, TrainerParams, write_prompt_file
from sqltune.errors import SqltuneError

# Files a checkpoint must hold to be resumable; a kill during save leaves some missing. "a|b": either.
CHECKPOINT_FILES = ("trainer_state.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt")
# A full fine-tune's checkpoint holds the whole model, in shards with an index when it is large.
FULL_CHECKPOINT_FILES = ("trainer_state.json", "model.safetensors|model.safetensors.index.json", "optimizer.pt",
                         "scheduler.pt")
FINGERPRINT = "sqltune-run.json"


def lora_config(lp: LoraParams):
    from peft import LoraConfig

    return LoraConfig(
        r=lp.r,
        lora_alpha=lp.alpha,
        lora_dropout=lp.dropout,
        target_modules=lp.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def use_liger(setting: bool | str) -> bool:
    import importlib.util

    import torch

    if setting == "auto":
        return torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None
    if setting and importlib.util.find_spec("liger_kernel") is None:
        raise SqltuneError("train.trainer.use_liger_kernel is true but liger_kernel is not installed: "
                           "pip install liger-kernel, or set it to auto")
    return bool(setting)


def sft_config(tp: TrainerParams, out_dir: str | Path, seed: int, dtype, **overrides):
    import torch
    from trl import SFTConfig

    settings = dict(
        output_dir=str(out_dir),
        num_train_epochs=tp.epochs,
        learning_rate=tp.learning_rate,
        lr_scheduler_type=tp.lr_scheduler,
        warmup_steps=tp.warmup_ratio,  # transformers 5: a float < 1 is a ratio of total steps
        weight_decay=tp.weight_decay,
        max_grad_norm=tp.max_grad_norm,
        per_device_train_batch_size=tp.per_device_batch_size,
        gradient_accumulation_steps=tp.gradient_accumulation_steps,
        max_length=tp.max_length,
        pad_to_multiple_of=tp.pad_to_multiple_of,
        packing=tp.packing,
        train_sampling_strategy="group_by_length" if tp.group_by_length else "random",
        dataset_num_proc=tp.tokenize_procs if tp.tokenize_procs > 1 else None,
        completion_only_loss=tp.completion_only_loss,
        activation_checkpointing=tp.gradient_checkpointing,  # transformers' name for it since v5
        activation_checkpointing_kwargs={"every_n_layers": tp.checkpoint_every_n_layers, "use_reentrant": False}
        if tp.gradient_checkpointing else None,
        use_liger_kernel=use_liger(tp.use_liger_kernel),
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        optim=tp.optim,
        logging_steps=tp.logging_steps,
        save_strategy="steps",
        save_steps=tp.save_steps,
        save_total_limit=tp.save_total_limit,
        seed=seed,
        data_seed=seed,
        report_to="none",  # dvclive is attached explicitly, at the global step
        dataloader_num_workers=tp.dataloader_workers,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,  # the step bar with its ETA; ReadableProgress prints the logged values
    )
    return SFTConfig(**{**settings, **overrides})  # an override replaces a setting (launcher, bench)


def code_files() -> list[Path]:
    """The sqltune modules this process runs: the train stage's code deps."""
    return sorted(Path(m.__file__) for name, m in list(sys.modules.items())
                  if name.split(".")[0] == "sqltune" and getattr(m, "__file__", None))


def run_fingerprint(params: Params, train_file: str | Path, world_size: int = 1) -> str:
    """What a checkpoint depends on: params, data, code and the number of processes (the global
    batch). DVC reruns train only when one of them changed or the last run did not finish; only the
    latter may resume, else runs would mix. Of the launcher only what shapes the run counts: the
    rendezvous differs per machine, and any split of the same world size resumes alike."""
    launcher = params.train.launcher
    train = {**params.train.model_dump(exclude={"launcher"}),
             "launcher": {k: getattr(launcher, k) for k in launcher.RUN_SHAPING}}
    h = hashlib.sha256()
    h.update(json.dumps({"seed": params.seed, "model": params.model.model_dump(),
                         "train": train, "world_size": world_size}, sort_keys=True).encode())
    for f in [Path(train_file), *code_files()]:
        h.update(f.read_bytes())
    return h.hexdigest()


def usable_checkpoint(ckpt_dir: Path, fingerprint: str, warn=print, required=CHECKPOINT_FILES) -> Path | None:
    """Newest complete checkpoint of this same run; stale or corrupt ones are skipped or cleared."""
    if not ckpt_dir.is_dir():
        return None
    marker = ckpt_dir / FINGERPRINT
    if not marker.is_file() or json.loads(marker.read_text()).get("fingerprint") != fingerprint:
        if any(ckpt_dir.glob("checkpoint-*")):
            warn(f"{ckpt_dir}: checkpoints are from other params, data or code; starting afresh")
        shutil.rmtree(ckpt_dir)
        return None
    ckpts = sorted(ckpt_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for ckpt in ckpts:
        missing = [f for f in required if not any((ckpt / alt).is_file() for alt in f.split("|"))]
        if not missing and _state_readable(ckpt):
            return ckpt
        warn(f"{ckpt} is incomplete or corrupt ({', '.join(missing) or 'trainer_state.json'}); skipping it")
    return None


def _state_readable(ckpt: Path) -> bool:
    try:
        json.loads((ckpt / "trainer_state.json").read_text())
        return True
    except (OSError, ValueError):
        return False


def mark_run(ckpt_dir: Path, fingerprint: str, token: str = "") -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (ckpt_dir / FINGERPRINT).write_text(json.dumps({"fingerprint": fingerprint, "token": token}))


def agree_on_resume(procs, ckpt_dir: Path, fingerprint: str, say, required) -> Path | None:
    """The main process picks the checkpoint to resume from (clearing stale ones) and marks the run
    with a fresh token; the others take its pick, and all check that they see that token. A
    machine whose checkpoint folder is not the main one's (the workspace not on shared storage)
    thus fails here, on every process at once, and no process but the main one ever deletes."""
    resume, token = None, secrets.token_hex(8)
    if procs.is_main_process:
        resume = usable_checkpoint(ckpt_dir, fingerprint, say, required)
        mark_run(ckpt_dir, fingerprint, token)
    if procs.num_processes == 1:
        return resume
    import torch.distributed as dist

    from sqltune import launch

    pick = [str(resume) if resume else None, token]
    dist.broadcast_object_list(pick, src=0)
    try:
        seen = json.loads((ckpt_dir / FINGERPRINT).read_text())
    except (OSError, ValueError):
        seen = {}
    sees = seen.get("token") == pick[1] and seen.get("fingerprint") == fingerprint
    views = [None] * procs.num_processes
    dist.all_gather_object(views, (sees, launch.this_machine()))
    blind = sorted({name for ok, name in views if not ok})
    if blind:
        raise SqltuneError(f"{', '.join(blind)} cannot see the {ckpt_dir} that machine 0 writes (its {FINGERPRINT} "
                           "is missing, another run's, or from other params, data or code): put the workspace on "
                           "storage every machine shares, with the same checkout and params (docs/multi-node.md)")
    return Path(pick[0]) if pick[0] else None


def trim_curves(live_dir: str | Path, last_step: int) -> None:
    """Drop logged points past the checkpoint the run resumes from: the steps after it are trained
    again, and without this each would appear twice in the curves."""
    for tsv in Path(live_dir, "plots", "metrics").rglob("*.tsv"):
        header, *rows = tsv.read_text().splitlines()
        kept = [r for r in rows if int(float(r.split("\t", 1)[0])) <= last_step]
        tsv.write_text("\n".join([header, *kept]) + "\n")


def dvclive_callback(live_dir: str | Path, resume: bool):
    from dvclive import Live
    from transformers.integrations import DVCLiveCallback

    class GlobalStepDVCLive(DVCLiveCallback):
        # The stock callback counts log calls; curves must line up with the trainer's global step,
        # also after a resume.
        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            if self.live is not None:
                self.live.step = state.global_step
            super().on_log(args, state, control, model=model, logs=logs, **kwargs)

        def setup(self, args, state, model):
            self._initialized = True  # skip log_params: params.yaml is already tracked by DVC

    live = Live(str(live_dir), resume=resume, save_dvc_exp=False, dvcyaml=None, report=None)
    return GlobalStepDVCLive(live=live)


def readable_progress():
    """transformers' progress bar (step count, ETA) with each log as one line of named values,
    instead of a raw Python dict under it."""
    from transformers.trainer_callback import ProgressCallback

    class ReadableProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or self.training_bar is None or not logs:
                return
            shown = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in logs.items() if k != "total_flos")
            self.training_bar.write(f"step {state.global_step}/{state.max_steps}: {shown}")

    return ReadableProgress


def interrupt_callback():
    """On Ctrl-C, finish the current step, save a checkpoint, then stop."""
    from transformers import TrainerCallback

    class SaveOnInterrupt(TrainerCallback):
        interrupted = False  # stop requested: by this process's Ctrl-C or, launched, by any process's
        signals = 0

        def __init__(self):
            signal.signal(signal.SIGINT, self._handle)

        def _handle(self, signum, frame):
            SaveOnInterrupt.signals += 1
            if SaveOnInterrupt.signals > 1:  # a second Ctrl-C means now
                sys.exit(130)
            print("\ninterrupt: saving a checkpoint, then stopping (Ctrl-C again to abort)", file=sys.stderr)
            SaveOnInterrupt.interrupted = True

        def on_step_end(self, args, state, control, **kwargs):
            if args.world_size > 1:  # all processes stop at the same step, or the next collective hangs
                SaveOnInterrupt.interrupted = _any_process(SaveOnInterrupt.interrupted, args.device)
            if self.interrupted:
                control.should_save = True
                control.should_training_stop = True
            return control

    return SaveOnInterrupt()


def _any_process(flag: bool, device) -> bool:
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def build_trainer(params: Params, model, tok, dataset, out_dir: str | Path, callbacks=(), **overrides):
    """The train stage's SFTTrainer: its config, collator, LoRA and callbacks. The throughput
    benchmark builds its trainer here too, so it measures exactly what the stage runs."""
    from trl import SFTTrainer

    import warnings

    from sqltune.modeling import amp_dtype, peft_checkpointing_warning_silenced

    tp = params.train.trainer
    with peft_checkpointing_warning_silenced(), warnings.catch_warnings():  # PEFT wraps the model inside SFTTrainer
        # TRL's replacement for use_liger_kernel, Hub kernels, downloads them at run time, which a
        # machine without internet access can't; Liger works as it is in the pinned TRL.
        warnings.filterwarnings("ignore", message=".*use_liger_kernel.*deprecated.*", category=FutureWarning)
        trainer = SFTTrainer(
            model=model,
            args=sft_config(tp, out_dir, params.seed, amp_dtype(tp.precision), **overrides),
            train_dataset=dataset,
            processing_class=tok,
            peft_config=lora_config(params.train.lora) if params.train.peft else None,
            callbacks=list(callbacks),
        )
    from transformers.trainer_callback import ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(readable_progress())
    head_on_labelled_positions()
    if params.train.peft and (trainer.args.bf16 or trainer.args.fp16):
        keep_lora_inputs(trainer.model)
    if not tp.end_of_turn_loss:
        trainer.data_collator = MaskToken(trainer.data_collator, tok.eos_token_id)
    return trainer


def head_on_labelled_positions(on: bool = True) -> bool:
    """TRL's fused LM head projects only the positions that carry a label where Triton runs (CUDA);
    on other devices it projects every position, so that a compiling backend (Neuron) sees one tile
    shape whatever the number of labels. A CPU runs eagerly and recompiles nothing, and under
    completion-only loss most positions are prompt, so there the projection through the
    vocabulary-sized head of positions without a label was the largest single cost of a step
    (bench/train_throughput.py, docs/speed.md). The loss, the metrics and the gradients are the
    same either way (tests/test_training.py). on=False restores TRL's choice (the bench compares
    the two). Returns whether TRL has the switch this relies on (a performance change only)."""
    import trl.trainer.utils as tu

    current = getattr(tu, "_use_triton", None)
    if current is None:
        return False
    original = getattr(current, "original", current)
    if not on:
        tu._use_triton = original
        return True

    def labelled_only(device) -> bool:
        return original(device) or device.type == "cpu"

    labelled_only.original = original
    tu._use_triton = labelled_only
    return True


class MaskToken:
    """Wraps a collator so that one token id never carries loss (train.trainer.end_of_turn_loss:
    false, the EOS ablation). A class, not a closure: dataloader workers may need to pickle it."""

    def __init__(self, collator, token_id: int):
        self.collator, self.token_id = collator, token_id

    def __call__(self, examples):
        batch = self.collator(examples)
        batch["labels"] = batch["labels"].masked_fill(batch["input_ids"] == self.token_id, -100)
        return batch


def keep_lora_inputs(model, keep: bool = True) -> int:
    """Under autocast, stop PEFT casting each LoRA layer's input to the adapter's fp32: autocast
    casts it straight back for the bf16 matmul, so the two copies of every activation (and two of
    its gradient) change no number (with LoRA dropout on, only its multiply moves from fp32 to
    bf16), yet were the largest GPU cost of a SmolLM2 step (copy kernels; bench/train_throughput.py
    --profile, docs/speed.md). The adapter weights stay fp32. keep=False restores
    PEFT's cast (the bench and tests compare the two). Returns the number of LoRA layers set."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.cast_input_dtype_enabled = not keep
    return len(layers)


def process_state(timeout_s: float = 1800):
    """Accelerate's view of this process. Under `accelerate launch` this starts the process group
    before the model loads (FSDP's rank-0-only loading needs it) with the Trainer's own timeout
    (train.launcher.peer_timeout_s, also the SFTConfig's ddp_timeout): how long one collective
    waits for the other processes. Alone, it is one process and every barrier below is a no-op."""
    import math
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=math.ceil(timeout_s)))


def trained_readme(base_id: str, peft: bool = True) -> str:
    """README.md of the train stage's folder, in place of PEFT's empty template: its metadata and what
    it is. It holds no evaluation, which comes later; the card stage writes the card that ships."""
    if peft:
        meta, title, body = CardParams.metadata(base_id, "adapter"), f"LoRA adapter for {base_id}", (
            "Load it onto its base with PEFT (`PeftModel.from_pretrained(base, this_folder)`); the tokenizer "
            "saved beside it holds the chat template the adapter was trained with.\n")
    else:
        meta, title, body = CardParams.metadata(base_id, "finetune"), f"{base_id}, fully fine-tuned", (
            "Every weight of the base was trained (fp32). Load it with transformers "
            "(`AutoModelForCausalLM.from_pretrained(this_folder)`); the tokenizer saved beside it holds "
            "the chat template it was trained with.\n")
    return f"---\n{meta.to_yaml()}\n---\n# {title}, fine-tuned for text-to-SQL with sqltune\n\n{body}"


def save_trained(trainer, tok, out_dir: str | Path, base_id: str, revision: str | None = None,
                 system_prompt: str | None = None) -> None:
    """The trained adapter (LoRA, QLoRA) or the whole trained model (full) into ``out_dir``; a full
    model is usable as it is (ask, predict, upload --skip-merge), so its ``system_prompt`` goes
    beside it as in a merged one. Only the main process writes. Under FSDP every process first
    joins the gather of the full (LoRA) weights from their shards."""
    from peft import PeftModel

    from sqltune.io import atomic_dir

    acc = trainer.accelerator
    state_dict = acc.get_state_dict(trainer.model_wrapped) if trainer.is_fsdp_enabled else None
    if acc.is_main_process:
        model = acc.unwrap_model(trainer.model)
        peft = isinstance(model, PeftModel)
        for config in (model.peft_config.values() if peft else ()):
            # Name the real base (a hub id; the upstream id of an embedded model), not the local
            # folder it was loaded from, so the adapter loads outside this checkout.
            config.base_model_name_or_path = base_id
            config.revision = revision
            # PEFT keeps the resolved targets as a set, whose order follows the hash seed: sorted, the
            # same weights always make the same adapter_config.json, so DVC sees the same adapter.
            if isinstance(config.target_modules, (set, list, tuple)):
                config.target_modules = sorted(config.target_modules)
        with atomic_dir(out_dir) as tmp:
            if peft:  # LoRA targets no embedding layer, so PEFT needs no look at the base's hub config.
                model.save_pretrained(tmp, state_dict=state_dict, save_embedding_layers=False)
            else:
                # The Trainer turns the KV cache off for training; the saved model generates with it.
                model.config.use_cache = True
                model.save_pretrained(tmp, state_dict=state_dict)
                if system_prompt is not None:
                    write_prompt_file(tmp, system_prompt)
            tok.save_pretrained(tmp)
            (tmp / "README.md").write_text(trained_readme(base_id, peft))
    acc.wait_for_everyone()


def train(params: Params, train_file: str | Path, adapter_dir: str | Path, ckpt_dir: str | Path,
          live_dir: str | Path, base_cache: str | Path, warn=print) -> dict:
    """Fine-tune a LoRA adapter (train.method lora, qlora) or every weight (full) into ``adapter_dir``;
    resume from the newest complete checkpoint of the same run.
    Launched on several processes, each runs this; only the main one (global rank 0) writes files.
    Across machines, a machine lost mid-run ends every other one with an error naming it."""
    from sqltune import launch

    timeout_s = params.train.launcher.peer_timeout_s
    procs = process_state(timeout_s)
    with launch.watch_peers(timeout_s, ckpt_dir):
        return _train(procs, params, train_file, adapter_dir, ckpt_dir, live_dir, base_cache, warn)


def _train(procs, params: Params, train_file, adapter_dir, ckpt_dir, live_dir, base_cache, warn) -> dict:
    from datasets import Dataset

    from sqltune import launch
    from sqltune.io import read_jsonl
    from sqltune.modeling import load_model, load_tokenizer, resolve_model

    tp, ckpt_dir = params.train.trainer, Path(ckpt_dir)
    main = procs.is_main_process
    say = warn if main else (lambda msg: None)
    with procs.main_process_first():  # an embedded model is converted once, by the main process
        resolved = resolve_model(params.model, base_cache)
    tok = load_tokenizer(resolved, params.model.revision)
    model = load_model(resolved, params.model, params.train.quantized, tp.precision, full=not params.train.peft,
                       packed=tp.packing)
    rows = read_jsonl(train_file)
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])

    fingerprint = run_fingerprint(params, train_file, procs.num_processes)
    files = CHECKPOINT_FILES if params.train.peft else FULL_CHECKPOINT_FILES
    resume = agree_on_resume(procs, ckpt_dir, fingerprint, say, launch.checkpoint_files(files))
    stop = interrupt_callback()
    callbacks = [stop]
    if main:
        if resume:
            trim_curves(live_dir, int(resume.name.split("-")[-1]))
        callbacks.insert(0, dvclive_callback(live_dir, resume=resume is not None))
    trainer = build_trainer(params, model, tok, dataset, ckpt_dir, callbacks=callbacks,
                            **launch.trainer_overrides(params.train.launcher))
    if resume:
        say(f"resuming from {resume}")
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if stop.interrupted:
        raise SqltuneError(f"interrupted; a checkpoint is saved in {ckpt_dir}. Run `dvc repro` to resume")
    save_trained(trainer, tok, adapter_dir, resolved.base_id, params.model.revision if resolved.kind == "hub" else None,
                 params.prepare.system_prompt)
    return {"global_step": trainer.state.global_step, "world_size": procs.num_processes, "main_process": main,
            "train_sequences": len(trainer.train_dataset), **result.metrics}
