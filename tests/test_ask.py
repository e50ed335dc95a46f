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
        ask.run_read_only(shop_db, bomb, timeout_s=0.3, max_rows=10)


def test_row_cap(shop_db):
    with pytest.raises(SqltuneError, match="more than 2 rows"):
        ask.run_read_only(shop_db, "SELECT * FROM item", timeout_s=1, max_rows=2)


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


GEO_REQUESTS = [("what is the capital of texas", "SELECT capital FROM state WHERE state_name = 'texas'"),
                ("delete all cities", "DELETE FROM city")]


@pytest.fixture(scope="module")
def geo_model(tokenizer_dir, tmp_path_factory):
    """A merged model made by the train and merge stages (their scripts, as `dvc repro` runs them)
    from a 2-layer random model, taught the two GEO_REQUESTS by heart, with the schema exactly as
    `ask` reads it from geography.sqlite."""
    import subprocess
    import sys

    import yaml
    from dvc_project import ROOT, deep_update, env, tiny_llama

    from sqltune.config import DEFAULT_SYSTEM_PROMPT
    from sqltune.data import to_messages
    from sqltune.io import write_jsonl

    geo_db = ROOT.parent / "shared/benchmarks/geoquery/geography.sqlite"
    if not geo_db.is_file():
        pytest.skip("../shared is absent")
    d = tmp_path_factory.mktemp("geo")
    # No pad token: LlamaModel zeroes the padding row of the (tied) embedding, and with pad = EOS,
    # as in tiny_model_dir, the model could never learn to stop.
    tiny_llama(d / "base-model", tokenizer_dir, pad_token_id=None)

    schema = ask.schema_of(ask.open_read_only(geo_db))
    rows = [{"question": q, "context": schema, "answer": a,
             **to_messages({"question": q, "context": schema, "answer": a}, DEFAULT_SYSTEM_PROMPT)}
            for q, a in GEO_REQUESTS]
    write_jsonl(d / "train.jsonl", rows * 4)
    write_jsonl(d / "test.jsonl", rows)
    params = deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), {
        "model": {"name": str(d / "base-model"), "source": "local"},
        "train": {"lora": {"r": 16, "alpha": 32, "dropout": 0.0},
                  "trainer": {"epochs": 15, "learning_rate": 0.01, "lr_scheduler": "constant", "warmup_ratio": 0.0,
                              "packing": False, "per_device_batch_size": 2, "precision": "fp32",
                              "logging_steps": 10, "save_steps": 10000}},
        "evaluate": {"max_new_tokens": 32}, "merge": {"parity_samples": 2}})
    (d / "params.yaml").write_text(yaml.safe_dump(params))
    common = ["--params", str(d / "params.yaml"), "--base-cache", str(d / "cache"), "--adapter", str(d / "adapter")]
    for cmd in (["stages/train.py", "--data", str(d / "train.jsonl"), "--checkpoints", str(d / "ckpt"),
                 "--live", str(d / "live")],
                ["stages/merge.py", "--data", str(d / "test.jsonl"), "--out", str(d / "merged"),
                 "--metrics", str(d / "merge.json")]):
        done = subprocess.run([sys.executable, *cmd, *common], cwd=ROOT, env=env(), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    return d / "merged"


def test_geoquery_real_question_end_to_end(shared_dir, geo_model, capsys, tmp_path):
    """No stub: `ask` prompts a real (merged) model with the schema it reads from the real GeoQuery
    database, generates greedily, runs the SQL read-only and prints the answer; the model's answer to
    a destructive request is a real DELETE, refused, and the file is unchanged. The 2-layer model
    knows no SQL, it learnt these two answers by heart: the test checks that ask's prompt is the
    training prompt token for token and everything after it (model skill: docs/gpu.md)."""
    import shutil

    db = tmp_path / "geography.sqlite"
    shutil.copy(shared_dir / "benchmarks/geoquery/geography.sqlite", db)
    before = sha(db)

    def ask_cli(question):
        with pytest.raises(SystemExit) as exc:
            main(["ask", "--db", str(db), "--model", str(geo_model), "--max-new-tokens", "32", question])
        out = capsys.readouterr()
        return exc.value.code, out.out, out.err

    code, out, err = ask_cli(GEO_REQUESTS[0][0])
    assert code == 0, err
    assert [line.rstrip() for line in out.splitlines()] == [f"SQL: {GEO_REQUESTS[0][1]}", "capital", "-------",
                                                            "austin", "(1 row)"]
    code, _, err = ask_cli(GEO_REQUESTS[1][0])
    assert code == 2 and "refused to run the generated SQL" in err and "DELETE FROM city" in err
    assert sha(db) == before


def test_ask_renders_the_schema_as_the_training_data_does(tmp_path):
    """The schema ask reads from a database is the training rows' context, character for character,
    for every context of the embedded dataset that SQLite can create."""
    import json
    from importlib.resources import files

    contexts = {json.loads(line)["context"]
                for line in files("sqltune.resources").joinpath("embedded_sql.jsonl").read_text().splitlines()}
    for k, context in enumerate(sorted(contexts)):
        conn = sqlite3.connect(tmp_path / f"{k}.sqlite")
        conn.executescript(context)
        conn.close()
        assert ask.schema_of(ask.open_read_only(tmp_path / f"{k}.sqlite")) == context


def test_ask_drops_keys_references_defaults_and_comments(tmp_path):
    db = tmp_path / "user.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript('''
        CREATE TABLE "Author" (
            author_id integer PRIMARY KEY AUTOINCREMENT, -- surrogate key
            "full name" text NOT NULL DEFAULT '',
            born varchar(10)
        );
        CREATE TABLE book (id INT, author_id INTEGER REFERENCES "Author"(author_id) ON DELETE CASCADE,
                           price double CHECK (price > 0), UNIQUE (id), FOREIGN KEY (id) REFERENCES book(id));
    ''')
    conn.close()
    assert ask.schema_of(ask.open_read_only(db)) == (
        'CREATE TABLE Author (author_id INTEGER, "full name" TEXT, born VARCHAR); '
        "CREATE TABLE book (id INTEGER, author_id INTEGER, price REAL)")
    assert ask.schema_of(ask.open_read_only(db), ["book"]) == "CREATE TABLE book (id INTEGER, author_id INTEGER, price REAL)"


def test_ask_guided_decoding_drops_failing_and_empty_candidates(shop_db, tiny_model_dir, capsys, monkeypatch):
    import sqltune.generation

    cands = ["SELECT nam FROM item", "SELECT name FROM item WHERE price > 100",
             "SELECT name FROM item WHERE price > 10 ORDER BY name"]
    monkeypatch.setattr(sqltune.generation, "generate_candidates", lambda *a, **k: [cands])
    with pytest.raises(SystemExit) as exc:
        main(["ask", "--db", str(shop_db), "--model", str(tiny_model_dir), "--decoding", "beam", "--candidates", "3",
              "which items cost more than 10?"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert out.splitlines()[0] == f"SQL: {cands[2]}" and out.splitlines()[-1] == "(2 rows)"
    assert "3 beam candidates: 2 valid, 1 agreeing" in out


def test_ask_guided_decoding_with_a_real_model(shop_db, tiny_model_dir, capsys):
    """The real path (beams from the model, selection on the database); a random model's SQL is noise,
    so it may fail cleanly after the choice is printed."""
    with pytest.raises(SystemExit) as exc:
        main(["ask", "--db", str(shop_db), "--model", str(tiny_model_dir), "--max-new-tokens", "6",
              "--decoding", "beam", "--candidates", "2", "how many items?"])
    out, err = capsys.readouterr()
    assert exc.value.code in (0, 2) and "Traceback" not in err
    assert "chosen from 2 beam candidates" in out


@pytest.mark.parametrize("flags, message", [(["--candidates", "1"], "--candidates"),
                                            (["--temperature", "0"], "--temperature")])
def test_ask_decoding_flags_are_checked(shop_db, tiny_model_dir, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        main(["ask", "--db", str(shop_db), "--model", str(tiny_model_dir), "--decoding", "sample", *flags, "q?"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error:") and message in err and "Traceback" not in err
