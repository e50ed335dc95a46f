"""Execution-guided selection among candidates (sqltune.guided) and the candidates themselves."""

import sqlite3
import time

import pytest

from sqltune.config import EvaluateParams
from sqltune.guided import select, select_rows, vote

CONTEXT = "CREATE TABLE singer (name VARCHAR, age INTEGER, country VARCHAR)"
# No "answer": selection must never need (or read) the gold query.
ROW = {"question": "Names of singers older than 40?", "context": CONTEXT}


def test_unknown_columns_and_unparsable_candidates_are_dropped():
    out = select(ROW, ["SELECT nme FROM singer WHERE age > 40", "SELEC name", "SELECT name FROM singer WHERE age > 40"])
    assert out["sql"] == "SELECT name FROM singer WHERE age > 40"
    assert out["valid"] == 1 and out["candidates"] == 3


def test_the_largest_group_of_equal_results_wins_over_the_first_candidate():
    first = "SELECT name FROM singer WHERE age < 40"
    same_a = "SELECT name FROM singer WHERE age > 40"
    same_b = "SELECT T1.name FROM singer AS T1 WHERE 40 < T1.age"  # written differently, same results
    out = select(ROW, [first, same_a, same_b], rule="vote")
    assert out["sql"] == same_a and out["agreeing"] == 2
    # the `first` rule keeps the best-ranked candidate that passes the checks and runs
    assert select(ROW, [first, same_a, same_b], rule="first")["sql"] == first
    assert select(ROW, ["SELECT nme FROM singer", same_a, same_b], rule="first")["sql"] == same_a


def test_a_tie_goes_to_the_best_ranked_candidate():
    a, b = "SELECT name FROM singer WHERE age > 40", "SELECT country FROM singer WHERE age > 40"
    assert select(ROW, [a, b], rule="vote")["sql"] == a
    assert select(ROW, [b, a], rule="vote")["sql"] == b


def test_no_valid_candidate_keeps_the_first():
    out = select(ROW, ["I think the answer is SELECT nothing", "DROP TABLE singer"])
    assert out["valid"] == 0 and out["sql"]
    assert select(ROW, [])["sql"] == ""


def test_vote_counts_groups_not_candidates():
    assert vote(["a", "b", "c", "d"], {0: ("x",), 1: ("y",), 2: ("y",), 3: ("x",)}) == (0, 2)
    assert vote(["a", "b", "c"], {1: ("y",), 2: ("y",)}) == (1, 2)
    assert vote(["a", "b", "c", "d"], {1: ("x",), 2: ("y",), 3: ("y",)}, rule="first") == (1, 1)
    assert vote(["a"], {}) == (None, 0)


@pytest.fixture
def real_db(tmp_path):
    db = tmp_path / "concerts.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE singer (name VARCHAR, age INTEGER, country VARCHAR);"
                       "INSERT INTO singer VALUES ('Ann', 52, 'France'), ('Bo', 31, 'Peru');")
    conn.commit()
    conn.close()
    return tmp_path


def test_on_a_real_database_empty_and_failing_candidates_are_dropped(real_db):
    row = {**ROW, "db_id": "concerts"}
    empty = "SELECT name FROM singer WHERE country = 'france'"  # case differs: no rows on the real data
    failing = "SELECT name FROM singer WHERE age > abs(-9223372036854775808)"  # integer overflow at run time
    right = "SELECT name FROM singer WHERE country = 'France'"
    [out] = select_rows([row], [[empty, failing, right]], db_dir=real_db, workers=1)
    assert out["sql"] == right and out["valid"] == 3 and out["agreeing"] == 1


def test_a_candidate_that_runs_forever_is_stopped_and_the_row_still_gets_a_query():
    slow = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
            "SELECT name FROM singer WHERE age > (SELECT max(x) FROM c)")
    t0 = time.monotonic()
    [out] = select_rows([ROW], [[slow, "SELECT name FROM singer"]], timeout_s=0.5, workers=1)
    assert time.monotonic() - t0 < 10
    assert out["sql"] in (slow, "SELECT name FROM singer")


def test_select_rows_keeps_the_row_order(real_db):
    rows = [ROW, {**ROW, "db_id": "concerts"}, ROW]
    cands = [["SELECT name FROM singer"], ["SELECT age FROM singer"], ["SELECT country FROM singer"]]
    out = select_rows(rows, cands, db_dir=real_db, workers=2)
    assert [o["sql"] for o in out] == [c[0] for c in cands] and [o["index"] for o in out] == [0, 1, 2]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), \
        AutoTokenizer.from_pretrained(tiny_model_dir)


PROMPTS = [[{"role": "system", "content": CONTEXT}, {"role": "user", "content": q}]
           for q in ("How many?", "Which singers are from Peru, by age?", "Oldest?")]


def test_beam_and_sample_give_n_candidates_per_prompt_in_order(tiny):
    from sqltune.generation import generate, generate_candidates

    model, tok = tiny
    e = EvaluateParams(max_new_tokens=8, num_candidates=3, temperature=1.0)
    beams = generate_candidates(model, tok, PROMPTS, e, "beam")
    assert [len(c) for c in beams] == [3, 3, 3]
    # a prompt's beams don't depend on its batch neighbours, so each prompt alone gives the same
    assert [generate_candidates(model, tok, [p], e, "beam")[0] for p in PROMPTS] == beams
    samples = generate_candidates(model, tok, PROMPTS, e, "sample", seed=1)
    assert [len(c) for c in samples] == [3, 3, 3]
    assert generate_candidates(model, tok, PROMPTS, e, "sample", seed=1) == samples  # seeded
    assert any(len(set(c)) > 1 for c in samples)  # really several different samples
    # greedy is untouched by the candidate settings
    assert generate(model, tok, PROMPTS, e) == generate(model, tok, PROMPTS, EvaluateParams(max_new_tokens=8))
