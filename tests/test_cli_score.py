"""`sqltune score`: happy path and user errors (exit 2, message, no traceback)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from sqltune.cli import main

REPO = Path(__file__).resolve().parents[1]
CTX = "CREATE TABLE head (age INTEGER, name VARCHAR, born_state VARCHAR)"
DATA = [
    {"question": "How many heads?", "context": CTX, "answer": "SELECT count(*) FROM head", "source": "a"},
    {"question": "Old heads?", "context": CTX, "answer": "SELECT name FROM head WHERE age > 56", "source": "b"},
    {"question": "From Alabama?", "context": CTX, "answer": 'SELECT name FROM head WHERE born_state = "Alabama"'},
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sqltune.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=60
    )


@pytest.fixture
def files(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", DATA)
    preds = write_jsonl(
        tmp_path / "preds.jsonl",
        [
            {"prediction": "```sql\nSELECT COUNT(*) FROM head;\n```"},
            {"prediction": "SELECT name FROM head WHERE age >= 56"},
            {"prediction": "SELECT name FROM head WHERE born_state = 'Alabama'"},
        ],
    )
    return tmp_path, data, preds


def test_score_happy_path_subprocess(files):
    tmp, data, preds = files
    out = tmp / "per_example.jsonl"
    proc = run_cli("score", "--data", str(data), "--predictions", str(preds), "--out", str(out), "--n-databases", "4")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["n"] == 3
    assert summary["exact_match"] == pytest.approx(2 / 3)
    assert summary["execution_accuracy"] == pytest.approx(2 / 3)
    assert set(summary["by_source"]) == {"a", "b", "unknown"}
    per = [json.loads(line) for line in out.read_text().splitlines()]
    assert [p["execution_match"] for p in per] == [True, False, True]
    assert per[0]["prediction"] == "SELECT COUNT(*) FROM head"
    assert not list(tmp.glob(".*.tmp"))  # no temp file left behind


def test_score_in_process_main(files, capsys):
    _, data, preds = files
    with pytest.raises(SystemExit) as exc:
        main(["score", "--data", str(data), "--predictions", str(preds), "--n-databases", "2", "--seed", "3"])
    assert exc.value.code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["settings"]["n_databases"] == 2 and summary["settings"]["seed"] == 3


def test_score_real_db_dir(tmp_path):
    c = sqlite3.connect(tmp_path / "mini.sqlite")
    c.execute("CREATE TABLE t (a INTEGER)")
    c.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
    c.commit()
    c.close()
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "context": "CREATE TABLE t (a INTEGER)",
                                               "answer": "SELECT a FROM t", "db_id": "mini"}])
    preds = write_jsonl(tmp_path / "p.jsonl", [{"prediction": "SELECT a FROM t ORDER BY a DESC"}])
    with pytest.raises(SystemExit) as exc:
        main(["score", "--data", str(data), "--predictions", str(preds), "--db-dir", str(tmp_path)])
    assert exc.value.code == 0


def _assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in proc.stderr, (n, proc.stderr)


def test_error_missing_file(files):
    tmp, data, _ = files
    proc = run_cli("score", "--data", str(data), "--predictions", str(tmp / "nope.jsonl"))
    _assert_user_error(proc, "nope.jsonl", "not found")


def test_error_count_mismatch(files):
    tmp, data, _ = files
    preds = write_jsonl(tmp / "short.jsonl", [{"prediction": "SELECT 1"}])
    proc = run_cli("score", "--data", str(data), "--predictions", str(preds))
    _assert_user_error(proc, "3 rows", "has 1", "one prediction per data row")


def test_error_invalid_json_names_line(files):
    tmp, data, _ = files
    preds = write_jsonl(tmp / "bad.jsonl", [{"prediction": "SELECT 1"}, "{not json", {"prediction": "x"}])
    proc = run_cli("score", "--data", str(data), "--predictions", str(preds))
    _assert_user_error(proc, "bad.jsonl, line 2", "invalid JSON")


def test_error_missing_key_names_line(files):
    tmp, _, preds = files
    rows = [dict(DATA[0]), {k: v for k, v in DATA[1].items() if k != "answer"}, dict(DATA[2])]
    data = write_jsonl(tmp / "nokey.jsonl", rows)
    proc = run_cli("score", "--data", str(data), "--predictions", str(preds))
    _assert_user_error(proc, "nokey.jsonl row 2", "'answer'")


def test_error_missing_prediction_key(files):
    tmp, data, _ = files
    preds = write_jsonl(tmp / "p.jsonl", [{"prediction": "SELECT 1"}, {"pred": "x"}, {"prediction": "x"}])
    proc = run_cli("score", "--data", str(data), "--predictions", str(preds))
    _assert_user_error(proc, "p.jsonl row 2", "'prediction'")


def test_error_bad_context(files):
    tmp, _, preds = files
    rows = [dict(DATA[0]), {**DATA[1], "context": "this is not DDL"}, dict(DATA[2])]
    data = write_jsonl(tmp / "ctx.jsonl", rows)
    proc = run_cli("score", "--data", str(data), "--predictions", str(preds))
    _assert_user_error(proc, "data row 2", "context")


def test_error_missing_db_file(files, tmp_path):
    tmp, _, preds = files
    rows = [{**r, "db_id": "ghost"} for r in DATA]
    data = write_jsonl(tmp / "db.jsonl", rows)
    dbdir = tmp_path / "dbs"
    dbdir.mkdir()
    proc = run_cli("score", "--data", str(data), "--predictions", str(preds), "--db-dir", str(dbdir))
    _assert_user_error(proc, "ghost.sqlite")


def test_error_in_process_exit_code(files, capsys):
    tmp, data, _ = files
    with pytest.raises(SystemExit) as exc:
        main(["score", "--data", str(data), "--predictions", str(tmp / "missing.jsonl")])
    assert exc.value.code == 2
    assert "error: " in capsys.readouterr().err


def test_out_not_written_on_error(files):
    tmp, data, _ = files
    out = tmp / "out.jsonl"
    preds = write_jsonl(tmp / "short.jsonl", [{"prediction": "SELECT 1"}])
    proc = run_cli("score", "--data", str(data), "--predictions", str(preds), "--out", str(out))
    assert proc.returncode == 2 and not out.exists()


def test_value_case_option(tmp_path):
    """--value-case insensitive forgives only the value's case; exact stays the default."""
    data = write_jsonl(tmp_path / "data.jsonl", DATA[2:])
    preds = write_jsonl(tmp_path / "preds.jsonl",
                        [{"prediction": "SELECT name FROM head WHERE born_state = 'alabama'"}])
    args = ["score", "--data", str(data), "--predictions", str(preds)]
    scores = {}
    for extra in ([], ["--value-case", "insensitive"]):
        done = run_cli(*args, *extra)
        assert done.returncode == 0, done.stderr
        scores[tuple(extra)] = json.loads(done.stdout)["execution_accuracy"]
    assert scores == {(): 0.0, ("--value-case", "insensitive"): 1.0}
    bad = run_cli(*args, "--value-case", "insensitive", "--db-dir", str(tmp_path))
    assert bad.returncode == 2 and "synthesized databases only" in bad.stderr and "Traceback" not in bad.stderr
