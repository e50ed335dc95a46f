"""params.yaml -> typed, validated config.

The file is read once per stage into ``Params``. Unknown keys, wrong types and
out-of-range values are all reported together in one ``SqltuneError`` so a user
fixes everything in one edit instead of one error per run.

Reading is strict on purpose: the YAML loader refuses what only a broken or hostile
file holds (deep nesting, aliases, duplicate keys), and the models take a number only
as a number: no ``true`` for 1, no quoted "8", no ``.inf`` or ``.nan``.
"""

from __future__ import annotations

import json
import re
import reprlib
import string
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Optional

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from sqltune.errors import SqltuneError

DEFAULT_SYSTEM_PROMPT = (
    "You are a text-to-SQL assistant. Answer the user's question with one SQLite query "
    "over these tables, and nothing else.\n\n{context}"
)

# Beside a model that sqltune saves (merged, or fully fine-tuned): the system prompt it was trained
# with, which predict and ask read.
PROMPT_FILE = "sqltune.json"


def write_prompt_file(folder: Path, system_prompt: str) -> None:
    (Path(folder) / PROMPT_FILE).write_text(json.dumps({"system_prompt": system_prompt}))

# A params file is a few KB of settings; a far larger file is the wrong file, and the pure-Python
# YAML parser (needed for the depth and alias checks) would spend seconds and much memory on it.
MAX_FILE_BYTES = 256 * 1024
# params.yaml nests three levels (train.trainer.epochs); PyYAML's composer recurses once per level
# and would hit Python's recursion limit on a file of brackets.
MAX_DEPTH = 32
# numpy's seeding (transformers.set_seed) takes only 0 <= seed < 2**32.
SEED_LIMIT = 2**32
# TRL's padding-free batches index their tokens with int32 offsets (cu_seq_lens), so one batch
# (per_device_batch_size x max_length tokens) must stay below 2**31.
BATCH_TOKEN_LIMIT = 2**31


# ---------------------------------------------------------------- reading the YAML


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that a params file never needs; reported with its line, without 'not valid YAML'."""


class _ParamsLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, refusing nesting deeper than MAX_DEPTH, anchors and aliases (a few
    lines of nested aliases expand to gigabytes; params need neither), merge keys, and duplicate
    keys at any depth (PyYAML would keep the last one silently). Bad scalars (`!!int 0xZZ`, a
    date with month 13, an integer of thousands of digits) become marked errors, not tracebacks."""

    def __init__(self, stream):
        super().__init__(stream)
        self._path: list = []  # the keys (nodes) and sequence indices down to the node being composed

    def _dotted(self, key: yaml.Node) -> str:
        parts = [p.value if isinstance(p, yaml.ScalarNode) else p for p in self._path if p is not None]
        return ".".join(str(p) for p in [*parts, key.value])

    def compose_node(self, parent, index):
        event = self.peek_event()
        if event.anchor is not None:  # an anchor (&name) or an alias (*name)
            raise _Refused(problem=f"YAML anchors and aliases (&{event.anchor}, *{event.anchor}) are not "
                           "allowed in params; write the value out in full", problem_mark=event.start_mark)
        if len(self._path) >= MAX_DEPTH:
            raise _Refused(problem=f"nested more than {MAX_DEPTH} levels deep; params nest a few levels "
                           "(section, subsection, key): close the brackets or fix the indentation",
                           problem_mark=event.start_mark)
        self._path.append(index)
        try:
            return super().compose_node(parent, index)
        finally:
            self._path.pop()

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        first_line: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if key.tag == "tag:yaml.org,2002:merge":
                raise _Refused(problem="merge keys (<<) are not allowed in params; write the keys out in full",
                               problem_mark=key.start_mark)
            if not isinstance(key, yaml.ScalarNode):
                continue  # an unhashable key: the constructor refuses it
            if (key.tag, key.value) in first_line:
                raise _Refused(problem=f"duplicate key {self._dotted(key)} (first at line "
                               f"{first_line[key.tag, key.value] + 1}); keep only one of them",
                               problem_mark=key.start_mark)
            first_line[key.tag, key.value] = key.start_mark.line
        return node

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, AttributeError, OverflowError):
            kind = node.tag.rsplit(":", 1)[-1]
            raise _Refused(problem=f"{reprlib.repr(node.value)} is not a usable {kind}; fix the value "
                           "(or quote it, to make it text)", problem_mark=node.start_mark) from None


def _read_text(path: Path) -> str:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SqltuneError(f"cannot read {path}: {exc.strerror}; check that it is a readable file") from None
    if len(raw) > MAX_FILE_BYTES:
        raise SqltuneError(f"{path} is larger than {MAX_FILE_BYTES // 1024} KiB, far more than a params file "
                           "holds; point at a params.yaml (copy one from presets/)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SqltuneError(f"{path} is not UTF-8 text (byte {exc.start + 1}, line {line}); "
                           "re-save it as UTF-8") from None


def _read_yaml(path: Path) -> object:
    text = _read_text(path)
    try:
        return yaml.load(text, Loader=_ParamsLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as exc:
        mark = exc.problem_mark
        raise SqltuneError(f"{path}, line {mark.line + 1}, column {mark.column + 1}: {exc.problem}") from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise SqltuneError(f"{path} holds the character U+{exc.character:04X}, which YAML does not allow, at "
                           f"line {line}; delete it (or write it as an escape inside double quotes)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SqltuneError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None


# ---------------------------------------------------------------- field types


def _or_auto(kind: type, what: str, lo: int | None = None, hi: int | None = None):
    """A `kind` value (bool or int, within lo..hi) or the string 'auto'. Checked up front so that a bad
    value gets one message, not one per branch of the union."""

    def check(v):
        # type() rather than isinstance: a bool is an int to Python, never a count here.
        if v == "auto" or (type(v) is kind and (lo is None or v >= lo) and (hi is None or v <= hi)):
            return v
        raise ValueError(f"must be {what} or 'auto'")

    return Annotated[kind | Literal["auto"], BeforeValidator(check)]


def _only_context_placeholder(prompt: str) -> str:
    # The prompt goes through str.format(context=...): any other field would raise a KeyError or
    # IndexError on the first row, and a stray brace a ValueError.
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(prompt) if name is not None]
    except ValueError as exc:
        raise ValueError(f"unbalanced brace ({exc}); for a literal brace, double it: {{{{ or }}}}") from None
    for name, spec, conv in fields:
        if (name, spec, conv) != ("context", "", None):
            shown = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(f"{shown} is not a placeholder here, only {{context}} (the CREATE TABLE "
                             "statements) is; for a literal brace, double it: {{ or }}")
    if not fields:
        raise ValueError("system_prompt must contain the placeholder {context} (where the CREATE TABLE "
                         "statements go)")
    return prompt


SystemPrompt = Annotated[str, AfterValidator(_only_context_placeholder)]


class _Strict(BaseModel):
    # forbid: a typo such as `learning_rte` must fail, not be silently ignored.
    # strict: a value has the type it says (`train_size: true` is not 1, `epochs: "2"` not 2); an int
    # still stands for a float. No inf or nan: every float here is a finite quantity (a rate, a
    # ratio, a norm, seconds), and .inf would silently mean "no limit" where a limit is the point.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class ModelParams(_Strict):
    name: str = Field(min_length=1)
    source: Literal["auto", "embedded", "local", "hub"] = "auto"
    revision: Optional[str] = None
    # flex_attention: PyTorch's compiled block-sparse attention; packed samples then cost only
    # their own blocks, without the flash_attn package. sdpa_packed: SDPA on each packed sample by
    # itself, the same skip without compiling (what auto picks for packed training off CUDA).
    attn_implementation: Literal["auto", "flash_attention_2", "flex_attention", "sdpa", "sdpa_packed",
                                 "eager"] = "auto"


class MixParams(_Strict):
    """One more source of train rows (prepare.mix): a small dataset trained beside the main one."""

    dataset: str = Field(min_length=1)  # embedded | a local file (in data/raw/) | a hub id
    split: Optional[str] = Field(default=None, min_length=1)  # as prepare.dataset_split, for this source
    revision: Optional[str] = Field(default=None, min_length=1)  # a hub id's revision, pinned
    # Each of its rows appears this many times per epoch: a few hundred rows beside tens of
    # thousands would otherwise barely move the model.
    repeat: int = Field(default=1, ge=1, le=1000)


class PrepareParams(_Strict):
    dataset: str = Field(min_length=1)
    hub_split: str = "train"
    # The revision (branch, tag or commit) of a hub `dataset`: pinned, a rerun reads the same rows even
    # after the dataset's owner pushes new ones. null = the latest.
    revision: Optional[str] = Field(default=None, min_length=1)
    test_dataset: Optional[str] = None
    # A file whose rows carry a `split` field (GeoQuery's train, dev and test in one file): take only
    # the rows with this value, from prepare.dataset and from prepare.test_dataset. null: every row.
    # (A hub dataset's own splits are prepare.hub_split.)
    dataset_split: Optional[str] = Field(default=None, min_length=1)
    test_split: Optional[str] = Field(default=None, min_length=1)
    # More train sources, all of their usable rows (test questions left out), after train_size rows
    # of prepare.dataset: e.g. a real database's few hundred questions beside a large corpus.
    mix: list[MixParams] = []
    train_size: int = Field(gt=0)
    test_size: int = Field(gt=0)
    # Skip this many rows of the (seeded, shuffled) test_dataset before taking test_size: a tuning
    # slice disjoint from the reported one (offset 0), drawn from the same source.
    test_offset: int = Field(default=0, ge=0)
    split: Literal["random", "schema_disjoint"] = "random"
    max_dropped_fraction: float = Field(default=0.05, ge=0.0, le=1.0)
    system_prompt: SystemPrompt = DEFAULT_SYSTEM_PROMPT

    @model_validator(mode="after")
    def _offset_needs_test_dataset(self):
        # Without a separate test source the rows after the test slice are train rows.
        if self.test_offset and self.test_dataset is None:
            raise ValueError("test_offset needs test_dataset (a separate source to slice the test rows from)")
        if self.test_split and self.test_dataset is None:
            raise ValueError("test_split needs test_dataset (without it the test rows are a slice of dataset)")
        return self

    def train_sources(self) -> str:
        """Where the train rows come from, in words: the model card's data line."""
        def one(spec, split, revision, repeat=1):
            notes = [f"split {split}" if split else "", f"revision {revision}" if revision else "",
                     f"each row x{repeat}" if repeat > 1 else ""]
            return spec + (f" ({', '.join(n for n in notes if n)})" if any(notes) else "")
        return " + ".join([one(self.dataset, self.dataset_split, self.revision),
                           *(one(m.dataset, m.split, m.revision, m.repeat) for m in self.mix)])


class QuantizationParams(_Strict):
    """The 4-bit base weights of ``train.method: qlora`` (ignored by lora and full)."""

    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"

    @model_validator(mode="before")
    @classmethod
    def _moved_switch(cls, data):
        # The switch that once lived here is train.method now; say so rather than "unknown key".
        if isinstance(data, dict) and "load_in_4bit" in data:
            raise ValueError("load_in_4bit is now train.method: set train.method: qlora for 4-bit NF4 "
                             "weights (lora for full-precision ones) and remove load_in_4bit")
        return data


class LoraParams(_Strict):
    r: int = Field(gt=0, le=4096)
    alpha: float = Field(gt=0)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"


class TrainerParams(_Strict):
    # Bounded far above any real run: transformers counts ceil(epochs x steps per epoch) steps, which
    # overflows for an absurd float only once training starts.
    epochs: float = Field(gt=0, le=10_000)
    learning_rate: float = Field(gt=0, lt=1)
    lr_scheduler: Literal["constant", "linear", "cosine", "constant_with_warmup"] = "constant"
    warmup_ratio: float = Field(default=0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    per_device_batch_size: int = Field(gt=0)
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    max_length: int = Field(default=1024, gt=8)
    # Pad each batch's length up to a multiple of this (null: to its longest row). Fewer distinct
    # shapes: on CUDA each new shape has a first-use cost (cuDNN's attention plans, mostly), which
    # the SmolLM2 GPU preset's end-to-end run measured (docs/gpu.md).
    pad_to_multiple_of: Optional[int] = Field(default=None, gt=0)
    packing: bool = True
    # Batches of rows of similar length (transformers' LengthGroupedSampler): little padding without
    # packing, whose padding-free batch SDPA attends under one dense block-diagonal mask.
    group_by_length: bool = False
    tokenize_procs: int = Field(default=1, ge=1, le=64)  # processes for TRL's tokenization of the train set
    # Processes that collate the next batches while the GPU trains: with a small model the step is
    # bound by the host, and collating a large batch of rows is a sizeable share of it (profile).
    dataloader_workers: int = Field(default=0, ge=0, le=64)
    # Loss on the answer (and its end-of-turn) only; false trains on the prompt's schema and question too,
    # which spends the model's capacity on predicting CREATE TABLE text it is always given.
    completion_only_loss: bool = True
    # Loss on the end-of-turn token that closes every answer: it is how the model learns to stop.
    # false masks it out of the labels, the classic pad-equals-EOS bug, kept only as the measured
    # ablation of EOS handling (docs/gpu.md); it makes models worse.
    end_of_turn_loss: bool = True
    gradient_checkpointing: bool = False
    # With checkpointing on, recompute only every n-th decoder layer and keep the others'
    # activations: spends spare memory on speed (1 = every layer, the least memory).
    checkpoint_every_n_layers: int = Field(default=1, ge=1)
    # Liger's Triton kernels for RMSNorm, SwiGLU and RoPE (less memory, fewer launches). auto = on
    # when CUDA is present and liger_kernel imports. TRL already fuses the LM head and loss.
    use_liger_kernel: _or_auto(bool, "true, false") = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    optim: str = "adamw_torch"
    logging_steps: int = Field(default=5, gt=0)
    save_steps: int = Field(default=50, gt=0)
    save_total_limit: int = Field(default=2, gt=0)

    @model_validator(mode="after")
    def _batch_shape(self):
        if self.per_device_batch_size * self.max_length >= BATCH_TOKEN_LIMIT:
            raise ValueError(f"per_device_batch_size x max_length ({self.per_device_batch_size} x {self.max_length}) "
                             f"must stay below 2**31 tokens, the most one batch can index (TRL's int32 offsets); "
                             "lower one of them")
        # Every batch would be padded past max_length: memory for nothing, and positions past the
        # model's range.
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of > self.max_length:
            raise ValueError(f"pad_to_multiple_of ({self.pad_to_multiple_of}) exceeds max_length ({self.max_length}); "
                             "use a divisor of max_length such as 64, or null")
        return self


class LauncherParams(_Strict):
    # More than one process: the train stage re-execs under `accelerate launch` (sqltune.launch).
    # auto = one per visible CUDA GPU. The global batch is per_device_batch_size x grad-accum x this.
    num_processes: _or_auto(int, "a number of processes (1 or more)", lo=1) = 1
    strategy: Literal["ddp", "fsdp"] = "ddp"  # ddp: a model copy per GPU; fsdp: sharded (FSDP-QLoRA)
    fsdp_offload_params: bool = False  # fsdp only: keep sharded weights in CPU RAM
    # Several machines (docs/multi-node.md): num_processes stays per machine. Each `auto` is read
    # from the environment (NNODES/NODE_RANK/MASTER_ADDR/MASTER_PORT, else SLURM's), so one
    # params.yaml serves every node; a value given here wins over the environment.
    num_machines: _or_auto(int, "a number of machines (1 or more)", lo=1) = 1
    machine_rank: _or_auto(int, "this machine's rank (0 on the main machine)", lo=0) = "auto"
    main_address: str = "auto"  # machine 0's host name or IP address
    main_port: _or_auto(int, "a TCP port from 1 to 65535", lo=1, hi=65535) = "auto"
    # How long the machines wait for each other: to join, and in any one collective. A node gone
    # silent for this long (dead, unreachable) ends the stage on the others with an error naming it.
    peer_timeout_s: float = Field(default=600.0, gt=0, le=86_400)

    # Only these settings shape what a run computes and saves, besides the world size (machines x
    # processes), which the checkpoint fingerprint holds itself; the rendezvous and timeouts differ
    # per node or per attempt, and a checkpoint resumes under any of them.
    RUN_SHAPING: ClassVar[tuple[str, ...]] = ("strategy", "fsdp_offload_params")

    @field_validator("main_address")
    @classmethod
    def _host(cls, value: str) -> str:
        # torchrun joins host and port as host:port, so the host holds no colon, space or slash.
        if value != "auto" and not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
            raise ValueError("must be a host name or IPv4 address (letters, digits, - _ .), or 'auto'")
        return value

    @model_validator(mode="after")
    def _rank_below_count(self):
        if isinstance(self.num_machines, int) and isinstance(self.machine_rank, int) \
                and self.machine_rank >= self.num_machines:
            raise ValueError(f"machine_rank {self.machine_rank} must be below num_machines {self.num_machines} "
                             "(ranks count from 0)")
        return self


class TrainParams(_Strict):
    # lora: a LoRA adapter on full-precision base weights; qlora: the same on 4-bit NF4 base weights
    # (bitsandbytes, CUDA; the quantization section); full: every weight trains, kept in fp32 under
    # mixed precision, and the lora section is not used. A full fine-tune needs about 16 bytes per
    # parameter of GPU memory (weights, gradients, AdamW's two moments): a small model's method.
    method: Literal["lora", "qlora", "full"] = "lora"
    quantization: QuantizationParams = QuantizationParams()
    lora: LoraParams
    trainer: TrainerParams
    launcher: LauncherParams = LauncherParams()

    @model_validator(mode="after")
    def _fsdp_storage_dtype(self):
        # FSDP shards flat tensors of one dtype: the 4-bit storage must match the weights' dtype.
        q, precision = self.quantization, self.trainer.precision
        match = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}[q.compute_dtype]
        if self.launcher.strategy == "fsdp" and self.method == "qlora" and precision not in ("auto", match):
            raise ValueError(f"launcher.strategy fsdp with 4-bit needs trainer.precision {match} or auto "
                             f"(= quantization.compute_dtype {q.compute_dtype}, the storage dtype FSDP shards)")
        return self

    @model_validator(mode="after")
    def _full_without_fsdp(self):
        # sqltune's FSDP setup is PEFT's FSDP-QLoRA one (frozen 4-bit weights in flat params of their
        # own, LoRA-aware wrapping); sharding a full fine-tune is another setup, not built.
        if self.method == "full" and self.launcher.strategy == "fsdp":
            raise ValueError("method full trains with launcher.strategy ddp (a model copy per GPU); fsdp here "
                             "shards LoRA and QLoRA runs only")
        return self

    @property
    def peft(self) -> bool:
        """True when the run trains a LoRA adapter (lora, qlora), False for a full fine-tune."""
        return self.method != "full"

    @property
    def quantized(self) -> "QuantizationParams | None":
        """The 4-bit settings when the base loads in 4 bits (qlora), else None."""
        return self.quantization if self.method == "qlora" else None


class EvaluateParams(_Strict):
    max_new_tokens: int = Field(default=128, gt=0, le=4096)
    # Token budget of one generation batch: rows x (longest prompt of the batch + max_new_tokens).
    # `auto`: from the free GPU memory after loading and the model's KV-cache bytes per token
    # (sqltune.generation.token_budget); a fixed 4096 on CPU.
    batch_tokens: _or_auto(int, "a positive number of tokens", lo=1) = "auto"
    max_batch_size: int = Field(default=256, gt=0)  # cap on rows per batch, whatever the budget
    # static: a fixed-size KV cache, which lets `compile` compile (and CUDA-graph) the decoding step.
    cache: Literal["dynamic", "static"] = "dynamic"
    compile: bool = False
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # auto = bf16 on CUDA and on a CPU with bf16 units, else fp32
    limit: Optional[int] = Field(default=None, gt=0)
    score_base: bool = True
    n_databases: int = Field(default=8, gt=0, le=100)
    query_timeout_s: float = Field(default=2.0, gt=0)
    db_dir: Optional[str] = None
    # insensitive: string values compare case-blind in the synthesized databases (WikiSQL's own rule:
    # its evaluator lower-cases condition values). Exact match is unaffected.
    value_case: Literal["exact", "insensitive"] = "exact"
    # Processes that score predictions in parallel: scoring runs every query on several SQLite
    # databases, CPU-bound work that splits across cores. auto = all of them (os.cpu_count()).
    score_workers: _or_auto(int, "a number of processes from 1 to 256", lo=1, hi=256) = "auto"
    # The fine-tuned model's decoding beside greedy (whose scores are always reported): `beam` keeps
    # num_candidates beams, `sample` draws num_candidates samples at `temperature`; either way
    # execution-guided selection (sqltune.guided) picks one query per row, without the gold query.
    # Candidates decode with the dynamic cache (cache: static serves the greedy pass).
    decoding: Literal["greedy", "beam", "sample"] = "greedy"
    num_candidates: int = Field(default=4, ge=2, le=32)
    temperature: float = Field(default=0.7, gt=0, le=2.0)  # sample only
    # first: the best-ranked candidate that passes the checks and runs; vote: the largest group of
    # candidates with equal results (sqltune.guided explains both; docs/gpu.md compares them).
    selection: Literal["first", "vote"] = "first"
    # A compared text value that the question lacks but nearly holds (a letter or two off) is
    # replaced by the question's words before scoring, as predict and ask do (sqltune.snap says when).
    snap_values: bool = True

    @model_validator(mode="after")
    def _value_case_synth_only(self):
        if self.value_case == "insensitive" and self.db_dir is not None:
            raise ValueError("value_case: insensitive applies to synthesized databases only; a real database "
                             "in db_dir keeps its own collation (set value_case: exact)")
        return self

    @model_validator(mode="after")
    def _compile_needs_static_cache(self):
        if self.compile and self.cache != "static":
            raise ValueError("compile: true needs cache: static (transformers compiles only a fixed-shape cache)")
        return self


class MergeParams(_Strict):
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    parity_samples: int = Field(default=32, ge=0)


_HUB_LICENSE = re.compile(r"[a-z0-9][a-z0-9.-]{0,63}")
_LANGUAGE_CODE = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*")
_HUB_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+-]{0,63}")


def _hub_license(value: str) -> str:
    if not _HUB_LICENSE.fullmatch(value):
        raise ValueError("must be a Hub license identifier in lower case, such as apache-2.0, mit or llama3.1 "
                         "(other for a custom license)")
    return value


def _list_of(what: str, pattern: re.Pattern, example: str, at_least_one: bool):
    """A YAML list of distinct strings that each match ``pattern``, checked up front so that a bad
    value gets one message naming the fix (not one per element and rule)."""

    def check(v):
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ValueError(f"must be a list of {what}, such as {example}")
        bad = [x for x in v if not pattern.fullmatch(x)]
        if bad:
            raise ValueError(f"{', '.join(map(repr, bad))}: not {what}; write them like {example}")
        repeated = sorted({x for x in v if v.count(x) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(repeated)} more than once; keep one of each")
        if at_least_one and not v:
            raise ValueError(f"needs at least one of the {what}, such as {example}")
        return v

    return Annotated[list[str], BeforeValidator(check)]


class CardParams(_Strict):
    """What the model cards declare beyond what the run itself determines (base, data, scores)."""

    # Every sqltune card (and the READMEs that train and merge write) carries these, and `lora` where
    # LoRA trained it (train.method lora, qlora); `tags` adds to them.
    BASE_TAGS: ClassVar[tuple[str, ...]] = ("text-to-sql", "sql", "sqltune")
    LORA_TAG: ClassVar[str] = "lora"
    # How a model derives from its base (the Hub's base_model_relation) -> the library that loads it:
    # a LoRA adapter, an adapter merged into the base's weights, every weight trained (full).
    LIBRARIES: ClassVar[dict[str, str]] = {"adapter": "peft", "merge": "transformers", "finetune": "transformers"}

    # The license a fine-tune inherits from its base: apache-2.0 is the embedded SmolLM2's; the
    # Llama presets say llama3.1.
    license: Annotated[str, AfterValidator(_hub_license)] = "apache-2.0"
    # The languages the model answers questions in.
    language: _list_of("language codes (ISO 639)", _LANGUAGE_CODE, "[en] or [en, fr]", at_least_one=True) = ["en"]
    # Extra Hub tags; no spaces, since the Hub's tag filter takes a tag as one word.
    tags: _list_of("tags (letters, digits and - _ . : +)", _HUB_TAG, "[spider, wikisql]", at_least_one=False) = []

    @classmethod
    def metadata(cls, base_model: str, relation: str, extra_tags: tuple[str, ...] | list[str] = (), **fields):
        """The front matter (huggingface_hub's ModelCardData) that every sqltune README and card
        starts from: the base, how this model derives from it, the library that loads it."""
        from huggingface_hub import ModelCardData

        return ModelCardData(base_model=base_model, base_model_relation=relation, library_name=cls.LIBRARIES[relation],
                             pipeline_tag="text-generation", tags=[*cls.base_tags(relation), *extra_tags], **fields)

    @classmethod
    def base_tags(cls, relation: str) -> list[str]:
        """The tags every card of a model with this base_model_relation carries."""
        return [*cls.BASE_TAGS, *([] if relation == "finetune" else [cls.LORA_TAG])]

    @field_validator("tags")
    @classmethod
    def _not_base_tags(cls, tags: list[str]) -> list[str]:
        doubled = [t for t in tags if t in (*cls.BASE_TAGS, cls.LORA_TAG)]
        if doubled:
            raise ValueError(f"{', '.join(doubled)} {'is' if len(doubled) == 1 else 'are'} set by sqltune already "
                             "(lora on the cards of LoRA runs); list only extra tags")
        return tags


class Params(_Strict):
    seed: int = Field(default=42, ge=0, lt=SEED_LIMIT)
    model: ModelParams
    prepare: PrepareParams
    train: TrainParams
    evaluate: EvaluateParams = EvaluateParams()
    merge: MergeParams = MergeParams()
    card: CardParams = CardParams()


# Pydantic's type messages say what was expected; these also say how to write it in YAML.
_TYPE_HINTS = {
    "int_type": "must be a whole number such as 8 (unquoted, no fraction)",
    "float_type": "must be a number such as 0.001 (unquoted)",
    "finite_number": "must be a finite number, not .inf or .nan",
    "bool_type": "must be true or false",
    "string_type": "must be text (quote a value that YAML reads as a number, date or boolean)",
}
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60  # a long system_prompt stays a readable part of one line


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
            got = "" if isinstance(got, dict) else f" (got {_REPR.repr(got)})"
            # A validator's own message, without pydantic's "Value error, " prefix.
            msg = str(e["ctx"]["error"]) if e["type"] == "value_error" else _TYPE_HINTS.get(e["type"], e["msg"])
            lines.append(f"  - {path}: {msg}{got}")
    return "\n".join(lines)


def scoring_settings(names: dict[str, str] | None = None, **values) -> EvaluateParams:
    """Scoring settings given outside params.yaml (the CLI, library calls), checked by
    EvaluateParams' own rules; ``names`` maps a field to what the caller calls it (a CLI flag) in
    the one-line message."""
    try:
        return EvaluateParams.model_validate(values)
    except ValidationError as err:
        problems = [line.strip()[2:] for line in _format_errors(err).splitlines()]
        for field, name in (names or {}).items():
            problems = [name + p[len(field):] if p.startswith(field + ":") else p for p in problems]
        raise SqltuneError("; ".join(problems)) from None


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
    return parse_params(_read_yaml(path), str(path))
