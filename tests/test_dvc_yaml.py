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
