"""DVC-native reproducibility: local datasets and real databases are stage dependencies, an
evaluation change neither re-merges nor retrains (also in queued and --temp experiments), the
declared metrics hold headline numbers only, and a pushed project clones back up to date.

The end-to-end tests share one project on a tiny random model and run in file order; each leaves
the project committed and up to date for the next."""

import csv
import io
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dvc_project import ROOT, commit, env, make_project, run, stages_run
from sqltune.errors import SqltuneError
from sqltune.io import require_inside
from sqltune.merging import eval_section
from sqltune.metrics_log import EVAL_HEADLINE, write_eval_metrics

EMBEDDED = ROOT / "sqltune/resources/embedded_sql.jsonl"
FIXED_COLUMNS = {"Experiment", "rev", "typ", "Created", "parent", "State", "Executor"}


def config(model_dir: Path) -> dict:
    return {
        "model": {"name": str(model_dir), "source": "local"},
        "prepare": {"dataset": "data/raw/train.jsonl", "test_dataset": "data/raw/test.jsonl",
                    "train_size": 16, "test_size": 6},
        "train": {"trainer": {"epochs": 1, "max_length": 256, "per_device_batch_size": 2, "logging_steps": 1,
                              "save_steps": 4, "precision": "fp32"}},
        "evaluate": {"max_new_tokens": 16, "batch_tokens": 2048, "n_databases": 2, "db_dir": "data/databases/dbs"},
        "merge": {"parity_samples": 2},
    }


def write_database(path: Path, ddl: str, rows_per_table: int = 3) -> None:
    """A real SQLite database of the schema ``ddl``, a few rows in each table."""
    path.unlink(missing_ok=True)
    con = sqlite3.connect(path)
    con.executescript(ddl)
    for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
        cols = con.execute(f'PRAGMA table_info("{table}")').fetchall()
        for k in range(1, rows_per_table + 1):
            values = [k if "INT" in (c[2] or "").upper() else f"v{k}" for c in cols]
            con.execute(f'INSERT INTO "{table}" VALUES ({", ".join("?" * len(values))})', values)
    con.commit()
    con.close()


def write_inputs(project: Path) -> None:
    """Train rows and test rows (with a db_id each) from the embedded set, and one database per
    test schema, all tracked with `dvc add`."""
    rows = [json.loads(line) for line in EMBEDDED.read_text().splitlines()]
    train, test = rows[:40], rows[300:320]
    db_ids = {ctx: f"db{i}" for i, ctx in enumerate(sorted({r["context"] for r in test}))}
    (project / "data/databases/dbs").mkdir()
    for ctx, db_id in db_ids.items():
        write_database(project / f"data/databases/dbs/{db_id}.sqlite", ctx)
    (project / "data/raw/train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (project / "data/raw/test.jsonl").write_text(
        "".join(json.dumps({**r, "db_id": db_ids[r["context"]]}) + "\n" for r in test))
    run(["dvc", "add", "-q", "data/raw/train.jsonl", "data/raw/test.jsonl", "data/databases/dbs"], project)


def edit_a_used_row(project: Path, raw: str, prepared: str) -> None:
    """Edit the raw row behind the first row of ``prepared``, so that the edit reaches the prepared data."""
    question = json.loads((project / prepared).read_text().splitlines()[0])["question"]
    lines = (project / raw).read_text().splitlines()
    i = next(i for i, line in enumerate(lines) if json.loads(line)["question"] == question)
    lines[i] = json.dumps({**json.loads(lines[i]), "question": question + " Answer briefly."})
    (project / raw).write_text("\n".join(lines) + "\n")


def exp_show(project: Path, *flags: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--no-pager", "--csv", *flags], project))))


def ran(output: str) -> list[str]:
    """The stages a repro ran, the card stage left out: it reruns only when the scores it shows
    changed, which a tiny model's few test rows may or may not do."""
    return [s for s in stages_run(output) if s != "card"]


@pytest.fixture(scope="module")
def project(tiny_model_dir, tmp_path_factory) -> Path:
    proj = make_project(tmp_path_factory.mktemp("native"), config(tiny_model_dir))
    write_inputs(proj)
    commit(proj, "inputs")
    assert sorted(stages_run(run(["dvc", "repro"], proj))) == ["card", "evaluate", "merge", "prepare", "train"]
    commit(proj)
    return proj


# ----------------------------------------------------------------------------------- no DVC run


@pytest.mark.parametrize("value", ["data/databases/dbs", "./data/databases/dbs", "data/databases",
                                   "data/raw/../databases/dbs", "ABSOLUTE", None])
def test_db_dir_inside_the_tracked_folder_is_accepted(tmp_path, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/databases/dbs").mkdir(parents=True)
    value = str(tmp_path / "data/databases/dbs") if value == "ABSOLUTE" else value
    assert require_inside(value, "data/databases", "evaluate.db_dir") is None


@pytest.mark.parametrize("value", ["dbs", "data/databases/../dbs", "/elsewhere/dbs", "data/databases/link"])
def test_db_dir_outside_the_tracked_folder_is_refused(tmp_path, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/databases").mkdir(parents=True)
    (tmp_path / "dbs").mkdir()
    (tmp_path / "data/databases/link").symlink_to(tmp_path / "dbs")  # resolves outside
    with pytest.raises(SqltuneError) as exc:
        require_inside(value, "data/databases", "evaluate.db_dir")
    msg = str(exc.value)
    assert f"evaluate.db_dir {value} is outside data/databases" in msg and "move it into data/databases/" in msg


def test_evaluate_stage_refuses_an_untracked_db_dir_before_any_work(tmp_path):
    from test_bad_input import expect_clean_failure

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["evaluate"]["db_dir"] = str(tmp_path / "elsewhere")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "stages/evaluate.py"), "--data", "data/prepared/test.jsonl", "--adapter",
         "models/adapter", "--base-cache", "models/base", "--databases", "data/databases", "--metrics",
         "metrics/eval/metrics.json", "--details", "metrics/eval/details.json", "--predictions",
         "metrics/predictions.jsonl"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env())
    expect_clean_failure(proc, tmp_path, "evaluate.db_dir", "is outside data/databases", "move it into",
                         outputs=("metrics", "models"))
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("key", ["dataset", "test_dataset"])
def test_prepare_refuses_a_local_dataset_outside_data_raw(tmp_path, key):
    from test_bad_input import GOOD_ROWS, expect_clean_failure

    (tmp_path / "data/raw").mkdir(parents=True)
    rows = "\n".join(json.dumps(r) for r in GOOD_ROWS)
    (tmp_path / "elsewhere.jsonl").write_text(rows)
    (tmp_path / "data/raw/tracked.jsonl").write_text(rows)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["prepare"].update({"dataset": "data/raw/tracked.jsonl", "train_size": 8, "test_size": 4, key: "elsewhere.jsonl"})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, str(ROOT / "stages/prepare.py"), "--out", "data/prepared", "--stats", "metrics/prepare.json"]
    proc = subprocess.run([*cmd, "--raw", "data/raw"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env())
    expect_clean_failure(proc, tmp_path, f"prepare.{key} elsewhere.jsonl is outside data/raw", "move it into data/raw/",
                         outputs=("data/prepared", "metrics"))
    params["prepare"][key] = "data/raw/tracked.jsonl" if key == "dataset" else None
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert subprocess.run([*cmd, "--raw", "data/raw"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=env()).returncode == 0


def test_eval_metrics_split_headline_from_details(tmp_path):
    summary = {"n": 4, "exact_match": 0.25, "execution_accuracy": None, "execution_accuracy_all": 0.0,
               "parse_rate": 1.0, "schema_valid_rate": 1.0, "errors": {"refused": 1},
               "by_feature": {"join": {"n": 2, "exact_match": 0.5, "execution_accuracy": None}},
               "by_source": {"x": {"n": 4}}, "settings": {"seed": 1}, "generation_seconds": 3.2}
    write_eval_metrics(tmp_path / "m.json", tmp_path / "d.json", {"base": summary, "finetuned": summary})
    headline = json.loads((tmp_path / "m.json").read_text())
    assert headline == {name: {k: summary[k] for k in EVAL_HEADLINE} for name in ("base", "finetuned")}
    assert json.loads((tmp_path / "d.json").read_text())["finetuned"] == summary


def lock_of(evaluate: tuple[str, str], merge: tuple[str, str]) -> dict:
    """A dvc.lock whose evaluate and merge stages ran on these (adapter md5, model name)."""
    def stage(adapter_md5, model, data):
        return {"deps": [{"path": "models/adapter", "md5": adapter_md5}, {"path": data, "md5": data}],
                "params": {"params.yaml": {"seed": 1, "model": {"name": model}}}}
    return {"stages": {"evaluate": stage(*evaluate, "data/prepared/test.jsonl"),
                       "merge": stage(*merge, "data/prepared/train.jsonl")}}


def test_card_evaluation_must_be_of_the_merged_model(tmp_path):
    metrics, lock = tmp_path / "metrics.json", tmp_path / "dvc.lock"
    metrics.write_text(json.dumps({"finetuned": {"execution_accuracy": 0.5, "exact_match": None, "n": 8}}))
    row = "| finetuned | 0.500 | n/a | 8 |"
    assert row in eval_section(metrics, lock)  # no lock file: stages run by hand, nothing to compare
    lock.write_text(yaml.safe_dump(lock_of(("a1.dir", "m"), ("a1.dir", "m"))))
    assert row in eval_section(metrics, lock)  # different test and train files are not shared inputs
    lock.write_text(yaml.safe_dump(lock_of(("a1.dir", "m"), ("a2.dir", "m"))))
    with pytest.raises(SqltuneError, match=r"scores another model .* different models/adapter; run `dvc repro`"):
        eval_section(metrics, lock)
    lock.write_text(yaml.safe_dump(lock_of(("a1.dir", "m"), ("a1.dir", "other"))))
    with pytest.raises(SqltuneError, match="different model;"):
        eval_section(metrics, lock)
    lock.write_text("stages: [\n")
    with pytest.raises(SqltuneError, match="dvc.lock is not valid YAML; restore it"):
        eval_section(metrics, lock)


# ------------------------------------------------------------------------------- end to end


def test_first_run_writes_headline_metrics_and_a_card_without_evaluation(project):
    ev = json.loads((project / "metrics/eval/metrics.json").read_text())
    assert set(ev) == {"base", "finetuned"} and all(set(s) == set(EVAL_HEADLINE) for s in ev.values())
    details = json.loads((project / "metrics/eval/details.json").read_text())
    assert {"by_feature", "by_source", "errors", "generation_seconds"} <= set(details["finetuned"])
    assert details["finetuned"]["settings"]["db_dir"] == "data/databases/dbs"  # real databases were used
    train = json.loads((project / "metrics/train.json").read_text())
    assert train["step"] == json.loads((project / "metrics/train/metrics.json").read_text())["step"] > 0
    assert "runtime" not in json.dumps(train)
    assert "## Evaluation" not in (project / "models/merged/README.md").read_text()
    section = eval_section(project / "metrics/eval/metrics.json", project / "dvc.lock")
    assert f"| finetuned | {ev['finetuned']['execution_accuracy']:.3f} |" in section


def test_editing_a_dataset_row_reruns_the_pipeline_once(project):
    edit_a_used_row(project, "data/raw/train.jsonl", "data/prepared/train.jsonl")
    status = run(["dvc", "status"], project)
    assert "prepare:" in status and "data/raw" in status
    assert ran(run(["dvc", "repro"], project)) == ["prepare", "train", "evaluate", "merge"]
    assert stages_run(run(["dvc", "repro"], project)) == []
    commit(project, "train row edited")


def test_editing_a_test_row_reruns_prepare_and_evaluate_only(project):
    edit_a_used_row(project, "data/raw/test.jsonl", "data/prepared/test.jsonl")
    assert ran(run(["dvc", "repro"], project)) == ["prepare", "evaluate"]
    commit(project, "test row edited")


def test_replacing_a_database_reruns_evaluate_only(project):
    db = next((project / "data/databases/dbs").glob("*.sqlite"))
    ddl = "; ".join(r[0] for r in sqlite3.connect(db).execute("SELECT sql FROM sqlite_master WHERE type = 'table'"))
    write_database(db, ddl, rows_per_table=5)
    assert ran(run(["dvc", "repro"], project)) == ["evaluate"]
    commit(project, "database replaced")


def test_evaluate_experiment_reruns_evaluate_only(project):
    out = run(["dvc", "exp", "run", "-S", "evaluate.n_databases=4"], project)
    assert stages_run(out) == ["evaluate", "card"]  # the card shows the scores; merge does not rerun
    commit(project, "n_databases 4")


def wait_for_queue(project: Path, timeout: float = 600) -> str:
    end = time.time() + timeout
    while True:
        status = run(["dvc", "queue", "status"], project)
        if not any(word in status for word in ("Queued", "Running")):
            return status
        assert time.time() < end, status
        time.sleep(2)


def test_queued_and_temp_experiments_reuse_the_adapter(project):
    run(["dvc", "exp", "run", "--queue", "-n", "queued-eval", "-S", "evaluate.n_databases=3"], project)
    run(["dvc", "queue", "start"], project)
    assert "Success" in wait_for_queue(project)
    log = run(["dvc", "queue", "logs", "queued-eval"], project)
    assert "Running stage 'evaluate'" in log and "Stage 'train' didn't change" in log
    assert "Running stage 'train'" not in log and "Running stage 'merge'" not in log

    out = run(["dvc", "exp", "run", "--temp", "-n", "temp-eval", "-S", "evaluate.n_databases=5"], project)
    assert stages_run(out) == ["evaluate", "card"]

    rows = {r["Experiment"]: r for r in exp_show(project)}
    for name, n in (("queued-eval", "3"), ("temp-eval", "5")):
        assert rows[name]["evaluate.n_databases"] == n
        assert rows[name]["finetuned.execution_accuracy"] != "" and rows[name]["finetuned.n"] == "6"

    # The metrics carry no run-to-run noise: across these runs only the changed param (and scores,
    # where they really differ) vary, never a timing or a breakdown.
    changed = set(exp_show(project, "--only-changed")[0]) - FIXED_COLUMNS
    assert changed <= {"evaluate.n_databases"} | {f"{m}.{k}" for m in ("base", "finetuned") for k in EVAL_HEADLINE}
    assert "evaluate.n_databases" in changed


def leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_metrics_show_is_clean_and_lists_headline_numbers_only(project):
    assert "failed to load" not in run(["dvc", "metrics", "show"], project)
    files = json.loads(run(["dvc", "metrics", "show", "--json"], project))[""]["data"]
    assert set(files) == {"metrics/prepare.json", "metrics/train.json", "metrics/eval/metrics.json",
                          "metrics/merge.json"}
    for path, result in files.items():
        levels = 2 if path == "metrics/eval/metrics.json" else 1  # eval: one level per model
        for key, value in leaves(result["data"]):
            assert key.count(".") < levels and not isinstance(value, list), (path, key)
            assert not any(word in key for word in ("by_feature", "by_source", "errors", "settings", "seconds",
                                                    "runtime", "per_second", "flos")), (path, key)


def test_push_clone_pull_is_up_to_date(project, tmp_path):
    run(["dvc", "remote", "add", "-d", "local", str(tmp_path / "remote")], project)
    commit(project, "remote")
    run(["dvc", "push"], project)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    run(["dvc", "pull"], clone)
    for f in ("models/adapter/adapter_model.safetensors", "data/prepared/train.jsonl", "models/merged/config.json",
              "data/raw/train.jsonl", "data/databases/dbs"):
        assert (clone / f).exists(), f
    assert "Data and pipelines are up to date" in run(["dvc", "status"], clone)
    assert stages_run(run(["dvc", "repro"], clone)) == []
