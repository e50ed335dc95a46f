"""Scoring: result comparison rules, synthesis, per-example verdicts, summaries."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from sqltune.errors import SqltuneError
from sqltune.sandbox import run_query
from sqltune.scoring import gold_is_ordered, results_match, score_example, score_rows
from sqltune.synth import build_plan, plan_rows, synthesize

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

CTX = (
    "CREATE TABLE singer (singer_id INTEGER, name VARCHAR, country VARCHAR, age INTEGER); "
    "CREATE TABLE concert (concert_id INTEGER, singer_id INTEGER, year VARCHAR)"
)

HANDMADE = [
    ("SELECT count(*) FROM singer", "aggregate"),
    ("SELECT name FROM singer WHERE age > 30", "plain_where"),
    ("SELECT name FROM singer WHERE country = 'France' AND age >= 20", "plain_where"),
    ('SELECT name FROM singer WHERE country = "France"', "plain_where"),
    ("SELECT country, count(*) FROM singer GROUP BY country", "group_by"),
    ("SELECT name FROM singer ORDER BY age DESC LIMIT 1", "order_limit"),
    ("SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T1.singer_id = T2.singer_id WHERE T2.year = 2014", "join"),
    ("SELECT name FROM singer WHERE age > (SELECT avg(age) FROM singer)", "nested"),
    ("SELECT name FROM singer WHERE singer_id NOT IN (SELECT singer_id FROM concert)", "nested"),
    ("SELECT max(age), min(age) FROM singer WHERE country LIKE '%an%'", "aggregate"),
]


def row(answer, context=CTX, **extra):
    return {"question": "q?", "context": context, "answer": answer, **extra}


# ------------------------------------------------------------ result comparison


def test_multiset_ignores_order_without_order_by():
    assert results_match([[(1,), (2,)]], [[(2,), (1,)]], ordered=False)


def test_duplicates_matter():
    assert not results_match([[(1,), (1,), (2,)]], [[(1,), (2,), (2,)]])
    assert not results_match([[(1,), (1,)]], [[(1,)]])


def test_order_matters_only_when_ordered():
    assert not results_match([[(1,), (2,)]], [[(2,), (1,)]], ordered=True)
    assert results_match([[(1,), (2,)]], [[(1,), (2,)]], ordered=True)


def test_float_tolerance_and_int_float_equality():
    assert results_match([[(1 / 3,)]], [[(0.3333333333,)]])
    assert results_match([[(2,)]], [[(2.0,)]])
    assert results_match([[(12.333333333333334,)]], [[(12.333333333333332,)]])
    assert not results_match([[(1.5,)]], [[(1.51,)]])


def test_column_permutation_allowed_but_count_must_match():
    gold = [[(1, "a"), (2, "b")], [(3, "c")]]
    assert results_match(gold, [[("a", 1), ("b", 2)], [("c", 3)]])
    assert not results_match(gold, [[(1,), (2,)], [(3,)]])
    assert not results_match([[]], [[]], gold_columns=2, pred_columns=1)
    assert results_match([[]], [[]], gold_columns=2, pred_columns=2)
    # columns with equal multisets but mis-paired rows are not a permutation match
    assert not results_match([[(1, "a"), (2, "b")]], [[("b", 1), ("a", 2)]])


def test_every_database_must_match():
    assert not results_match([[(1,)], [(2,)]], [[(1,)], [(3,)]])


def test_gold_is_ordered():
    assert gold_is_ordered("SELECT a FROM t ORDER BY a")
    assert not gold_is_ordered("SELECT a FROM t WHERE b IN (SELECT b FROM u ORDER BY b LIMIT 1)")
    assert gold_is_ordered("SELECT a FROM t UNION SELECT a FROM u ORDER BY a")


# ------------------------------------------------------------------- synthesis


def test_synthesis_is_deterministic_and_varied():
    gold = "SELECT name FROM singer WHERE age > 30"
    plan = build_plan(CTX, gold)
    a = [plan_rows(plan, i, seed=0) for i in range(4)]
    assert a == [plan_rows(build_plan(CTX, gold), i, seed=0) for i in range(4)]
    assert a != [plan_rows(plan, i, seed=1) for i in range(4)]
    sizes = {len(d["singer"]) for d in a}
    assert len(sizes) > 1  # row counts differ between databases
    assert all(5 <= len(d["singer"]) <= 15 for d in a)
    ages = {r[3] for d in a for r in d["singer"]}
    assert {29, 30, 31} <= ages  # literal and neighbours are seeded


def test_synthesis_distinguishes_near_misses():
    gold = "SELECT name FROM singer WHERE age > 30"
    dbs = synthesize(CTX, gold, 8, 0)
    def res(sql):
        return [run_query(db, sql).rows for db in dbs]
    g = res(gold)
    assert any(g)
    for wrong in ("SELECT name FROM singer WHERE age >= 30", "SELECT name FROM singer WHERE age < 30",
                  "SELECT name FROM singer WHERE age > 31", "SELECT country FROM singer WHERE age > 30"):
        assert not results_match(g, res(wrong)), wrong


def test_synthesis_numeric_literal_on_varchar_column_matches():
    ctx = "CREATE TABLE t (no VARCHAR, school VARCHAR)"
    gold = "SELECT school FROM t WHERE no = 21"
    dbs = synthesize(ctx, gold, 8, 0)
    assert any(run_query(db, gold).rows for db in dbs)


def test_synthesis_joins_produce_rows():
    gold = HANDMADE[6][0]
    dbs = synthesize(CTX, gold, 8, 0)
    assert sum(bool(run_query(db, gold).rows) for db in dbs) >= 4


def test_synthesized_databases_are_read_only():
    db = synthesize(CTX, "SELECT name FROM singer", 1, 0)[0]
    assert run_query(db, "DELETE FROM singer").error == "refused"


# ---------------------------------------------------------------- score_example


OPTS = dict(n_databases=8, seed=0, timeout_s=1.0)


def test_gold_vs_itself_matches():
    for gold, _ in HANDMADE:
        out = score_example(row(gold), gold, **OPTS)
        assert out["execution_match"] and out["exact_match"] and out["parse_ok"] and out["schema_valid"], gold
        assert not out["undecidable"] and out["error"] is None


def test_semantically_equal_rewrite_matches_but_not_exact():
    gold = "SELECT name FROM singer WHERE country = 'France' AND age >= 20"
    pred = "select s.name from singer as s where (s.age >= 20) and s.country = \"France\""
    out = score_example(row(gold), pred, **OPTS)
    assert out["execution_match"] and not out["exact_match"] and out["schema_valid"]


def test_wrong_literal_case_is_wrong():
    gold = "SELECT name FROM singer WHERE country = 'France'"
    out = score_example(row(gold), "SELECT name FROM singer WHERE country = 'france'", **OPTS)
    assert not out["execution_match"]


def test_case_insensitive_values_forgive_case_only():
    """WikiSQL's rule: the value's case is forgiven, nothing else is; exact match is unchanged."""
    gold = "SELECT name FROM singer WHERE country = 'France'"
    nocase = {**OPTS, "value_case": "insensitive"}
    out = score_example(row(gold), "SELECT name FROM singer WHERE country = 'fRANCE'", **nocase)
    assert out["execution_match"] and not out["exact_match"]
    assert not score_example(row(gold), "SELECT name FROM singer WHERE country = 'Franc'", **nocase)["execution_match"]
    assert not score_example(row(gold), "SELECT country FROM singer WHERE country = 'france'", **nocase)["execution_match"]
    # Unicode folds too, not only ASCII (SQLite's own NOCASE would miss this)
    gold = "SELECT name FROM singer WHERE country = 'Россия'"
    assert score_example(row(gold), "SELECT name FROM singer WHERE country = 'россия'", **nocase)["execution_match"]


def test_builtin_and_unicode_case_folds_agree_on_ascii():
    """ASCII queries over ASCII data run with SQLite's C-level NOCASE; it must give exactly the rows
    the Unicode-aware Python collation gives (matching, ordering, grouping, distinct)."""
    from sqltune.synth import build_database

    gold = "SELECT name, country FROM singer WHERE country = 'France' OR name > 'M' ORDER BY name"
    plan = build_plan(CTX, gold)
    queries = [gold, "SELECT name FROM singer WHERE country = 'fRANCE'", "SELECT name FROM singer ORDER BY name",
               "SELECT country, count(*) FROM singer GROUP BY country ORDER BY country",
               "SELECT DISTINCT country FROM singer WHERE name < 'b'", "SELECT name FROM singer WHERE country IN ('FRANCE')"]
    for i in range(4):
        data = plan_rows(plan, i, 0)
        fast, slow = build_database(plan, data, True, ascii_queries=True), build_database(plan, data, True)
        assert "COLLATE NOCASE" in fast.execute("SELECT sql FROM sqlite_master").fetchone()[0]
        assert "COLLATE SQLTUNE_NOCASE" in slow.execute("SELECT sql FROM sqlite_master").fetchone()[0]
        for q in queries:
            assert run_query(fast, q).rows == run_query(slow, q).rows, q


def test_case_insensitive_values_refuse_real_databases(tmp_path):
    with pytest.raises(SqltuneError, match="synthesized databases only"):
        score_rows([row("SELECT 1")], ["SELECT 1"], db_dir=tmp_path, value_case="insensitive")


def test_undecidable_is_not_a_pass():
    gold = "SELECT name FROM singer WHERE age > 5 AND age < 3"
    out = score_example(row(gold), gold, **OPTS)
    assert out["undecidable"] and not out["execution_match"]
    s, _ = score_rows([row(gold), row("SELECT name FROM singer")], [gold, "SELECT name FROM singer"], **OPTS)
    assert s["undecidable"] == 0.5
    assert s["execution_accuracy"] == 1.0  # 1 correct / (2 - 1 undecidable)
    assert s["execution_accuracy_all"] == 0.5


@pytest.mark.parametrize(
    "bad",
    [
        "",
        None,
        "I think you should look at the singer table.",
        "SELECT name FROM singer; SELECT age FROM singer",
        "DROP TABLE singer",
        "DELETE FROM singer",
        "ATTACH DATABASE '/tmp/x.db' AS x",
        "PRAGMA writable_schema = ON",
        "SELECT nope FROM singer",
        "SELECT * FROM singer, singer, singer, singer, singer, singer, singer, singer",
    ],
)
def test_bad_predictions_are_wrong_and_never_raise(bad):
    gold = "SELECT name FROM singer"
    out = score_example(row(gold), bad, **{**OPTS, "timeout_s": 0.3})
    assert out["execution_match"] is False and out["exact_match"] is False
    assert out["error"] is not None


def test_destructive_prediction_is_refused_not_run():
    out = score_example(row("SELECT name FROM singer"), "DELETE FROM singer", **OPTS)
    assert out["error"] == "refused" and out["parse_ok"]


def test_timeout_prediction():
    bomb = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c"
    out = score_example(row("SELECT count(*) FROM singer"), bomb, **{**OPTS, "timeout_s": 0.2})
    assert out["error"] == "timeout" and not out["execution_match"]


def test_gold_error_is_reported():
    out = score_example(row("SELECT nope FROM singer"), "SELECT nope FROM singer", **OPTS)
    assert out["gold_error"] and not out["execution_match"]


def test_bad_context_raises_sqltune_error():
    with pytest.raises(SqltuneError, match="context"):
        score_example(row("SELECT 1", context="not ddl"), "SELECT 1", **OPTS)


# ------------------------------------------------------------------- real DB


@pytest.fixture
def db_dir(tmp_path):
    c = sqlite3.connect(tmp_path / "shop.sqlite")
    c.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
    c.executemany("INSERT INTO item VALUES (?, ?, ?)", [(1, "pen", 1.5), (2, "cup", 4.0), (3, "hat", 12.25)])
    c.commit()
    c.close()
    return tmp_path


def test_real_db_mode_and_file_unchanged(db_dir):
    path = db_dir / "shop.sqlite"
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    r = {"question": "q", "context": "", "answer": "SELECT name FROM item WHERE price > 2", "db_id": "shop"}
    preds = ["SELECT name FROM item WHERE price >= 4", "DELETE FROM item", "DROP TABLE item",
             "UPDATE item SET price = 0", "SELECT name FROM item"]
    s, per = score_rows([r] * len(preds), preds, db_dir=db_dir, **OPTS)
    assert [e["execution_match"] for e in per] == [True, False, False, False, False]
    assert per[0]["schema_valid"]  # schema read from the database when context is empty
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in db_dir.iterdir()) == ["shop.sqlite"]


def test_real_db_missing_file_names_path(db_dir):
    r = {"question": "q", "context": "CREATE TABLE item (id INT)", "answer": "SELECT 1", "db_id": "nope"}
    with pytest.raises(SqltuneError, match="nope.sqlite"):
        score_rows([r], ["SELECT 1"], db_dir=db_dir, **OPTS)


# ------------------------------------------------------------------ score_rows


def test_score_rows_handmade_gold_vs_itself():
    rows = [row(g, source="hand" if i % 2 else "made") for i, (g, _) in enumerate(HANDMADE)]
    s, per = score_rows(rows, [g for g, _ in HANDMADE], **OPTS)
    assert s["n"] == len(HANDMADE)
    for key in ("exact_match", "execution_accuracy", "execution_accuracy_all", "parse_rate", "schema_valid_rate"):
        assert s[key] == 1.0, key
    assert s["undecidable"] == 0.0
    assert set(s["by_source"]) == {"hand", "made"}
    assert s["by_feature"]["join"]["n"] == 1 and s["by_feature"]["join"]["execution_accuracy"] == 1.0
    assert [e["index"] for e in per] == list(range(len(HANDMADE)))


def test_score_rows_fractions_and_mixed():
    rows = [row(g) for g, _ in HANDMADE]
    preds = [g if i % 2 == 0 else "DROP TABLE singer" for i, (g, _) in enumerate(HANDMADE)]
    s, _ = score_rows(rows, preds, **OPTS)
    assert s["execution_accuracy"] == 0.5 and s["exact_match"] == 0.5
    def walk(d):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v)
            elif isinstance(v, float):
                assert 0.0 <= v <= 1.0 or k == "timeout_s", (k, v)
    walk(s)
    json.dumps(s)  # serializable


def test_score_rows_count_mismatch():
    with pytest.raises(SqltuneError, match="1 data rows but 2 predictions"):
        score_rows([row("SELECT 1")], ["SELECT 1", "SELECT 2"])


# --------------------------------------------------------------- shared data


def _shared(path: str) -> Path:
    p = SHARED / path
    if not p.exists():
        pytest.skip(f"{p} not available")
    return p


def test_shared_geoquery_real_db_gold_vs_itself():
    data = _shared("benchmarks/geoquery/geography.jsonl")
    rows = [json.loads(line) for line in data.read_text().splitlines()[:60]]
    s, _ = score_rows(rows, [r["answer"] for r in rows], db_dir=data.parent, **OPTS)
    assert s["exact_match"] == 1.0 and s["execution_accuracy"] == 1.0


def test_shared_spider_sample_gold_vs_itself():
    data = _shared("data/create_context/spider_dev.jsonl")
    rows = [json.loads(line) for line in data.read_text().splitlines()[::20]]
    s, _ = score_rows(rows, [r["answer"] for r in rows], **OPTS)
    assert s["exact_match"] == 1.0 and s["execution_accuracy"] == 1.0
