"""Multi-process training through `accelerate launch` (torchrun underneath), chosen by params.

`train.launcher.num_processes > 1` (or `strategy: fsdp`) makes the train stage run
`accelerate launch FLAGS stages/train.py ARGS` (accelerate's own launcher, in the stage process):
DDP (`--multi_gpu`) when the model fits one card, FSDP with the settings PEFT documents for QLoRA
(FULL_SHARD, transformer-based wrap, use_orig_params false, cpu_ram_efficient_loading, sharded state
dict) when it doesn't. Each worker runs the same stage code; sqltune.training makes rank 0 the only
writer. On a machine without CUDA, DDP runs on CPU processes over gloo (what the tests use).

The launcher's agent is the stage process itself, so Ctrl-C, `kill` and DVC reach it; it forwards
SIGINT once to every worker, which save a checkpoint together and stop. Workers die with the agent
(PR_SET_PDEATHSIG), so a `kill -9` leaves no orphan still training.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from sqltune.config import LauncherParams, TrainParams
from sqltune.errors import SqltuneError

# Seconds the launcher waits, after forwarding Ctrl-C, for the workers to save and exit (then SIGKILL).
SHUTDOWN_TIMEOUT_S = 900
# FSDP-QLoRA as PEFT's docs configure it (docs/source/accelerate/fsdp.md, fsdp_config_qlora.yaml).
FSDP_FLAGS = {
    "fsdp_version": "1",
    "fsdp_sharding_strategy": "FULL_SHARD",
    "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # the Trainer swaps in PEFT's LoRA-aware policy
    "fsdp_backward_prefetch": "BACKWARD_PRE",
    "fsdp_forward_prefetch": "false",
    "fsdp_state_dict_type": "SHARDED_STATE_DICT",
    "fsdp_use_orig_params": "false",  # frozen 4-bit and trainable LoRA weights in separate flat params
    "fsdp_cpu_ram_efficient_loading": "true",
    "fsdp_sync_module_states": "true",  # required by cpu_ram_efficient_loading
    # Activation checkpointing stays the Trainer's (train.trainer.gradient_checkpointing), as in PEFT's
    # FSDP-QLoRA example; FSDP's own would also wrap PEFT's per-LoRA-layer FSDP units.
    "fsdp_activation_checkpointing": "false",
}
# What an FSDP checkpoint holds instead of adapter_model.safetensors and optimizer.pt: sharded
# torch.distributed.checkpoint folders, whose `.metadata` is written last.
FSDP_CHECKPOINT_FILES = ("trainer_state.json", "scheduler.pt", "pytorch_model_fsdp_0/.metadata",
                         "optimizer_0/.metadata")


def inside_launch() -> bool:
    """True in a worker that torchrun (accelerate launch) started."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def num_processes(lp: LauncherParams, gpus: int) -> int:
    return max(gpus, 1) if lp.num_processes == "auto" else lp.num_processes


def check(tp: TrainParams, n: int, gpus: int) -> None:
    """What a worker would only find after the launcher started: fail once, before it."""
    if gpus and n > gpus:
        raise SqltuneError(f"train.launcher.num_processes is {n} but {gpus} CUDA GPU(s) are visible; "
                           "lower it or set it to auto")
    if tp.launcher.strategy == "fsdp" and not gpus:
        raise SqltuneError("train.launcher.strategy fsdp needs CUDA GPUs; use ddp (gloo) on a CPU machine")
    from sqltune.modeling import check_4bit

    check_4bit(tp.quantization, bool(gpus))


def needs_launch(tp: TrainParams, gpus: int) -> bool:
    if inside_launch():
        return False
    return num_processes(tp.launcher, gpus) > 1 or tp.launcher.strategy == "fsdp"


def accelerate_flags(tp: TrainParams, n: int) -> list[str]:
    """`accelerate launch` flags: all given, so a user's default accelerate config adds nothing.
    Mixed precision stays with the Trainer (bf16/fp16 from train.trainer.precision); port 0 picks a
    free port, so two runs on one machine don't collide."""
    lp = tp.launcher
    common = ["--num_machines", "1", "--num_processes", str(n), "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", "0"]
    if lp.strategy == "ddp":
        return ["--multi_gpu", *common]
    fsdp = {**FSDP_FLAGS, "fsdp_offload_params": str(lp.fsdp_offload_params).lower()}
    return ["--use_fsdp", *common, *(x for k, v in fsdp.items() for x in (f"--{k}", v))]


def launch_command(tp: TrainParams, n: int, script: str | Path, argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", *accelerate_flags(tp, n), str(script), *argv]


def launch_if_asked(tp: TrainParams, script: str | Path, argv: list[str]) -> None:
    """The train stage's first step. In a launched worker: die with the launcher. Asked for several
    processes (or FSDP): launch the same script and argv on them, then exit with their result."""
    if inside_launch():
        die_with_parent()
        return
    if tp.launcher.num_processes == 1 and tp.launcher.strategy == "ddp":
        return  # the default: one process, no torch import here
    gpus = visible_gpus()
    if needs_launch(tp, gpus):
        n = num_processes(tp.launcher, gpus)
        check(tp, n, gpus)
        print(f"train: {tp.launcher.strategy} on {n} processes through accelerate launch", file=sys.stderr)
        sys.exit(run_launcher(accelerate_flags(tp, n), script, argv))


def run_launcher(flags: list[str], script: str | Path, argv: list[str]) -> int:
    """`accelerate launch FLAGS script ARGV` in this process; its exit code, without the launcher's
    traceback (a worker has already printed its own `error:` line)."""
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT_S))
    try:
        launch_command(launch_command_parser().parse_args([*flags, str(script), *argv]))
    except SignalException as exc:  # Ctrl-C or kill: the workers got it too, saved and stopped
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        print(f"train: process {rank} failed with exit code {failure.exitcode}", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


def die_with_parent() -> bool:
    """Ask Linux to SIGKILL this worker when the launcher dies, even by SIGKILL (no-op elsewhere)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None or not sys.platform.startswith("linux"):
        return False
    PR_SET_PDEATHSIG = 1
    parent = os.getppid()
    ok = ctypes.CDLL(name, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    if os.getppid() != parent:  # the launcher died before the call: no signal will come
        os._exit(1)
    return ok


def trainer_overrides() -> dict:
    """SFTConfig settings that depend on how this process was launched."""
    if world_size() > 1:
        return {"ddp_find_unused_parameters": False}  # every LoRA weight gets a gradient every step
    return {}


def checkpoint_files(default: tuple[str, ...]) -> tuple[str, ...]:
    """The files a complete checkpoint of this run holds (FSDP saves sharded folders)."""
    return FSDP_CHECKPOINT_FILES if os.environ.get("ACCELERATE_USE_FSDP") == "true" else default
