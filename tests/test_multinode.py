"""Training across machines and parallel sweeps (sqltune.launch): where the machines are (params,
torchrun's and SLURM's environment), the launch flags, the GPU pool's claims, and real runs of the
train stage as two "machines" on localhost (two launcher processes, gloo on CPU): the same adapter
as one machine with two processes, a lost machine named within the timeout and resumed from, a
workspace the machines don't share refused; and evaluate-only experiments on two `dvc queue`
workers."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dvc_project import commit, make_project, run
from sqltune import launch
from sqltune.config import parse_params
from sqltune.errors import SqltuneError
from sqltune.training import CHECKPOINT_FILES
from test_launch import TRAIN_ARGS, params, stage, two_process_project

ROOT = Path(__file__).resolve().parents[1]
CPU = {"CUDA_VISIBLE_DEVICES": ""}
# Torchrun's and SLURM's variables: cleared around every run here, so the host's own never leak in.
DIST_ENV = ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_NNODES", "SLURM_NODEID", "SLURM_JOB_ID",
            "SLURM_JOB_NODELIST", "SLURM_STEP_NODELIST", "SLURM_NODELIST", "LOCAL_RANK", "WORLD_SIZE",
            launch.GPU_POOL_ENV)


def launcher(**values):
    return parse_params(params(values)).train.launcher


def clean_env(**values) -> dict:
    return {**{k: v for k, v in os.environ.items() if k not in DIST_ENV}, **values}


# --- where the machines are ----------------------------------------------------------------------


def test_one_machine_ignores_the_environment():
    env = {"SLURM_NNODES": "4", "SLURM_NODEID": "2", "MASTER_ADDR": "x"}
    assert launch.resolve_machines(launcher(), env) == launch.Machines()  # num_machines defaults to 1
    assert launch.resolve_machines(launcher(num_machines="auto"), {}) == launch.Machines()


@pytest.mark.parametrize("nodelist,hosts", [
    ("gpu07", ["gpu07"]),
    ("gpu[1-3,5]", ["gpu1", "gpu2", "gpu3", "gpu5"]),
    ("gpu[08-11]", ["gpu08", "gpu09", "gpu10", "gpu11"]),
    ("a1,b[2-3],c", ["a1", "b2", "b3", "c"]),
    ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
    ("node-[7]-ib", ["node-7-ib"]),
])
def test_slurm_nodelist_forms(monkeypatch, nodelist, hosts):
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)  # no scontrol: the parser reads it
    assert launch.slurm_hosts(nodelist) == hosts


@pytest.mark.parametrize("nodelist", ["gpu[1-3", "gpu]1[", "gpu[3-1]", "gpu[a-b]", ""])
def test_an_unreadable_nodelist_names_the_fix(monkeypatch, nodelist):
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)
    with pytest.raises(SqltuneError, match="cannot read the SLURM node list .*set train.launcher.main_address"):
        launch.slurm_hosts(nodelist)


def test_scontrol_is_asked_when_it_exists(monkeypatch, tmp_path):
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\n[ \"$1 $2\" = 'show hostnames' ] && printf 'first-host\\nsecond-host\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert launch.slurm_hosts("whatever[1-2]") == ["first-host", "second-host"]


def test_slurm_gives_count_rank_address_and_a_job_port(monkeypatch):
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)
    env = {"SLURM_NNODES": "3", "SLURM_NODEID": "2", "SLURM_JOB_ID": "123456",
           "SLURM_JOB_NODELIST": "gpu[04-06]", "SLURM_STEP_NODELIST": "gpu[05-06],gpu09"}
    m = launch.resolve_machines(launcher(num_machines="auto"), env)
    # The step's node list (where srun runs) wins over the job's.
    assert m == launch.Machines(3, 2, "gpu05", launch.SLURM_PORT_BASE + 123456 % launch.SLURM_PORT_SPAN)
    del env["SLURM_STEP_NODELIST"]
    assert launch.resolve_machines(launcher(num_machines="auto"), env).address == "gpu04"


def test_torchrun_variables_win_over_slurm_and_params_over_both():
    env = {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29999",
           "SLURM_NNODES": "4", "SLURM_NODEID": "3", "SLURM_JOB_NODELIST": "gpu[1-4]", "SLURM_JOB_ID": "7"}
    assert launch.resolve_machines(launcher(num_machines="auto"), env) == launch.Machines(2, 1, "10.0.0.5", 29999)
    explicit = launcher(num_machines=4, machine_rank=0, main_address="head-node", main_port=12345)
    assert launch.resolve_machines(explicit, env) == launch.Machines(4, 0, "head-node", 12345)


def test_master_addr_alone_uses_torchruns_default_port():
    m = launch.resolve_machines(launcher(num_machines=2, machine_rank=1), {"MASTER_ADDR": "head"})
    assert m == launch.Machines(2, 1, "head", launch.DEFAULT_PORT)


def test_a_missing_rendezvous_is_one_error_naming_the_params():
    with pytest.raises(SqltuneError) as err:
        launch.resolve_machines(launcher(num_machines=2, machine_rank=0), {})
    msg = str(err.value)
    assert "num_machines is 2 but the main machine's address is unknown" in msg
    assert "train.launcher.main_address" in msg and "MASTER_ADDR" in msg and "\n" not in msg
    with pytest.raises(SqltuneError, match="this machine's rank is unknown: set train.launcher.machine_rank"):
        launch.resolve_machines(launcher(num_machines=2), {"MASTER_ADDR": "head"})


@pytest.mark.parametrize("env,needle", [
    ({"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "h"},
     "this machine's rank is 2 but train.launcher.num_machines is 2"),
    ({"NNODES": "two"}, "NNODES is 'two', not a whole number"),
    ({"NNODES": "2", "NODE_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "70000"},
     "MASTER_PORT is 70000, not a TCP port"),
])
def test_bad_environment_values_are_named(env, needle):
    with pytest.raises(SqltuneError, match=re.escape(needle)):
        launch.resolve_machines(launcher(num_machines="auto"), env)


@pytest.mark.parametrize("values,needle", [
    ({"num_machines": 2, "machine_rank": 2}, "machine_rank 2 must be below num_machines 2"),
    ({"num_machines": 0}, "num_machines: must be a number of machines (1 or more) or 'auto'"),
    ({"machine_rank": -1}, "machine_rank: must be this machine's rank"),
    ({"main_address": "head:29500"}, "main_address: must be a host name or IPv4 address"),
    ({"main_port": 0}, "main_port: must be a TCP port from 1 to 65535 or 'auto'"),
    ({"peer_timeout_s": 0}, "peer_timeout_s: Input should be greater than 0"),
    ({"rdzv": "c10d"}, "train.launcher.rdzv: unknown key"),
])
def test_bad_launcher_params_are_named(values, needle):
    with pytest.raises(SqltuneError, match=re.escape(needle)):
        parse_params(params(values))


def test_a_rendezvous_from_params_alone_resolves_without_environment():
    lp = launcher(num_machines=2, machine_rank=1, main_address="192.168.1.10", main_port=29501)
    assert launch.resolve_machines(lp, {}) == launch.Machines(2, 1, "192.168.1.10", 29501)


# --- the launch command --------------------------------------------------------------------------


def test_two_machine_flags_are_valid_accelerate_flags():
    from accelerate.commands.launch import launch_command_parser

    tp = parse_params(params({"num_processes": 4, "peer_timeout_s": 42.5})).train
    machines = launch.Machines(2, 1, "head", 29501)
    assert launch.needs_launch(parse_params(params()).train, 0, machines)  # one process per machine still launches
    cmd = launch.launch_command(tp, 4, "stages/train.py", ["--data", "x.jsonl"], machines)
    args = launch_command_parser().parse_args(cmd[3:])
    # accelerate counts processes over all machines; num_processes is per machine.
    assert (args.num_machines, args.num_processes, args.machine_rank) == (2, 8, 1)
    assert (args.main_process_ip, args.main_process_port, args.rdzv_backend) == ("head", 29501, "static")
    assert args.rdzv_conf == "timeout=43" and args.max_restarts == 0
    one = launch_command_parser().parse_args(launch.launch_command(tp, 4, "s.py", [])[3:])
    assert (one.num_machines, one.num_processes, one.main_process_port, one.machine_rank) == (1, 4, 0, None)


def test_the_process_group_timeout_is_the_peer_timeout(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launch.trainer_overrides(launcher(peer_timeout_s=12.2))["ddp_timeout"] == 13
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert launch.trainer_overrides(launcher(peer_timeout_s=12.2)) == {}


def test_the_checkpoint_fingerprint_ignores_the_rendezvous_but_not_the_strategy(tmp_path):
    from sqltune import training

    data = tmp_path / "train.jsonl"
    data.write_text("{}\n")
    one = parse_params(params({"num_processes": 2}))
    split = parse_params(params({"num_processes": 1, "num_machines": 2, "machine_rank": 1, "main_address": "h",
                                 "main_port": 4000, "peer_timeout_s": 5}))
    fp = training.run_fingerprint(one, data, world_size=2)
    assert training.run_fingerprint(split, data, world_size=2) == fp  # any split of the same world size resumes
    assert training.run_fingerprint(split, data, world_size=4) != fp
    fsdp = parse_params(params({"num_processes": 2, "strategy": "fsdp"}))
    assert training.run_fingerprint(fsdp, data, world_size=2) != fp


def test_machine_k_logs_to_its_own_file(tmp_path):
    (tmp_path / "p0.yaml").write_text(yaml.safe_dump(params({"num_machines": 2, "machine_rank": 0,
                                                              "main_address": "h"})))
    (tmp_path / "p1.yaml").write_text(yaml.safe_dump(params({"num_machines": 2, "machine_rank": 1,
                                                              "main_address": "h"})))
    assert launch.log_name("train", ["--params", str(tmp_path / "p0.yaml")]) == "train"
    assert launch.log_name("train", ["--data", "x", "--params", str(tmp_path / "p1.yaml")]) == "train-machine1"
    assert launch.log_name("train", ["--params", str(tmp_path / "missing.yaml")]) == "train"


# --- the GPU pool --------------------------------------------------------------------------------

HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from sqltune import launch
print(",".join(launch.claim_gpus({pool!r}, {gpus!r}, {count})), flush=True)
time.sleep(600)
"""


def holder(pool: Path, gpus: list[str], count: int = 1) -> tuple[subprocess.Popen, str]:
    """Another experiment on the machine: a process that claims GPUs and keeps them."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT), pool=str(pool), gpus=gpus, count=count)],
                            stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def test_claims_are_exclusive_and_end_with_the_process(tmp_path):
    pool, gpus = tmp_path / "pool", ["0", "1", "2"]
    a, got_a = holder(pool, gpus)
    b, got_b = holder(pool, gpus)
    try:
        assert {got_a, got_b} == {"0", "1"}
        assert launch.claim_gpus(pool, gpus, 1, wait_s=0) == ["2"]  # the only free one (held until this process exits)
        with pytest.raises(SqltuneError, match=r"no 1 free GPU\(s\) in the SQLTUNE_GPU_POOL pool .* after 1s"):
            launch.claim_gpus(pool, ["0", "1"], 1, wait_s=1)
        a.kill()  # a killed experiment frees its GPU: the kernel drops the lock with the process
        a.wait()
        assert launch.claim_gpus(pool, ["0", "1"], 1, wait_s=10) == [got_a]
    finally:
        for p in (a, b):
            p.kill()
            p.wait()


def test_a_waiting_claim_gets_the_gpu_when_it_is_freed(tmp_path):
    pool = tmp_path / "pool"
    a, got = holder(pool, ["0"])
    said = []
    try:
        import threading

        threading.Timer(2.0, a.kill).start()
        start = time.monotonic()
        assert launch.claim_gpus(pool, ["0"], 1, wait_s=60, say=said.append) == ["0"]
        assert 1.5 < time.monotonic() - start < 30
        assert said == [f"gpu pool: all 1 GPU(s) in {pool} are claimed; waiting for 1 to come free"]
    finally:
        a.kill()
        a.wait()


def test_a_multi_gpu_claim_is_all_or_nothing(tmp_path):
    pool, gpus = tmp_path / "pool", ["0", "1", "2"]
    a, got = holder(pool, gpus, count=2)
    try:
        assert got == "0,1"
        with pytest.raises(SqltuneError, match="no 2 free GPU"):
            launch.claim_gpus(pool, gpus, 2, wait_s=0)
        # The failed claim gave GPU 2 back: another single claim still gets it.
        b, got_b = holder(pool, gpus)
        assert got_b == "2"
        b.kill()
        b.wait()
    finally:
        a.kill()
        a.wait()
    with pytest.raises(SqltuneError, match="asked for 4 GPUs from the SQLTUNE_GPU_POOL pool but the machine has 3"):
        launch.claim_gpus(pool, gpus, 4)
    with pytest.raises(SqltuneError, match="SQLTUNE_GPU_POOL is set but no GPU is visible"):
        launch.claim_gpus(pool, [], 1)


def test_the_pool_narrows_cuda_visible_devices_and_stays_away_when_unset(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "3,5"}
    assert launch.claim_pooled_gpus(1, env) is None and env == {"CUDA_VISIBLE_DEVICES": "3,5"}
    env[launch.GPU_POOL_ENV] = str(tmp_path / "pool")
    a, got = holder(tmp_path / "pool", ["3", "5"])
    try:
        assert got == "3"
        assert launch.claim_pooled_gpus(1, env) == ["5"] and env["CUDA_VISIBLE_DEVICES"] == "5"
    finally:
        a.kill()
        a.wait()
    assert launch.pool_gpus({"CUDA_VISIBLE_DEVICES": "GPU-aa, GPU-bb,"}) == ["GPU-aa", "GPU-bb"]


def test_the_train_stage_claims_from_the_pool_before_anything_else(tmp_path):
    """With SQLTUNE_GPU_POOL set, the stage takes a GPU no other experiment holds, and says which."""
    (tmp_path / "empty-model").mkdir()
    d = params()
    d["model"].update(name=str(tmp_path / "empty-model"), source="local")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(d))
    pool = tmp_path / "pool"
    a, got = holder(pool, ["0", "1"])
    try:
        proc = stage(tmp_path, "train", TRAIN_ARGS,
                     env=clean_env(CUDA_VISIBLE_DEVICES="0,1", **{launch.GPU_POOL_ENV: str(pool)}))
        out, _ = proc.communicate(timeout=300)
    finally:
        a.kill()
        a.wait()
    assert got == "0" and f"gpu pool: claimed GPU 1 from {pool}" in out, out
    assert proc.returncode == 2 and "not a folder with a config.json" in out, out  # then it ran as usual


# --- two machines on localhost -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def project(dest: Path, model_dir: Path, train_size: int) -> Path:
    """test_launch's tiny project (prepared, 2 processes on one machine) in a folder of its own."""
    dest.mkdir(parents=True)
    return two_process_project(dest, model_dir, train_size)


def machine(proj: Path, env: dict, params_file: str = "params.yaml") -> subprocess.Popen:
    """One machine's train stage: its own launcher process (and process group), as srun starts it."""
    return stage(proj, "train", [*TRAIN_ARGS, "--params", params_file], env=clean_env(**CPU, **env),
                 start_new_session=True)


def finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[str]:
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            outs.append(p.communicate()[0])
            raise
    return outs


def adapter(proj: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(proj / "models/adapter/adapter_model.safetensors")


def curve_steps(proj: Path) -> list[int]:
    return [int(r.split("\t")[0]) for r in (proj / "metrics/train/plots/metrics/loss.tsv").read_text().splitlines()[1:]]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def steps_trained(out: str) -> list[int]:
    return [int(n) for n in re.findall(r"^step (\d+)/\d+: loss", out, flags=re.M)]


def test_two_machines_train_the_same_adapter_as_one_machine_with_two_processes(tmp_path, tiny_model_dir):
    one = project(tmp_path / "one", tiny_model_dir, 36)  # 1 machine x 2 processes
    out, = finish([stage(one, "train", TRAIN_ARGS, env=clean_env(**CPU))])
    assert "train: done at step 9 on 2 process(es)" in out, out

    two = project(tmp_path / "two", tiny_model_dir, 36)
    d = yaml.safe_load((two / "params.yaml").read_text())
    d["train"]["launcher"].update(num_processes=1, num_machines="auto")  # all from torchrun's variables
    (two / "params.yaml").write_text(yaml.safe_dump(d))
    env = {"NNODES": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    out0, out1 = finish([machine(two, {**env, "NODE_RANK": "0"}), machine(two, {**env, "NODE_RANK": "1"})])
    assert "train: ddp on 1 processes on each of 2 machines (this is machine 0" in out0, out0
    assert "train: done at step 9 on 2 process(es)" in out0 and "train: done" not in out1, (out0, out1)
    assert max_diff(adapter(two), adapter(one)) <= 1e-5
    # Only global rank 0 wrote: one curve point per step, and the checkpoints hold what one machine's
    # do; machine 1's console went to its own log.
    assert curve_steps(two) == list(range(1, 10))
    assert "train: done at step 9" in (two / "logs/train.log").read_text()
    assert "this is machine 1" in (two / "logs/train-machine1.log").read_text()
    assert sorted(p.name for p in (two / "models/checkpoints/checkpoint-9").iterdir()) == sorted(
        p.name for p in (one / "models/checkpoints/checkpoint-9").iterdir())


def split_project(proj: Path, port: int, timeout_s: float) -> None:
    """params.yaml for machine 0 and params-m1.yaml for machine 1: the rendezvous from params."""
    d = yaml.safe_load((proj / "params.yaml").read_text())
    lp = dict(num_processes=1, num_machines=2, main_address="127.0.0.1", main_port=port, peer_timeout_s=timeout_s)
    for rank, name in ((0, "params.yaml"), (1, "params-m1.yaml")):
        d["train"]["launcher"].update(lp, machine_rank=rank)
        (proj / name).write_text(yaml.safe_dump(d))


def test_a_killed_machine_is_named_in_time_and_the_run_resumes(tmp_path, tiny_model_dir):
    timeout_s = 60
    proj = two_process_project(tmp_path, tiny_model_dir, train_size=150)  # about 38 steps: time to kill
    split_project(proj, free_port(), timeout_s)
    m0, m1 = machine(proj, {}), machine(proj, {}, "params-m1.yaml")
    ckpt = proj / "models/checkpoints/checkpoint-4/trainer_state.json"
    end = time.time() + 240
    while not ckpt.is_file():
        assert m0.poll() is None and time.time() < end, finish([m0, m1])
        time.sleep(0.1)
    os.killpg(m1.pid, signal.SIGKILL)  # machine 1 goes away: its launcher and (with it) its workers
    killed = time.monotonic()
    out, = finish([m0], timeout=timeout_s + 60)
    assert time.monotonic() - killed < timeout_s, out
    assert m0.returncode == 2, out
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: lost machine 1 ({socket.gethostname()}) of 2 during "
                                                     "training"), out
    assert "start the stage again on every machine to resume" in errors[0]
    assert not (proj / "models/adapter").exists()
    m1.wait()
    saved = max(int(p.name.split("-")[1]) for p in (proj / "models/checkpoints").glob("checkpoint-*")
                if all((p / f).is_file() for f in CHECKPOINT_FILES))

    out0, out1 = finish([machine(proj, {}), machine(proj, {}, "params-m1.yaml")])
    assert f"train: resuming from models/checkpoints/checkpoint-{saved}" in out0, out0
    assert steps_trained(out0)[0] == saved + 1 and steps_trained(out0)[-1] == 38, out0
    assert "train: done at step 38 on 2 process(es)" in out0 and "error:" not in out1, out1
    # dvclive continued the curve at the checkpoint: each global step once.
    assert curve_steps(proj) == list(range(1, 39))


def test_a_machine_that_does_not_share_the_workspace_is_refused(tmp_path, tiny_model_dir):
    """Machine 1 in a copy of the project: it can't see the checkpoint folder machine 0 marked."""
    import shutil

    proj = project(tmp_path / "shared", tiny_model_dir, 36)
    split_project(proj, free_port(), 60)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(proj, elsewhere)
    out0, out1 = finish([machine(proj, {}), machine(elsewhere, {}, "params-m1.yaml")])
    for out in (out0, out1):
        errors = [line for line in out.splitlines() if line.startswith("error: ")]
        assert errors == [f"error: machine 1 ({socket.gethostname()}) cannot see the models/checkpoints that "
                          "machine 0 writes (its sqltune-run.json is missing, another run's, or from other params, "
                          "data or code): put the workspace on storage every machine shares, with the same "
                          "checkout and params (docs/multi-node.md)"], out
    assert not list((proj / "models/checkpoints").glob("checkpoint-*")) and not (proj / "models/adapter").exists()
    assert not (elsewhere / "models").exists()  # machine 1 wrote nothing


# --- parallel experiments through the DVC queue --------------------------------------------------


def exp_rows(tree) -> dict:
    """Every named experiment of `dvc exp show --json`, with its data."""
    found = {}
    if isinstance(tree, dict):
        if tree.get("name") and isinstance(tree.get("data"), dict) and tree.get("rev") != "workspace":
            found[tree["name"]] = tree["data"]
        for value in tree.values():
            found.update(exp_rows(value))
    elif isinstance(tree, list):
        for value in tree:
            found.update(exp_rows(value))
    return found


def test_queued_evaluate_experiments_run_on_two_workers_without_training(tmp_path, tiny_model_dir):
    config = {
        "model": {"name": str(tiny_model_dir), "source": "local"},
        "prepare": {"train_size": 8, "test_size": 4},
        "train": {"trainer": {"epochs": 1, "max_length": 256, "per_device_batch_size": 2, "logging_steps": 1,
                              "save_steps": 4, "precision": "fp32"}},
        "evaluate": {"max_new_tokens": 8, "batch_tokens": 2048, "n_databases": 2, "score_base": False},
        "merge": {"parity_samples": 2},
    }
    proj = make_project(tmp_path, config)
    run(["dvc", "repro"], proj)
    commit(proj)
    for name, n in (("sweep-3", 3), ("sweep-4", 4)):
        run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"evaluate.n_databases={n}"], proj)
    run(["dvc", "queue", "start", "-j", "2"], proj)
    end = time.time() + 600
    while any(word in (status := run(["dvc", "queue", "status"], proj)) for word in ("Queued", "Running")):
        assert time.time() < end, status
        time.sleep(2)
    assert status.count("Success") == 2, status

    rows = exp_rows(json.loads(run(["dvc", "exp", "show", "--json"], proj)))
    for name, n in (("sweep-3", 3), ("sweep-4", 4)):
        assert rows[name]["params"]["params.yaml"]["data"]["evaluate"]["n_databases"] == n
        scores = rows[name]["metrics"]["metrics/eval/metrics.json"]["data"]["finetuned"]
        assert scores["n"] == 4 and scores["execution_accuracy"] is not None
        log = run(["dvc", "queue", "logs", name], proj)
        assert "Running stage 'evaluate'" in log and "Running stage 'train'" not in log, log


def test_the_launcher_and_its_rank0_worker_share_the_stage_log(tmp_path):
    """On one machine with several processes the launcher and its rank-0 worker both write
    logs/train.log: every line of both must survive, none written over another."""
    import subprocess
    import sys
    import textwrap

    from sqltune.logs import stage_log

    worker = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from sqltune.logs import stage_log
        with stage_log("train", {str(tmp_path)!r}):
            for k in range(50):
                print(f"worker line {{k}}", flush=True)
    """)
    env = {**os.environ, "LOCAL_RANK": "0", "WORLD_SIZE": "2", "RANK": "0"}
    with stage_log("train", tmp_path) as path:
        for k in range(50):
            print(f"launcher line {k}", flush=True)
        subprocess.run([sys.executable, "-c", worker], env=env, check=True, capture_output=True)
        for k in range(50, 100):
            print(f"launcher line {k}", flush=True)
    lines = [line.split(" ", 2)[2] for line in path.read_text().splitlines()]
    assert sorted(lines) == sorted([f"launcher line {k}" for k in range(100)] + [f"worker line {k}" for k in range(50)])
