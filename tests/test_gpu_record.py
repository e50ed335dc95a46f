"""The GPU run's record on main becomes a branch that DVC compares with the CPU default, and the
recorded numbers are the ones the README reports."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dvc_project import env

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "metrics/runs/gpu-smollm2-wikisql"  # the LoRA recipe's
FULL_RECORD = ROOT / "metrics/runs/gpu-smollm2-wikisql-full"  # the full fine-tune at 256 rows per step
SNAP_RECORD = ROOT / "metrics/runs/gpu-smollm2-wikisql-snap"  # the same recipe, values snapped
PRESET_RECORD = ROOT / "metrics/runs/gpu-smollm2-wikisql-bs176"  # the preset's recipe
WIKISQL_RECORDS = [RECORD, FULL_RECORD, SNAP_RECORD, PRESET_RECORD]


def git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs the project's git history")
    dest = tmp_path_factory.mktemp("clone") / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    # the working tree's record, also before it is committed
    shutil.rmtree(dest / "metrics/runs", ignore_errors=True)
    shutil.copytree(ROOT / "metrics/runs", dest / "metrics/runs")
    return dest


@pytest.mark.parametrize("record", WIKISQL_RECORDS, ids=lambda p: p.name)
def test_record_is_consistent(record):
    info = json.loads((record / "run-info.json").read_text())
    summaries = record / "metrics/eval/details.json"  # the LoRA record predates it: headline numbers only
    details = json.loads((summaries if summaries.is_file() else record / "metrics/eval/metrics.json").read_text())
    details = {k: v for k, v in details.items() if k != "base" or "n_correct" in v}
    ev = details["finetuned"]
    train = json.loads((record / "metrics/train/metrics.json").read_text())
    assert ev["n"] == 1000 and ev["n_correct"] == round(ev["execution_accuracy"] * ev["n_decidable"])
    assert train["train"]["runtime"] == pytest.approx(info["train_runtime_s"], abs=0.01)
    rows = [json.loads(line) for line in (record / "metrics/predictions.jsonl").read_text().splitlines()]
    for name, summary in details.items():
        mine = [r for r in rows if r["model"] == name]
        assert len(mine) == 1000 and sum(r["execution_match"] for r in mine) == summary["n_correct"], name
    # ../shared's questions and gold SQL are not committed, nor the logs' examples of them
    assert not any({"question", "gold"} & set(r) for r in rows)
    for log in record.glob("logs/*.log"):
        assert not any(k in log.read_text() for k in ("question:", "gold:")), log
    doc = (ROOT / "docs/gpu.md").read_text()
    assert f"{ev['execution_accuracy']:.3f}" in doc and f"{info['train_runtime_s']:.1f} s" in doc
    assert f"{ev['exact_match']:.3f}" in doc and f"{info['execution_accuracy_strict']:.3f}" in doc
    if "train_runtime_repeat_s" in info:  # the repeat of the same train stage that the doc quotes beside it
        repeat = json.loads((record / "train-repeat-metrics.json").read_text())["train"]["runtime"]
        assert repeat == pytest.approx(info["train_runtime_repeat_s"], abs=0.01) and f"{repeat:.1f} s" in doc


def test_the_preset_is_its_records_recipe():
    """The preset as shipped trains and scores what its record ran; the earlier full fine-tune's
    record differs from it in the rows per step and the snapping only (and its decoded row)."""
    from sqltune.config import load_params

    preset, ran = load_params(ROOT / "presets/gpu-smollm2-wikisql.yaml"), load_params(PRESET_RECORD / "params.yaml")
    assert (ran.train, ran.prepare, ran.model, ran.seed, ran.evaluate) == \
        (preset.train, preset.prepare, preset.model, preset.seed, preset.evaluate)
    assert ran.prepare.test_offset == 0 and ran.train.method == "full" and ran.evaluate.snap_values
    before = load_params(FULL_RECORD / "params.yaml")
    assert before.train.trainer.model_copy(update={"per_device_batch_size": 176}) == preset.train.trainer
    guided = json.loads((FULL_RECORD / "metrics/eval/details.json").read_text())["finetuned_guided"]
    doc = (ROOT / "docs/gpu.md").read_text()
    assert f"| {guided['execution_accuracy']:.3f} |" in doc and f"| {guided['exact_match']:.3f} |" in doc


def test_record_branch_compares_with_dvc(clone):
    done = subprocess.run(["bash", "scripts/gpu/record_branch.sh", "gpu-smollm2-wikisql"], cwd=clone,
                          capture_output=True, text=True, env=env())
    assert done.returncode == 0, done.stderr
    files = git("ls-tree", "-r", "--name-only", "gpu-smollm2-wikisql", cwd=clone).split()
    assert "dvc.lock" in files and "metrics/eval/metrics.json" in files
    # the branch's merge.json is the GPU run's own (the record has one), not the CPU default's
    merge = json.loads(git("show", "gpu-smollm2-wikisql:metrics/merge.json", cwd=clone))
    assert merge == json.loads((RECORD / "metrics/merge.json").read_text())
    diff = subprocess.run(["dvc", "metrics", "diff", "HEAD", "gpu-smollm2-wikisql", "--json"], cwd=clone,
                          capture_output=True, text=True, env=env())
    assert diff.returncode == 0, diff.stderr
    ev = json.loads(diff.stdout)["metrics/eval/metrics.json"]
    assert ev["finetuned.execution_accuracy"]["new"] == pytest.approx(0.837)
    bad = subprocess.run(["bash", "scripts/gpu/record_branch.sh", "nope"], cwd=clone, capture_output=True, text=True)
    assert bad.returncode == 2 and "metrics/runs" in bad.stderr


def test_tuning_table_matches_the_experiment_records():
    """Each tuning experiment's README row shows its recorded numbers, and every one of them was
    scored on the tuning slice (test_offset 1000), never on the reported rows."""
    import yaml

    readme = (ROOT / "docs/gpu.md").read_text().splitlines()
    records = sorted((ROOT / "metrics/runs/gpu-tuning").glob("t-*"))
    assert len(records) == 21
    for rec in records:
        assert yaml.safe_load((rec / "params.yaml").read_text())["prepare"]["test_offset"] == 1000
        row = next(line for line in readme if line.startswith(f"| {rec.name} |"))
        cells = [c.strip("* ") for c in row.split("|")]
        if (rec / "metrics/eval/metrics.json").is_file():
            ev = json.loads((rec / "metrics/eval/metrics.json").read_text())["finetuned"]
            runtime = json.loads((rec / "metrics/train/metrics.json").read_text())["train"]["runtime"]
            assert f"{runtime:.1f} s" in cells, row
        else:  # only the stage logs were kept: their printed scores and whole seconds
            line = next(x for x in (rec / "logs/evaluate.log").read_text().splitlines() if "evaluate: finetuned" in x)
            ev = {k: float(line.split(k)[1].split()[0]) for k in ("execution_accuracy", "exact_match")}
            done = next(x for x in (rec / "logs/train.log").read_text().splitlines() if "train: done" in x)
            assert cells[3].startswith(done.rsplit(", ", 1)[1].replace("s", " s")), row
        assert f"{ev['execution_accuracy']:.3f}" in cells and f"{ev['exact_match']:.3f}" in cells, row


# where the records' data files lie in ../shared (the runs read copies of them in data/raw/)
SHARED_FILES = {"wikisql_train.jsonl": "data/create_context/wikisql_train.jsonl",
                "wikisql_dev.jsonl": "data/create_context/wikisql_dev.jsonl",
                "geography.jsonl": "benchmarks/geoquery/geography.jsonl"}


_REBUILT = {}  # record -> what _rebuilt returns: two tests re-score the same record from the same rows


def _rebuilt(record, shared_dir, tmp_path):
    """The record's test rows, rebuilt from ../shared by the prepare stage with the record's params,
    its fine-tuned predictions, its run-info, and its params (local paths pointed at ../shared)."""
    if record not in _REBUILT:
        _REBUILT[record] = _rebuild(record, shared_dir, tmp_path)
    return _REBUILT[record]


def _rebuild(record, shared_dir, tmp_path):
    from sqltune.config import load_params
    from sqltune.io import read_jsonl

    # Exact duplicates are now dropped from train (WikiSQL train has 133), so the record's "all of
    # it" train_size is lowered; the test rows come from the dev file and do not depend on it.
    rec_params = yaml.safe_load((record / "params.yaml").read_text())
    rec_params["prepare"]["train_size"] = 54844
    if rec_params["train"]["quantization"].pop("load_in_4bit", None) is False:  # before train.method named it
        rec_params["train"]["method"] = "lora"
    prep = rec_params["prepare"]
    for source in [prep, *(prep.get("mix") or [])]:
        for key in ("dataset", "test_dataset"):
            if source.get(key):
                source[key] = str(shared_dir / SHARED_FILES[Path(source[key]).name])
    if rec_params["evaluate"].get("db_dir"):
        rec_params["evaluate"]["db_dir"] = str(shared_dir / "benchmarks/geoquery")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(rec_params))
    done = subprocess.run([sys.executable, "stages/prepare.py", "--params", str(tmp_path / "params.yaml"),
                           "--out", str(tmp_path / "prep"), "--stats", str(tmp_path / "stats.json")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = read_jsonl(tmp_path / "prep/test.jsonl")
    preds = [r for r in read_jsonl(record / "metrics/predictions.jsonl") if r["model"] == "finetuned"]
    assert [p["index"] for p in preds] == list(range(len(rows)))
    info = json.loads((record / "run-info.json").read_text())
    return rows, preds, info, load_params(tmp_path / "params.yaml")


def _score_opts(params):
    e = params.evaluate
    return dict(n_databases=e.n_databases, seed=params.seed, timeout_s=e.query_timeout_s, db_dir=e.db_dir)


@pytest.mark.parametrize("record", WIKISQL_RECORDS, ids=lambda p: p.name)
def test_record_rescores_from_its_own_predictions(record, shared_dir, tmp_path):
    """The record's accuracy follows from its committed predictions: the reported rows, rebuilt from
    ../shared by the prepare stage with the record's params, re-score to the run's execution accuracy
    under WikiSQL's value rule, and to the README's strict number under SQLite's case-sensitive `=`."""
    from sqltune.scoring import score_rows

    rows, preds, info, params = _rebuilt(record, shared_dir, tmp_path)
    summaries = record / "metrics/eval/details.json"  # the LoRA record predates it: all in metrics.json
    ev = json.loads((summaries if summaries.is_file() else record / "metrics/eval/metrics.json").read_text())["finetuned"]
    texts = [p["prediction"] for p in preds]
    opts = _score_opts(params)  # the run's own scoring settings
    lenient, _ = score_rows(rows, texts, value_case="insensitive", **opts)
    strict, _ = score_rows(rows, texts, value_case="exact", **opts)
    assert lenient["n_correct"] == ev["n_correct"] and lenient["exact_match"] == ev["exact_match"]
    assert strict["execution_accuracy"] == pytest.approx(info["execution_accuracy_strict"], abs=5e-4)
    if "execution_accuracy_unsnapped" in info:  # the model's own queries, where snapping changed them
        raw = [p.get("unsnapped", p["prediction"]) for p in preds]
        assert sum(p["prediction"] != r for p, r in zip(preds, raw)) > 0
        unsnapped, _ = score_rows(rows, raw, value_case="insensitive", **opts)
        assert unsnapped["execution_accuracy"] == pytest.approx(info["execution_accuracy_unsnapped"], abs=5e-4)
        assert unsnapped["exact_match"] == pytest.approx(info["exact_match_unsnapped"], abs=5e-4)


RESNAPPED = [PRESET_RECORD, ROOT / "metrics/runs/gpu-geoquery/test-r48", ROOT / "metrics/runs/gpu-geoquery/r48-on-wikisql-dev"]


@pytest.mark.parametrize("record", RESNAPPED, ids=lambda p: p.name)
def test_record_rescores_under_the_current_snapping_rule(record, shared_dir, tmp_path):
    """Snapping only rewrites the model's own queries, so a record made under an earlier snapping rule
    (or none) re-scores under the current rule from its predictions: the model's queries, snapped by
    the current sqltune.snap as evaluate snaps them, give the numbers that run-info.json's `resnapped`
    and docs/gpu.md state. A change to the rule fails here until they are re-scored."""
    from sqltune.scoring import score_rows
    from sqltune.snap import snap_values

    rows, preds, info, params = _rebuilt(record, shared_dir, tmp_path)
    want = info["resnapped"]
    snapped = [snap_values(p.get("unsnapped", p["prediction"]), r["question"], r.get("context"))
               for p, r in zip(preds, rows)]
    assert sum(n for _, n in snapped) == want["snapped_values"]
    opts = _score_opts(params)
    got, _ = score_rows(rows, [q for q, _ in snapped], value_case=params.evaluate.value_case, **opts)
    assert got["execution_accuracy"] == pytest.approx(want["execution_accuracy"], abs=5e-4)
    assert got["exact_match"] == pytest.approx(want["exact_match"], abs=5e-4)
    doc = (ROOT / "docs/gpu.md").read_text()
    assert f"{want['execution_accuracy']:.3f} / {want['exact_match']:.3f}" in doc
    if "execution_accuracy_strict" in want:
        strict, _ = score_rows(rows, [q for q, _ in snapped], value_case="exact", **opts)
        assert strict["execution_accuracy"] == pytest.approx(want["execution_accuracy_strict"], abs=5e-4)


def test_decoding_table_matches_its_records():
    """Each decoding experiment's row in docs/gpu.md shows its recorded greedy and decoded scores,
    and every one was scored on the tuning slice (test_offset 1000 in its dvc.lock or overrides)."""
    readme = (ROOT / "docs/gpu.md").read_text().splitlines()
    records = sorted((ROOT / "metrics/runs/gpu-decoding").glob("t-*"))
    assert len(records) == 4
    for rec in records:
        info = json.loads((rec / "run-info.json").read_text())
        assert "prepare.test_offset=1000" in info["overrides"]
        row = next(line for line in readme if line.startswith(f"| {rec.name} |"))
        cells = [c.strip("* ") for c in row.split("|")]
        if (rec / "metrics/details.json").is_file():
            details = json.loads((rec / "metrics/details.json").read_text())
            for name in ("finetuned", "finetuned_guided"):
                s = details[name]
                assert f"{s['execution_accuracy']:.3f} / {s['exact_match']:.3f}" in cells, (rec.name, name)
            assert details["finetuned_guided"]["decoding"]["num_candidates"] == int(row.split("|")[2].split()[0])
            lock = yaml.safe_load((rec / "dvc.lock").read_text())
            assert lock["stages"]["prepare"]["params"]["params.yaml"]["prepare"]["test_offset"] == 1000
        else:  # only the stage's output was kept: its printed scores
            out = (rec / "evaluate-output.txt").read_text()
            for line in out.splitlines():
                if line.startswith("evaluate: finetuned"):
                    ex, acc = line.split("exact_match")[1].split()[0], line.split("execution_accuracy")[1].split()[0]
                    assert f"{acc} / {ex}" in cells, (rec.name, line)


def test_geoquery_tuning_table_matches_its_records():
    """Each GeoQuery tuning row in docs/gpu.md shows its record's scores and training time, and
    every one was scored on the dev split, never on the test split that the preset reports."""
    doc = (ROOT / "docs/gpu.md").read_text().splitlines()
    records = sorted((ROOT / "metrics/runs/gpu-geoquery").glob("t-*"))
    assert records
    for rec in records:
        assert yaml.safe_load((rec / "params.yaml").read_text())["prepare"]["test_split"] == "dev"
        row = next(line for line in doc if line.startswith(f"| {rec.name} |"))
        cells = [c.strip() for c in row.split("|")]
        if (rec / "metrics/eval/metrics.json").is_file():
            ev = json.loads((rec / "metrics/eval/metrics.json").read_text())["finetuned"]
            runtime = json.loads((rec / "metrics/train/metrics.json").read_text())["train"]["runtime"]
            rows = [json.loads(line) for line in (rec / "metrics/predictions.jsonl").read_text().splitlines()]
            assert not any({"question", "gold"} & set(r) for r in rows)  # ../shared's rows stay out of git
            assert f"{ev['execution_accuracy']:.3f}" in cells and f"{ev['exact_match']:.3f}" in cells, row
            assert ev["n"] == 48, row
        else:  # the stage logs (and per-row verdicts) were kept: the scores the evaluate stage logged
            preds = rec / "metrics/predictions.jsonl"
            if preds.is_file():
                rows = [json.loads(line) for line in preds.read_text().splitlines()]
                assert not any({"question", "gold"} & set(r) for r in rows)
            line = next(x for x in (rec / "logs/evaluate.log").read_text().splitlines() if "evaluate: finetuned" in x)
            assert "n=48" in line, line
            ex, acc = line.split("exact_match")[1].split()[0], line.split("execution_accuracy")[1].split()[0]
            assert acc in cells and ex in cells, (row, line)
            runtime = float(next(x for x in (rec / "logs/train.log").read_text().splitlines()
                                 if "train_runtime" in x).split("train_runtime")[1].split()[0])
        assert f"{runtime:.1f} s" in cells, row
        assert "question:" not in (rec / "logs/evaluate.log").read_text()


def test_geoquery_result_table_matches_its_records():
    """The GeoQuery test-split table in docs/gpu.md shows its records' scores: the preset (greedy and
    execution-guided), the preset at x 24, the base and the WikiSQL preset on the same 277 test rows
    of the real database, each preset's params on WikiSQL dev 0-999, and the ask counts from the
    bench result of the preset's model."""
    doc = (ROOT / "docs/gpu.md").read_text().splitlines()
    runs = ROOT / "metrics/runs/gpu-geoquery"

    def scores(name, model="finetuned"):
        ev = json.loads((runs / name / "metrics/eval/metrics.json").read_text())[model]
        return ev, f"{ev['execution_accuracy']:.3f}", f"{ev['exact_match']:.3f}"

    def cells(start):
        return [c.strip().strip("*") for c in next(x for x in doc if x.startswith(start)).split("|")]

    test, *geo = scores("test-r48")
    guided, *geo_guided = scores("test-r48", "finetuned_guided")
    wiki, *on_wiki = scores("r48-on-wikisql-dev")
    old, *geo_old = scores("test")
    old_wiki, *on_wiki_old = scores("test-on-wikisql-dev")
    base, *geo_base = scores("test", "base")
    other, *other_geo = scores("wikisql-preset-on-test")
    assert test["n"] == base["n"] == other["n"] == old["n"] == 277 and wiki["n"] == old_wiki["n"] == 1000
    assert cells("| **this preset**")[2:6] == geo + on_wiki
    assert cells("| this preset, execution-guided")[2:4] == geo_guided
    assert cells("| the preset at × 24")[2:6] == geo_old + on_wiki_old
    assert cells("| base SmolLM2")[2:4] == geo_base
    assert cells("| the WikiSQL preset")[2:4] == other_geo
    full = json.loads((ROOT / "metrics/runs/gpu-smollm2-wikisql-full/metrics/eval/metrics.json").read_text())
    assert cells("| the WikiSQL preset")[4:6] == [f"{full['finetuned'][k]:.3f}" for k in ("execution_accuracy", "exact_match")]
    preset = yaml.safe_load((ROOT / "presets/gpu-smollm2-geoquery.yaml").read_text())
    info = json.loads((runs / "test-r48/run-info.json").read_text())
    assert set(info["overrides"]) == {"evaluate.score_base=false", "evaluate.decoding=beam"}  # the preset as it is
    for name in ("test", "test-on-wikisql-dev", "wikisql-preset-on-test", "test-r48"):
        p = yaml.safe_load((runs / name / "params.yaml").read_text())["prepare"]
        lock = yaml.safe_load((runs / name / "dvc.lock").read_text())["stages"]
        assert lock["prepare"]["params"]["params.yaml"]["prepare"] == p  # the lock is that run's
        if name != "test-on-wikisql-dev":
            assert p["test_dataset"].endswith("geography.jsonl") and p["test_split"] == "test"
    assert yaml.safe_load((runs / "test-r48/params.yaml").read_text())["prepare"] == preset["prepare"]
    for name in ("test", "test-on-wikisql-dev", "wikisql-preset-on-test", "test-r48", "r48-on-wikisql-dev"):
        preds = [json.loads(x) for x in (runs / name / "metrics/predictions.jsonl").read_text().splitlines()]
        assert not any({"question", "gold"} & set(r) for r in preds)
    # x 24: one trained model for both columns (the train stage's output hash is the same);
    # x 48: two trainings of the same train params and train rows
    locks = {n: yaml.safe_load((runs / n / "dvc.lock").read_text())["stages"]["train"]
             for n in ("test", "test-on-wikisql-dev", "test-r48", "r48-on-wikisql-dev")}
    assert locks["test"]["outs"] == locks["test-on-wikisql-dev"]["outs"]
    assert locks["test-r48"]["params"] == locks["r48-on-wikisql-dev"]["params"]
    assert [d for d in locks["test-r48"]["deps"] if d["path"].startswith("data/")] == \
        [d for d in locks["r48-on-wikisql-dev"]["deps"] if d["path"].startswith("data/")]
    wiki_p = yaml.safe_load((runs / "r48-on-wikisql-dev/params.yaml").read_text())
    assert wiki_p["prepare"]["mix"] == preset["prepare"]["mix"] and wiki_p["train"] == preset["train"]
    ask = json.loads((ROOT / "bench/results/ask_guided-geoquery.json").read_text())
    assert ask["split"] == "test" and ask["n"] == 20 and not any("question" in a for a in ask["greedy"]["answers"])
    assert ask["model"].endswith("gpu-geoquery/test-r48")
    text = "\n".join(doc)
    for mode in ("greedy", "guided"):  # a whole count: "4 of 20" must not pass inside "14 of 20"
        assert re.search(rf"\b{mode}\b[^.]*?(?<!\d){ask[mode]['right']} of 20", text.replace("execution-guided", "guided")), mode
