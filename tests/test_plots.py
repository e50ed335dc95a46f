"""The evaluation's plot data and dvc.yaml's plots: what the evaluate stage writes matches its
metrics, and scripts/check_plots.py renders every plot offline in headless Chromium."""

import importlib.util
import json
import shlex
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dvc_project import GIT, ROOT, env, run
from sqltune.metrics_log import EVAL_PLOT_FILES, eval_plot_data, write_eval_plots
from sqltune.scoring import summarize

DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())
SCRIPT = ROOT / "scripts/check_plots.py"


def _stage_module():
    spec = importlib.util.spec_from_file_location("evaluate_stage", ROOT / "stages/evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(i: int, match: bool, *, error=None, exact=None, undecidable=False) -> dict:
    """A scored prediction as sqltune.scoring writes it; the gold query's features follow the row."""
    features = {0: ["join"], 7: []}.get(i, ["aggregate"])
    return {"prediction": f"SELECT {i} FROM t WHERE a_rather_long_column_name = 'x' " * (3 if i == 4 else 1),
            "parse_ok": error is None, "schema_valid": error is None, "exact_match": match if exact is None else exact,
            "execution_match": match, "undecidable": undecidable, "gold_error": False, "error": error,
            "error_message": None if error is None else f"{error} happened", "features": features,
            "source": "embedded", "index": i}


def _results() -> tuple[list[dict], dict]:
    """Eight test rows; the base model gets one right, the fine-tuned one five (one by result only)."""
    test_rows = [{"question": f"question {i}?", "answer": f"SELECT {i} FROM t", "prompt": []} for i in range(8)]
    base = [_row(0, True)] + [_row(i, False, error="refused" if i < 4 else None) for i in range(1, 8)]
    fine = [_row(0, False, error="timeout"), _row(1, True), _row(2, True, exact=False),
            _row(3, False, undecidable=True), _row(4, False), _row(5, True), _row(6, True), _row(7, True)]
    return test_rows, {"base": (summarize(base), base), "finetuned": (summarize(fine), fine)}


def _evaluate_args(tmp_path: Path) -> list[str]:
    """dvc.yaml's own evaluate command line, run in tmp_path with the checkout's params."""
    cmd = shlex.split(DVC_YAML["stages"]["evaluate"]["cmd"])
    assert cmd[:2] == ["python", "stages/evaluate.py"]
    return ["evaluate.py", *cmd[2:], "--params", str(ROOT / "params.yaml")]


def test_evaluate_stage_writes_plot_files_that_hold_its_metrics(tmp_path, monkeypatch, capsys):
    stage = _stage_module()
    test_rows, results = _results()
    monkeypatch.setattr(stage, "evaluate", lambda *args, **kwargs: (test_rows, results))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", _evaluate_args(tmp_path))
    stage.main()

    # The folder it writes is the evaluate output dvc.yaml declares, git-tracked like the metrics.
    outs = {next(iter(o)) if isinstance(o, dict) else o: o for o in DVC_YAML["stages"]["evaluate"]["outs"]}
    assert outs["metrics/eval/plots"]["metrics/eval/plots"]["cache"] is False
    plots = {f.name: json.loads(f.read_text()) for f in (tmp_path / "metrics/eval/plots").iterdir()}
    assert sorted(plots) == sorted(EVAL_PLOT_FILES)
    # ... and every file that dvc.yaml's plots read is one the stage writes.
    read = {file for p in DVC_YAML["plots"] for props in p.values() if isinstance(props.get("y"), dict)
            for file in props["y"] if file.startswith("metrics/eval/plots/")}
    assert read == {f"metrics/eval/plots/{name}" for name in EVAL_PLOT_FILES}

    metrics = json.loads((tmp_path / "metrics/eval/metrics.json").read_text())
    details = json.loads((tmp_path / "metrics/eval/details.json").read_text())
    accuracy = {(r["model"], r["metric"]): r["score"] for r in plots["accuracy.json"]}
    assert accuracy == {(m, k): metrics[m][k] for m in ("base", "finetuned") for k in ("exact_match", "execution_accuracy")}
    assert accuracy[("finetuned", "execution_accuracy")] == 5 / 7  # the undecidable row is not in the denominator
    features = {(r["model"], r["feature"]): (r["n"], r["execution_accuracy"]) for r in plots["features.json"]}
    assert features == {(m, f): (s["n"], s["execution_accuracy"])
                        for m in ("base", "finetuned") for f, s in details[m]["by_feature"].items()}
    assert {f for _, f in features} == {"aggregate", "join", "none"}
    errors = {(r["model"], r["error"]): r["count"] for r in plots["errors.json"]}
    assert {k: v for k, v in errors.items() if v} == {("base", "refused"): 3, ("finetuned", "timeout"): 1}
    assert {m: sum(v for (model, _), v in errors.items() if model == m) for m in ("base", "finetuned")} == {
        m: sum(details[m]["errors"].values()) for m in ("base", "finetuned")}
    assert {kind for _, kind in errors} == set(stage.SCORED_ERROR_KINDS)  # every kind, zero or not
    assert all(r["bar"] == f"{r['error']} ({r['model']})" for r in plots["errors.json"])
    assert len({r["bar"] for r in plots["errors.json"]}) == len(plots["errors.json"])  # one band per bar

    out = capsys.readouterr().out.splitlines()
    verdicts = [line for line in out if line.startswith("  #")]
    # The fine-tuned model's first 3 right, then its only 2 wrong; the undecidable #3 is neither.
    assert verdicts == ["  #1 right, exact match", "  #2 right, same result", "  #5 right, exact match",
                        "  #0 wrong, timeout: timeout happened", "  #4 wrong result"]
    block = out[out.index("  #4 wrong result"):]
    assert block[1:3] == ["    question:   question 4?", "    gold:       SELECT 4 FROM t"]
    assert block[3].startswith("    prediction: SELECT 4 FROM t") and block[3].endswith("…") and len(block[3]) <= 110


def test_plot_data_without_the_base_model_keeps_its_files():
    """evaluate.score_base: false scores one model; the files stay the ones dvc.yaml reads."""
    _, results = _results()
    data = eval_plot_data({"finetuned": results["finetuned"][0]}, ("refused",))
    assert sorted(data) == sorted(EVAL_PLOT_FILES) and all(data.values())
    assert {r["model"] for rows in data.values() for r in rows} == {"finetuned"}
    assert {r["error"]: r["count"] for r in data["errors.json"]} == {"refused": 0, "timeout": 1}


def test_every_plot_has_a_title_and_axis_labels():
    for plot in DVC_YAML["plots"]:
        (name, props), = plot.items()
        assert props.get("title") and props.get("x_label") and props.get("y_label"), name


# ----------------------------------------------------------------------------- rendering in a browser

def _check_plots():
    spec = importlib.util.spec_from_file_location("check_plots", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def plots_project(tmp_path_factory) -> Path:
    """A DVC project with the real dvc.yaml's plots and data files of their shape."""
    proj = tmp_path_factory.mktemp("plots")
    (proj / "dvc.yaml").write_text(yaml.safe_dump({"plots": DVC_YAML["plots"]}, sort_keys=False))
    curves = proj / "metrics/train/plots/metrics"
    curves.mkdir(parents=True)
    for name in ("loss", "learning_rate", "grad_norm", "mean_token_accuracy"):
        (curves / f"{name}.tsv").write_text(f"step\t{name}\n" + "".join(f"{s}\t{1 / s}\n" for s in range(1, 9)))
    _, results = _results()
    write_eval_plots(proj / "metrics/eval/plots", {m: s for m, (s, _) in results.items()}, ("refused", "timeout"))
    run(["git", "init", "-q"], proj)
    run(["dvc", "init", "-q"], proj)
    run(["git", "add", "-A"], proj)
    run(GIT + ["commit", "-q", "-m", "plots"], proj)
    return proj


def check_plots(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, env=env())


def _browser_or_skip(cache: Path) -> None:
    module = _check_plots()
    if not any(map(shutil.which, module.CHROMIUM_NAMES)):
        pytest.skip("no Chromium (apt-get install chromium)")
    if not all((cache / name).is_file() for name in module.PACKAGES.values()) and shutil.which("npm") is None:
        pytest.skip("no npm to fetch vega, vega-lite and vega-embed")


def test_every_plot_renders_offline_in_headless_chromium(plots_project, tmp_path):
    cache = _check_plots().DEFAULT_CACHE
    _browser_or_skip(cache)
    shot = tmp_path / "plots.png"
    proc = check_plots(str(plots_project), "--out", str(tmp_path / "page"), "--screenshot", str(shot))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every plot rendered in headless Chromium (7 charts)" in proc.stdout
    page = (tmp_path / "page/index.html").read_text()
    assert "cdn.jsdelivr" not in page and "vegaEmbed" in page
    head = shot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    assert width >= 1000 and height >= 1000  # three rows of charts


def test_a_plot_that_does_not_draw_fails_the_check(plots_project, tmp_path):
    """Libraries that load but draw nothing: the page has every plot's container and no chart."""
    cache = _check_plots().DEFAULT_CACHE
    _browser_or_skip(cache)
    broken = tmp_path / "cache"
    broken.mkdir()
    for name in _check_plots().PACKAGES.values():
        (broken / name).write_text("window.vegaEmbed = function () {};\n")
    proc = check_plots(str(plots_project), "--out", str(tmp_path / "page"), "--cache", str(broken))
    assert proc.returncode == 2 and proc.stderr.startswith("error: 0 of 7 plots rendered in Chromium"), proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_plot_without_data_is_refused_before_any_page(plots_project, tmp_path):
    proj = tmp_path / "proj"
    shutil.copytree(plots_project, proj)
    (proj / "metrics/eval/plots/errors.json").unlink()
    proc = check_plots(str(proj), "--no-browser", "--cache", str(tmp_path / "unused"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: dvc could not load plot 'Errors per kind' (metrics/eval/plots/errors.json")
    assert "dvc repro" in proc.stderr and not (proj / "dvc_plots").exists() and not (tmp_path / "unused").exists()


def test_undrawn_plots_reads_dvc_page_and_rendered_dom():
    page = ('<div id="a"><script>vegaEmbed("#a", spec);</script></div>'
            '<div id="b"><script>vegaEmbed("#b", spec);</script></div><div id="c"></div>')
    dom = '<div id="a" class="vega-embed"><div class="chart-wrapper"><canvas></canvas></div></div><div id="b"></div>'
    assert _check_plots().undrawn_plots(page, dom) == (["a", "b"], ["b"])
