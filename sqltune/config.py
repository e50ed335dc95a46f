"""params.yaml -> typed, validated config.

The file is read once per stage into ``Params``. Unknown keys, wrong types and
out-of-range values are all reported together in one ``SqltuneError`` so a user
fixes everything in one edit instead of one error per run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sqltune.errors import SqltuneError

DEFAULT_SYSTEM_PROMPT = (
    "You are a text-to-SQL assistant. Answer the user's question with one SQLite query "
    "over these tables, and nothing else.\n\n{context}"
)


class _Strict(BaseModel):
    # forbid: a typo such as `learning_rte` must fail, not be silently ignored.
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


class ModelParams(_Strict):
    name: str = Field(min_length=1)
    source: Literal["auto", "embedded", "local", "hub"] = "auto"
    revision: Optional[str] = None
    # flex_attention: PyTorch's compiled block-sparse attention; packed samples then cost only
    # their own blocks, without the flash_attn package.
    attn_implementation: Literal["auto", "flash_attention_2", "flex_attention", "sdpa", "eager"] = "auto"


class PrepareParams(_Strict):
    dataset: str = Field(min_length=1)
    hub_split: str = "train"
    test_dataset: Optional[str] = None
    train_size: int = Field(gt=0)
    test_size: int = Field(gt=0)
    # Skip this many rows of the (seeded, shuffled) test_dataset before taking test_size: a tuning
    # slice disjoint from the reported one (offset 0), drawn from the same source.
    test_offset: int = Field(default=0, ge=0)
    split: Literal["random", "schema_disjoint"] = "random"
    max_dropped_fraction: float = Field(default=0.05, ge=0.0, le=1.0)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT

    @model_validator(mode="after")
    def _prompt_has_context(self):
        if "{context}" not in self.system_prompt:
            raise ValueError("system_prompt must contain the placeholder {context}")
        return self

    @model_validator(mode="after")
    def _offset_needs_test_dataset(self):
        # Without a separate test source the rows after the test slice are train rows.
        if self.test_offset and self.test_dataset is None:
            raise ValueError("test_offset needs test_dataset (a separate source to slice the test rows from)")
        return self


class QuantizationParams(_Strict):
    load_in_4bit: bool = False
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


class LoraParams(_Strict):
    r: int = Field(gt=0, le=4096)
    alpha: float = Field(gt=0)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"


class TrainerParams(_Strict):
    epochs: float = Field(gt=0)
    learning_rate: float = Field(gt=0, lt=1)
    lr_scheduler: Literal["constant", "linear", "cosine", "constant_with_warmup"] = "constant"
    warmup_ratio: float = Field(default=0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    per_device_batch_size: int = Field(gt=0)
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    max_length: int = Field(default=1024, gt=8)
    # Pad each batch's length up to a multiple of this (null: to its longest row). Fewer distinct
    # shapes: on CUDA each new shape has a first-use cost (cuDNN's attention plans, mostly); at 64
    # the SmolLM2 GPU preset trained 18% more steps/s end to end (README "Real GPU run").
    pad_to_multiple_of: Optional[int] = Field(default=None, gt=0)
    packing: bool = True
    # Batches of rows of similar length (transformers' LengthGroupedSampler): little padding without
    # packing, whose padding-free batch SDPA attends under one dense block-diagonal mask.
    group_by_length: bool = False
    tokenize_procs: int = Field(default=1, ge=1, le=64)  # processes for TRL's tokenization of the train set
    # Processes that collate the next batches while the GPU trains: with a small model the step is
    # bound by the host, and collating 256 rows took 42 ms of a 300 ms SmolLM2 step (profile).
    dataloader_workers: int = Field(default=0, ge=0, le=64)
    # Loss on the answer (and its end-of-turn) only; false trains on the prompt's schema and question too,
    # which spends the model's capacity on predicting CREATE TABLE text it is always given.
    completion_only_loss: bool = True
    # Loss on the end-of-turn token that closes every answer: it is how the model learns to stop.
    # false masks it out of the labels, the classic pad-equals-EOS bug, kept only as the measured
    # ablation of EOS handling (README "Real GPU run"); it makes models worse.
    end_of_turn_loss: bool = True
    gradient_checkpointing: bool = False
    # With checkpointing on, recompute only every n-th decoder layer and keep the others'
    # activations: spends spare memory on speed (1 = every layer, the least memory).
    checkpoint_every_n_layers: int = Field(default=1, ge=1)
    # Liger's Triton kernels for RMSNorm, SwiGLU and RoPE (less memory, fewer launches). auto = on
    # when CUDA is present and liger_kernel imports. TRL already fuses the LM head and loss.
    use_liger_kernel: bool | Literal["auto"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    optim: str = "adamw_torch"
    logging_steps: int = Field(default=5, gt=0)
    save_steps: int = Field(default=50, gt=0)
    save_total_limit: int = Field(default=2, gt=0)


class LauncherParams(_Strict):
    # More than one process: the train stage re-execs under `accelerate launch` (sqltune.launch).
    # auto = one per visible CUDA GPU. The global batch is per_device_batch_size x grad-accum x this.
    num_processes: int | Literal["auto"] = 1
    strategy: Literal["ddp", "fsdp"] = "ddp"  # ddp: a model copy per GPU; fsdp: sharded (FSDP-QLoRA)
    fsdp_offload_params: bool = False  # fsdp only: keep sharded weights in CPU RAM

    @field_validator("num_processes", mode="before")
    @classmethod
    def _count(cls, v):
        if v != "auto" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError("must be a number of processes (1 or more) or 'auto'")
        return v


class TrainParams(_Strict):
    quantization: QuantizationParams = QuantizationParams()
    lora: LoraParams
    trainer: TrainerParams
    launcher: LauncherParams = LauncherParams()

    @model_validator(mode="after")
    def _fsdp_storage_dtype(self):
        # FSDP shards flat tensors of one dtype: the 4-bit storage must match the weights' dtype.
        q, precision = self.quantization, self.trainer.precision
        match = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}[q.compute_dtype]
        if self.launcher.strategy == "fsdp" and q.load_in_4bit and precision not in ("auto", match):
            raise ValueError(f"launcher.strategy fsdp with 4-bit needs trainer.precision {match} or auto "
                             f"(= quantization.compute_dtype {q.compute_dtype}, the storage dtype FSDP shards)")
        return self


class EvaluateParams(_Strict):
    max_new_tokens: int = Field(default=128, gt=0, le=4096)
    # Token budget of one generation batch: rows x (longest prompt of the batch + max_new_tokens).
    # `auto`: from the free GPU memory after loading and the model's KV-cache bytes per token
    # (sqltune.generation.token_budget); a fixed 4096 on CPU.
    batch_tokens: int | Literal["auto"] = "auto"
    max_batch_size: int = Field(default=256, gt=0)  # cap on rows per batch, whatever the budget
    # static: a fixed-size KV cache, which lets `compile` compile (and CUDA-graph) the decoding step.
    cache: Literal["dynamic", "static"] = "dynamic"
    compile: bool = False
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # auto = bf16 on CUDA, fp32 on CPU
    limit: Optional[int] = Field(default=None, gt=0)
    score_base: bool = True
    n_databases: int = Field(default=8, gt=0, le=100)
    query_timeout_s: float = Field(default=2.0, gt=0)
    db_dir: Optional[str] = None
    # insensitive: string values compare case-blind in the synthesized databases (WikiSQL's own rule:
    # its evaluator lower-cases condition values). Exact match is unaffected.
    value_case: Literal["exact", "insensitive"] = "exact"

    @model_validator(mode="after")
    def _value_case_synth_only(self):
        if self.value_case == "insensitive" and self.db_dir is not None:
            raise ValueError("value_case: insensitive applies to synthesized databases only; a real database "
                             "in db_dir keeps its own collation (set value_case: exact)")
        return self

    @field_validator("batch_tokens", mode="before")
    @classmethod
    def _budget(cls, v):
        # One clear message instead of one per branch of the int | "auto" union.
        if v != "auto" and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise ValueError("must be a positive number of tokens or 'auto'")
        return v

    @model_validator(mode="after")
    def _compile_needs_static_cache(self):
        if self.compile and self.cache != "static":
            raise ValueError("compile: true needs cache: static (transformers compiles only a fixed-shape cache)")
        return self


class MergeParams(_Strict):
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    parity_samples: int = Field(default=32, ge=0)


class Params(_Strict):
    seed: int = 42
    model: ModelParams
    prepare: PrepareParams
    train: TrainParams
    evaluate: EvaluateParams = EvaluateParams()
    merge: MergeParams = MergeParams()


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {path}: unknown key (remove it or fix its spelling)")
        elif e["type"] == "missing":
            lines.append(f"  - {path}: required key is missing")
        else:
            got = e.get("input")
            got = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  - {path}: {e['msg']}{got}")
    return "\n".join(lines)


def parse_params(data: object, origin: str = "params") -> Params:
    if not isinstance(data, dict):
        raise SqltuneError(f"{origin}: expected a mapping of sections at the top level")
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        n = len(err.errors())
        raise SqltuneError(
            f"{origin} has {n} problem{'s' * (n > 1)}:\n{_format_errors(err)}"
        ) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise SqltuneError(f"{path} not found; run from the project root or copy a preset from presets/")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SqltuneError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_params(data, str(path))
