"""Data integrity: atomic writes that remove nothing but their own temp, JSONL that reads back
whatever text it holds, and a prepare stage that keeps duplicates, test questions and writing
statements out of what gets scored or trained on."""

import errno
import json
import os
import random
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sqltune import io
from sqltune.config import PrepareParams
from sqltune.data import DROP_REASONS, build_splits, clean_rows, flat_stats, load_rows, split_counted
from sqltune.errors import SqltuneError
from sqltune.io import atomic_dir, read_jsonl, write_json, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def tree(root: Path) -> dict:
    """Every path under ``root`` with its content (files) or None (folders)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """cwd = tmp_path/home/work, with a sentinel file at each level up to tmp_path."""
    work = tmp_path / "home" / "work"
    work.mkdir(parents=True)
    for folder in (tmp_path, tmp_path / "home", work):
        (folder / "sentinel.txt").write_text("keep me")
    (work / ".git").mkdir()
    (work / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    monkeypatch.chdir(work)
    return work


# ------------------------------------------------------------------------------- atomic_file


@pytest.mark.parametrize("target", [".", "..", "/", "", "existing", "existing/", "missing/", "sub/.", "sub/.."])
def test_atomic_file_refuses_directory_targets(workdir, target):
    (workdir / "existing").mkdir()
    (workdir / "existing" / "inner.txt").write_text("keep me too")
    before = tree(workdir.parents[1])
    with pytest.raises(SqltuneError, match=r"(is a directory|names a directory); give a file path"):
        write_json(target, {"a": 1})
    assert tree(workdir.parents[1]) == before


def test_atomic_file_replaces_a_file_and_leaves_only_it(workdir):
    write_json("metrics/out.json", {"a": 1})
    write_json("metrics/out.json", {"a": 2})
    assert json.loads((workdir / "metrics/out.json").read_text()) == {"a": 2}
    assert sorted(os.listdir(workdir / "metrics")) == ["out.json"]
    # the mode a plain open() gives, not mkstemp's owner-only one
    (workdir / "plain").write_text("")
    assert stat.S_IMODE((workdir / "metrics/out.json").stat().st_mode) == stat.S_IMODE((workdir / "plain").stat().st_mode)


@pytest.mark.parametrize("target", ["somefile/out.json", "somefile/deeper/out.json"])
def test_atomic_file_under_a_regular_file_is_a_clear_error(workdir, target):
    (workdir / "somefile").write_text("a file, not a folder")
    before = tree(workdir)
    with pytest.raises(SqltuneError, match=rf"cannot write {target}: Not a directory; choose a writable location"):
        write_jsonl(target, [{"a": 1}])
    assert tree(workdir) == before


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_atomic_file_in_an_unwritable_folder(workdir):
    locked = workdir / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(SqltuneError, match=r"cannot write locked/out.json: Permission denied"):
            write_json("locked/out.json", {"a": 1})
        assert os.listdir(locked) == []
    finally:
        locked.chmod(0o700)


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _rows_then_disk_full():
    yield {"a": 1}
    _enospc()


@pytest.mark.parametrize("where", ["creating the temp file", "writing", "renaming"])
def test_disk_full_leaves_the_old_file_and_no_temp(workdir, monkeypatch, where):
    write_jsonl("out/data.jsonl", [{"old": True}])
    before = tree(workdir)
    rows = [{"new": True}]
    if where == "creating the temp file":
        monkeypatch.setattr(io.tempfile, "mkstemp", _enospc)
    elif where == "writing":
        rows = _rows_then_disk_full()
    else:
        monkeypatch.setattr(io.os, "replace", _enospc)
    with pytest.raises(SqltuneError, match=r"cannot write out/data.jsonl: No space left on device"):
        write_jsonl("out/data.jsonl", rows)
    assert tree(workdir) == before


def test_failed_write_removes_the_folders_it_created(workdir, monkeypatch):
    before = tree(workdir)
    monkeypatch.setattr(io.tempfile, "mkstemp", _enospc)
    with pytest.raises(SqltuneError, match="No space left on device"):
        write_json("new/deeper/out.json", {"a": 1})
    assert tree(workdir) == before


# -------------------------------------------------------------------------------- atomic_dir


@pytest.mark.parametrize("target", [".", "..", "/", "", "sub/..", "sub/.", "out/", "../work", "CWD", "PARENT",
                                    "GRANDPARENT"])
def test_atomic_dir_refuses_root_cwd_ancestors_and_nameless_paths(workdir, target):
    target = {"CWD": str(workdir), "PARENT": str(workdir.parent), "GRANDPARENT": str(workdir.parents[1])}.get(
        target, target)
    (workdir / "sub").mkdir()
    (workdir / "out").mkdir()
    (workdir / "out" / "model.bin").write_text("weights")
    before = tree(workdir.parents[1])
    with pytest.raises(SqltuneError, match="(no folder name of its own|the current folder or one of its parents)"):
        with atomic_dir(target) as tmp:
            (tmp / "x").write_text("must never be written")
    assert tree(workdir.parents[1]) == before


def test_atomic_dir_refuses_an_existing_file(workdir):
    (workdir / "model").write_text("a file")
    with pytest.raises(SqltuneError, match="model is a file, not a folder"):
        with atomic_dir("model"):
            pass
    assert (workdir / "model").read_text() == "a file"


def test_atomic_dir_replaces_the_old_output_folder_only(workdir):
    (workdir / "models" / "merged").mkdir(parents=True)
    (workdir / "models" / "merged" / "old.bin").write_text("old")
    (workdir / "models" / "adapter.bin").write_text("a sibling")
    with atomic_dir("models/merged") as tmp:
        assert tmp.parent.resolve() == workdir / "models" and tmp.is_dir() and not any(tmp.iterdir())
        (tmp / "new.bin").write_text("new")
    assert sorted(os.listdir(workdir / "models")) == ["adapter.bin", "merged"]
    assert os.listdir(workdir / "models" / "merged") == ["new.bin"]
    (workdir / "plain").mkdir()
    assert stat.S_IMODE((workdir / "models/merged").stat().st_mode) == stat.S_IMODE((workdir / "plain").stat().st_mode)


def test_atomic_dir_failure_keeps_the_old_folder(workdir):
    (workdir / "adapter").mkdir()
    (workdir / "adapter" / "weights.bin").write_text("old")
    before = tree(workdir)
    with pytest.raises(RuntimeError):
        with atomic_dir("adapter") as tmp:
            (tmp / "weights.bin").write_text("half")
            raise RuntimeError("killed")
    assert tree(workdir) == before


def test_atomic_dir_disk_full_is_a_clear_error(workdir):
    before = tree(workdir)
    with pytest.raises(SqltuneError, match="cannot write new/merged: No space left on device"):
        with atomic_dir("new/merged") as tmp:
            (tmp / "part").write_text("x")
            _enospc()
    assert tree(workdir) == before


def test_atomic_dir_replaces_a_symlink_not_what_it_points_to(workdir):
    (workdir / "shared").mkdir()
    (workdir / "shared" / "base.bin").write_text("shared weights")
    (workdir / "base").symlink_to(workdir / "shared")
    with atomic_dir("base") as tmp:
        (tmp / "converted.bin").write_text("new")
    assert not (workdir / "base").is_symlink() and os.listdir(workdir / "base") == ["converted.bin"]
    assert (workdir / "shared" / "base.bin").read_text() == "shared weights"


# -------------------------------------------------------------------------------------- JSONL

# Every character str.splitlines() splits on, and other text JSON may hold unescaped.
AWKWARD = "a\x0bb\x0cc\x1cd\x1de\x1ef\x85g\u2028h\u2029i\rj\r\nk\nl\tm\x00n\U0001F600o é 漢字"


def test_jsonl_round_trips_any_text(tmp_path):
    rows = [{"question": AWKWARD, "nested": [AWKWARD, {"k": AWKWARD}]}, {"question": "plain"},
            {"question": "lone surrogate \ud800 from an escaped source"}]
    write_jsonl(tmp_path / "d.jsonl", rows)
    raw = (tmp_path / "d.jsonl").read_bytes()
    assert raw.count(b"\n") == len(rows) and "\u2028".encode() in raw  # written unescaped, one row a line
    assert read_jsonl(tmp_path / "d.jsonl") == rows


def test_jsonl_with_crlf_line_ends(tmp_path):
    (tmp_path / "d.jsonl").write_bytes(b'{"a": 1}\r\n{"a": "x\xe2\x80\xa8y"}\r\n')
    assert read_jsonl(tmp_path / "d.jsonl", skip_blank=False) == [{"a": 1}, {"a": "x\u2028y"}]


def test_prepare_output_with_line_separators_reads_back(tmp_path):
    """The stage writes what the next stage reads: questions holding U+2028, U+0085 and a form feed."""
    rows = [{"question": f"How many{sep}heads are older than {n}?", "context": "CREATE TABLE head (age INTEGER)",
             "answer": f"SELECT COUNT(*) FROM head WHERE age > {n}"}
            for n, sep in enumerate(["\u2028", "\x85", "\x0c", "\u2029", " "] * 4)]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"].update({"dataset": "data.jsonl", "train_size": 16, "test_size": 4})  # every row
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run([sys.executable, str(ROOT / "stages/prepare.py"), "--out", "prep", "--stats", "s.json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    back = read_jsonl(tmp_path / "prep/train.jsonl") + read_jsonl(tmp_path / "prep/test.jsonl")
    assert sorted(r["question"] for r in back) == sorted(r["question"] for r in rows)


@pytest.mark.parametrize("content,blank_line", [
    ('{"p": 1}\n{"p": 2}\n\n{"p": 3}\n', 3),
    ('\n{"p": 1}\n', 1),
    ('{"p": 1}\n  \r\n{"p": 2}', 2),
])
def test_blank_line_is_an_error_where_lines_correspond(tmp_path, content, blank_line):
    f = tmp_path / "preds.jsonl"
    f.write_text(content)
    assert len(read_jsonl(f)) == content.count('"p"')  # the default skips it
    with pytest.raises(SqltuneError, match=rf"preds.jsonl, line {blank_line} is blank; every line must hold one "
                                           r"JSON object \(one prediction per data row\)"):
        read_jsonl(f, skip_blank=False)


def test_trailing_newlines_are_no_blank_line(tmp_path):
    f = tmp_path / "preds.jsonl"
    f.write_text('{"p": 1}\n{"p": 2}\n\n\r\n\n')
    assert read_jsonl(f, skip_blank=False) == [{"p": 1}, {"p": 2}]


# ----------------------------------------------------------------------------------- prepare

ROWS = [{"question": f"How many heads are older than {n}?", "context": f"CREATE TABLE head{n % 3} (age INTEGER)",
         "answer": f"SELECT COUNT(*) FROM head{n % 3} WHERE age > {n}"} for n in range(30)]


def params(**kw) -> PrepareParams:
    return PrepareParams(**{"dataset": "embedded", "train_size": 20, "test_size": 6, **kw})


def write_rows(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def keys(rows):
    return {(r["question"], r["context"]) for r in rows}


def test_embedded_set_doubled_gives_the_same_split_and_no_test_question_in_train(tmp_path):
    embedded = load_rows("embedded")
    doubled = write_rows(tmp_path / "doubled.jsonl", embedded + embedded)
    p = params(train_size=320, test_size=96)
    train0, test0, stats0 = build_splits(p, 42)
    train, test, stats = build_splits(p.model_copy(update={"dataset": str(doubled)}), 42)
    assert not keys(train) & keys(test)
    assert (train, test) == (train0, test0)
    assert stats["duplicate_rows"] == len(embedded) and stats["loaded"] == 2 * len(embedded)
    assert stats0["duplicate_rows"] == 0 and stats["dropped"] == {}


def test_duplicates_are_reported_not_fatal(tmp_path, capsys):
    f = write_rows(tmp_path / "d.jsonl", ROWS + ROWS[:20])  # 40% duplicates
    train, test, stats = build_splits(params(dataset=str(f), max_dropped_fraction=0.0), 0)
    assert stats["duplicate_rows"] == 20 and stats["dropped"] == {}
    assert len({json.dumps(r, sort_keys=True) for r in train + test}) == len(train + test) == 26


def test_train_rows_sharing_a_test_question_are_passed_over_and_the_test_slice_kept():
    # Same question and schema, a differently written answer: not duplicates, still the same exercise.
    variants = [{**r, "answer": r["answer"].replace("COUNT(*)", "count(age)")} for r in ROWS]
    rows = ROWS + variants
    train, test, passed_over = split_counted(rows, 20, 6, "random", seed=5)
    order = rows[:]
    random.Random(5).shuffle(order)
    assert test == order[20:26]  # the slice a split without the rule takes
    assert len(train) == 20 and not keys(train) & keys(test)
    assert passed_over == sum(1 for r in order[:20] if (r["question"], r["context"]) in keys(test)) > 0
    with pytest.raises(SqltuneError, match=r"only \d+ train rows are left .* fewer than prepare.train_size \(48\)"):
        split_counted(rows, 48, 12, "random", seed=5)


def test_build_splits_counts_train_rows_in_test(tmp_path):
    variants = [{**r, "answer": r["answer"].replace("COUNT(*)", "count(age)")} for r in ROWS]
    f = write_rows(tmp_path / "d.jsonl", ROWS + variants)
    train, test, stats = build_splits(params(dataset=str(f)), 3)
    assert not keys(train) & keys(test) and len(train) == 20
    assert stats["train_rows_in_test"] > 0 and stats["duplicate_rows"] == 0


def test_separate_test_source_keeps_its_questions_out_of_train(tmp_path):
    test_rows = [{**r, "question": "T " + r["question"]} for r in ROWS]
    leaked = [{**r, "answer": r["answer"] + " AND age > 0"} for r in test_rows[:10]]  # same question and schema
    f = write_rows(tmp_path / "train.jsonl", ROWS + leaked)
    g = write_rows(tmp_path / "test.jsonl", test_rows + test_rows[:3])
    trains = []
    for offset in (0, 5):
        train, test, stats = build_splits(
            params(dataset=str(f), test_dataset=str(g), train_size=30, test_size=5, test_offset=offset), 0)
        assert len(train) == 30 and not keys(train) & keys(test_rows)
        assert stats["train_rows_in_test"] == 10 and stats["test_loaded"] == 33
        assert len(keys(test)) == len(test) == 5 - stats["test_duplicate_rows"]
        trains.append(train)
    assert trains[0] == trains[1]  # whatever the slice, the same train rows: DVC need not retrain


def test_test_slice_duplicates_are_dropped_from_the_slice(tmp_path):
    test_rows = [{**r, "question": "T " + r["question"]} for r in ROWS[:6]]
    f = write_rows(tmp_path / "train.jsonl", ROWS)
    g = write_rows(tmp_path / "test.jsonl", test_rows * 2)
    _, test, stats = build_splits(params(dataset=str(f), test_dataset=str(g), train_size=10, test_size=12), 0)
    assert stats["test_duplicate_rows"] == 6 and sorted(r["question"] for r in test) == sorted(
        r["question"] for r in test_rows)


WRITING_ANSWERS = [
    "INSERT INTO head0 VALUES (1)", "UPDATE head0 SET age = 1", "DELETE FROM head0", "DROP TABLE head0",
    "ATTACH DATABASE 'other.db' AS other", "PRAGMA table_info(head0)", "SELECT age FROM head0; DROP TABLE head0",
    "SELECT age FROM head0; SELECT 1",
]


def test_writing_gold_answers_are_dropped_as_destructive():
    bad = [{**ROWS[0], "answer": a} for a in WRITING_ANSWERS]
    typo = {**ROWS[0], "answer": "SELEC age; FRM head0"}
    kept, dropped = clean_rows(ROWS + bad + [typo])
    assert len(kept) == len(ROWS)
    assert dropped == {"destructive_sql": len(WRITING_ANSWERS), "unparsable_sql": 1}


def test_destructive_rows_count_toward_the_threshold(tmp_path):
    f = write_rows(tmp_path / "d.jsonl", ROWS + [{**ROWS[0], "answer": "DELETE FROM head0"}] * 3)
    with pytest.raises(SqltuneError, match=r"3 of 33 rows .*destructive_sql: 3.*max_dropped_fraction"):
        build_splits(params(dataset=str(f)), 0)


def test_flat_stats_hold_only_scalars_and_every_reason(tmp_path):
    f = write_rows(tmp_path / "d.jsonl", ROWS + [{**ROWS[0], "answer": "DROP TABLE head0"}, ROWS[1]])
    g = write_rows(tmp_path / "t.jsonl", [{**r, "question": "T " + r["question"]} for r in ROWS]
                   + [{**ROWS[2], "answer": "SELEC"}])
    _, _, stats = build_splits(params(dataset=str(f), test_dataset=str(g), train_size=20, test_size=5,
                                      max_dropped_fraction=0.1), 0)
    flat = flat_stats(stats)
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat.values()), flat
    assert {f"dropped_{r}" for r in DROP_REASONS} | {f"test_dropped_{r}" for r in DROP_REASONS} <= set(flat)
    assert (flat["loaded"], flat["dropped"], flat["dropped_destructive_sql"], flat["dropped_empty_field"]) == (32, 1, 1, 0)
    assert (flat["test_loaded"], flat["test_dropped"], flat["test_dropped_unparsable_sql"]) == (31, 1, 1)
    assert flat["duplicate_rows"] == 1 and flat["train_rows_in_test"] == 0


def test_hub_revision_reaches_load_dataset(monkeypatch, tmp_path):
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, **kw: calls.append((name, kw)) or ROWS)
    p = params(dataset="some-org/sql-set").model_copy(update={"revision": "3f2c1ab"})
    train, _, _ = build_splits(p, 0)
    assert calls == [("some-org/sql-set", {"split": "train", "revision": "3f2c1ab"})] and len(train) == 20
    folder = tmp_path / "local-set"  # a local dataset folder has no revision to pin
    folder.mkdir()
    calls.clear()
    load_rows(str(folder), revision="3f2c1ab")
    assert calls == [(str(folder), {"split": "train"})]
