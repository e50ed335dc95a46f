"""Stage metrics files: a few headline numbers for DVC, everything else beside them.

The headline files are the ones dvc.yaml declares as metrics, so `dvc exp show` and `dvc metrics
diff` compare only what a user reads first. Breakdowns (by feature, by source, error counts),
scoring settings and timings go to plain outputs: timings differ on every run, and a column per
breakdown would bury the headline numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqltune.io import write_json

# Per model: the scores and the count they are over (summaries from sqltune.scoring.summarize).
EVAL_HEADLINE = ("n", "exact_match", "execution_accuracy", "execution_accuracy_all", "parse_rate")
# From dvclive's summary of a training run: the last logged values, which a resumed run reaches as
# an uninterrupted one does (the trainer's own mean loss covers only the steps of its last session).
TRAIN_HEADLINE = ("step", "epoch", "loss", "mean_token_accuracy")


def score_text(value: float | None) -> str:
    """A score for people: three decimals, or n/a when it has no denominator (no decidable rows)."""
    return "n/a" if value is None else f"{value:.3f}"


def eval_headline(summaries: dict[str, dict]) -> dict[str, dict]:
    """{model: {key: value}} for the EVAL_HEADLINE keys only: scalars, one level per model."""
    return {name: {key: s[key] for key in EVAL_HEADLINE if key in s} for name, s in summaries.items()}


def write_eval_metrics(metrics_file: str | Path, details_file: str | Path, summaries: dict[str, dict]) -> None:
    """The full summaries go to ``details_file``, their headline numbers to ``metrics_file``."""
    write_json(details_file, summaries)
    write_json(metrics_file, eval_headline(summaries))


def write_train_metrics(metrics_file: str | Path, live_dir: str | Path, train_sequences: int) -> None:
    """The TRAIN_HEADLINE values of dvclive's summary in ``live_dir`` (which keeps the runtimes and
    throughput) and the number of training sequences, to ``metrics_file``."""
    summary_file = Path(live_dir) / "metrics.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    write_json(metrics_file, {**{k: summary[k] for k in TRAIN_HEADLINE if k in summary},
                              "train_sequences": train_sequences})
