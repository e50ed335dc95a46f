"""Dataset loading, cleaning, prompt formatting and splitting (the prepare stage's logic)."""

from __future__ import annotations

import random
from collections import Counter
from importlib import resources
from pathlib import Path

import sqlglot
from sqlglot.errors import SqlglotError

from sqltune.config import PrepareParams
from sqltune.errors import SqltuneError
from sqltune.io import read_jsonl
from sqltune.sql import DIALECT, is_read_only, parse, schema_tables

REQUIRED_COLUMNS = ("question", "context", "answer")
OPTIONAL_COLUMNS = ("db_id", "source")
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
EMBEDDED = "embedded"
# Why clean_rows drops a row; every one is a data error and counts toward max_dropped_fraction.
DROP_REASONS = ("empty_field", "invalid_context_ddl", "unparsable_sql", "destructive_sql")


def embedded_path() -> Path:
    return Path(str(resources.files("sqltune.resources") / "embedded_sql.jsonl"))


def _load_with_datasets(builder_or_id: str, **kwargs) -> list[dict]:
    # One code path for hub ids and local files: `datasets.load_dataset` treats both alike.
    import datasets

    try:
        ds = datasets.load_dataset(builder_or_id, **kwargs)
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        at = f" at revision {kwargs['revision']!r}" if kwargs.get("revision") else ""
        raise SqltuneError(
            f"could not load dataset {kwargs.get('data_files', builder_or_id)!r}{at}: {first}. "
            "Check the name, revision or path; hub ids need network access (set prepare.dataset to a local "
            "file or 'embedded' to work offline)"
        ) from None
    except datasets.exceptions.DatasetGenerationError as exc:
        cause = exc.__cause__ or exc
        raise SqltuneError(f"could not read {kwargs.get('data_files', builder_or_id)!r}: {cause}") from None
    return [dict(r) for r in ds]


def load_rows(spec: str, hub_split: str = "train", revision: str | None = None,
              key: str = "prepare.dataset (or prepare.test_dataset)") -> list[dict]:
    """Load raw rows from 'embedded', a local .jsonl/.json/.csv/.parquet file, or a hub id
    (``revision``: its branch, tag or commit; local files have none). ``key``: the param that
    names it, for the errors."""
    if spec == EMBEDDED:
        return read_jsonl(embedded_path())
    path = Path(spec)
    if path.suffix.lower() in LOCAL_FORMATS:
        if not path.is_file():
            raise SqltuneError(f"dataset file {spec} not found; fix {key}")
        if path.stat().st_size == 0:
            raise SqltuneError(f"dataset file {spec} is empty; point prepare.dataset at a file with rows")
        if path.suffix.lower() == ".jsonl":
            return read_jsonl(path)  # sqltune's reader names the bad line, datasets' does not
        try:
            path.read_bytes().decode("utf-8") if path.suffix.lower() != ".parquet" else None
        except UnicodeDecodeError:
            raise SqltuneError(f"{spec}: not UTF-8 text; re-save it as UTF-8") from None
        return _load_with_datasets(LOCAL_FORMATS[path.suffix.lower()], data_files=str(path), split="train")
    if path.exists():
        if path.is_dir():
            return _load_with_datasets(str(path), split=hub_split)
        raise SqltuneError(f"dataset file {spec}: unsupported format; use .jsonl, .json, .csv or .parquet")
    return _load_with_datasets(spec, split=hub_split, revision=revision)


def check_columns(rows: list[dict], origin: str) -> None:
    if not rows:
        raise SqltuneError(f"dataset {origin} has no rows; point prepare.dataset at a non-empty dataset")
    missing = [c for c in REQUIRED_COLUMNS if c not in rows[0]]
    if missing:
        raise SqltuneError(
            f"dataset {origin} lacks column(s) {', '.join(missing)}; it needs question, context "
            f"(CREATE TABLE statements) and answer (SQL). Found: {', '.join(map(str, rows[0]))}"
        )


def _several_statements(sql: str) -> bool:
    """Whether ``sql`` is several statements that each parse on their own: a script, not a typo."""
    try:
        parts = [s for s in sqlglot.parse(sql, read=DIALECT) if s is not None]
    except (SqlglotError, RecursionError, ValueError, TypeError, AttributeError):
        return False
    parts = [s for s in parts if s.sql(dialect=DIALECT).strip()]  # a trailing comment is no statement
    return len(parts) > 1 and all(parse(s.sql(dialect=DIALECT)) is not None for s in parts)


def clean_rows(rows: list[dict]) -> tuple[list[dict], Counter]:
    """Keep rows with non-empty text, DDL that parses and one read-only query as the answer; count
    why others were dropped (DROP_REASONS). The scorer runs queries read-only, so a gold answer that
    writes, attaches, runs a pragma or chains statements can't be scored, and training on it teaches
    the model to emit such statements."""
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
            dropped["destructive_sql" if _several_statements(rec["answer"]) else "unparsable_sql"] += 1
            continue
        if not is_read_only(rec["answer"]):
            dropped["destructive_sql"] += 1
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


def question_key(row: dict) -> tuple[str, str]:
    """What makes two rows the same exercise: the model sees the question and the schema only."""
    return row["question"], row["context"]


def drop_duplicates(rows: list[dict]) -> tuple[list[dict], int]:
    """Rows with the same question, context and answer, kept once (the first, in order): a repeated
    test row would count twice in a score. Returns the rows and how many were dropped."""
    seen, unique = set(), []
    for row in rows:
        key = (row["question"], row["context"], row["answer"])
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique, len(rows) - len(unique)


def _take_train(pool: list[dict], train_size: int, held: set | frozenset) -> tuple[list[dict], int]:
    """The first ``train_size`` rows of ``pool`` whose question and context are not in ``held``, and
    how many rows were passed over for being there."""
    train, passed_over = [], 0
    for row in pool:
        if len(train) == train_size:
            break
        if question_key(row) in held:
            passed_over += 1
        else:
            train.append(row)
    if len(train) < train_size:
        raise SqltuneError(
            f"only {len(train)} train rows are left once rows whose question and context are also in the "
            f"test rows are dropped, fewer than prepare.train_size ({train_size}); lower prepare.train_size"
        )
    return train, passed_over


def split_counted(rows: list[dict], train_size: int, test_size: int, how: str, seed: int, offset: int = 0,
                  held: frozenset = frozenset()) -> tuple[list[dict], list[dict], int]:
    """Seeded split. 'schema_disjoint' keeps every context on one side only. ``offset`` skips rows of
    the shuffled order before the test slice (random split only). Train never holds a row whose
    question and context are those of a test row (or in ``held``): it is passed over for the next
    row after the test slice, so the test slice does not depend on it. Returns train, test and the
    number of rows passed over."""
    if train_size + offset + test_size > len(rows):
        asked = [f"prepare.{k} ({v})" for k, v in (("train_size", train_size), ("test_size", test_size),
                                                   ("test_offset", offset)) if v]
        them = "them" if len(asked) > 1 else "it"
        raise SqltuneError(f"{' + '.join(asked)} exceeds the {len(rows)} usable rows; lower {them}")
    rng = random.Random(seed)
    if how == "random":
        order = rows[:]
        rng.shuffle(order)
        start = train_size + offset
        test = order[start:start + test_size]
        pool = order[:train_size] + order[start + test_size:]
        train, passed_over = _take_train(pool, train_size, held | {question_key(r) for r in test})
        return train, test, passed_over
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
    # No context is on both sides, so only ``held`` can hold the question of one of these train rows.
    train, passed_over = _take_train(train, train_size, held)
    return train, test, passed_over


def split_rows(rows: list[dict], train_size: int, test_size: int, how: str, seed: int, offset: int = 0):
    """``split_counted``'s train and test rows."""
    train, test, _ = split_counted(rows, train_size, test_size, how, seed, offset)
    return train, test


def rows_of_split(rows: list[dict], split: str | None, origin: str, key: str) -> list[dict]:
    """The rows whose `split` field is ``split`` (all of them for None): one file may hold a
    benchmark's train, dev and test rows. ``key`` names the param that asked, for the error."""
    if split is None:
        return rows
    if not any("split" in r for r in rows):
        raise SqltuneError(f"dataset {origin} has no `split` field in its rows, so {key} ({split!r}) selects "
                           f"nothing; set {key} to null or add the column")
    chosen = [r for r in rows if str(r.get("split")) == split]  # a CSV's or JSON's 1 is the param's "1"
    if not chosen:
        found = ", ".join(sorted({str(r.get("split")) for r in rows}))
        raise SqltuneError(f"no row of dataset {origin} has split {split!r} ({key}); it has: {found}")
    return chosen


def load_clean(spec: str, p: PrepareParams, revision: str | None = None, split: str | None = None,
               key: str = "prepare.dataset_split", source_key: str = "prepare.dataset") -> tuple[list[dict], Counter]:
    """The rows of ``spec`` (those of ``split``, see rows_of_split) that ``clean_rows`` keeps, and
    the drop counts. ``key`` and ``source_key`` name the params of the split and the source."""
    rows = load_rows(spec, p.hub_split, revision, source_key)
    check_columns(rows, spec)
    rows = rows_of_split(rows, split, spec, key)
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


def is_local(spec: str) -> bool:
    """A dataset read from a file or folder here (not the embedded set, not a hub id)."""
    return spec != EMBEDDED and (Path(spec).suffix.lower() in LOCAL_FORMATS or Path(spec).exists())


def require_tracked(p: PrepareParams, raw_dir: str | Path) -> None:
    """Local datasets must lie in the folder the prepare stage depends on, so that DVC sees them change."""
    from sqltune.io import require_inside

    specs = [("prepare.dataset", p.dataset), ("prepare.test_dataset", p.test_dataset),
             *((f"prepare.mix[{i}].dataset", m.dataset) for i, m in enumerate(p.mix))]
    for key, spec in specs:
        if spec is not None and is_local(spec):
            require_inside(spec, raw_dir, key)


def build_splits(p: PrepareParams, seed: int, raw_dir: str | Path | None = None) -> tuple[list[dict], list[dict], dict]:
    """Load, clean, de-duplicate and split. With ``test_dataset`` the test rows come from that source
    instead. In the stats ``dropped`` maps each reason to its count; ``flat_stats`` is the file form.
    ``raw_dir``: the DVC-tracked folder that local datasets must be inside (None: no such rule)."""
    if raw_dir is not None:
        require_tracked(p, raw_dir)
    # A revision names a commit of one hub repository, so it pins prepare.dataset only.
    loaded, dropped = load_clean(p.dataset, p, p.revision, p.dataset_split)
    # Duplicates are no data error: reported, and not counted toward max_dropped_fraction.
    rows, duplicates = drop_duplicates(loaded)
    stats = {"loaded": len(loaded) + sum(dropped.values()), "dropped": dict(dropped),
             "duplicate_rows": duplicates}
    if p.test_dataset is None:
        train, test, in_test = split_counted(rows, p.train_size, p.test_size, p.split, seed)
    else:
        test_rows, test_dropped = load_clean(p.test_dataset, p, split=p.test_split, key="prepare.test_split",
                                             source_key="prepare.test_dataset")
        _, test = split_rows(test_rows, 0, p.test_size, "random", seed, p.test_offset)
        # Only the slice is de-duplicated: which rows of the test source form the slice at a given
        # test_offset then does not depend on duplicates elsewhere in the source, so a reported
        # slice stays the same rows.
        test, test_duplicates = drop_duplicates(test)
        stats.update({"test_loaded": len(test_rows) + sum(test_dropped.values()),
                      "test_dropped": dict(test_dropped), "test_duplicate_rows": test_duplicates})
        if p.split == "schema_disjoint":
            # Every schema of the test source, not only this slice's: the train rows (and so the
            # trained model) are then the same for every test_offset, and DVC does not retrain.
            held = {r["context"] for r in test_rows}
            rows = [r for r in rows if r["context"] not in held]
        # Likewise the questions of the whole test source, not only this slice's, stay out of train.
        held_questions = frozenset(question_key(r) for r in test_rows)
        train, _, in_test = split_counted(rows, p.train_size, 0, "random", seed, held=held_questions)
    if p.mix:
        source = test_rows if p.test_dataset is not None else test
        held = frozenset(question_key(r) for r in source)
        # schema_disjoint holds every test schema out of train, the mixed-in rows' too
        schemas = frozenset(r["context"] for r in source) if p.split == "schema_disjoint" else frozenset()
        train, mixed, passed_over = mix_in(train, p, held, seed, stats, schemas)
        stats["mixed_rows"] = mixed
        in_test += passed_over
    stats["train_rows_in_test"] = in_test
    stats.update(split_stats(train, test))
    return train, test, stats


def mix_in(train: list[dict], p: PrepareParams, held: frozenset, seed: int, stats: dict,
           held_schemas: frozenset = frozenset()) -> tuple[list[dict], int, int]:
    """``train`` plus every usable row of each prepare.mix source, ``repeat`` times, in a seeded
    shuffle; a row whose question and schema are a test row's (or whose schema is in
    ``held_schemas``) stays out. Returns the rows, how many distinct rows were mixed in, and how
    many were left out for the test rows. The sources' loads and drops go into ``stats``; a source
    that adds no row is an error, as a typo in its split would be."""
    out, mixed, passed_over = list(train), 0, 0
    seen = {(r["question"], r["context"], r["answer"]) for r in train}
    for i, m in enumerate(p.mix):
        rows, dropped = load_clean(m.dataset, p, m.revision, m.split, key=f"prepare.mix[{i}].split",
                                   source_key=f"prepare.mix[{i}].dataset")
        stats["loaded"] += len(rows) + sum(dropped.values())
        for reason, n in dropped.items():
            stats["dropped"][reason] = stats["dropped"].get(reason, 0) + n
        rows, duplicates = drop_duplicates(rows)
        stats["duplicate_rows"] += duplicates
        kept = []
        for row in rows:
            if question_key(row) in held or row["context"] in held_schemas:
                passed_over += 1
            elif (row["question"], row["context"], row["answer"]) in seen:
                stats["duplicate_rows"] += 1
            else:
                kept.append(row)
                seen.add((row["question"], row["context"], row["answer"]))
        if not kept:
            raise SqltuneError(f"prepare.mix[{i}] ({m.dataset}) adds no train row: each of its rows is a test "
                               "question (or schema) or already in train; point it at other rows or remove it")
        mixed += len(kept)
        out += kept * m.repeat
    random.Random(seed).shuffle(out)
    return out, mixed, passed_over


def flat_stats(stats: dict) -> dict:
    """``build_splits``' stats as flat scalars, the form DVC reads as metrics: each drop-count map
    becomes its total plus one ``<name>_<reason>`` key per reason (0 included), so every run's file
    has the same keys to compare."""
    flat = {}
    for key, value in stats.items():
        if isinstance(value, dict):
            flat[key] = sum(value.values())
            flat.update({f"{key}_{reason}": value.get(reason, 0) for reason in DROP_REASONS})
        else:
            flat[key] = value
    return flat


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
