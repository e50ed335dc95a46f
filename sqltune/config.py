"""params.yaml -> typed, validated config.

The file is read once per stage into ``Params``. Unknown keys, wrong types and
out-of-range values are all reported together in one ``SqltuneError`` so a user
fixes everything in one edit instead of one error per run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = "auto"


class PrepareParams(_Strict):
    dataset: str = Field(min_length=1)
    hub_split: str = "train"
    test_dataset: Optional[str] = None
    train_size: int = Field(gt=0)
    test_size: int = Field(gt=0)
    split: Literal["random", "schema_disjoint"] = "random"
    max_dropped_fraction: float = Field(default=0.05, ge=0.0, le=1.0)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT

    @model_validator(mode="after")
    def _prompt_has_context(self):
        if "{context}" not in self.system_prompt:
            raise ValueError("system_prompt must contain the placeholder {context}")
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
    packing: bool = True
    gradient_checkpointing: bool = False
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    optim: str = "adamw_torch"
    logging_steps: int = Field(default=5, gt=0)
    save_steps: int = Field(default=50, gt=0)
    save_total_limit: int = Field(default=2, gt=0)


class TrainParams(_Strict):
    quantization: QuantizationParams = QuantizationParams()
    lora: LoraParams
    trainer: TrainerParams


class EvaluateParams(_Strict):
    max_new_tokens: int = Field(default=128, gt=0, le=4096)
    batch_size: int = Field(default=16, gt=0)
    limit: Optional[int] = Field(default=None, gt=0)
    score_base: bool = True
    n_databases: int = Field(default=8, gt=0, le=100)
    query_timeout_s: float = Field(default=2.0, gt=0)
    db_dir: Optional[str] = None


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
