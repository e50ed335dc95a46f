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


# What a project needs to run the pipeline: its code, and the input folders the stages depend on.
PROJECT_FILES = ("dvc.yaml", "stages", "sqltune", ".dvcignore", "data/raw", "data/databases")


def make_project(dest: Path, overrides: dict) -> Path:
    """A git + DVC repo holding the pipeline code and params.yaml = default + overrides."""
    for item in PROJECT_FILES:
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


def commit(project: Path, message: str = "pipeline run") -> None:
    """Commit everything, as a user does after `dvc repro`: queued and --temp experiments start
    from the last commit plus changes to files that git tracks."""
    run(["git", "add", "-A"], project)
    run(GIT + ["commit", "-q", "--allow-empty", "-m", message], project)


def tiny_llama(out: Path, tokenizer_dir: Path, pad_token_id: int | None = 2) -> Path:
    """A 2-layer random Llama with the embedded model's real tokenizer: real code paths, CPU-fast."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      bos_token_id=1, eos_token_id=2, pad_token_id=pad_token_id, tie_word_embeddings=True,
                      initializer_range=0.2)  # larger than default so greedy outputs vary by prompt
    LlamaForCausalLM(cfg).save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out
