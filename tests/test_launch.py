"""Multi-process training (sqltune.launch): params, the `accelerate launch` command, and a real
2-process DDP run of the train stage on CPU (torchrun + gloo: the launcher the stage uses on GPUs,
with the Trainer picking gloo because no CUDA is visible)."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sqltune import launch
from sqltune.config import parse_params
from sqltune.errors import SqltuneError

ROOT = Path(__file__).resolve().parents[1]
TRAIN_ARGS = ["--data", "data/prepared/train.jsonl", "--adapter", "models/adapter", "--checkpoints",
              "models/checkpoints", "--live", "metrics/train", "--base-cache", "models/base"]


def params(launcher=None, **trainer) -> dict:
    d = yaml.safe_load((ROOT / "params.yaml").read_text())
    d["train"]["launcher"] = {**d["train"].get("launcher", {}), **(launcher or {})}
    d["train"]["trainer"].update(trainer)
    return d


def train_params(**launcher):
    return parse_params(params(launcher)).train


# --- params -------------------------------------------------------------------------------------


def test_default_is_one_process_without_a_launcher():
    tp = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text())).train
    assert (tp.launcher.num_processes, tp.launcher.strategy) == (1, "ddp")
    assert not launch.needs_launch(tp, gpus=0) and not launch.needs_launch(tp, gpus=8)


@pytest.mark.parametrize("value", [0, -2, "two", True, 1.5])
def test_bad_process_count_is_named(value):
    with pytest.raises(SqltuneError, match=r"train\.launcher\.num_processes: .*1 or more\) or 'auto'"):
        parse_params(params({"num_processes": value}))


def test_unknown_strategy_and_key_are_reported_together():
    with pytest.raises(SqltuneError) as err:
        parse_params(params({"strategy": "zero3", "nproc": 2}))
    assert "train.launcher.strategy" in str(err.value) and "train.launcher.nproc: unknown key" in str(err.value)


def test_fsdp_qlora_needs_the_storage_dtype_as_precision():
    d = params({"strategy": "fsdp"}, precision="fp32")
    d["train"]["method"] = "qlora"
    with pytest.raises(SqltuneError, match="needs trainer.precision bf16 or auto"):
        parse_params(d)
    d["train"]["trainer"]["precision"] = "bf16"
    assert parse_params(d).train.launcher.strategy == "fsdp"


# --- the decision and the command ----------------------------------------------------------------


def test_when_the_stage_launches(monkeypatch):
    for var in ("LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    auto = train_params(num_processes="auto")
    assert launch.num_processes(auto.launcher, 4) == 4 and launch.needs_launch(auto, 4)
    assert launch.num_processes(auto.launcher, 0) == 1 and not launch.needs_launch(auto, 0)  # CPU: one process
    assert launch.needs_launch(train_params(num_processes=2), 0)  # asked for explicitly: gloo on CPU
    assert launch.needs_launch(train_params(strategy="fsdp"), 1)  # FSDP (offload) on one GPU
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not launch.needs_launch(train_params(num_processes=2), 2)  # a worker never launches again


def test_preflight_errors_come_before_the_launcher():
    with pytest.raises(SqltuneError, match="num_processes is 4 but 2 CUDA GPU"):
        launch.check(train_params(num_processes=4), 4, gpus=2)
    with pytest.raises(SqltuneError, match="fsdp needs CUDA GPUs"):
        launch.check(train_params(num_processes=2, strategy="fsdp"), 2, gpus=0)
    launch.check(train_params(num_processes=2), 2, gpus=0)  # DDP on CPU is fine


def parsed(tp, n=2):
    """The flags as accelerate's own CLI parser reads them: proves they are valid launch flags."""
    from accelerate.commands.launch import launch_command_parser

    cmd = launch.launch_command(tp, n, "stages/train.py", ["--data", "x.jsonl"])
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    args = launch_command_parser().parse_args(cmd[3:])
    assert args.training_script == "stages/train.py" and args.training_script_args == ["--data", "x.jsonl"]
    return args


def test_ddp_command():
    args = parsed(train_params(num_processes=2))
    assert args.multi_gpu and not args.use_fsdp and args.num_processes == 2 and args.num_machines == 1
    assert args.mixed_precision == "no"  # the Trainer sets bf16/fp16 from train.trainer.precision
    assert args.main_process_port == 0  # a free port: two runs on one machine don't collide


def test_fsdp_command_has_the_documented_qlora_settings():
    d = params({"num_processes": 2, "strategy": "fsdp", "fsdp_offload_params": True}, precision="bf16")
    d["train"]["method"] = "qlora"
    args = parsed(parse_params(d).train)
    assert args.use_fsdp and not args.multi_gpu and args.num_processes == 2
    assert (args.fsdp_version, args.fsdp_sharding_strategy, args.fsdp_auto_wrap_policy) == (
        "1", "FULL_SHARD", "TRANSFORMER_BASED_WRAP")
    assert (args.fsdp_state_dict_type, args.fsdp_use_orig_params, args.fsdp_cpu_ram_efficient_loading,
            args.fsdp_sync_module_states) == ("SHARDED_STATE_DICT", "false", "true", "true")
    assert args.fsdp_offload_params == "true" and args.fsdp_activation_checkpointing == "false"


def test_trainer_overrides_follow_the_launch(monkeypatch):
    for var in ("WORLD_SIZE", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(var, raising=False)
    assert launch.trainer_overrides() == {}
    assert launch.checkpoint_files(("a",)) == ("a",)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert launch.trainer_overrides() == {"ddp_find_unused_parameters": False}
    assert "pytorch_model_fsdp_0/.metadata" in launch.checkpoint_files(("a",))


# --- a real 2-process run ------------------------------------------------------------------------

GOOD_ROWS = [{"question": f"How many heads are older than {n}?", "context": "CREATE TABLE head (age INTEGER)",
              "answer": f"SELECT COUNT(*) FROM head WHERE age > {n}"} for n in range(160)]


def stage(proj: Path, name: str, args: list[str], **popen):
    return subprocess.Popen([sys.executable, str(ROOT / "stages" / f"{name}.py"), *args], cwd=proj,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def two_process_project(tmp_path: Path, model_dir: Path, train_size: int) -> Path:
    d = params({"num_processes": 2}, epochs=1, max_length=128, per_device_batch_size=2, logging_steps=1,
               save_steps=2, save_total_limit=50, precision="fp32", learning_rate=1e-3)
    d["model"].update(name=str(model_dir), source="local")
    d["prepare"].update(dataset="data.jsonl", train_size=train_size, test_size=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(d))
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in GOOD_ROWS))
    out, _ = stage(tmp_path, "prepare", ["--out", "data/prepared", "--stats", "metrics/prepare.json"]).communicate()
    assert (tmp_path / "data/prepared/train.jsonl").is_file(), out
    return tmp_path


def test_two_process_ddp_run_of_the_train_stage(tmp_path, tiny_model_dir):
    proj = two_process_project(tmp_path, tiny_model_dir, train_size=36)
    proc = stage(proj, "train", TRAIN_ARGS, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "train: ddp on 2 processes through accelerate launch" in out
    done = next(line for line in out.splitlines() if line.startswith("train: done at step"))
    assert out.count("train: done at step") == 1, "only the main process reports"
    step, world, seqs = (int(x) for x in (done.split()[4], done.split()[6], done.split()[8]))
    assert world == 2
    # The packed sequences are sharded over the two processes: each step takes 2 per process.
    assert step == math.ceil(seqs / (2 * 2)) and step >= 3, done
    loss = float(done.split("loss ")[1].split(",")[0])
    assert math.isfinite(loss) and loss > 0
    adapter = proj / "models/adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    assert not list(proj.glob("models/.adapter.*")), "no leftover temp folders from other processes"
    # dvclive ran once (main process): each global step logged once.
    steps = [int(r.split("\t")[0]) for r in
             (proj / "metrics/train/plots/metrics/loss.tsv").read_text().splitlines()[1:]]
    assert steps == list(range(1, step + 1))
    state = json.loads((proj / f"models/checkpoints/checkpoint-{step}/trainer_state.json").read_text())
    assert state["global_step"] == step and state["train_batch_size"] == 2


def test_two_process_ctrl_c_saves_together_and_resumes(tmp_path, tiny_model_dir):
    """Ctrl-C reaches the launcher (running in the stage process), which forwards it once to each
    worker; they agree on a step, save one checkpoint and stop. A rerun resumes from it."""
    proj = two_process_project(tmp_path, tiny_model_dir, train_size=150)  # about 38 steps: time to interrupt
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = stage(proj, "train", TRAIN_ARGS, env=env, start_new_session=True)
    ckpt = proj / "models/checkpoints/checkpoint-2/trainer_state.json"
    end = time.time() + 240
    while not ckpt.is_file():
        assert proc.poll() is None and time.time() < end, proc.communicate()[0]
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 130 and "interrupted; a checkpoint is saved" in out, out
    assert "Traceback" not in out
    assert not (proj / "models/adapter").exists()
    saved = sorted(int(p.name.split("-")[1]) for p in (proj / "models/checkpoints").glob("checkpoint-*"))
    assert saved[-1] > 2, (saved, out)

    proc = stage(proj, "train", TRAIN_ARGS, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and f"resuming from models/checkpoints/checkpoint-{saved[-1]}" in out, out
    assert (proj / "models/adapter/adapter_model.safetensors").is_file()


def test_a_failing_worker_fails_the_stage_with_its_error(tmp_path):
    """A problem only a worker finds ends the stage with that worker's `error:` line and exit code."""
    (tmp_path / "empty-model").mkdir()
    d = params({"num_processes": 2})
    d["model"].update(name=str(tmp_path / "empty-model"), source="local")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(d))
    proc = stage(tmp_path, "train", TRAIN_ARGS, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    lines = out.splitlines()
    # The failing worker's message comes first; a peer waiting on it may add its own broken-connection
    # traceback before the launcher stops it, which is why the stage's last line names the first failure.
    first_error = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    assert "not a folder with a config.json" in lines[first_error], out
    assert not any(line.startswith("[rank") for line in lines[:first_error]), out
    assert lines[-1] == "train: process 0 failed with exit code 2", out
    assert not (tmp_path / "models/adapter").exists()
