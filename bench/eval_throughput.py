"""Evaluation throughput: the evaluate stage's own generation path vs the reference one-by-one loop.

Builds a model of a named architecture with random weights (the cost of a decoding step does not
depend on the values; bench/train_throughput.py's ARCHS and random_model_dir), loads it the way
the evaluate stage does (`load_base_for_inference` in the evaluate dtype), and times
`sqltune.generation.generate` - length-sorted, left-padded batches sized by the evaluate params'
token budget - on prompts rendered by the project's own prompt code (sqltune.data.to_messages and
the tokenizer's chat template) from sql-create-context shaped rows. Random weights never emit EOS
on purpose, so every sample is forced to exactly --max-new new tokens (min_new_tokens).

The reference recipe runs in the same process on --ref-n prompts: batch 1, one generate call per
prompt, 4-bit NF4 weights (sqltune's loader, as train.method qlora loads them). Without CUDA or bitsandbytes that
reference is skipped with a note, and a batch-1 loop in the eval dtype stands in for it.

`--arch embedded` runs the real embedded SmolLM2-135M-Instruct on the embedded test prompts (the
default params' split) with its real EOS: what the default pipeline's evaluate stage pays on CPU.

Setups (`--setup NAME=key=value,...`, empty for the params as they are) override evaluate params
(batch_tokens, max_batch_size, cache, compile, dtype) plus the bench-only `passes` (timed passes;
the first, cold one - compilation included - is reported, later ones as warm_seconds) and
`adapter`: none | merged (a LoRA merged in memory, as the evaluate stage does) | unmerged (a
PeftModel). The LoRA is random (r=--lora-r, all linear layers) or --adapter-dir. A setup that fails
(out of memory, a compile error) is recorded with its error; the others still run.

Usage:
  python bench/eval_throughput.py --arch llama-3.1-8b --data ROWS.jsonl --tokenizer DIR \\
      --setup default= --setup bs512=max_batch_size=512 --setup static-compile=cache=static,compile=true
  python bench/eval_throughput.py --arch embedded --n 32 --ref-n 8 --setup default=
Writes bench/results/eval_throughput-<arch>[-<tag>].json (after every setup, so a run cut short
keeps what it measured) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import ARCHS, bench_tokenizer, card_name, random_model_dir  # noqa: E402

from sqltune.config import EvaluateParams, Params, QuantizationParams, load_params  # noqa: E402
from sqltune.data import build_splits, to_messages  # noqa: E402
from sqltune.generation import generate_ids, plan_batches, render_prompts, token_budget, until_eos  # noqa: E402
from sqltune.io import read_jsonl  # noqa: E402
from sqltune.modeling import (attach_adapter, load_base_for_inference,  # noqa: E402
                              load_model, load_tokenizer, resolve_model)

EMBEDDED = "embedded"
BENCH_KEYS = ("adapter", "passes")


def parse_setup(spec: str, base: EvaluateParams, default_passes: int) -> tuple[str, EvaluateParams, dict]:
    import yaml

    name, _, rest = spec.partition("=")
    updates, extra = {}, {"adapter": "none", "passes": default_passes}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        (extra if key in BENCH_KEYS else updates)[key] = yaml.safe_load(value)  # true -> True, 512 -> 512
    if extra["adapter"] not in ("none", "merged", "unmerged"):
        raise SystemExit(f"--setup {name}: adapter must be none, merged or unmerged")
    # Validated like params.yaml: a typo or a bad value stops the bench before any GPU time is spent.
    return name, EvaluateParams.model_validate({**base.model_dump(), **updates}), extra


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free_memory():
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def with_adapter(model, how: str, args):
    """A LoRA on the base: --adapter-dir, else random (init_lora_weights=False: not the identity)."""
    if how == "none":
        return model
    if args.adapter_dir:
        return attach_adapter(model, args.adapter_dir, merge=how == "merged")
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_r / 2, target_modules="all-linear",
                        init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    return peft_model.merge_and_unload() if how == "merged" else peft_model


def load_eval_model(params: Params, args, dtype: str, adapter: str, force_new: int | None):
    """The evaluate stage's loading: the base in the eval dtype (never 4-bit), then the LoRA."""
    model, _ = load_base_for_inference(params, args.model_root, dtype)
    if force_new:
        model.generation_config.min_new_tokens = force_new
    return with_adapter(model, adapter, args)


def time_generation(model, tok, prompts, e: EvaluateParams, passes: int) -> dict:
    """Wall time of the evaluate path (generate_ids, then decode as sqltune.generation.generate does)."""
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    budget = token_budget(model, e.batch_tokens)  # what generate() resolves, before its own allocations
    times = []
    for _ in range(passes):
        sync()
        t0 = time.perf_counter()
        ids = generate_ids(model, tok, prompts, e)
        [tok.decode(x, skip_special_tokens=True).strip() for x in ids]
        sync()
        times.append(time.perf_counter() - t0)
    lengths = [len(x) for x in tok(render_prompts(tok, prompts), add_special_tokens=False)["input_ids"]]
    static_row = max(lengths) + e.max_new_tokens if e.cache == "static" else None
    batches = plan_batches(lengths, e.max_new_tokens, budget, e.max_batch_size, static_row)
    new = sum(len(x) for x in ids)
    return {"samples": len(prompts), "new_tokens": new, "seconds": round(times[0], 2),
            "samples_per_s": round(len(prompts) / times[0], 2), "new_tokens_per_s": round(new / times[0], 1),
            "warm_seconds": round(min(times[1:]), 2) if passes > 1 else None,
            "batch_tokens": budget, "batches": len(batches), "max_rows": max(len(b) for b in batches),
            "mean_prompt_tokens": round(sum(lengths) / len(lengths), 1),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}


def reference_loop(model, tok, prompts, max_new: int, force: bool) -> dict:
    """The reference recipe: one prompt per generate call, greedy, same prompts and cap."""
    import torch

    kw = dict(max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id)
    if force:
        kw["min_new_tokens"] = max_new
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    texts = render_prompts(tok, prompts)
    device = next(model.parameters()).device
    encode = lambda t: tok(t, add_special_tokens=False, return_tensors="pt").to(device)  # noqa: E731
    with torch.inference_mode():
        model.generate(**encode(texts[0]), **kw)  # warm-up (CUDA context, kernel selection), untimed
        sync()
        t0, new = time.perf_counter(), 0
        for t in texts:
            enc = encode(t)
            out = model.generate(**enc, **kw)
            new += len(until_eos(out[0, enc["input_ids"].shape[1]:].tolist(), model.generation_config.eos_token_id))
        sync()
    dt = time.perf_counter() - t0
    return {"samples": len(texts), "new_tokens": new, "seconds": round(dt, 2),
            "samples_per_s": round(len(texts) / dt, 3), "new_tokens_per_s": round(new / dt, 1),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}


def run_reference(params: Params, args, tok, prompts, max_new: int, force: bool) -> dict:
    import torch

    nf4 = torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None
    if nf4:
        resolved = resolve_model(params.model, args.model_root)
        model = load_model(resolved, params.model, QuantizationParams())
        if force:
            model.generation_config.min_new_tokens = max_new
        name, note = "reference: batch 1, NF4", "one generate call per prompt on 4-bit NF4 weights"
    else:
        model = load_eval_model(params, args, "auto", "none", max_new if force else None)
        name = f"reference: batch 1, {str(model.dtype).removeprefix('torch.')}"
        note = ("4-bit NF4 reference skipped: it needs CUDA and bitsandbytes; "
                "this batch-1 loop in the eval dtype stands in for it")
        print(f"note: {note}", flush=True)
    result = {"setup": name, "note": note, **reference_loop(model, tok, prompts[: args.ref_n], max_new, force)}
    del model
    free_memory()
    return result


def prepare_inputs(args) -> tuple[Params, object, list, int]:
    """Params whose model is the bench model, its tokenizer, the prompts, and the new-token cap."""
    params = load_params(args.params or (REPO / "params.yaml" if args.arch == EMBEDDED
                                         else REPO / "presets" / "llama-3.1-8b.yaml"))
    if args.arch == EMBEDDED:
        params = params.model_copy(update={"model": params.model.model_copy(
            update={"name": "smollm2-135m-instruct", "source": "embedded"})})
        _, test, _ = build_splits(params.prepare, params.seed)
        rows = test[: args.n]
    else:
        if not args.data:
            raise SystemExit("--data ROWS.jsonl is needed for a random-weights architecture")
        model_dir = random_model_dir(args.arch, Path(args.model_root))
        tok = bench_tokenizer(args.arch, args.tokenizer)
        tok.save_pretrained(model_dir)  # beside the weights, where the stage's own loaders look
        params = params.model_copy(update={"model": params.model.model_copy(
            update={"name": str(model_dir), "source": "local", "revision": None})})
        rows = read_jsonl(args.data)[: args.n]
    tok = load_tokenizer(resolve_model(params.model, args.model_root), params.model.revision)
    max_new = args.max_new or (params.evaluate.max_new_tokens if args.arch == EMBEDDED else 48)
    params = params.model_copy(update={"evaluate": params.evaluate.model_copy(update={"max_new_tokens": max_new})})
    prompts = [to_messages(r, params.prepare.system_prompt)["prompt"] for r in rows]
    return params, tok, prompts, max_new


def add_ratios(results: list[dict]) -> None:
    ref = next((r for r in results if r["setup"].startswith("reference")), None)
    base = ref.get("samples_per_s") if ref else None
    for r in results:
        ok = base and r.get("samples_per_s")
        r["vs_reference"] = round(r["samples_per_s"] / base, 1) if ok else None


def write_report(args, card: str, max_new: int, results: list[dict]) -> Path:
    add_ratios(results)
    report = {"card": card, "arch": args.arch, "samples": args.n, "max_new_tokens": max_new,
              "forced_length": args.arch != EMBEDDED, "tokenizer": args.tokenizer or "embedded SmolLM2",
              "results": results}
    out = Path(args.out) / f"eval_throughput-{args.arch}{'-' + args.tag if args.tag else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return out


def print_table(card: str, args, results: list[dict]) -> None:
    print(f"\n{card}, {args.arch}, {args.n} samples\n"
          "| setup | samples/s | new tok/s | s per 1000 samples | warm s | x reference | max rows | budget tokens "
          "| peak GiB |\n|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if r.get("samples_per_s") is None:
            print(f"| {r['setup']} | {r.get('error') or r.get('note')} | | | | | | | |")
            continue
        print(f"| {r['setup']} | {r['samples_per_s']:,} | {r['new_tokens_per_s']:,} | "
              f"{1000 / r['samples_per_s']:,.1f} | {r.get('warm_seconds') or ''} | {r['vs_reference'] or ''} | "
              f"{r.get('max_rows', 1)} | {r.get('batch_tokens', '')} | {r.get('peak_gib') or ''} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(ARCHS) + [EMBEDDED], default="llama-3.1-8b")
    ap.add_argument("--data", help="sql-create-context shaped JSONL (question/context/answer)")
    ap.add_argument("--tokenizer", help="tokenizer folder (default: the embedded model's, from its GGUF)")
    ap.add_argument("--params", help="params file for the evaluate defaults and the system prompt")
    ap.add_argument("--setup", action="append", default=[], help="NAME=key=value,... (evaluate params or adapter)")
    ap.add_argument("--n", type=int, default=1000, help="prompts per setup")
    ap.add_argument("--ref-n", type=int, default=16, help="prompts for the one-by-one reference loop (0: skip)")
    ap.add_argument("--max-new", type=int, help="new tokens per sample (default 48; embedded: evaluate.max_new_tokens)")
    ap.add_argument("--passes", type=int, default=1,
                    help="timed passes per setup (or passes=N in a setup); the first, cold, is the one reported")
    ap.add_argument("--lora-r", type=int, default=256, help="rank of the random LoRA of adapter=merged|unmerged")
    ap.add_argument("--adapter-dir", help="a real adapter instead of the random LoRA")
    ap.add_argument("--model-root", default="/tmp/sqltune-bench-models")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--tag", help="suffix of the result file name, to keep several runs apart")
    args = ap.parse_args()

    params, tok, prompts, max_new = prepare_inputs(args)
    force = max_new if args.arch != EMBEDDED else None
    setups = [parse_setup(s, params.evaluate, args.passes) for s in args.setup or ["default="]]
    card, results = card_name(), []
    if args.ref_n:
        results.append(guarded("reference", lambda: run_reference(params, args, tok, prompts, max_new, bool(force))))
        write_report(args, card, max_new, results)
    model, key = None, None
    for name, e, extra in setups:
        if key != (e.dtype, extra["adapter"]):
            model = None
            free_memory()
            model = guarded(name, lambda: load_eval_model(params, args, e.dtype, extra["adapter"], force))
            key = (e.dtype, extra["adapter"])
        if isinstance(model, dict):  # the load itself failed (out of memory for an fp32 copy, say)
            result, key = model, None
        else:
            result = guarded(name, lambda: {"setup": name, **time_generation(model, tok, prompts, e, extra["passes"])})
        result["settings"] = {**e.model_dump(include={"batch_tokens", "max_batch_size", "cache", "compile", "dtype"}),
                              **extra}
        if e.compile or "error" in result:
            # A compiled model holds graphs and CUDA-graph memory, and a failed one may hold
            # anything: the next setup starts from a freshly loaded model.
            import torch

            torch._dynamo.reset()
            key = None
        results.append(result)
        print(json.dumps(result), flush=True)
        write_report(args, card, max_new, results)
    out = write_report(args, card, max_new, results)
    print_table(card, args, results)
    print(f"\nwrote {out}")


def guarded(name: str, fn):
    """Run one setup; an out-of-memory or any other failure becomes a recorded result."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - one setup's failure must not lose the others' numbers
        traceback.print_exc()
        oom = "out of memory" in str(exc).lower()
        failed = {"setup": name, "oom": oom,
                  "error": "out of memory" if oom else f"{type(exc).__name__}: {str(exc)[:300]}"}
    free_memory()  # after the except block: the traceback no longer pins the failed step's tensors
    return failed


if __name__ == "__main__":
    main()
