"""dvc.yaml must list exactly the code each stage imports, and exactly its params sections."""

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def sqltune_imports(path: Path) -> set[str]:
    """Files of the sqltune package that `path` imports, transitively (also lazy imports)."""
    seen: set[str] = set()
    todo = [path]
    while todo:
        tree = ast.parse(todo.pop().read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sqltune"):
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("sqltune")]
            for name in names:
                f = ROOT / (name.replace(".", "/") + ".py")
                rel = str(f.relative_to(ROOT))
                if f.is_file() and rel not in seen and not rel.endswith("__init__.py"):
                    seen.add(rel)
                    todo.append(f)
    return seen


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_code_deps_are_exactly_the_imports(stage):
    script = f"stages/{stage}.py"
    deps = {d for d in STAGES[stage]["deps"] if d.endswith(".py")}
    assert script in deps, "stage name = script name"
    assert deps - {script} == sqltune_imports(ROOT / script)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_params_sections(stage):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    listed = STAGES[stage]["params"]
    assert stage in {p.split(".")[0] for p in listed}, "stage name = params section"
    for key in listed:
        node = params
        for part in key.split("."):
            assert part in node, f"{stage} lists unknown param {key}"
            node = node[part]


def test_metrics_are_git_tracked_json():
    for stage in STAGES.values():
        for m in stage.get("metrics", []):
            (path, opts), = m.items()
            assert path.endswith(".json") and opts["cache"] is False


def outputs(stage: dict) -> dict[str, dict]:
    """{path: options} of a stage's outs and metrics."""
    found = {}
    for entry in stage.get("outs", []) + stage.get("metrics", []):
        path, opts = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
        found[path] = opts or {}
    return found


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_uncached_outputs_are_in_git(stage):
    """An output that DVC does not cache must be one git tracks: queued and --temp experiments run in
    a copy of the last commit, and an output missing there makes DVC rerun its stage (retrain)."""
    import subprocess

    for path, opts in outputs(STAGES[stage]).items():
        if opts.get("cache") is False:
            # Also a path inside: a pattern with a trailing slash matches only an existing folder.
            probes = (path, f"{path}/x")
            ignored = [p for p in probes if subprocess.run(["git", "check-ignore", "-q", p], cwd=ROOT).returncode == 0]
            assert not ignored, f"{path} is neither cached by DVC nor tracked by git"


def test_local_inputs_are_folders_the_stages_depend_on():
    assert "data/raw" in STAGES["prepare"]["deps"]
    evaluate = STAGES["evaluate"]
    folder = evaluate["cmd"].split("--databases ")[1].split()[0]  # the folder evaluate.db_dir must be inside
    assert folder == "data/databases" and folder in evaluate["deps"]


def test_merge_reads_nothing_of_the_evaluation():
    """An evaluate change (settings, test rows, scores) must not re-merge the model."""
    merge = STAGES["merge"]
    evaluate_outputs = set(outputs(STAGES["evaluate"]))
    assert not evaluate_outputs & set(merge["deps"])
    assert "data/prepared/test.jsonl" not in merge["deps"] and "data/prepared/test.jsonl" not in merge["cmd"]
    assert not [p for p in merge["params"] if p.split(".")[0] == "evaluate"]


def test_card_reads_scores_and_params_but_no_weights():
    """The card stage is cheap: an evaluate change reruns it, and it needs no model files; merge, in
    turn, reads nothing the card stage writes."""
    card = STAGES["card"]
    assert "metrics/eval/metrics.json" in card["deps"]
    assert not [d for d in card["deps"] if d.startswith("models/")]
    assert not set(outputs(card)) & set(STAGES["merge"]["deps"])
