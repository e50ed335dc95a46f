"""Kill and resume: a SIGKILLed `dvc repro` resumes from its last complete checkpoint and ends with
the same adapter as an uninterrupted run; Ctrl-C saves a checkpoint before it exits."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dvc_project import env, make_project, run, stages_run

STEPS_CKPT = "models/checkpoints"


@pytest.fixture(scope="module")
def small_model_dir(tokenizer_dir, tmp_path_factory) -> Path:
    """Big enough that a step takes a noticeable fraction of a second, so a kill lands mid-run."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=256, intermediate_size=768, num_hidden_layers=6,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True)
    out = tmp_path_factory.mktemp("small")
    LlamaForCausalLM(cfg).save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out


def config(model_dir: Path) -> dict:
    # fp32 and a fixed seed: the run is deterministic on CPU, so "resumed == uninterrupted" is exact.
    return {
        "model": {"name": str(model_dir), "source": "local"},
        "prepare": {"train_size": 40, "test_size": 4},
        "train": {"trainer": {"epochs": 1, "max_length": 256, "per_device_batch_size": 1, "logging_steps": 1,
                              "save_steps": 3, "save_total_limit": 50, "precision": "fp32"}},
    }


def adapter_tensors(project: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(project / "models/adapter/adapter_model.safetensors")


def wait_for_checkpoint(project: Path, step: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    ckpt = project / STEPS_CKPT / f"checkpoint-{step}"
    end = time.time() + timeout
    while not (ckpt / "scheduler.pt").is_file() or not (ckpt / "trainer_state.json").is_file():
        assert proc.poll() is None, "training ended before the checkpoint appeared"
        assert time.time() < end, "no checkpoint in time"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def uninterrupted(small_model_dir, tmp_path_factory) -> Path:
    proj = make_project(tmp_path_factory.mktemp("whole"), config(small_model_dir))
    run(["dvc", "repro", "train"], proj)
    return proj


def test_sigkill_then_repro_resumes_to_the_same_adapter(small_model_dir, uninterrupted, tmp_path):
    proj = make_project(tmp_path, config(small_model_dir))
    proc = subprocess.Popen(["dvc", "repro", "train"], cwd=proj, env=env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_checkpoint(proj, 6, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (proj / "models/adapter").exists(), "the kill came too late to test a resume"

    out = run(["dvc", "repro", "train"], proj)
    assert stages_run(out) == ["train"] and "resuming from" in out

    whole_state = json.loads((uninterrupted / "metrics/train/metrics.json").read_text())
    state = json.loads((proj / "metrics/train/metrics.json").read_text())
    assert state["step"] == whole_state["step"]
    a, b = adapter_tensors(proj), adapter_tensors(uninterrupted)
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, worst
    # dvclive continued the curve: every global step once, in order.
    steps = [int(r.split("\t")[0]) for r in
             (proj / "metrics/train/plots/metrics/loss.tsv").read_text().splitlines()[1:]]
    assert steps == list(range(1, whole_state["step"] + 1))


def test_ctrl_c_saves_a_checkpoint_and_leaves_no_adapter(small_model_dir, tmp_path):
    proj = make_project(tmp_path, config(small_model_dir))
    run(["dvc", "repro", "prepare"], proj)
    cmd = [sys.executable, "stages/train.py", "--data", "data/prepared/train.jsonl", "--adapter", "models/adapter",
           "--checkpoints", STEPS_CKPT, "--live", "metrics/train", "--base-cache", "models/base"]
    proc = subprocess.Popen(cmd, cwd=proj, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_checkpoint(proj, 3, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert "interrupted; a checkpoint is saved" in err and "Traceback" not in err
    saved = sorted(int(p.name.split("-")[1]) for p in (proj / STEPS_CKPT).glob("checkpoint-*"))
    assert saved and saved[-1] > 3  # saved at the step the interrupt arrived in, then stopped
    assert not (proj / "models/adapter").exists()
