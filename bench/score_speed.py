"""Scoring speed: 1000 examples x 8 synthesized databases must take <= 60 s.

Examples: 500 random rows of WikiSQL dev + 500 random rows of Spider dev.
Predictions: gold for half of them, a mutated gold (different literal, flipped
comparison, MAX<->MIN, other column, dropped condition -- the first that
applies) for the other half, so that both the match and the mismatch paths
are timed.

Usage: python bench/score_speed.py [SHARED_DIR]   (default: ../shared from the repo root)
Writes bench/results/score_speed.json.
"""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_sanity import MUTATIONS  # noqa: E402

from sqltune.scoring import score_rows  # noqa: E402
from sqltune.sql import clear_caches  # noqa: E402

N_EACH = 500
N_DATABASES = 8
LIMIT_S = 60.0


def main(argv: list[str]) -> int:
    shared = Path(argv[1]) if len(argv) > 1 else REPO.parent / "shared"
    files = [shared / "data/create_context/wikisql_dev.jsonl", shared / "data/create_context/spider_dev.jsonl"]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        print(f"error: shared data not found ({', '.join(missing)}); "
              "pass the shared dir: python bench/score_speed.py /path/to/shared", file=sys.stderr)
        return 2
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

    clear_caches()  # building the mutations parsed the gold: start cold
    start = time.perf_counter()
    cpu_start = time.process_time()
    summary, _ = score_rows(rows, preds, n_databases=N_DATABASES, seed=0, timeout_s=2.0)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    result = {
        "n": len(rows),
        "n_mutated_predictions": n_mutated,
        "n_databases": N_DATABASES,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "examples_per_s": round(len(rows) / seconds, 1),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "workers": 1,
        "python": platform.python_version(),
        "limit_s": LIMIT_S,
        "ok": seconds <= LIMIT_S,
        "execution_accuracy": summary["execution_accuracy"],
        "exact_match": summary["exact_match"],
        "undecidable": summary["undecidable"],
    }
    out = REPO / "bench/results/score_speed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(json.dumps(result, indent=2))
    print(f"\nscored {result['n']} examples x {N_DATABASES} databases in {seconds:.1f} s "
          f"({result['examples_per_s']} examples/s) -- limit {LIMIT_S:.0f} s: {'ok' if result['ok'] else 'TOO SLOW'}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
