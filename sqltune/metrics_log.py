"""Stage metrics files: a few headline numbers for DVC, everything else beside them.

The headline files are the ones dvc.yaml declares as metrics, so `dvc exp show` and `dvc metrics
diff` compare only what a user reads first. Breakdowns (by feature, by source, error counts),
scoring settings and timings go to plain outputs: timings differ on every run, and a column per
breakdown would bury the headline numbers. The evaluation's plot data (``dvc plots``) is drawn from
the same summaries, so a chart never shows a number the metrics files do not hold.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqltune.io import atomic_dir, write_json

# Per model: the scores and the count they are over (summaries from sqltune.scoring.summarize).
EVAL_HEADLINE = ("n", "exact_match", "execution_accuracy", "execution_accuracy_all", "parse_rate")
# From dvclive's summary of a training run: the last logged values, which a resumed run reaches as
# an uninterrupted one does (the trainer's own mean loss covers only the steps since the last resume).
TRAIN_HEADLINE = ("step", "epoch", "loss", "mean_token_accuracy")
# The evaluation's plot data files, inside the folder the evaluate stage writes (dvc.yaml's plots
# name them). Each is a list of bars, one per model and metric, SQL feature or error kind; a bar's
# label holds both, because DVC's bar templates give each label one band (revisions side by side).
EVAL_PLOT_FILES = ("accuracy.json", "features.json", "errors.json")
# The scores the accuracy chart compares between the models.
EVAL_PLOT_SCORES = ("exact_match", "execution_accuracy")
# Example predictions printed after an evaluation: how many of each verdict, and the width a
# question, gold query or prediction is cut to, so each stays on one console line.
EXAMPLES_PER_VERDICT = 3
EXAMPLE_WIDTH = 88


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


def _bar(category: str, model: str) -> str:
    return f"{category} ({model})"


def eval_plot_data(summaries: dict[str, dict], error_kinds: tuple[str, ...] = ()) -> dict[str, list[dict]]:
    """{file name in EVAL_PLOT_FILES: rows} from the per-model summaries of sqltune.scoring.summarize.

    Every model gets the same bars: each feature any model has, and each error kind of
    ``error_kinds`` plus any other kind counted, at 0 where a model has none, so the models (and
    revisions, in ``dvc plots diff``) line up bar for bar."""
    accuracy = [
        {"bar": _bar(score.replace("_", " "), model), "model": model, "metric": score, "score": s[score]}
        for score in EVAL_PLOT_SCORES for model, s in summaries.items()
    ]
    features = list(dict.fromkeys(f for s in summaries.values() for f in s["by_feature"]))
    by_feature = [
        {"bar": _bar(f, model), "model": model, "feature": f, "n": stats["n"],
         "execution_accuracy": stats["execution_accuracy"]}
        for f in features for model, s in summaries.items()
        for stats in [s["by_feature"].get(f, {"n": 0, "execution_accuracy": None})]
    ]
    kinds = list(dict.fromkeys([*error_kinds, *(k for s in summaries.values() for k in s["errors"])]))
    errors = [
        {"bar": _bar(kind, model), "model": model, "error": kind, "count": s["errors"].get(kind, 0)}
        for kind in kinds for model, s in summaries.items()
    ]
    return dict(zip(EVAL_PLOT_FILES, (accuracy, by_feature, errors)))


def write_eval_plots(folder: str | Path, summaries: dict[str, dict], error_kinds: tuple[str, ...] = ()) -> None:
    """The files of :func:`eval_plot_data` into ``folder``, which they replace as a whole."""
    with atomic_dir(folder) as tmp:
        for name, rows in eval_plot_data(summaries, error_kinds).items():
            (tmp / name).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


def _one_line(text: str | None, width: int = EXAMPLE_WIDTH) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def verdict(row: dict) -> str:
    """One prediction's verdict in words, from its row of the per-example output."""
    if row["execution_match"]:
        return "right, exact match" if row["exact_match"] else "right, same result"
    if row["gold_error"] or row["undecidable"]:
        return "not decidable (gold query fails or returns no rows)"
    if row["error"]:
        return f"wrong, {row['error']}: {_one_line(row.get('error_message'), 60)}"
    return "wrong result"


def example_lines(rows: list[dict], n: int = EXAMPLES_PER_VERDICT) -> list[str]:
    """The first ``n`` right and the first ``n`` wrong predictions of ``rows`` (one model's
    per-example output, with question and gold), each as its verdict, question, gold and
    prediction on short lines. Predictions that no query could get right (the gold query fails or
    returns nothing) are neither."""
    decidable = [r for r in rows if not (r["gold_error"] or r["undecidable"])]
    right = [r for r in decidable if r["execution_match"]][:n]
    wrong = [r for r in decidable if not r["execution_match"]][:n]
    lines = []
    for r in right + wrong:
        lines += [f"  #{r['index']} {verdict(r)}",
                  f"    question:   {_one_line(r['question'])}",
                  f"    gold:       {_one_line(r['gold'])}",
                  f"    prediction: {_one_line(r['prediction'])}"]
    return lines


def write_train_metrics(metrics_file: str | Path, live_dir: str | Path, train_sequences: int) -> None:
    """The TRAIN_HEADLINE values of dvclive's summary in ``live_dir`` (which keeps the runtimes and
    throughput) and the number of training sequences, to ``metrics_file``."""
    summary_file = Path(live_dir) / "metrics.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    write_json(metrics_file, {**{k: summary[k] for k in TRAIN_HEADLINE if k in summary},
                              "train_sequences": train_sequences})
