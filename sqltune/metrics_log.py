"""Write stage metrics through dvclive, so `dvc metrics show/diff` and `dvc exp show` see them."""

from __future__ import annotations

from pathlib import Path


def flatten(tree: dict, prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value is not None:
            flat[name] = value
    return flat


def log_summary(live_dir: str | Path, tree: dict) -> None:
    """Log a nested dict of scalars as one dvclive summary (metrics.json), no step plots."""
    from dvclive import Live

    with Live(str(live_dir), resume=False, save_dvc_exp=False, dvcyaml=None, report=None) as live:
        for name, value in flatten(tree).items():
            live.log_metric(name, value, plot=False)
