import json

import pytest

from sqltune.config import DEFAULT_SYSTEM_PROMPT, PrepareParams
from sqltune.data import build_splits, clean_rows, load_rows, split_rows, to_messages
from sqltune.errors import SqltuneError

ROWS = [
    {"question": f"How many heads are older than {n}?", "context": f"CREATE TABLE head{n % 3} (age INTEGER)",
     "answer": f"SELECT COUNT(*) FROM head{n % 3} WHERE age > {n}"}
    for n in range(30)
]


def params(**kw) -> PrepareParams:
    return PrepareParams(**{"dataset": "embedded", "train_size": 20, "test_size": 6, **kw})


def write(tmp_path, fmt: str, rows=ROWS):
    import pandas as pd

    f = tmp_path / f"data.{fmt}"
    df = pd.DataFrame(rows)
    {"jsonl": lambda: df.to_json(f, orient="records", lines=True),
     "json": lambda: f.write_text(json.dumps(rows)),
     "csv": lambda: df.to_csv(f, index=False),
     "parquet": lambda: df.to_parquet(f)}[fmt]()
    return f


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_local_files_of_each_format(tmp_path, fmt):
    rows = load_rows(str(write(tmp_path, fmt)))
    assert [r["answer"] for r in rows] == [r["answer"] for r in ROWS]


def test_hub_code_path_on_a_local_dataset_folder(tmp_path):
    # A folder goes through datasets.load_dataset(name, split=...), exactly as a hub id does.
    folder = tmp_path / "my-org__sql"
    folder.mkdir()
    write(folder, "parquet")
    rows = load_rows(str(folder), hub_split="train")
    assert len(rows) == len(ROWS) and rows[0]["question"] == ROWS[0]["question"]


def test_unreachable_hub_id_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SqltuneError, match="could not load dataset 'nobody-here/no-such-set'"):
        load_rows("nobody-here/no-such-set")


def test_embedded_dataset_loads():
    rows = load_rows("embedded")
    assert len(rows) >= 400 and {"question", "context", "answer"} <= set(rows[0])


@pytest.mark.parametrize("content,match", [
    (b"", "is empty"),
    (b'{"question": "q", "context": "c", "answer": "a"}\n{oops\n', r"line 2: invalid JSON"),
    (b"\xff\xfe\x00bad", "not UTF-8"),
])
def test_bad_jsonl_files(tmp_path, content, match):
    f = tmp_path / "d.jsonl"
    f.write_bytes(content)
    with pytest.raises(SqltuneError, match=match):
        load_rows(str(f))


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(SqltuneError, match="not found"):
        load_rows(str(tmp_path / "nope.jsonl"))
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(SqltuneError, match="unsupported format"):
        load_rows(str(tmp_path / "d.txt"))


def test_missing_column_is_named(tmp_path):
    f = write(tmp_path, "jsonl", [{"question": "q", "sql": "SELECT 1"}])
    with pytest.raises(SqltuneError, match="lacks column\\(s\\) context, answer"):
        build_splits(params(dataset=str(f)), seed=0)


def test_unparsable_rows_are_counted_and_dropped():
    bad = {"question": "q", "context": "CREATE TABLE t (a INTEGER)", "answer": "SELEC a FROMM t WHERE"}
    bad_ddl = {"question": "q", "context": "CREATE TABEL t (a INTEGER", "answer": "SELECT a FROM t"}
    kept, dropped = clean_rows(ROWS + [bad, bad_ddl])
    assert len(kept) == len(ROWS)
    assert dropped == {"unparsable_sql": 1, "invalid_context_ddl": 1}


def test_too_many_dropped_rows_fail_the_stage(tmp_path):
    rows = ROWS[:10] + [{"question": "q", "context": "CREATE TABLE t (a INTEGER)", "answer": "SELEC"}] * 5
    f = write(tmp_path, "jsonl", rows)
    with pytest.raises(SqltuneError, match=r"5 of 15 rows .*prepare.max_dropped_fraction"):
        build_splits(params(dataset=str(f), train_size=5, test_size=2), seed=0)
    train, test, stats = build_splits(params(dataset=str(f), train_size=5, test_size=2, max_dropped_fraction=0.5), 0)
    assert stats["dropped"] == {"unparsable_sql": 5} and len(train) == 5


def test_random_split_is_seeded_and_sized():
    a = split_rows(ROWS, 20, 6, "random", seed=1)
    assert a == split_rows(ROWS, 20, 6, "random", seed=1)
    assert a != split_rows(ROWS, 20, 6, "random", seed=2)
    assert (len(a[0]), len(a[1])) == (20, 6)
    assert not {r["question"] for r in a[0]} & {r["question"] for r in a[1]}


def test_schema_disjoint_split_shares_no_context():
    train, test = split_rows(ROWS, 15, 8, "schema_disjoint", seed=3)
    assert len(test) == 8 and len(train) == 15
    assert not {r["context"] for r in train} & {r["context"] for r in test}


def test_sizes_larger_than_data_fail():
    with pytest.raises(SqltuneError, match="exceeds the 30 usable rows"):
        split_rows(ROWS, 25, 10, "random", seed=0)


def test_separate_test_dataset(tmp_path):
    test_rows = [{**r, "question": "T " + r["question"]} for r in ROWS]
    f, g = write(tmp_path, "jsonl"), tmp_path / "test.jsonl"
    g.write_text("\n".join(json.dumps(r) for r in test_rows))
    train, test, _ = build_splits(params(dataset=str(f), test_dataset=str(g), train_size=30, test_size=5), 0)
    assert len(train) == 30 and all(r["question"].startswith("T ") for r in test)


def test_prompt_golden_strings(tokenizer_dir):
    from transformers import AutoTokenizer

    row = {"question": "How many heads are older than 56?", "context": "CREATE TABLE head (age INTEGER)",
           "answer": "SELECT COUNT(*) FROM head WHERE age > 56"}
    msgs = to_messages(row, DEFAULT_SYSTEM_PROMPT)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    prompt = tok.apply_chat_template(msgs["prompt"], add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(msgs["prompt"] + msgs["completion"], tokenize=False)
    assert prompt == (
        "<|im_start|>system\nYou are a text-to-SQL assistant. Answer the user's question with one SQLite "
        "query over these tables, and nothing else.\n\nCREATE TABLE head (age INTEGER)<|im_end|>\n"
        "<|im_start|>user\nHow many heads are older than 56?<|im_end|>\n<|im_start|>assistant\n"
    )
    # The completion is the SQL followed by the EOS token the model must learn to emit.
    assert full == prompt + "SELECT COUNT(*) FROM head WHERE age > 56<|im_end|>\n"


def test_plain_template_for_models_without_one(tokenizer_dir):
    from transformers import AutoTokenizer

    from sqltune.modeling import PLAIN_CHAT_TEMPLATE

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.chat_template = PLAIN_CHAT_TEMPLATE
    msgs = to_messages({"question": "Q?", "context": "CREATE TABLE t (a INTEGER)", "answer": "SELECT a FROM t"},
                       "Tables:\n{context}")
    prompt = tok.apply_chat_template(msgs["prompt"], add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(msgs["prompt"] + msgs["completion"], tokenize=False)
    assert prompt == "<|im_start|>Tables:\nCREATE TABLE t (a INTEGER)\n\n### Question:\nQ?\n\n### SQL:\n"
    assert full == prompt + "SELECT a FROM t<|im_end|>"


def test_test_offset_takes_a_disjoint_slice_and_keeps_train(tmp_path):
    """A tuning slice (offset) never overlaps the reported one (offset 0), and the train rows do not
    depend on the slice, so DVC reuses the trained model."""
    # a third of the test rows share head0's schema with the train source
    test_rows = [{**r, "question": "T " + r["question"], "context": r["context"].replace("head1", "tail1")
                  .replace("head2", "tail2")} for r in ROWS]
    f, g = write(tmp_path, "jsonl"), tmp_path / "test.jsonl"
    g.write_text("\n".join(json.dumps(r) for r in test_rows))
    for split in ("random", "schema_disjoint"):
        p = params(dataset=str(f), test_dataset=str(g), train_size=10, test_size=5, split=split)
        train0, test0, _ = build_splits(p, 0)
        train1, test1, _ = build_splits(p.model_copy(update={"test_offset": 5}), 0)
        assert len(test1) == 5 and not {r["question"] for r in test0} & {r["question"] for r in test1}
        assert train0 == train1
        if split == "schema_disjoint":  # held out even where this slice has no head0 row
            assert "head0" not in {r["context"].split()[2] for r in train0}
    with pytest.raises(SqltuneError, match=r"prepare.test_offset \(28\) exceeds"):
        build_splits(p.model_copy(update={"test_offset": 28}), 0)


def benchmark_file(tmp_path):
    """One file with a benchmark's train, dev and test rows in a `split` field, as GeoQuery's."""
    rows = [{"question": f"Which states border state {n}?", "context": "CREATE TABLE border (state TEXT, border TEXT)",
             "answer": f"SELECT border FROM border WHERE state = 's{n}'", "db_id": "geo",
             "split": "train" if n < 12 else "dev" if n < 15 else "test"} for n in range(20)]
    rows[3]["question"], rows[3]["answer"] = rows[17]["question"], rows[17]["answer"]  # a test question in train
    f = tmp_path / "bench.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f, rows


def test_split_field_selects_rows_and_mix_adds_a_repeated_source(tmp_path):
    from sqltune.data import flat_stats

    bench, rows = benchmark_file(tmp_path)
    main = write(tmp_path, "jsonl")
    p = params(dataset=str(main), train_size=10, test_dataset=str(bench), test_split="test", test_size=4,
               mix=[{"dataset": str(bench), "split": "train", "repeat": 3}])
    train, test, stats = build_splits(p, seed=1)
    assert {r["question"] for r in test} <= {r["question"] for r in rows if r["split"] == "test"}
    assert {r.get("db_id") for r in test} == {"geo"}
    mixed = [r for r in train if r.get("db_id") == "geo"]
    # 12 train-split rows, less the one whose question and schema are a test row's, each three times
    assert stats["mixed_rows"] == 11 and len(mixed) == 33 and len(train) == 10 + 33
    assert {r["question"] for r in mixed} == {r["question"] for r in rows[:12]} - {rows[17]["question"]}
    assert stats["train_rows_in_test"] >= 1 and not {r["question"] for r in train} & {r["question"] for r in test}
    assert [r["question"] for r in build_splits(p, seed=1)[0]] == [r["question"] for r in train]  # seeded
    assert flat_stats(stats)["mixed_rows"] == 11
    # without mix and split selection nothing changes: the same train rows as before these params existed
    plain = build_splits(params(dataset=str(main), train_size=10, test_dataset=str(bench), test_size=4), seed=1)
    assert "mixed_rows" not in plain[2] and len(plain[0]) == 10


def test_split_selection_errors_name_the_param_and_the_values(tmp_path):
    bench, _ = benchmark_file(tmp_path)
    main = write(tmp_path, "jsonl")
    with pytest.raises(SqltuneError, match=r"no row of dataset .*bench.jsonl has split 'tset' \(prepare.test_split\); "
                                           r"it has: dev, test, train"):
        build_splits(params(dataset=str(main), train_size=10, test_dataset=str(bench), test_split="tset"), seed=1)
    with pytest.raises(SqltuneError, match=r"has no `split` field .*prepare.mix\[0\].split \('train'\)"):
        build_splits(params(dataset=str(bench), train_size=5, mix=[{"dataset": str(main), "split": "train"}]), seed=1)
    (tmp_path / "raw").mkdir()
    inside = write(tmp_path / "raw", "jsonl")
    with pytest.raises(SqltuneError, match=r"prepare.mix\[0\].dataset .*bench.jsonl is outside .*raw"):
        build_splits(params(dataset=str(inside), train_size=5, mix=[{"dataset": str(bench)}]), seed=1,
                     raw_dir=tmp_path / "raw")
    with pytest.raises(ValueError, match="test_split needs test_dataset"):
        params(test_split="test")


def test_mix_keeps_schema_disjoint_and_names_its_own_params(tmp_path):
    bench, rows = benchmark_file(tmp_path)
    main = write(tmp_path, "jsonl")
    # Every benchmark row shares one schema, so schema_disjoint must keep all of the mixed-in ones out.
    p = params(dataset=str(main), train_size=10, test_dataset=str(bench), test_split="test", test_size=4,
               split="schema_disjoint", mix=[{"dataset": str(bench), "split": "train"}])
    with pytest.raises(SqltuneError, match=r"prepare.mix\[0\] \(.*bench.jsonl\) adds no train row"):
        build_splits(p, seed=1)
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({**r, "context": "CREATE TABLE lake (name TEXT, state TEXT)"}) + "\n"
                             for r in rows))
    train, test, stats = build_splits(p.model_copy(update={"mix": [p.mix[0].model_copy(update={"dataset": str(other)})]}),
                                      seed=1)
    assert stats["test_schemas_seen_in_train"] == 0 and stats["mixed_rows"] == 12
    with pytest.raises(SqltuneError, match=r"dataset file .*nope.jsonl not found; fix prepare.mix\[0\].dataset"):
        build_splits(params(dataset=str(main), train_size=5, mix=[{"dataset": str(tmp_path / "nope.jsonl")}]), seed=1)


def test_split_values_compare_as_text(tmp_path):
    from sqltune.data import rows_of_split

    rows = [{"question": "q", "split": 1}, {"question": "r", "split": 2}, {"question": "s"}]
    assert rows_of_split(rows, "1", "f", "prepare.dataset_split") == rows[:1]
