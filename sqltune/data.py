"""Dataset loading, cleaning, prompt formatting and splitting (the prepare stage's logic)."""

from __future__ import annotations

import random
from collections import Counter
from importlib import resources
from pathlib import Path

from sqltune.config import PrepareParams
from sqltune.errors import SqltuneError
from sqltune.io import read_jsonl
from sqltune.sql import parse, schema_tables

REQUIRED_COLUMNS = ("question", "context", "answer")
OPTIONAL_COLUMNS = ("db_id", "source")
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
EMBEDDED = "embedded"


def embedded_path() -> Path:
    return Path(str(resources.files("sqltune.resources") / "embedded_sql.jsonl"))


def _load_with_datasets(builder_or_id: str, **kwargs) -> list[dict]:
    # One code path for hub ids and local files: `datasets.load_dataset` treats both alike.
    import datasets

    try:
        ds = datasets.load_dataset(builder_or_id, **kwargs)
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SqltuneError(
            f"could not load dataset {kwargs.get('data_files', builder_or_id)!r}: {first}. "
            "Check the name or path; hub ids need network access (set prepare.dataset to a local "
            "file or 'embedded' to work offline)"
        ) from None
    except datasets.exceptions.DatasetGenerationError as exc:
        cause = exc.__cause__ or exc
        raise SqltuneError(f"could not read {kwargs.get('data_files', builder_or_id)!r}: {cause}") from None
    return [dict(r) for r in ds]


def load_rows(spec: str, hub_split: str = "train") -> list[dict]:
    """Load raw rows from 'embedded', a local .jsonl/.json/.csv/.parquet file, or a hub id."""
    if spec == EMBEDDED:
        return read_jsonl(embedded_path())
    path = Path(spec)
    if path.suffix.lower() in LOCAL_FORMATS:
        if not path.is_file():
            raise SqltuneError(f"dataset file {spec} not found; fix prepare.dataset (or prepare.test_dataset)")
        if path.stat().st_size == 0:
            raise SqltuneError(f"dataset file {spec} is empty; point prepare.dataset at a file with rows")
        if path.suffix.lower() == ".jsonl":
            return read_jsonl(path)  # our reader names the bad line, datasets' does not
        try:
            path.read_bytes().decode("utf-8") if path.suffix.lower() != ".parquet" else None
        except UnicodeDecodeError:
            raise SqltuneError(f"{spec}: not UTF-8 text; re-save it as UTF-8") from None
        return _load_with_datasets(LOCAL_FORMATS[path.suffix.lower()], data_files=str(path), split="train")
    if path.exists():
        if path.is_dir():
            return _load_with_datasets(str(path), split=hub_split)
        raise SqltuneError(f"dataset file {spec}: unsupported format; use .jsonl, .json, .csv or .parquet")
    return _load_with_datasets(spec, split=hub_split)


def check_columns(rows: list[dict], origin: str) -> None:
    if not rows:
        raise SqltuneError(f"dataset {origin} has no rows; point prepare.dataset at a non-empty dataset")
    missing = [c for c in REQUIRED_COLUMNS if c not in rows[0]]
    if missing:
        raise SqltuneError(
            f"dataset {origin} lacks column(s) {', '.join(missing)}; it needs question, context "
            f"(CREATE TABLE statements) and answer (SQL). Found: {', '.join(map(str, rows[0]))}"
        )


def clean_rows(rows: list[dict]) -> tuple[list[dict], Counter]:
    """Keep rows with non-empty text, DDL that parses and SQL that parses; count why others were dropped."""
    kept, dropped = [], Counter()
    for row in rows:
        rec = {c: str(row.get(c) or "").strip() for c in REQUIRED_COLUMNS}
        if not all(rec.values()):
            dropped["empty_field"] += 1
            continue
        try:
            schema_tables(rec["context"])
        except SqltuneError:
            dropped["invalid_context_ddl"] += 1
            continue
        if parse(rec["answer"]) is None:
            dropped["unparsable_sql"] += 1
            continue
        rec.update({c: str(row[c]) for c in OPTIONAL_COLUMNS if row.get(c) not in (None, "")})
        kept.append(rec)
    return kept, dropped


def to_messages(row: dict, system_prompt: str) -> dict:
    """Prompt-completion conversational format, the one TRL trains completion-only on."""
    return {
        "prompt": [
            {"role": "system", "content": system_prompt.format(context=row["context"])},
            {"role": "user", "content": row["question"]},
        ],
        "completion": [{"role": "assistant", "content": row["answer"]}],
    }


def split_rows(rows: list[dict], train_size: int, test_size: int, how: str, seed: int, offset: int = 0):
    """Seeded split. 'schema_disjoint' keeps every context on one side only. ``offset`` skips rows of
    the shuffled order before the test slice (random split only)."""
    if train_size + offset + test_size > len(rows):
        skip = f" + prepare.test_offset ({offset})" if offset else ""
        raise SqltuneError(
            f"prepare.train_size ({train_size}) + prepare.test_size ({test_size}){skip} exceeds the "
            f"{len(rows)} usable rows; lower them"
        )
    rng = random.Random(seed)
    if how == "random":
        order = rows[:]
        rng.shuffle(order)
        start = train_size + offset
        return order[:train_size], order[start:start + test_size]
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["context"], []).append(row)
    keys = sorted(groups)
    rng.shuffle(keys)
    test, train = [], []
    for key in keys:
        (test if len(test) < test_size else train).extend(groups[key])
    if len(test) > test_size:  # trim the last group; its leftovers may not go to train
        test = test[:test_size]
    if len(train) < train_size:
        raise SqltuneError(
            f"schema_disjoint split leaves {len(train)} train rows, fewer than prepare.train_size "
            f"({train_size}); lower train_size or test_size"
        )
    rng.shuffle(train)
    rng.shuffle(test)
    return train[:train_size], test


def load_clean(spec: str, p: PrepareParams) -> tuple[list[dict], Counter]:
    rows = load_rows(spec, p.hub_split)
    check_columns(rows, spec)
    kept, dropped = clean_rows(rows)
    frac = sum(dropped.values()) / len(rows)
    if frac > p.max_dropped_fraction:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items()))
        raise SqltuneError(
            f"dataset {spec}: {sum(dropped.values())} of {len(rows)} rows ({frac:.1%}) were dropped "
            f"({reasons}), more than prepare.max_dropped_fraction={p.max_dropped_fraction}; "
            "fix the data or raise the threshold"
        )
    return kept, dropped


def build_splits(p: PrepareParams, seed: int) -> tuple[list[dict], list[dict], dict]:
    """Load, clean and split. With ``test_dataset`` the test rows come from that source instead."""
    rows, dropped = load_clean(p.dataset, p)
    stats = {"loaded": len(rows) + sum(dropped.values()), "dropped": dict(dropped)}
    if p.test_dataset is None:
        train, test = split_rows(rows, p.train_size, p.test_size, p.split, seed)
    else:
        test_rows, test_dropped = load_clean(p.test_dataset, p)
        stats["test_dropped"] = dict(test_dropped)
        _, test = split_rows(test_rows, 0, p.test_size, "random", seed, p.test_offset)
        if p.split == "schema_disjoint":
            # Every schema of the test source, not only this slice's: the train rows (and so the
            # trained model) are then the same for every test_offset, and DVC does not retrain.
            held = {r["context"] for r in test_rows}
            rows = [r for r in rows if r["context"] not in held]
        train, _ = split_rows(rows, p.train_size, 0, "random", seed)
    stats.update(split_stats(train, test))
    return train, test, stats


def split_stats(train: list[dict], test: list[dict]) -> dict:
    train_ctx, test_ctx = {r["context"] for r in train}, {r["context"] for r in test}
    return {
        "train_rows": len(train),
        "test_rows": len(test),
        "train_schemas": len(train_ctx),
        "test_schemas": len(test_ctx),
        "test_schemas_seen_in_train": len(train_ctx & test_ctx),
        "mean_question_chars": round(sum(len(r["question"]) for r in train + test) / max(1, len(train + test)), 1),
        "mean_answer_chars": round(sum(len(r["answer"]) for r in train + test) / max(1, len(train + test)), 1),
    }
