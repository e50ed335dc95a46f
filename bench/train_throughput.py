"""Training throughput: the train stage's own code path vs the reference recipe.

Builds a model of a named architecture with random weights (the cost of a step does not depend on
the values), loads it through sqltune's own loader (4-bit NF4 when the params ask), and runs
`sqltune.training.build_trainer` - the train stage's SFTTrainer, collator and config - for
--warmup + --steps steps per run. Real tokens are the non-padding tokens the collator hands the model.

Method: each setup runs --rounds times, each run in a fresh Python process, the setups interleaved
round by round (A B C, A B C, ...), so that no setup inherits another's compiled kernels, allocator
state or autotuning, and a drift of the machine hits every setup alike. The JSON and the table give
the median of the runs with min and max; --in-process runs each setup once in this process instead.

MFU = real tokens/s x FLOP/token / peak, with FLOP/token = 8 x N (forward 2N, recompute under
gradient checkpointing 2N, backward 4N; frozen base weights still need activation gradients, so
QLoRA saves no FLOPs there) or 6 x N without checkpointing; attention FLOPs are left out.
Peak: 989 TFLOP/s dense bf16 on an H100 SXM.

Usage:
  python bench/train_throughput.py --arch llama-3.1-8b --data ROWS.jsonl \
      --setup reference=presets/llama-3.1-8b.yaml:packing=false,per_device_batch_size=1 \
      --setup preset=presets/80gb.yaml --rounds 3 --steps 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqltune.config import parse_params  # noqa: E402
from sqltune.data import to_messages  # noqa: E402
from sqltune.io import read_jsonl  # noqa: E402

ARCHS = {
    "llama-3.1-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                         rope_theta=500000.0, tie_word_embeddings=False),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_theta=100000.0, tie_word_embeddings=True),
}
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}


def random_model_dir(arch: str, root: Path) -> Path:
    """Random weights saved once as a normal HF folder, so sqltune's loader (and 4-bit) applies."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = root / arch
    if (out / "config.json").is_file():
        return out
    cfg = LlamaConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2, **ARCHS[arch])
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out, max_shard_size="20GB")
    return out


def count_params(config) -> int:
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):  # 4-bit weights pack two values per byte; count the architecture's
        return sum(p.numel() for p in LlamaForCausalLM(config).parameters())


# Setup-only switches that are not params: `kbit_prepare` runs PEFT's prepare_model_for_kbit_training
# as older QLoRA recipes do (it upcasts the embedding, norms and head to fp32), to measure its cost.
# `lora_input_cast` turns PEFT's cast of each LoRA input to fp32 back on (the stage turns it off
# under autocast), to compare with what the stage ran before.
# `sft.NAME=value` sets an SFTConfig field the params don't expose (say sft.dataloader_num_workers=4),
# to measure a lever before it becomes a param.
# `sdp_backends=efficient+flash` limits SDPA to those kernels (torch.nn.attention.sdpa_kernel) for the
# setup: the profile shows cuDNN's attention costing about 2 ms of host time a call.
# `dense_lm_head` projects every position through the LM head, labelled or not, as TRL does off CUDA
# (sqltune projects only the labelled ones: sqltune.training.head_on_labelled_positions).
BENCH_KEYS = ("kbit_prepare", "lora_input_cast", "sdp_backends", "dense_lm_head")


def apply_overrides(data: dict, spec: str) -> tuple[dict, dict]:
    extra = {}
    for item in filter(None, spec.split(",")):
        key, value = item.split("=", 1)
        value = value == "true" if value in ("true", "false") else json.loads(value) if value[:1] in "0123456789-[{" else value
        if key in BENCH_KEYS or key.startswith("sft."):
            extra[key] = value
            continue
        from sqltune.config import LoraParams, ModelParams, TrainerParams

        sections = ((data["train"]["trainer"], TrainerParams), (data["train"]["lora"], LoraParams),
                    (data["model"], ModelParams))
        section = next((s for s, cls in sections if key in cls.model_fields), None)
        if section is None:
            raise SystemExit(f"--setup: unknown key {key!r}")
        section[key] = value
    return data, extra


class TokenCounter:
    """Wraps the trainer's training step: counts the real (non-padding) tokens of each batch, and all
    positions. Counted at the step, not in the collator, which runs in dataloader workers when there
    are any; kept on the device, so counting adds no sync."""

    def __init__(self, step):
        self.step, self.tokens, self.positions = step, 0, 0

    def __call__(self, model, inputs, *args, **kwargs):
        mask = inputs.get("attention_mask")  # absent when padding-free: every token is real
        self.tokens = self.tokens + (mask.sum() if mask is not None else inputs["input_ids"].numel())
        self.positions += inputs["input_ids"].numel()
        return self.step(model, inputs, *args, **kwargs)


def write_profile(prof, wall_s: float, out_dir: str, name: str) -> None:
    """Two steps' kernel and operator tables, and how much of the wall time the GPU was busy: a
    GPU busy far less than the wall means the host (Python, launches, syncs, data) is the limit."""
    import gzip

    from torch.autograd import DeviceType

    events = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = (f"{name}: 2 steps, wall {wall_s * 1e3:.1f} ms, GPU kernels {gpu_us / 1e3:.1f} ms "
            f"({gpu_us / 1e6 / wall_s:.0%} busy)\n\n"
            + events.table(sort_by="self_device_time_total", row_limit=45, max_name_column_width=70) + "\n\n"
            + events.table(sort_by="cpu_time_total", row_limit=45, max_name_column_width=70) + "\n")
    (out / f"profile-{name}.txt").write_text(text)
    trace = out / f"trace-{name}.json"
    prof.export_chrome_trace(str(trace))
    with open(trace, "rb") as src, gzip.open(f"{trace}.gz", "wb") as dst:
        dst.write(src.read())
    trace.unlink()
    print(text[:200], flush=True)


def sdp_backends(spec: str | None):
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not spec:
        return contextlib.nullcontext()
    names = {"efficient": SDPBackend.EFFICIENT_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    return sdpa_kernel([names[n] for n in spec.split("+")])


def run_setup(name, params, model_dir, tok, rows, steps, warmup, extra=None, profile=False, **overrides):
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    from sqltune.modeling import ResolvedModel, load_model
    from sqltune.training import build_trainer, head_on_labelled_positions, keep_lora_inputs

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    tp = params.train.trainer
    model = load_model(ResolvedModel(str(model_dir), "local"), params.model, params.train.quantized, tp.precision,
                       full=not params.train.peft, packed=tp.packing)
    if (extra or {}).get("kbit_prepare"):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(tp.gradient_checkpointing))
    data = Dataset.from_list([to_messages(r, params.prepare.system_prompt) for r in rows])
    marks = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            if state.global_step == warmup:
                marks["t0"], marks["tok0"] = time.perf_counter(), int(counter.tokens)
            if state.global_step == warmup + steps:
                marks["t1"], marks["tok1"] = time.perf_counter(), int(counter.tokens)
                control.should_training_stop = not profile
            # Profiled after the timed steps: the profiler's own overhead stays out of the numbers
            if profile and state.global_step == warmup + steps:
                acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
                marks["prof"] = torch.profiler.profile(activities=acts)
                marks["prof"].__enter__()
                marks["prof_t0"] = time.perf_counter()
            if profile and state.global_step == warmup + steps + 2:
                marks["prof"].__exit__(None, None, None)
                write_profile(marks.pop("prof"), time.perf_counter() - marks["prof_t0"], profile, name)
                control.should_training_stop = True

    sft = {k[4:]: v for k, v in (extra or {}).items() if k.startswith("sft.")}
    trainer = build_trainer(params, model, tok, data, f"/tmp/bench-{name}", callbacks=[Clock()],
                            max_steps=warmup + steps + (2 if profile else 0), **sft, **overrides)  # < save_steps: no checkpoint is written
    if (extra or {}).get("lora_input_cast"):
        keep_lora_inputs(trainer.model, keep=False)
    head_on_labelled_positions(not (extra or {}).get("dense_lm_head"))
    counter = TokenCounter(trainer.training_step)
    trainer.training_step = counter
    with sdp_backends((extra or {}).get("sdp_backends")):
        trainer.train()
    tok_s = (marks["tok1"] - marks["tok0"]) / (marks["t1"] - marks["t0"])
    pos = counter.positions
    n_params = count_params(model.config)
    result = {
        "setup": name, "real_tokens_per_s": round(tok_s, 1), "steps_per_s": round(steps / (marks["t1"] - marks["t0"]), 3),
        "real_token_fraction": round(int(counter.tokens) / pos, 3) if pos else None,
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
        "flop_per_token": (8 if tp.gradient_checkpointing else 6) * n_params,
        "settings": {**tp.model_dump(), **(extra or {}), "lora_r": params.train.lora.r,
                     "method": params.train.method,
                     "attn": model.config._attn_implementation},
    }
    del trainer, model
    if cuda:
        torch.cuda.empty_cache()
    return result


def bench_tokenizer(arch: str, folder: str | None = None):
    """The tokenizer the benches prompt with: a folder, else the embedded model's (from its GGUF).
    The token counts approximate the architecture's own tokenizer."""
    from transformers import AutoTokenizer

    from sqltune.modeling import PLAIN_CHAT_TEMPLATE, embedded_gguf

    if folder:
        tok = AutoTokenizer.from_pretrained(folder)
    else:
        gguf = embedded_gguf("smollm2-135m-instruct")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if arch != "smollm2-135m":
        tok.chat_template = PLAIN_CHAT_TEMPLATE  # base models (Llama) ship none; sqltune gives them this one
    return tok


def card_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def write_report(results: list[dict], args) -> str:
    """Ratios and MFU, written after every setup so a run cut short keeps what it measured."""
    card = card_name()
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in card), None)
    base = results[0]["real_tokens_per_s"]
    for r in results:
        ok = r["real_tokens_per_s"] is not None and base is not None
        r["vs_baseline"] = round(r["real_tokens_per_s"] / base, 2) if ok else None
        r["mfu"] = round(r["real_tokens_per_s"] * r["flop_per_token"] / (peak * 1e12), 4) if ok and peak else None
    report = {"card": card, "arch": args.arch, "steps": args.steps, "warmup": args.warmup,
              "rounds": 1 if args.in_process else args.rounds,
              "method": "every setup in one process" if args.in_process else
                        "a fresh process per run, setups interleaved round by round; median with min and max",
              "tokenizer": "SmolLM2 (token counts approximate the model's own)", "results": results}
    out = Path(args.out) / f"train_throughput-{args.arch}{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return card


RESULT_MARK = "BENCH-RESULT "


def one_setup(spec: str, args, model_dir: Path, tok, rows: list[dict]) -> dict:
    """One setup, measured once in this process; a failure is a result too."""
    import yaml

    name, rest = spec.split("=", 1)
    path, _, overrides = rest.partition(":")
    data, extra = apply_overrides(yaml.safe_load(Path(path).read_text()), overrides)
    params = parse_params(data, path)
    try:
        return run_setup(name, params, model_dir, tok, rows, args.steps, args.warmup, extra,
                         profile=args.out if name in args.profile else None)
    except Exception as exc:  # noqa: BLE001 - OOM is a result for a memory policy; any failure of one
        # setup (a kernel that won't build) is recorded so the other setups' numbers survive
        import gc
        import traceback

        import torch

        traceback.print_exc()
        gc.collect()
        torch.cuda.empty_cache()
        oom = "out of memory" in str(exc)
        return {"setup": name, "real_tokens_per_s": None, "oom": oom,
                "error": None if oom else f"{type(exc).__name__}: {str(exc)[:300]}"}


def fresh_process_run(spec: str, argv: list[str]) -> dict:
    """The setup measured in a new Python process, so no setup inherits another's compiled kernels,
    allocator state or autotuning: what a training run starting cold gets."""
    import subprocess

    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--only", spec]
    done = subprocess.run(cmd, capture_output=True, text=True)
    sys.stderr.write(done.stderr[-4000:])
    lines = [x for x in done.stdout.splitlines() if x.startswith(RESULT_MARK)]
    if not lines:
        name = spec.split("=", 1)[0]
        return {"setup": name, "real_tokens_per_s": None, "oom": False,
                "error": f"the bench process exited with {done.returncode} and no result"}
    return json.loads(lines[-1][len(RESULT_MARK):])


def summarize_runs(runs: list[dict]) -> dict:
    """A setup's rounds: the median run's numbers, with min and max of tokens/s and the runs."""
    import statistics

    ok = [r for r in runs if r.get("real_tokens_per_s") is not None]
    if not ok:
        return {**runs[-1], "runs": runs}
    speeds = [r["real_tokens_per_s"] for r in ok]
    median = statistics.median(speeds)
    middle = min(ok, key=lambda r: abs(r["real_tokens_per_s"] - median))
    peaks = [r["peak_reserved_gib"] for r in ok if r.get("peak_reserved_gib") is not None]
    return {**middle, "real_tokens_per_s": round(median, 1), "min_tokens_per_s": min(speeds),
            "max_tokens_per_s": max(speeds), "peak_reserved_gib": max(peaks) if peaks else None,
            "rounds": len(ok), "failed_rounds": len(runs) - len(ok),
            "runs": [{k: r.get(k) for k in ("real_tokens_per_s", "steps_per_s", "peak_gib", "peak_reserved_gib",
                                            "error")} for r in runs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="llama-3.1-8b")
    ap.add_argument("--data", required=True, help="sql-create-context shaped JSONL (question/context/answer)")
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--setup", action="append", default=[],
                    help="NAME=PARAMS.yaml[:key=value,...]; the first one is the baseline for ratios")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per run, after --warmup")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs per setup, each in a fresh process, the setups interleaved round by round")
    ap.add_argument("--in-process", action="store_true",
                    help="one round, every setup in this process (quick; later setups reuse warm state)")
    ap.add_argument("--only", help=argparse.SUPPRESS)  # a fresh process's one setup
    ap.add_argument("--model-root", default="/tmp/sqltune-bench-models")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--tag", default="", help="suffix of the results file name")
    ap.add_argument("--profile", action="append", default=[],
                    help="profile two steps of this setup: tables and a trace under --out")
    ap.add_argument("--tokenizer", help="tokenizer folder (default: the embedded model's, from its GGUF)")
    args = ap.parse_args()
    if not args.setup and not args.only:
        ap.error("give at least one --setup")

    model_dir = random_model_dir(args.arch, Path(args.model_root))
    if args.only or args.in_process:
        tok = bench_tokenizer(args.arch, args.tokenizer)
        rows = read_jsonl(args.data)[: args.rows]
    if args.only:
        print(RESULT_MARK + json.dumps(one_setup(args.only, args, model_dir, tok, rows)), flush=True)
        return
    if args.in_process:
        results = []
        for spec in args.setup:
            results.append(one_setup(spec, args, model_dir, tok, rows))
            print(json.dumps(results[-1]), flush=True)
            write_report(results, args)
    else:
        runs: dict[str, list[dict]] = {spec: [] for spec in args.setup}
        for k in range(args.rounds):
            for spec in args.setup:
                runs[spec].append(fresh_process_run(spec, sys.argv[1:]))
                r = runs[spec][-1]
                print(f"round {k + 1}/{args.rounds} {r['setup']}: {r.get('real_tokens_per_s')} real tok/s", flush=True)
                write_report([summarize_runs(v) for v in runs.values() if v], args)
        results = [summarize_runs(v) for v in runs.values()]
    card = write_report(results, args)
    print(f"\n{card}, {args.arch}\n| setup | real tok/s: median (min-max) | x baseline | MFU | peak reserved GiB |"
          "\n|---|---|---|---|---|")
    for r in results:
        if r["real_tokens_per_s"] is None:
            print(f"| {r['setup']} | {'out of memory' if r.get('oom') else 'failed: ' + str(r.get('error'))[:60]} | | | |")
            continue
        spread = f" ({r['min_tokens_per_s']:,.0f}-{r['max_tokens_per_s']:,.0f})" if "min_tokens_per_s" in r else ""
        print(f"| {r['setup']} | {r['real_tokens_per_s']:,.0f}{spread} | {r['vs_baseline']} | {r['mfu']} | "
              f"{r.get('peak_reserved_gib')} |")


if __name__ == "__main__":
    main()
