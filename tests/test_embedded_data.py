"""Checks on the hand-written embedded text-to-SQL dataset shipped with sqltune."""

import json
import sqlite3
from collections import Counter
from importlib import resources

import pytest
import sqlglot
from sqlglot import exp

KEYS = ("question", "context", "answer", "db_id", "source")


def _load():
    path = resources.files("sqltune.resources") / "embedded_sql.jsonl"
    rows = []
    with path.open("r", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


ROWS = _load()


FEATURE_NODES = {"join": exp.Join, "group": exp.Group, "having": exp.Having, "order": exp.Order,
                 "limit": exp.Limit, "agg": exp.AggFunc, "where": exp.Where}


def _features(tree):
    feats = {name for name, node in FEATURE_NODES.items() if tree.find(node)}
    if any(s.find_ancestor(exp.Select) is not None for s in tree.find_all(exp.Select)):
        feats.add("nested")
    return feats


def test_size_and_schemas():
    assert len(ROWS) >= 440
    contexts = {r["context"] for r in ROWS}
    assert len(contexts) >= 14
    # each db_id maps to exactly one context string
    by_db = {}
    for r in ROWS:
        by_db.setdefault(r["db_id"], set()).add(r["context"])
    assert all(len(c) == 1 for c in by_db.values())


def test_keys_non_empty():
    for r in ROWS:
        for k in KEYS:
            assert isinstance(r.get(k), str) and r[k].strip(), (k, r)
        assert r["source"] == "embedded"


def test_no_duplicate_questions():
    pairs = Counter((r["context"], r["question"]) for r in ROWS)
    dups = [p for p, n in pairs.items() if n > 1]
    assert not dups, dups[:5]


@pytest.mark.parametrize("i", range(len(ROWS)))
def test_answer_parses_and_executes(i):
    r = ROWS[i]
    sqlglot.parse_one(r["answer"], read="sqlite")
    con = sqlite3.connect(":memory:")
    try:
        for stmt in r["context"].split("; "):
            con.execute(stmt)
        con.execute(r["answer"]).fetchall()
    finally:
        con.close()


def test_feature_coverage():
    counts = Counter()
    for r in ROWS:
        counts.update(_features(sqlglot.parse_one(r["answer"], read="sqlite")))
    for feat in ("join", "group", "having", "order", "limit", "agg", "nested", "where"):
        assert counts[feat] >= 20, (feat, counts)


def test_questions_not_templated():
    prefixes = {" ".join(r["question"].lower().split()[:3]) for r in ROWS}
    assert len(prefixes) >= 80, len(prefixes)
