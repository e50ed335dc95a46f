"""The GeoQuery preset on ../shared's real data: it selects GeoQuery's splits as it says, mixes the
train split into WikiSQL's rows, and its test rows run on the real geography database, where every
gold query scores as right (so a model's score there measures the model, not the evaluator)."""

import shutil

import pytest
import yaml

from dvc_project import ROOT
from sqltune.config import parse_params
from sqltune.data import build_splits
from sqltune.scoring import score_rows


@pytest.fixture
def geo(shared_dir) -> dict:
    bench = shared_dir / "benchmarks/geoquery"
    if not (bench / "geography.jsonl").is_file():
        pytest.skip("../shared has no GeoQuery")
    return {"rows": bench / "geography.jsonl", "db": bench / "geography.sqlite",
            "wikisql": shared_dir / "data/create_context/wikisql_dev.jsonl"}


def preset(geo: dict, **prepare):
    raw = yaml.safe_load((ROOT / "presets/gpu-smollm2-geoquery.yaml").read_text())
    # WikiSQL's dev file stands in for its train file (the same kind of rows, fewer to parse here).
    raw["prepare"].update(dataset=str(geo["wikisql"]), train_size=500, test_dataset=str(geo["rows"]), **prepare)
    raw["prepare"]["mix"][0]["dataset"] = str(geo["rows"])
    return parse_params(raw)


def test_preset_takes_geoquerys_splits_and_mixes_its_train_rows(geo):
    import json

    splits = {}
    for line in geo["rows"].read_text().splitlines():
        row = json.loads(line)
        splits.setdefault(row["split"], set()).add(row["question"].strip())  # as prepare cleans it
    params = preset(geo)
    train, test, stats = build_splits(params.prepare, params.seed)
    repeat = params.prepare.mix[0].repeat
    assert len(test) == params.prepare.test_size == len(splits["test"]) and {r["question"] for r in test} == splits["test"]
    geo_train = [r for r in train if r.get("db_id") == "geography"]
    assert stats["mixed_rows"] == len(splits["train"]) and len(geo_train) == repeat * len(splits["train"])
    assert {r["question"] for r in geo_train} == splits["train"] and len(train) == 500 + len(geo_train)
    tuning = preset(geo, test_split="dev", test_size=len(splits["dev"]))
    assert {r["question"] for r in build_splits(tuning.prepare, tuning.seed)[1]} == splits["dev"]


def test_every_gold_query_is_right_on_the_real_database(geo, tmp_path):
    params = preset(geo)
    _, test, _ = build_splits(params.prepare, params.seed)
    shutil.copy(geo["db"], tmp_path / "geography.sqlite")
    e = params.evaluate
    summary, per_row = score_rows(test, [r["answer"] for r in test], db_dir=str(tmp_path), value_case=e.value_case,
                                  seed=params.seed, timeout_s=e.query_timeout_s)
    assert summary["n"] == len(test) and summary["execution_accuracy"] == 1.0, [
        r.get("error_message") for r in per_row if not r["execution_match"]][:3]
    assert summary["n_decidable"] >= 0.9 * len(test)  # real rows decide, unlike empty synthesized tables


def load_bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ask_guided", ROOT / "bench/ask_guided.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ask_bench_counts_right_answers_on_the_real_database(geo, tmp_path, monkeypatch):
    """The count bench scores what ask answers: here a stand-in model that answers every other
    question with its gold query greedily and every one with guided decoding."""
    import json
    import sys

    from sqltune import ask

    bench = load_bench()
    gold = {}
    for line in geo["rows"].read_text().splitlines():
        row = json.loads(line)
        gold[row["question"]] = row["answer"]
    order = []

    def greedy(model, tok, prompt, schema, question, max_new_tokens):
        order.append(question)
        return gold[question] if len(order) % 2 else "SELECT 1"

    monkeypatch.setattr(ask, "load_model_dir", lambda d: (None, None, "{context}"))
    monkeypatch.setattr(ask, "check_prompt_fits", lambda *a: None)
    monkeypatch.setattr(ask, "predict_sql", greedy)
    monkeypatch.setattr(ask, "guided_sql", lambda m, t, p, s, q, db, e, timeout, *_: {"sql": gold[q]})
    out = tmp_path / "r.json"
    monkeypatch.setattr(sys, "argv", ["ask_guided", "--questions", str(geo["rows"]), "--split", "test", "--db",
                                      str(geo["db"]), "--n", "6", "--out", str(out)])
    bench.main()
    result = json.loads(out.read_text())
    assert (result["greedy"]["right"], result["guided"]["right"], result["n"]) == (3, 6, 6)
    assert [a["right"] for a in result["greedy"]["answers"]] == [True, False] * 3
    # the result says how to reproduce it: machine, date, code and the command as it ran
    assert result["card"] and result["date"] and result["code"]
    assert result["command"].startswith("python bench/ask_guided.py ") and "--split test --db" in result["command"]


def test_ask_bench_runs_a_model_through_ask(geo, tmp_path, tokenizer_dir):
    import json
    import subprocess
    import sys

    from dvc_project import tiny_llama

    model = tiny_llama(tmp_path / "m", tokenizer_dir)
    (model / "sqltune.json").write_text(json.dumps({"system_prompt": "{context}"}))
    out = tmp_path / "r.json"
    done = subprocess.run([sys.executable, "bench/ask_guided.py", "--model", str(model), "--questions", str(geo["rows"]),
                           "--split", "test", "--db", str(geo["db"]), "--n", "2", "--max-new-tokens", "16",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert f"greedy: {result['greedy']['right']} of 2 right" in done.stdout
    assert len(result["guided"]["answers"]) == 2


def test_cards_name_the_split_that_was_scored(tmp_path):
    """A run scored on a dev split says so in the model-index, not 'test' (no data needed)."""
    from huggingface_hub import ModelCard

    from sqltune.cards import model_card

    raw = yaml.safe_load((ROOT / "presets/gpu-smollm2-geoquery.yaml").read_text())
    metrics = {"finetuned": {"n": 48, "execution_accuracy": 0.5, "exact_match": 0.4}}
    for split in ("dev", "test"):
        raw["prepare"]["test_split"] = split
        path = tmp_path / f"{split}.md"
        path.write_text(model_card(parse_params(raw), "merged", metrics))
        card = ModelCard.load(path)
        assert {r.dataset_split for r in card.data.eval_results} == {split}
        assert f"split {split}" in card.text and card.data.base_model_relation == "finetune"
