"""`sqltune predict` and `sqltune ask`: generated SQL runs only read-only, on a hardened connection."""

import hashlib
import sqlite3

import pytest

from sqltune import ask
from sqltune.cli import main
from sqltune.errors import SqltuneError


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def shop_db(tmp_path):
    db = tmp_path / "shop.sqlite"
    c = sqlite3.connect(db)
    c.execute("CREATE TABLE item (name VARCHAR, price REAL)")
    c.executemany("INSERT INTO item VALUES (?, ?)", [("pen", 1.5), ("book", 12.0), ("lamp", 30.0)])
    c.commit()
    c.close()
    return db


def run_ask(db, model_dir, question, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["ask", "--db", str(db), "--model", str(model_dir), "--max-new-tokens", "8", question])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_schema_comes_from_the_database(shop_db):
    assert ask.schema_of(ask.open_read_only(shop_db)) == "CREATE TABLE item (name VARCHAR, price REAL)"


def test_ask_runs_a_select_and_prints_a_table(shop_db, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setattr(ask, "predict_sql", lambda *a, **k: "SELECT name FROM item WHERE price > 10 ORDER BY name")
    code, out, _ = run_ask(shop_db, tiny_model_dir, "which items cost more than 10?", capsys)
    assert code == 0
    assert out.splitlines() == ["SQL: SELECT name FROM item WHERE price > 10 ORDER BY name",
                                "name", "----", "book", "lamp", "(2 rows)"]


@pytest.mark.parametrize("sql", ["DELETE FROM item", "DROP TABLE item", "SELECT 1; DELETE FROM item",
                                 "ATTACH DATABASE 'x.db' AS x", "UPDATE item SET price = 0"])
def test_destructive_sql_is_refused_and_the_file_is_untouched(shop_db, tiny_model_dir, capsys, monkeypatch, sql):
    before = sha(shop_db)
    monkeypatch.setattr(ask, "predict_sql", lambda *a, **k: sql)
    code, _, err = run_ask(shop_db, tiny_model_dir, "delete all items", capsys)
    assert code == 2 and "refused to run the generated SQL" in err and "Traceback" not in err
    assert sha(shop_db) == before


def test_writes_are_impossible_even_past_the_check(shop_db):
    conn = ask.open_read_only(shop_db)
    with pytest.raises(sqlite3.DatabaseError):
        conn.execute("DELETE FROM item")


def test_runaway_query_times_out(shop_db):
    bomb = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    with pytest.raises(SqltuneError, match="timeout"):
        ask.run_read_only(ask.open_read_only(shop_db), bomb, timeout_s=0.3, max_rows=10)


def test_row_cap(shop_db):
    with pytest.raises(SqltuneError, match="more than 2 rows"):
        ask.run_read_only(ask.open_read_only(shop_db), "SELECT * FROM item", timeout_s=1, max_rows=2)


def test_missing_database_and_model(tmp_path, shop_db):
    with pytest.raises(SqltuneError, match="not found"):
        ask.open_read_only(tmp_path / "nope.sqlite")
    with pytest.raises(SqltuneError, match="not a model folder"):
        ask.load_model_dir(tmp_path)


def test_predict_prints_only_sql(tiny_model_dir, capsys):
    """The real model path: prompt, greedy generation, SQL extraction (a random model's SQL is noise)."""
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--schema", "CREATE TABLE item (name VARCHAR, price REAL)", "--model",
              str(tiny_model_dir), "--max-new-tokens", "6", "how many items?"])
    assert exc.value.code == 0
    assert len(capsys.readouterr().out.strip().splitlines()) <= 1


def test_geoquery_real_question_end_to_end(shared_dir, tiny_model_dir, capsys, monkeypatch, tmp_path):
    import shutil

    db = tmp_path / "geography.sqlite"
    shutil.copy(shared_dir / "benchmarks/geoquery/geography.sqlite", db)
    before = sha(db)
    seen = {}

    def fake_predict(model, tok, prompt, schema, question, max_new_tokens):
        seen["schema"] = schema  # what the model would be prompted with
        return "SELECT capital FROM state WHERE state_name = 'texas'"

    monkeypatch.setattr(ask, "predict_sql", fake_predict)
    code, out, _ = run_ask(db, tiny_model_dir, "what is the capital of texas", capsys)
    assert code == 0 and "austin" in out
    assert "CREATE TABLE" in seen["schema"] and "state_name" in seen["schema"]
    monkeypatch.setattr(ask, "predict_sql", lambda *a, **k: "DELETE FROM city")
    code, _, err = run_ask(db, tiny_model_dir, "delete all cities", capsys)
    assert code == 2 and "refused" in err
    assert sha(db) == before
