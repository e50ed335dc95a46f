"""Multi-GPU training: 1 GPU vs N GPUs (DDP), and FSDP-QLoRA's memory per GPU, in one run.

Each run is a separate process tree, started the way the train stage starts it: the 1-GPU baseline
as a plain process on GPU 0, DDP and FSDP through `accelerate launch` with the flags
`sqltune.launch` builds from `train.launcher`. Every process runs `bench/train_throughput.py`'s
`run_setup` (the stage's own `build_trainer`, on a random-weight model of the named shape, 4-bit
when the preset asks) and writes its own numbers; this script sums them:

  tokens/s (N GPUs)   = sum over processes of the real tokens each trained per second
  per GPU             = that / N
  scaling efficiency  = tokens/s (N GPUs) / (N x tokens/s on 1 GPU), same per-GPU micro-batch

A run that runs out of memory, fails or exceeds --run-timeout is recorded as such; the others
still report. Results: bench/results/train_scaling-ARCH.json (runs merged by name, so runs can be
done in several calls) and a markdown table on stdout.

Usage (2 GPUs):
  python bench/train_scaling.py --arch llama-3.1-8b --data ROWS.jsonl --tokenizer TOKENIZER_DIR \\
      --preset presets/80gb.yaml --fsdp-preset presets/80gb.yaml --gpus 2 --steps 6 --warmup 2
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

RUNS = ("single", "ddp", "fsdp")


def load_params_with(preset: str, **launcher):
    import yaml

    from sqltune.config import parse_params
    from train_throughput import apply_overrides

    path, _, overrides = preset.partition(":")
    data, _ = apply_overrides(yaml.safe_load(Path(path).read_text()), overrides)
    data["train"]["launcher"] = {**data["train"].get("launcher", {}), **launcher}
    return parse_params(data, path)


# --- one process of a run -----------------------------------------------------------------------


def worker(args) -> None:
    """One process: the stage's trainer for warmup + steps; writes rank<k>.json, even on failure."""
    import torch

    from sqltune import launch
    from sqltune.training import process_state
    from train_throughput import random_model_dir, run_setup

    launch.die_with_parent()
    state = process_state()  # process group and this process's GPU, before the model loads
    rank, out = state.process_index, Path(args.result_dir)
    params = load_params_with(args.preset)
    tok, rows = tokenizer_and_rows(args)
    record = {"rank": rank, "world_size": state.num_processes,
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    try:
        r = run_setup(args.run, params, random_model_dir(args.arch, Path(args.model_root)), tok, rows,
                      args.steps, args.warmup, **launch.trainer_overrides())
        record.update(r)
    except Exception as exc:  # noqa: BLE001 - recorded, then the process fails so the launcher stops the others
        record.update(oom="out of memory" in str(exc), error=f"{type(exc).__name__}: {str(exc)[:300]}")
        (out / f"rank{rank}.json").write_text(json.dumps(record))
        raise
    (out / f"rank{rank}.json").write_text(json.dumps(record))


def tokenizer_and_rows(args):
    from sqltune.io import read_jsonl
    from train_throughput import bench_tokenizer

    return bench_tokenizer(args.arch, args.tokenizer), read_jsonl(args.data)[: args.rows]


# --- the runs ------------------------------------------------------------------------------------


def run_command(run: str, args) -> tuple[list[str], dict]:
    from sqltune import launch

    script = [str(Path(__file__).resolve()), "--worker", "--run", run, *worker_args(run, args)]
    if run == "single":
        return [sys.executable, *script], {"CUDA_VISIBLE_DEVICES": first_gpu()}
    preset = args.fsdp_preset if run == "fsdp" else args.preset
    tp = load_params_with(preset, num_processes=args.gpus, strategy=run).train
    return launch.launch_command(tp, args.gpus, script[0], script[1:]), {}


def worker_args(run: str, args) -> list[str]:
    preset = args.fsdp_preset if run == "fsdp" else args.preset
    return ["--arch", args.arch, "--data", args.data, "--rows", str(args.rows), "--tokenizer", args.tokenizer,
            "--preset", preset, "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--model-root", args.model_root, "--result-dir", str(result_dir(run, args))]


def first_gpu() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",")[0] if visible else "0"


def result_dir(run: str, args) -> Path:
    return Path(args.scratch) / run


def launch_run(run: str, args) -> dict:
    """Start one run in its own session, wait at most --run-timeout, then read what its processes wrote."""
    import shutil

    out = result_dir(run, args)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd, env = run_command(run, args)
    log = open(out / "log.txt", "w")
    t0 = time.time()
    proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=REPO)
    try:
        rc = proc.wait(timeout=args.run_timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the workers die with the launcher (PR_SET_PDEATHSIG)
        proc.wait()
        rc = "timeout"
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    tail = (out / "log.txt").read_text(errors="replace").splitlines()[-15:]
    return {"run": run, "returncode": rc, "wall_s": round(time.time() - t0, 1), "ranks": ranks,
            "log_tail": tail if rc != 0 else []}


def make_model(args) -> None:
    """The random-weight model, saved once in its own process (so no GPU memory stays held here)."""
    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            "from train_throughput import random_model_dir; random_model_dir(sys.argv[2], Path(sys.argv[3]))")
    subprocess.run([sys.executable, "-c", code, str(REPO / "bench"), args.arch, args.model_root], check=True,
                   env={**os.environ, "CUDA_VISIBLE_DEVICES": first_gpu()})


# --- the report ----------------------------------------------------------------------------------


def summarize(r: dict, n_gpus_single: float | None) -> dict:
    ok = [x for x in r["ranks"] if x.get("real_tokens_per_s")]
    complete = r["returncode"] == 0 and ok and len(ok) == ok[0]["world_size"]
    s = {"run": r["run"], "processes": len(r["ranks"]) or None, "status": "ok" if complete else status(r)}
    if complete:
        total = sum(x["real_tokens_per_s"] for x in ok)
        s.update(tokens_per_s=round(total, 1), tokens_per_s_per_gpu=round(total / len(ok), 1),
                 scaling_efficiency=round(total / (len(ok) * n_gpus_single), 3) if n_gpus_single else None)
    s["peak_gib_per_gpu"] = [x.get("peak_gib") for x in r["ranks"]]
    s["peak_reserved_gib_per_gpu"] = [x.get("peak_reserved_gib") for x in r["ranks"]]
    return s


def status(r: dict) -> str:
    if r["returncode"] == "timeout":
        return "timeout"
    if any(x.get("oom") for x in r["ranks"]):
        return "out of memory"
    errors = [x["error"] for x in r["ranks"] if x.get("error")]
    return f"failed: {errors[0] if errors else (r['log_tail'] or ['no output'])[-1]}"[:200]


def report(args, runs: dict) -> dict:
    single = runs.get("single")
    base = summarize(single, None) if single else None
    base_tok = base.get("tokens_per_s") if base else None
    rows = [summarize(runs[name], base_tok) for name in RUNS if name in runs]
    gpu = next((x.get("gpu") for r in runs.values() for x in r["ranks"] if x.get("gpu")), None)
    return {"gpu": gpu, "arch": args.arch, "gpus": args.gpus, "steps": args.steps, "warmup": args.warmup,
            "preset": args.preset, "fsdp_preset": args.fsdp_preset, "summary": rows, "runs": runs}


def print_table(rep: dict) -> None:
    print(f"\n{rep['gpu']}, {rep['arch']}, {rep['gpus']} GPUs\n"
          "| run | processes | real tok/s | per GPU | scaling efficiency | peak GiB per GPU |\n"
          "|---|---|---|---|---|---|")
    for s in rep["summary"]:
        peaks = " / ".join(str(p) for p in s["peak_gib_per_gpu"]) or "-"
        if s["status"] != "ok":
            print(f"| {s['run']} | {s['processes']} | {s['status']} | | | {peaks} |")
            continue
        eff = "-" if s["scaling_efficiency"] is None else f"{s['scaling_efficiency']:.0%}"
        print(f"| {s['run']} | {s['processes']} | {s['tokens_per_s']:,.0f} | {s['tokens_per_s_per_gpu']:,.0f} "
              f"| {eff} | {peaks} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="llama-3.1-8b")
    ap.add_argument("--data", required=True, help="sql-create-context shaped JSONL (question/context/answer)")
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--tokenizer", required=True, help="tokenizer folder")
    ap.add_argument("--preset", default="presets/80gb.yaml", help="PARAMS.yaml[:key=value,...] for single and ddp")
    ap.add_argument("--fsdp-preset", default="presets/80gb.yaml",
                    help="the same, for the fsdp run (default: the DDP setup, so memory per GPU compares)")
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--runs", default=",".join(RUNS), help="which of single,ddp,fsdp to run now")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--run-timeout", type=int, default=240, help="seconds per run, loading included")
    ap.add_argument("--model-root", default="/tmp/sqltune-bench-models")
    ap.add_argument("--scratch", default="/tmp/sqltune-scaling")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    ap.add_argument("--result-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    out = Path(args.out) / f"train_scaling-{args.arch}.json"
    runs = json.loads(out.read_text())["runs"] if out.is_file() else {}
    make_model(args)
    for run in filter(None, args.runs.split(",")):
        runs[run] = launch_run(run, args)
        print(json.dumps(summarize(runs[run], None)), flush=True)
    rep = report(args, runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rep, indent=2) + "\n")
    print_table(rep)


if __name__ == "__main__":
    main()
