"""Multi-process and multi-machine training through `accelerate launch` (torchrun underneath),
chosen by params; and GPU claiming for parallel experiments.

`train.launcher.num_processes > 1`, `num_machines > 1` (or `strategy: fsdp`) makes the train stage
run `accelerate launch FLAGS stages/train.py ARGS` (accelerate's own launcher, in the stage process):
DDP (`--multi_gpu`) when the model fits one card, FSDP with the settings PEFT documents for QLoRA
(FULL_SHARD, transformer-based wrap, use_orig_params false, cpu_ram_efficient_loading, sharded state
dict) when it doesn't. Each worker runs the same stage code; sqltune.training makes global rank 0
the only writer. On a machine without CUDA, DDP runs on CPU processes over gloo (what the tests use).

Several machines meet at machine 0 through torch's static rendezvous (a TCP store on
main_address:main_port that machine 0's launcher hosts). Where they are comes from params or, for
each `auto`, from the environment (see `resolve_machines`), so every node runs the same command.

The launcher's agent is the stage process itself, so Ctrl-C, `kill` and DVC reach it; it forwards
SIGINT once to every worker, which save a checkpoint together and stop. Workers die with the agent
(PR_SET_PDEATHSIG), so a `kill -9` leaves no orphan still training. Across machines every node's
first worker beats a counter in the rendezvous store (`watch_peers`), so the others can tell which
node went away when a collective fails, and give up on one silent for peer_timeout_s.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqltune.config import LauncherParams, TrainParams, load_params
from sqltune.errors import SqltuneError, print_error

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


# Where machine 0 listens when no port is given: torchrun's default; under SLURM a port derived from
# the job id instead, so two jobs sharing a node don't collide.
DEFAULT_PORT = 29500
SLURM_PORT_BASE, SLURM_PORT_SPAN = 15000, 10000
# Seconds between a node's heartbeats, and how long a failed collective waits to see which node has
# stopped beating (a few beats: a live node's thread never misses that many).
HEARTBEAT_S = 1.0
LOST_WINDOW_S = 5.0
# The environment variable naming the machine-wide folder of per-GPU lock files (parallel sweeps).
GPU_POOL_ENV = "SQLTUNE_GPU_POOL"


def inside_launch() -> bool:
    """True in a worker that torchrun (accelerate launch) started."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def num_processes(lp: LauncherParams, gpus: int) -> int:
    """Processes on this machine."""
    return max(gpus, 1) if lp.num_processes == "auto" else lp.num_processes


# --------------------------------------------------------------------------------- machines


@dataclass(frozen=True)
class Machines:
    """The machines of one run as this one sees them: how many, its rank, machine 0's address."""

    count: int = 1
    rank: int = 0
    address: str | None = None
    port: int | None = None


def _env_int(env, *names: str) -> tuple[str, int] | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            if not value.isdigit():
                raise SqltuneError(f"the environment variable {name} is {value!r}, not a whole number; fix or unset it")
            return name, int(value)
    return None


def resolve_machines(lp: LauncherParams, env=os.environ) -> Machines:
    """train.launcher's machines, each `auto` from the environment: torchrun's names first (NNODES,
    NODE_RANK, MASTER_ADDR, MASTER_PORT: set on purpose), then SLURM's (SLURM_NNODES, SLURM_NODEID,
    the first host of SLURM_STEP_NODELIST or SLURM_JOB_NODELIST). One machine needs none of it."""
    count = lp.num_machines
    if count == "auto":
        found = _env_int(env, "NNODES", "SLURM_NNODES")
        count = found[1] if found else 1
        if count < 1:
            raise SqltuneError(f"{found[0]} is 0; train.launcher.num_machines needs 1 or more machines")
    if count == 1:
        return Machines()
    rank = lp.machine_rank
    if rank == "auto":
        found = _env_int(env, "NODE_RANK", "SLURM_NODEID")
        if found is None:
            raise SqltuneError(f"train.launcher.num_machines is {count} but this machine's rank is unknown: set "
                               "train.launcher.machine_rank (0 on the main machine), or NODE_RANK, or run under "
                               "SLURM's srun")
        rank = found[1]
    if rank >= count:
        raise SqltuneError(f"this machine's rank is {rank} but train.launcher.num_machines is {count}; ranks count "
                           f"from 0 to {count - 1}: fix machine_rank (or NODE_RANK / num_machines)")
    address = lp.main_address
    if address == "auto":
        address = env.get("MASTER_ADDR", "").strip() or None
    if address is None:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        address = slurm_hosts(nodelist)[0] if nodelist else None
    if address is None:
        raise SqltuneError(f"train.launcher.num_machines is {count} but the main machine's address is unknown: set "
                           "train.launcher.main_address (machine 0's host name or IP) and main_port, or "
                           "MASTER_ADDR and MASTER_PORT, or run under SLURM's srun")
    port = lp.main_port
    if port == "auto":
        found, job = _env_int(env, "MASTER_PORT"), _env_int(env, "SLURM_JOB_ID")
        port = found[1] if found else (SLURM_PORT_BASE + job[1] % SLURM_PORT_SPAN) if job else DEFAULT_PORT
        if not 1 <= port <= 65535:
            raise SqltuneError(f"MASTER_PORT is {port}, not a TCP port; use one from 1 to 65535")
    return Machines(count, rank, address, port)


def slurm_hosts(nodelist: str) -> list[str]:
    """The host names of a SLURM node list: `scontrol show hostnames` where it exists, else its
    usual forms parsed here (`gpu[01-03,7]`, `a1,b[2-3]`, `rack[1-2]-n[1-2]`)."""
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.split()
            if out:
                return out
        except (OSError, subprocess.SubprocessError):
            pass  # the parser below reads the same forms
    hosts = []
    for item in _top_level_items(nodelist):
        pieces = []
        for part in re.split(r"(\[[^\[\]]*\])", item):
            if part.startswith("["):
                pieces.append(_expand_ranges(part[1:-1], nodelist))
            elif part:
                if "[" in part or "]" in part:
                    raise _bad_nodelist(nodelist)
                pieces.append([part])
        hosts.extend("".join(p) for p in itertools.product(*pieces))
    if not hosts:
        raise _bad_nodelist(nodelist)
    return hosts


def _top_level_items(nodelist: str) -> list[str]:
    items, depth, current = [], 0, ""
    for ch in nodelist.strip():
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth not in (0, 1):
            raise _bad_nodelist(nodelist)
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    if depth:
        raise _bad_nodelist(nodelist)
    return [i for i in [*items, current] if i]


def _expand_ranges(spec: str, nodelist: str) -> list[str]:
    out = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if not m or (m[2] and int(m[2]) < int(m[1])):
            raise _bad_nodelist(nodelist)
        lo, hi = m[1], m[2] or m[1]
        out.extend(str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1))
    return out


def _bad_nodelist(nodelist: str) -> SqltuneError:
    return SqltuneError(f"cannot read the SLURM node list {nodelist!r}; set train.launcher.main_address "
                        "(machine 0's host name) or MASTER_ADDR")


# --------------------------------------------------------------------------------- launching


def check(tp: TrainParams, n: int, gpus: int) -> None:
    """What a worker would only find after the launcher started: fail once, before it."""
    if gpus and n > gpus:
        raise SqltuneError(f"train.launcher.num_processes is {n} but {gpus} CUDA GPU(s) are visible; "
                           "lower it or set it to auto")
    if tp.launcher.strategy == "fsdp" and not gpus:
        raise SqltuneError("train.launcher.strategy fsdp needs CUDA GPUs; use ddp (gloo) on a CPU machine")
    from sqltune.modeling import check_4bit

    check_4bit(tp.quantized, bool(gpus))


def needs_launch(tp: TrainParams, gpus: int, machines: Machines = Machines()) -> bool:
    if inside_launch():
        return False
    return num_processes(tp.launcher, gpus) > 1 or tp.launcher.strategy == "fsdp" or machines.count > 1


def accelerate_flags(tp: TrainParams, n: int, machines: Machines = Machines()) -> list[str]:
    """`accelerate launch` flags: all given, so a user's default accelerate config adds nothing.
    Mixed precision stays with the Trainer (bf16/fp16 from train.trainer.precision). One machine:
    port 0 picks a free port, so two runs on one machine don't collide. Several: accelerate counts
    processes over all machines, and the static rendezvous waits peer_timeout_s for them to join."""
    lp = tp.launcher
    common = ["--num_machines", str(machines.count), "--num_processes", str(n * machines.count),
              "--mixed_precision", "no", "--dynamo_backend", "no"]
    if machines.count == 1:
        common += ["--main_process_port", "0"]
    else:
        common += ["--machine_rank", str(machines.rank), "--main_process_ip", machines.address,
                   "--main_process_port", str(machines.port), "--rdzv_backend", "static",
                   "--rdzv_conf", f"timeout={math.ceil(lp.peer_timeout_s)}", "--max_restarts", "0"]
    if lp.strategy == "ddp":
        return ["--multi_gpu", *common]
    fsdp = {**FSDP_FLAGS, "fsdp_offload_params": str(lp.fsdp_offload_params).lower()}
    return ["--use_fsdp", *common, *(x for k, v in fsdp.items() for x in (f"--{k}", v))]


def launch_command(tp: TrainParams, n: int, script: str | Path, argv: list[str],
                   machines: Machines = Machines()) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", *accelerate_flags(tp, n, machines), str(script),
            *argv]


def launch_if_asked(tp: TrainParams, script: str | Path, argv: list[str]) -> None:
    """The train stage's first step. In a launched worker: die with the launcher. Otherwise claim
    GPUs when a pool is set (SQLTUNE_GPU_POOL), then, asked for several processes or machines (or
    FSDP), launch the same script and argv on them and exit with their result."""
    if inside_launch():
        die_with_parent()
        return
    lp = tp.launcher
    machines = resolve_machines(lp)
    claim_pooled_gpus(lp.num_processes if isinstance(lp.num_processes, int) else 1)
    if lp.num_processes == 1 and lp.strategy == "ddp" and machines.count == 1:
        return  # the default: one process, no torch import here
    gpus = visible_gpus()
    if needs_launch(tp, gpus, machines):
        n = num_processes(lp, gpus)
        check(tp, n, gpus)
        where = (f" on each of {machines.count} machines (this is machine {machines.rank}; machine 0 at "
                 f"{machines.address}:{machines.port})" if machines.count > 1 else "")
        print(f"train: {lp.strategy} on {n} processes{where} through accelerate launch", file=sys.stderr)
        sys.exit(run_launcher(accelerate_flags(tp, n, machines), script, argv, machines, lp.peer_timeout_s))


def run_launcher(flags: list[str], script: str | Path, argv: list[str], machines: Machines = Machines(),
                 peer_timeout_s: float = 0) -> int:
    """`accelerate launch FLAGS script ARGV` in this process; its exit code, without the launcher's
    traceback (a worker has already printed its own `error:` line)."""
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed import DistError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousError

    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT_S))
    try:
        launch_command(launch_command_parser().parse_args([*flags, str(script), *argv]))
    except SignalException as exc:  # Ctrl-C or kill: the workers got it too, saved and stopped
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        print(f"train: process {rank} failed with exit code {failure.exitcode}", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    except (DistError, RendezvousError, ConnectionError, TimeoutError) as exc:
        if machines.count == 1:
            raise
        # The rendezvous: machine 0 waits for the others to join, the others to reach machine 0.
        raise SqltuneError(
            f"machine {machines.rank} of {machines.count} could not meet the others at {machines.address}:"
            f"{machines.port} within peer_timeout_s ({peer_timeout_s:g}s): {_first_line(exc)}; start the stage on "
            "every machine at about the same time, with the same num_machines, main_address and main_port, "
            "and a port that is free on machine 0 and reachable from the others") from None
    return 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300].rstrip(".") if text else type(exc).__name__


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


def trainer_overrides(lp: LauncherParams | None = None) -> dict:
    """SFTConfig settings that depend on how this process was launched."""
    overrides = {}
    if world_size() > 1:
        overrides["ddp_find_unused_parameters"] = False  # every LoRA weight gets a gradient every step
        if lp is not None:
            overrides["ddp_timeout"] = math.ceil(lp.peer_timeout_s)  # what one collective may wait
    return overrides


def checkpoint_files(default: tuple[str, ...]) -> tuple[str, ...]:
    """The files a complete checkpoint of this run holds (FSDP saves sharded folders)."""
    return FSDP_CHECKPOINT_FILES if os.environ.get("ACCELERATE_USE_FSDP") == "true" else default


def log_name(stage: str, argv: list[str]) -> str:
    """The stage's log on machine 0 is logs/<stage>.log; machine k > 0 keeps its own console in
    logs/<stage>-machine<k>.log, since the machines share the workspace. Read from the stage's
    --params before the stage starts (the log covers all of it); bad params leave the name alone,
    the stage reports them itself."""
    import argparse

    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--params", default="params.yaml")
    try:
        rank = resolve_machines(load_params(ap.parse_known_args(argv)[0].params).train.launcher).rank
    except SqltuneError:
        return stage
    return stage if rank == 0 else f"{stage}-machine{rank}"


# --------------------------------------------------------------------------------- lost peers


def this_machine() -> str:
    """This worker's machine, as messages name it."""
    return f"machine {os.environ.get('GROUP_RANK', '0')} ({socket.gethostname()})"


class PeerWatch:
    """Heartbeats of every machine in the rendezvous store. The first worker of each machine beats
    its own counter from a thread; any worker can then tell which machines have stopped. The
    beating thread also ends its process when a machine stays silent for the peer timeout, which
    bounds a hang whatever the backend does with a collective that never completes."""

    def __init__(self, timeout_s: float, ckpt_dir: str | Path, env=os.environ):
        from datetime import timedelta

        from torch.distributed import PrefixStore, TCPStore

        self.timeout_s, self.ckpt_dir = timeout_s, ckpt_dir
        self.node, self.nodes = int(env["GROUP_RANK"]), int(env["GROUP_WORLD_SIZE"])
        self.main_address = env["MASTER_ADDR"]
        # A client of its own: the process group's store connection is not shared with a thread.
        store = TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False,
                         timeout=timedelta(seconds=max(LOST_WINDOW_S, 10)), wait_for_workers=False)
        self.store = PrefixStore(f"sqltune-peers/{env.get('TORCHELASTIC_RUN_ID', '')}", store)
        self.beats = int(env.get("LOCAL_RANK", "0")) == 0
        self._stop = threading.Event()
        self._last: dict[int, tuple[int, float]] = {}
        self._started = time.monotonic()
        if self.beats:
            self.store.set(f"host/{self.node}", socket.gethostname())
            self.store.add(f"beat/{self.node}", 1)
            self._thread = threading.Thread(target=self._run, name="sqltune-heartbeat", daemon=True)
            self._thread.start()

    def host(self, node: int) -> str:
        try:
            if self.store.check([f"host/{node}"]):
                return self.store.get(f"host/{node}").decode()
        except Exception:  # noqa: BLE001 - the store's host may be the machine that went away
            pass
        return self.main_address if node == 0 else "host unknown"

    def _counts(self) -> dict[int, int]:
        """Each machine's heartbeat count (0: none yet); raises when the store (machine 0) is gone."""
        counts = {}
        for node in range(self.nodes):
            if self.store.check([f"done/{node}"]):
                continue
            counts[node] = self.store.add(f"beat/{node}", 0) if self.store.check([f"beat/{node}"]) else 0
        return counts

    def _silence(self) -> dict[int, float]:
        """Seconds since each machine's count last moved, as this process has watched it."""
        now = time.monotonic()
        out = {}
        for node, count in self._counts().items():
            last = self._last.get(node)
            if last is None or count != last[0]:
                self._last[node] = last = (count, now if last is not None or count else self._started)
            out[node] = now - last[1]
        return out

    def _run(self) -> None:
        unreachable_since = None
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.store.add(f"beat/{self.node}", 1)
                silence, unreachable_since = self._silence(), None
            except Exception:  # noqa: BLE001 - the store is machine 0's: it is unreachable
                unreachable_since = unreachable_since or time.monotonic()
                silence = {0: time.monotonic() - unreachable_since}
            lost = [n for n, s in silence.items() if n != self.node and s >= self.timeout_s]
            if lost and not self._stop.is_set():
                print_error(self.lost_message(lost))
                os._exit(2)

    def lost(self) -> list[int]:
        """The machines that stopped beating: those whose count does not move over a few beats."""
        try:
            before = self._counts()
            time.sleep(LOST_WINDOW_S)
            after = self._counts()
        except Exception:  # noqa: BLE001 - the store lives on machine 0
            return [0] if self.node != 0 else []
        return [n for n in before if n != self.node and after.get(n, before[n] + 1) == before[n]]

    def lost_message(self, nodes: list[int]) -> str:
        names = ", ".join(f"machine {n} ({self.host(n)})" for n in nodes)
        return (f"lost {names} of {self.nodes} during training: it stopped answering (stopped, crashed or cut off; "
                f"its own log says why); checkpoints so far are in {self.ckpt_dir}: start the stage again on every "
                "machine to resume from the last one")

    def close(self, done: bool) -> None:
        self._stop.set()
        if done and self.beats:
            try:
                self.store.set(f"done/{self.node}", "1")
            except Exception:  # noqa: BLE001 - machine 0 already finished and closed the store
                pass


@contextmanager
def watch_peers(timeout_s: float, ckpt_dir: str | Path):
    """Around a launched worker's training when the run spans several machines (a no-op otherwise):
    an error while a machine has stopped beating becomes one `error:` naming that machine; this
    machine leaving on its own (done, interrupted, bad input) tells the others it is not lost."""
    if not inside_launch() or int(os.environ.get("GROUP_WORLD_SIZE", "1")) < 2:
        yield
        return
    try:
        watch = PeerWatch(timeout_s, ckpt_dir)
    except Exception as exc:  # noqa: BLE001 - the store (machine 0) is unreachable or gone
        raise SqltuneError(f"{this_machine()} cannot reach machine 0's rendezvous store at "
                           f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} ({_first_line(exc)}); "
                           "check that machine 0 is still running the stage") from None
    try:
        yield
    except SqltuneError:
        watch.close(done=True)
        raise
    except Exception:
        lost = watch.lost()
        watch.close(done=False)
        if lost:
            raise SqltuneError(watch.lost_message(lost)) from None
        raise
    watch.close(done=True)


# --------------------------------------------------------------------------------- GPU pool

_claimed: list[int] = []  # lock file descriptors, held until the process exits


def pool_gpus(env=os.environ) -> list[str]:
    """The GPUs a pool hands out: CUDA_VISIBLE_DEVICES when set, else every GPU nvidia-smi lists.
    Read without CUDA, which must not start before CUDA_VISIBLE_DEVICES is narrowed."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def claim_gpus(pool: str | Path, gpus: list[str], count: int = 1, wait_s: float | None = None,
               say=lambda msg: print(msg, file=sys.stderr)) -> list[str]:
    """Claim `count` of `gpus` through one lock file per GPU in the folder `pool` (fcntl.flock, which
    the kernel releases when the process ends, however it ends). Waits while all are claimed
    (None: for as long as it takes; else up to wait_s seconds). Returns the claimed ids; their locks
    are held by this process (and the processes it forks) until it exits."""
    if not gpus:
        raise SqltuneError(f"{GPU_POOL_ENV} is set but no GPU is visible (CUDA_VISIBLE_DEVICES, nvidia-smi); "
                           "unset it on a machine without GPUs")
    if count > len(gpus):
        raise SqltuneError(f"asked for {count} GPUs from the {GPU_POOL_ENV} pool but the machine has "
                           f"{len(gpus)}; lower train.launcher.num_processes")
    pool = Path(pool)
    try:
        pool.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SqltuneError(f"{GPU_POOL_ENV}={pool}: cannot create the folder ({exc.strerror}); point it at a "
                           "writable folder on this machine's own disk, such as /tmp/sqltune-gpus") from None
    end = None if wait_s is None else time.monotonic() + wait_s
    waited = False
    while True:
        held = []
        for gpu in gpus:
            fd = os.open(pool / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu)}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
            held.append((gpu, fd))
            if len(held) == count:
                _claimed.extend(fd for _, fd in held)
                return [g for g, _ in held]
        for _, fd in held:  # not enough free: give back the partial claim, so two waiters can't deadlock
            os.close(fd)
        if end is not None and time.monotonic() >= end:
            raise SqltuneError(f"no {count} free GPU(s) in the {GPU_POOL_ENV} pool {pool} after {wait_s:g}s; "
                               "wait for a running experiment, or run fewer at once (dvc queue start -j)")
        if not waited:
            say(f"gpu pool: all {len(gpus)} GPU(s) in {pool} are claimed; waiting for {count} to come free")
            waited = True
        time.sleep(1.0)


def claim_pooled_gpus(count: int = 1, env=os.environ) -> list[str] | None:
    """With SQLTUNE_GPU_POOL set (a machine-wide folder): claim `count` free GPUs and narrow
    CUDA_VISIBLE_DEVICES to them, before anything starts CUDA. Unset: nothing happens."""
    pool = env.get(GPU_POOL_ENV, "").strip()
    if not pool:
        return None
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_initialized():  # CUDA_VISIBLE_DEVICES is read once, when CUDA starts
            raise SqltuneError(f"{GPU_POOL_ENV}: CUDA started before a GPU was claimed; claim first")
    gpus = claim_gpus(pool, pool_gpus(env), count)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    print(f"gpu pool: claimed GPU {', '.join(gpus)} from {pool}", file=sys.stderr)
    return gpus
