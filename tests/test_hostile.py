"""What a user or a model writes can't delete files, stall scoring, exhaust memory or skew a score:
hard per-query deadlines in worker processes, result and memory caps, SQLite-consistent snapshots of
real databases, db_id confinement, and the CLI's refusals of bad output paths and inputs."""

from __future__ import annotations

import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sqltune import sandbox
from sqltune.errors import SqltuneError
from sqltune.sandbox import KILL_MARGIN_S, WORKER_MEMORY_BYTES, WorkerPool, run_untrusted, snapshot_database
from sqltune.scoring import MAX_PREDICTION_CHARS, real_database, score_example, score_rows

REPO = Path(__file__).resolve().parents[1]
CTX = "CREATE TABLE t (a INTEGER, b TEXT)"
ROW = {"question": "q", "context": CTX, "answer": "SELECT a FROM t"}
TIMEOUT = 0.5
# Slack for starting a replacement worker and for a loaded 2-core machine, on top of the margin.
SLACK_S = 0.6

# One call of a string function: SQLite's progress handler never runs inside it.
SLOW_CALLS = [
    "SELECT length(printf('%.*c', 2000000000, 'a'))",
    "SELECT instr(printf('%.*c', 9000000, 'a'), printf('%.*c', 4000000, 'a') || 'b')",
]


def cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sqltune.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


def user_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for n in needles:
        assert n in proc.stderr, (n, proc.stderr)


def make_db(path: Path, rows=((1, "x"), (2, "y"))) -> Path:
    c = sqlite3.connect(path)
    c.execute("CREATE TABLE t (a INTEGER, b TEXT)")
    c.executemany("INSERT INTO t VALUES (?, ?)", rows)
    c.commit()
    c.close()
    return path


# ------------------------------------------------------------------ time limits


@pytest.mark.parametrize("sql", SLOW_CALLS)
def test_one_long_function_call_is_stopped_at_the_limit(tmp_path, sql):
    db = make_db(tmp_path / "d.sqlite")
    t0 = time.monotonic()
    r = run_untrusted(db, sql, timeout_s=TIMEOUT, max_rows=10)
    assert r.error == "timeout"
    assert time.monotonic() - t0 < TIMEOUT + KILL_MARGIN_S + SLACK_S


def test_scoring_stops_slow_predictions_on_every_database_and_goes_on():
    preds = SLOW_CALLS + ["SELECT a FROM t"]
    t0 = time.monotonic()
    summary, per = score_rows([ROW] * 3, preds, n_databases=8, timeout_s=TIMEOUT, workers=1)
    # One stop per slow example, not one per database: the example ends at its first timeout.
    assert time.monotonic() - t0 < 2 * (TIMEOUT + KILL_MARGIN_S + SLACK_S) + 2.0
    assert [p["error"] for p in per] == ["timeout", "timeout", None]
    assert per[2]["execution_match"] and summary["n_correct"] == 1
    assert all(p["parse_ok"] for p in per)  # the checks done before the kill are kept


def test_a_slow_gold_query_is_a_gold_error_not_a_wrong_prediction():
    row = {**ROW, "answer": SLOW_CALLS[0]}
    _, per = score_rows([row], ["SELECT 1"], n_databases=2, timeout_s=TIMEOUT, workers=1)
    assert per[0]["gold_error"] and per[0]["error"] == "gold_error" and "timeout" in per[0]["error_message"]


def _hostile(rng: random.Random) -> str:
    """Generated hostile SQL: long, nested, recursive, blob- and string-heavy, many calls."""
    n = rng.choice([10, 1000, 10**6, 9 * 10**6, 2 * 10**9])
    atoms = [f"printf('%.*c', {n}, 'a')", f"zeroblob({min(n, 9 * 10**6)})", f"randomblob({min(n, 10**6)})",
             f"hex(zeroblob({min(n, 4 * 10**6)}))", "b", "'x'"]
    funcs = ["upper({})", "replace({}, 'a', 'bb')", "length({})", "hex({})", "substr({}, 2)", "trim({})",
             "instr({0}, {0} || 'b')", "({0} LIKE '%a%a%a%a%b')", "quote({})"]
    expr = rng.choice(atoms)
    for _ in range(rng.randint(1, 6)):
        expr = rng.choice(funcs).format(expr)
    shape = rng.choice(["plain", "recursive", "nested", "many", "group"])
    if shape == "recursive":
        return (f"WITH RECURSIVE r(i, s) AS (SELECT 1, {expr} UNION ALL SELECT i + 1, s FROM r "
                f"WHERE i < {rng.choice([10, 10**4, 10**7])}) SELECT i, s FROM r")
    if shape == "nested":
        inner = f"SELECT {expr} AS s FROM t"
        for _ in range(rng.randint(5, 40)):
            inner = f"SELECT s FROM ({inner})"
        return inner
    if shape == "many":
        return "SELECT " + ", ".join([expr] * rng.randint(5, 60)) + " FROM t"
    if shape == "group":
        return (f"WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 100000) "
                f"SELECT group_concat({expr}) FROM r ORDER BY random()")
    return f"SELECT {expr} FROM t"


def test_fuzz_hostile_sql_is_bounded_in_time_and_memory(tmp_path):
    db = make_db(tmp_path / "d.sqlite")
    rng = random.Random(7)
    queries = [_hostile(rng) for _ in range(40)]
    parent_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    pool = WorkerPool(1)
    payload = lambda q: {"db": str(db), "sql": q, "timeout_s": TIMEOUT, "max_rows": 10_000,  # noqa: E731
                         "max_bytes": sandbox.DEFAULT_MAX_RESULT_BYTES}
    kinds = []
    try:
        for q in queries:
            t0 = time.monotonic()
            r = pool.map("sqltune.sandbox:query_task", [payload(q)], lambda p, stop: stop)[0]
            elapsed = time.monotonic() - t0
            assert elapsed < TIMEOUT + KILL_MARGIN_S + SLACK_S, (round(elapsed, 2), q[:200])
            kinds.append(r.kind if isinstance(r, sandbox.Stop) else (r.error or "ok"))
    finally:
        pool.close()
    assert pool.peak_rss_bytes < WORKER_MEMORY_BYTES + 512 * 2**20
    parent_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert parent_after - parent_before < 256 * 2**20  # results never reach the parent whole
    # The generator really is hostile: it hits the limits, not only syntax errors.
    assert {"timeout"} & set(kinds) and len(set(kinds)) >= 3, kinds
    # ... and the same SQL through the scorer, two workers, stays bounded per example.
    t0 = time.monotonic()
    _, per = score_rows([ROW] * len(queries), queries, n_databases=2, timeout_s=TIMEOUT, workers=2)
    per_query_bound = TIMEOUT + KILL_MARGIN_S + SLACK_S
    assert time.monotonic() - t0 < len(queries) * 4 * per_query_bound / 2 + 5
    assert not any(p["execution_match"] for p in per)


def test_quick_queries_pay_little_for_the_deadline():
    rows = [ROW] * 200
    score_rows(rows[:2], ["SELECT a FROM t"] * 2, n_databases=8, workers=1)  # workers started
    t0 = time.perf_counter()
    summary, _ = score_rows(rows, ["SELECT a FROM t"] * 200, n_databases=8, workers=1)
    assert summary["n_correct"] == 200
    assert time.perf_counter() - t0 < 20  # 3,200 queries; a correctness bound, not a benchmark


# ------------------------------------------------------------------ memory and size


def test_large_results_are_capped_in_bytes(tmp_path):
    db = make_db(tmp_path / "d.sqlite")
    sql = ("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 1000) "
           "SELECT zeroblob(1000000) FROM r")
    r = run_untrusted(db, sql, timeout_s=5, max_rows=100_000, max_bytes=16 * 2**20)
    assert r.error == "size_limit"


def test_sorting_huge_values_hits_the_memory_limit_not_the_disk(tmp_path):
    db = make_db(tmp_path / "d.sqlite")
    sql = ("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 400) "
           "SELECT length(randomblob(5000000)) AS n FROM r ORDER BY randomblob(5000000)")
    r = run_untrusted(db, sql, timeout_s=20, max_rows=1000)
    assert r.error in ("memory_limit", "timeout"), r


def test_ask_on_a_table_of_large_blobs_is_one_clear_error(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from sqltune import ask
    from sqltune.cli import main

    db = tmp_path / "blobs.sqlite"
    c = sqlite3.connect(db)
    c.execute("CREATE TABLE t (a INTEGER, b BLOB)")
    c.executemany("INSERT INTO t VALUES (?, zeroblob(5000000))", [(i,) for i in range(8)])
    c.commit()
    c.close()
    monkeypatch.setattr(ask, "predict_sql", lambda *a, **k: "SELECT * FROM t")
    with pytest.raises(SystemExit) as exc:
        main(["ask", "--db", str(db), "--model", str(tiny_model_dir), "all rows"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "larger than 16 MiB" in err and "Traceback" not in err
    names, rows = ask.run_read_only(db, "SELECT a, b FROM t LIMIT 2", timeout_s=5, max_rows=10)
    assert ask.format_table(names, rows).splitlines()[2].endswith("<blob, 5000000 bytes>")


# ------------------------------------------------------------------ real databases


def test_an_uncommitted_write_is_never_seen(tmp_path):
    path = make_db(tmp_path / "live.sqlite")
    writer = sqlite3.connect(path)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO t VALUES (3, 'uncommitted')")  # holds a reserved lock, not committed
    row = {"question": "q", "db_id": "live", "context": CTX, "answer": "SELECT count(*) FROM t"}
    try:
        _, per = score_rows([row, row], ["SELECT 2", "SELECT 3"], db_dir=tmp_path, workers=1)
    finally:
        writer.rollback()
        writer.close()
    assert [p["execution_match"] for p in per] == [True, False]


def test_a_hot_journal_is_rolled_back_in_the_copy_and_the_file_is_untouched(tmp_path):
    code = f"""
import os, sqlite3
c = sqlite3.connect({str(tmp_path / 'hot.sqlite')!r})
c.execute('PRAGMA cache_size = 1')
c.execute('CREATE TABLE t (a INTEGER, b TEXT)')
c.executemany('INSERT INTO t VALUES (?, ?)', [(1, 'x'), (2, 'y')])
c.commit()
c.execute('BEGIN')
c.execute("INSERT INTO t SELECT 99, hex(randomblob(3000)) FROM (WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 3000) SELECT i FROM r)")
os._exit(0)  # killed mid-transaction: a hot journal is left behind
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    path = tmp_path / "hot.sqlite"
    assert Path(f"{path}-journal").is_file()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    snap = snapshot_database(path, tmp_path / "snap.db")
    assert sqlite3.connect(snap).execute("SELECT count(*) FROM t").fetchone() == (2,)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "snap.db"} == before


def test_committed_rows_in_a_wal_are_seen(tmp_path):
    code = f"""
import os, sqlite3
c = sqlite3.connect({str(tmp_path / 'wal.sqlite')!r})
c.execute('PRAGMA journal_mode = WAL')
c.execute('PRAGMA wal_autocheckpoint = 0')
c.execute('CREATE TABLE t (a INTEGER, b TEXT)')
c.executemany('INSERT INTO t VALUES (?, ?)', [(1, 'x'), (2, 'y'), (3, 'z')])
c.commit()
os._exit(0)  # never checkpointed: the rows live only in the -wal file
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    row = {"question": "q", "db_id": "wal", "context": CTX, "answer": "SELECT count(*) FROM t"}
    _, per = score_rows([row], ["SELECT 3"], db_dir=tmp_path, workers=1)
    assert per[0]["execution_match"] and not per[0]["gold_error"]


def test_a_database_locked_by_a_writer_is_named_with_its_lock(tmp_path):
    path = make_db(tmp_path / "busy.sqlite")
    code = f"""
import sqlite3, sys, time
c = sqlite3.connect({str(path)!r}, isolation_level=None)
c.execute('BEGIN EXCLUSIVE')
print('locked', flush=True)
time.sleep(30)
"""
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SqltuneError, match=rf"locked by another program: an exclusive lock .*process {holder.pid}"):
            snapshot_database(path, tmp_path / "snap.db", busy_timeout_s=0.2)
        from sqltune import ask

        with pytest.raises(SqltuneError, match="is locked by another program"):
            ask.open_read_only(path)
    finally:
        holder.kill()
        holder.wait()


def test_a_real_database_is_copied_once_per_version(tmp_path):
    path = make_db(tmp_path / "once.sqlite")
    row = {"question": "q", "db_id": "once", "context": CTX, "answer": "SELECT count(*) FROM t"}
    n_before = len(sandbox._SNAPSHOTS)
    score_rows([row] * 20, ["SELECT 2"] * 20, db_dir=tmp_path, workers=2)
    assert len(sandbox._SNAPSHOTS) == n_before + 1
    make_db(tmp_path / "other.sqlite")
    os.replace(tmp_path / "other.sqlite", path)  # a new version of the file: a new snapshot
    score_rows([row], ["SELECT 2"], db_dir=tmp_path, workers=2)
    assert len(sandbox._SNAPSHOTS) == n_before + 2


@pytest.mark.parametrize("db_id", ["../outside", "/etc/passwd", "sub/inner", "..", "a\\b", "x\x00y"])
def test_db_id_must_name_a_file_inside_db_dir(tmp_path, db_id):
    dbs = tmp_path / "dbs"
    dbs.mkdir()
    make_db(tmp_path / "outside.sqlite")
    (dbs / "sub").mkdir()
    make_db(dbs / "sub" / "inner.sqlite")
    with pytest.raises(SqltuneError, match="not a plain file name"):
        real_database(dbs, db_id)


def test_a_symlink_out_of_db_dir_is_refused_one_inside_is_fine(tmp_path):
    dbs = tmp_path / "dbs"
    dbs.mkdir()
    make_db(tmp_path / "secret.sqlite")
    (dbs / "leak.sqlite").symlink_to(tmp_path / "secret.sqlite")
    make_db(dbs / "real.sqlite")
    (dbs / "alias.sqlite").symlink_to(dbs / "real.sqlite")
    row = {"question": "q", "db_id": "leak", "context": CTX, "answer": "SELECT count(*) FROM t"}
    with pytest.raises(SqltuneError, match="outside"):
        score_rows([row], ["SELECT 2"], db_dir=dbs, workers=1)
    _, per = score_rows([{**row, "db_id": "alias"}], ["SELECT 2"], db_dir=dbs, workers=1)
    assert per[0]["execution_match"]


def test_an_empty_database_file_is_an_error_not_an_empty_database(tmp_path):
    (tmp_path / "zero.sqlite").write_bytes(b"")
    row = {"question": "q", "db_id": "zero", "context": CTX, "answer": "SELECT count(*) FROM t"}
    with pytest.raises(SqltuneError, match="empty \\(0 bytes\\)"):
        score_rows([row], ["SELECT 2"], db_dir=tmp_path, workers=1)


def test_a_full_temp_folder_is_one_clear_error(tmp_path, monkeypatch):
    import errno

    path = make_db(tmp_path / "d.sqlite")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(sandbox, "_backup_to", full)
    with pytest.raises(SqltuneError, match="No space left on device.*TMPDIR"):
        snapshot_database(path, tmp_path / "snap.db")


# ------------------------------------------------------------------ predictions


def test_a_very_long_prediction_is_refused_fast():
    pred = "SELECT " + " + ".join(["a"] * (MAX_PREDICTION_CHARS // 3)) + " FROM t"
    t0 = time.monotonic()
    out = score_example(ROW, pred, n_databases=2)
    assert out["error"] == "refused" and not out["execution_match"]
    assert time.monotonic() - t0 < 1.0


def test_long_predictions_under_the_cap_are_checked_within_the_limit():
    pred = "SELECT " + " + ".join(["(a)"] * 1000) + " FROM t WHERE " + " OR ".join(["a = 1"] * 250)
    assert len(pred) < MAX_PREDICTION_CHARS
    t0 = time.monotonic()
    _, per = score_rows([ROW], [pred], n_databases=2, timeout_s=TIMEOUT, workers=1)
    assert time.monotonic() - t0 < 3 * (TIMEOUT + KILL_MARGIN_S + SLACK_S) + 1.0
    assert per[0]["error"] in (None, "timeout", "error")


def test_parallel_scoring_gives_the_serial_verdicts():
    from sqltune.data import embedded_path
    from sqltune.io import read_jsonl

    rows = read_jsonl(embedded_path())[:300]
    rng = random.Random(3)
    preds = []
    for r in rows:  # right, wrong, broken and refused predictions alike
        preds.append(rng.choice([r["answer"], r["answer"].replace("=", "!=", 1), "SELECT", "DROP TABLE x",
                                 r["answer"] + " LIMIT 1", None]))
    serial = [score_example(r, p, n_databases=4, seed=5) for r, p in zip(rows, preds)]
    for workers in (1, 2):
        summary, per = score_rows(rows, preds, n_databases=4, seed=5, workers=workers)
        assert [{k: v for k, v in e.items() if k not in ("index", "db_id")} for e in per] == serial
    assert 0 < summary["n_correct"] < len(rows)


# ------------------------------------------------------------------ the CLI


@pytest.fixture
def files(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(ROW) + "\n" + json.dumps(ROW) + "\n")
    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps({"prediction": "SELECT a FROM t"}) + "\n" + json.dumps({"prediction": "SELECT 1"}) + "\n")
    return tmp_path, data, preds


@pytest.mark.parametrize("out", [".", "..", "/", "existing", "existing/"])
def test_out_naming_a_directory_deletes_nothing(files, out):
    tmp, data, preds = files
    (tmp / "existing").mkdir()
    (tmp / "existing" / "keep.txt").write_text("keep")
    (tmp / ".git").mkdir()
    (tmp / ".git" / "HEAD").write_text("ref")
    before = sorted(str(p) for p in tmp.rglob("*"))
    proc = cli("score", "--data", str(data), "--predictions", str(preds), "--out", out, cwd=tmp)
    user_error(proc, "directory")
    assert sorted(str(p) for p in tmp.rglob("*")) == before
    assert (tmp / "existing" / "keep.txt").read_text() == "keep"


def test_unwritable_out_fails_before_scoring(files):
    tmp, data, preds = files
    (tmp / "plain").write_text("a file")
    proc = cli("score", "--data", str(data), "--predictions", str(preds), "--out", str(tmp / "plain" / "v.jsonl"))
    user_error(proc, "cannot write", "plain")
    assert (tmp / "plain").read_text() == "a file"


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_timeout_must_be_a_positive_finite_number(files, value):
    _, data, preds = files
    user_error(cli("score", "--data", str(data), "--predictions", str(preds), "--timeout", value), "--timeout")


def test_a_blank_line_in_predictions_is_an_error_not_a_shift(files):
    tmp, data, _ = files
    preds = tmp / "gappy.jsonl"
    preds.write_text(json.dumps({"prediction": "SELECT a FROM t"}) + "\n\n" + json.dumps({"prediction": "SELECT 1"}) + "\n")
    user_error(cli("score", "--data", str(data), "--predictions", str(preds)), "line 2 is blank")


def test_bad_workers_value(files):
    _, data, preds = files
    user_error(cli("score", "--data", str(data), "--predictions", str(preds), "--workers", "many"), "--workers")


# ------------------------------------------------------------------ ask


def test_ask_runs_sql_that_ends_in_a_comment(tmp_path):
    from sqltune import ask

    db = make_db(tmp_path / "d.sqlite")
    names, rows = ask.run_read_only(db, "SELECT a FROM t ORDER BY a -- the ids", timeout_s=2, max_rows=10)
    assert names == ["a"] and rows == [(1,), (2,)]


def test_ask_schema_longer_than_the_context_says_what_to_do(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from sqltune import ask
    from sqltune.cli import main

    db = tmp_path / "wide.sqlite"
    c = sqlite3.connect(db)
    for i in range(60):
        c.execute(f"CREATE TABLE table_{i} ({', '.join(f'column_{i}_{j} INTEGER' for j in range(40))})")
    c.execute("CREATE TABLE people (name TEXT, age INTEGER)")
    c.execute("INSERT INTO people VALUES ('ada', 36)")
    c.commit()
    c.close()
    calls = []
    monkeypatch.setattr(ask, "predict_sql", lambda m, t, p, schema, q, n, *_: calls.append(schema) or "SELECT name FROM people")
    with pytest.raises(SystemExit) as exc:
        main(["ask", "--db", str(db), "--model", str(tiny_model_dir), "who is there?"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "exceeds the model's context" in err and "--tables" in err and not calls
    with pytest.raises(SystemExit) as exc:
        main(["ask", "--db", str(db), "--model", str(tiny_model_dir), "--tables", "People", "who is there?"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and calls == ["CREATE TABLE people (name TEXT, age INTEGER)"] and "ada" in out
    with pytest.raises(SystemExit) as exc:
        main(["ask", "--db", str(db), "--model", str(tiny_model_dir), "--tables", "nobody", "who?"])
    assert exc.value.code == 2 and "--tables names nobody" in capsys.readouterr().err
