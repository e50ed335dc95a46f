"""GPU check of the train stage's multi-process path, for DDP and FSDP-QLoRA on N GPUs.

For each strategy it runs `sqltune.training.train` exactly as stages/train.py does (the same
`launch_if_asked`, so the same `accelerate launch` flags) on a small random Llama loaded in 4-bit:
  1. starts it, waits for the first checkpoint, then sends SIGINT to the stage's process group (what
     Ctrl-C does): every process must stop at one step, save a checkpoint together, exit 130;
  2. reruns it: it must resume from that checkpoint (FSDP: sharded folders) and finish;
  3. checks the single adapter it wrote: LoRA tensors, trained (lora_B not all zero), finite.
dvclive is stubbed when it is not installed (the GPU box may have only the training stack).
Writes bench/results/launch_check.json and prints one line per strategy.

Usage: python bench/launch_check.py --data ROWS.jsonl --tokenizer TOKENIZER_DIR [--gpus 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STAGE_ARGS = ["--data", "train.jsonl", "--adapter", "adapter", "--checkpoints", "checkpoints", "--live", "live",
              "--base-cache", "base"]


def stage_main() -> None:
    """stages/train.py's main, with dvclive optional."""
    import importlib.util

    from sqltune import training
    from sqltune.config import load_params
    from sqltune.errors import run_main
    from sqltune.launch import launch_if_asked

    def main():
        params = load_params("params.yaml")
        launch_if_asked(params.train, Path(__file__).resolve(), ["--stage", *sys.argv[1:]])
        if importlib.util.find_spec("dvclive") is None:
            from transformers import TrainerCallback

            training.dvclive_callback = lambda *a, **k: TrainerCallback()
        summary = training.train(params, "train.jsonl", "adapter", "checkpoints", "live", "base",
                                 lambda m: print(f"train: {m}", file=sys.stderr, flush=True))
        if summary["main_process"]:
            print(f"train: done at step {summary['global_step']} on {summary['world_size']} processes", flush=True)

    run_main(main)


def make_project(root: Path, strategy: str, args) -> Path:
    import yaml

    from sqltune.config import parse_params
    from sqltune.data import to_messages
    from sqltune.io import read_jsonl

    proj = root / strategy
    shutil.rmtree(proj, ignore_errors=True)
    proj.mkdir(parents=True)
    d = yaml.safe_load((REPO / "params.yaml").read_text())
    d["model"].update(name=str(tiny_model(root, args.tokenizer)), source="local", attn_implementation="sdpa")
    d["train"]["method"] = "lora" if args.no_4bit else "qlora"
    d["train"]["launcher"] = {"num_processes": args.gpus, "strategy": strategy}
    d["train"]["trainer"].update(epochs=2, max_length=256, per_device_batch_size=2, save_steps=5, logging_steps=5,
                                 precision="fp32" if args.no_4bit else "bf16", save_total_limit=3)
    (proj / "params.yaml").write_text(yaml.safe_dump(d))
    prompt = parse_params(d).prepare.system_prompt
    rows = read_jsonl(args.data)[: args.rows]
    (proj / "train.jsonl").write_text("".join(json.dumps({**r, **to_messages(r, prompt)}) + "\n" for r in rows))
    return proj


def tiny_model(root: Path, tokenizer: str) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = root / "tiny-llama"
    if (out / "config.json").is_file():
        return out
    tok = AutoTokenizer.from_pretrained(tokenizer)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def run_stage(proj: Path, interrupt_after: int | None, timeout: int) -> tuple[int | str, str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", *STAGE_ARGS]
    log = open(proj / f"log-{'interrupted' if interrupt_after else 'rerun'}.txt", "w")
    proc = subprocess.Popen(cmd, cwd=proj, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    end = time.time() + timeout
    try:
        if interrupt_after:
            ckpt = proj / "checkpoints" / f"checkpoint-{interrupt_after}" / "trainer_state.json"
            while not ckpt.is_file() and proc.poll() is None and time.time() < end:
                time.sleep(0.05)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=max(end - time.time(), 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        rc = "timeout"
    return rc, Path(log.name).read_text(errors="replace")


def check(strategy: str, args) -> dict:
    proj = make_project(Path(args.scratch), strategy, args)
    rc1, log1 = run_stage(proj, 5, args.timeout)
    saved = sorted(int(p.name.split("-")[1]) for p in (proj / "checkpoints").glob("checkpoint-*"))
    files = sorted(str(p.relative_to(proj / "checkpoints")) for p in (proj / "checkpoints").glob("checkpoint-*/*"))
    rc2, log2 = run_stage(proj, None, args.timeout)
    resumed = next((line[line.index("train: resuming"):] for line in log2.splitlines() if "train: resuming" in line),
                   None)
    result = {"strategy": strategy, "interrupt_rc": rc1, "checkpoints_after_interrupt": saved,
              "interrupt_message": "interrupted; a checkpoint is saved" in log1, "rerun_rc": rc2,
              "resumed": resumed, "done": next((x for x in log2.splitlines() if "train: done" in x), None),
              "checkpoint_files": files[-12:], "adapter": adapter_summary(proj / "adapter")}
    result["ok"] = (rc1 == 130 and result["interrupt_message"] and saved and saved[-1] > 5 and rc2 == 0
                    and resumed is not None and result["adapter"].get("ok", False))
    if not result["ok"]:
        result["log_tail"] = (log1.splitlines()[-15:], log2.splitlines()[-15:])
    return result


def adapter_summary(adapter: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    f = adapter / "adapter_model.safetensors"
    if not f.is_file():
        return {"ok": False, "error": "no adapter_model.safetensors"}
    t = load_file(str(f))
    b = [v for k, v in t.items() if "lora_B" in k]
    trained = any(float(v.abs().max()) > 0 for v in b)
    finite = all(bool(torch.isfinite(v.float()).all()) for v in t.values())
    return {"ok": bool(b) and trained and finite, "tensors": len(t), "lora_B_trained": trained, "finite": finite}


def main() -> None:
    if "--stage" in sys.argv:
        sys.argv.remove("--stage")
        return stage_main()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--strategies", default="ddp,fsdp")
    ap.add_argument("--timeout", type=int, default=150, help="seconds per stage run")
    ap.add_argument("--no-4bit", action="store_true", help="full precision (a CPU smoke test of this script)")
    ap.add_argument("--scratch", default="/tmp/sqltune-launch-check")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "launch_check.json"))
    args = ap.parse_args()
    results = []
    for strategy in args.strategies.split(","):
        try:
            results.append(check(strategy, args))
        except Exception as exc:  # noqa: BLE001 - one strategy's failure must not lose the other's result
            results.append({"strategy": strategy, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]})
        print(json.dumps(results[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"gpus": args.gpus, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
