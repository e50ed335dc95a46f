"""Helpers for tests that run the real pipeline in a temp copy of the project."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def deep_update(d: dict, u: dict) -> dict:
    for k, v in u.items():
        d[k] = deep_update(d.get(k, {}), v) if isinstance(v, dict) else v
    return d


def env() -> dict:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1"}


def run(cmd: list[str], cwd: Path, check: bool = True) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def make_project(dest: Path, overrides: dict) -> Path:
    """A git + DVC repo holding the pipeline code and params.yaml = default + overrides."""
    for item in ("dvc.yaml", "stages", "sqltune", ".dvcignore"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / item, **(
            {"ignore": shutil.ignore_patterns("__pycache__")} if src.is_dir() else {}))
    params = deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dest / ".gitignore").write_text("__pycache__/\n/models/base/\n/models/checkpoints/\n")
    run(["git", "init", "-q"], dest)
    run(GIT + ["commit", "-q", "--allow-empty", "-m", "init"], dest)
    run(["dvc", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(GIT + ["commit", "-q", "-m", "project"], dest)
    return dest
