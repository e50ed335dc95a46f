"""Scoring speed: 1000 examples x 8 synthesized databases, serial against parallel.

Examples: 500 random rows of WikiSQL dev + 500 random rows of Spider dev.
Predictions: gold for half of them, a mutated gold (different literal, flipped
comparison, MAX<->MIN, other column, dropped condition -- the first that
applies) for the other half, so that both the match and the mismatch paths
are timed.

Each run is a fresh process that scores the set twice: ``cold`` includes starting the sandbox
workers, ``warm`` is the second call with the workers up (what an evaluate stage pays for its
second model). Worker counts are interleaved over ``--repeats`` rounds; the JSON gives the median,
min and max of each, and checks that every worker count gives the same verdicts.

Usage: python bench/score_speed.py [--shared DIR] [--workers 1,auto] [--repeats 3]
Writes bench/results/score_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

N_EACH = 500
N_DATABASES = 8


def build(shared: Path) -> tuple[list[dict], list[str], int]:
    from eval_sanity import MUTATIONS

    files = [shared / "data/create_context/wikisql_dev.jsonl", shared / "data/create_context/spider_dev.jsonl"]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise SystemExit(f"error: shared data not found ({', '.join(missing)}); pass --shared DIR")
    rng = random.Random(0)
    rows: list[dict] = []
    for f in files:
        with f.open() as fh:
            data = [json.loads(line) for line in fh if line.strip()]
        rows += rng.sample(data, N_EACH)
    preds, n_mutated = [], 0
    for i, r in enumerate(rows):
        pred = r["answer"]
        if i % 2 == 1:
            for fn in MUTATIONS.values():
                m = fn(r["answer"], r["context"])
                if m is not None:
                    pred, n_mutated = m, n_mutated + 1
                    break
        preds.append(pred)
    return rows, preds, n_mutated


def one_run(shared: Path, workers: str) -> dict:
    """Runs in its own process: cold and warm timings of one worker count."""
    from sqltune.scoring import score_rows
    from sqltune.sql import clear_caches

    rows, preds, n_mutated = build(shared)
    clear_caches()
    w = workers if workers == "auto" else int(workers)
    out = {"n_mutated_predictions": n_mutated}
    for label in ("cold", "warm"):
        start = time.perf_counter()
        summary, per = score_rows(rows, preds, n_databases=N_DATABASES, seed=0, timeout_s=2.0, workers=w)
        out[f"{label}_s"] = time.perf_counter() - start
    out["n_correct"] = summary["n_correct"]
    out["verdicts"] = [e["execution_match"] for e in per]
    out["execution_accuracy"] = summary["execution_accuracy"]
    out["exact_match"] = summary["exact_match"]
    return out


def stats(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(REPO.parent / "shared"))
    ap.add_argument("--workers", default="1,auto", help="comma-separated worker counts (auto: one per core)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one fresh-process run
    args = ap.parse_args(argv[1:])
    if args.one is not None:
        print(json.dumps(one_run(Path(args.shared), args.one)))
        return 0
    counts = args.workers.split(",")
    runs: dict[str, list[dict]] = {c: [] for c in counts}
    for _ in range(args.repeats):
        for c in counts:  # interleaved: a slow spell of the machine hits every count alike
            proc = subprocess.run([sys.executable, __file__, "--shared", args.shared, "--one", c],
                                  capture_output=True, text=True, check=True)
            runs[c].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    first = runs[counts[0]][0]
    same = all(r["verdicts"] == first["verdicts"] for rs in runs.values() for r in rs)
    from sqltune.sandbox import resolve_workers

    result = {
        "n": 2 * N_EACH,
        "n_databases": N_DATABASES,
        "n_mutated_predictions": first["n_mutated_predictions"],
        "repeats": args.repeats,
        "cpus_usable": resolve_workers("auto"),
        "cpu_model": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                           if line.startswith("model name")), platform.processor()),
        "python": platform.python_version(),
        "same_verdicts_for_every_worker_count": same,
        "execution_accuracy": first["execution_accuracy"],
        "exact_match": first["exact_match"],
        "by_workers": {
            (str(resolve_workers("auto")) if c == "auto" else c): {
                "cold_s": stats([r["cold_s"] for r in rs]),
                "warm_s": stats([r["warm_s"] for r in rs]),
            } for c, rs in runs.items()
        },
    }
    out = REPO / "bench/results/score_speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(json.dumps(result, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
