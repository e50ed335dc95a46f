"""The bad-input matrix (docs/bad-input.md): each row runs a real stage script and
expects exit code 2, one `error:` message naming the problem and the fix, no traceback, and no
partial outputs. Model-output rows live in test_scoring.py (bad predictions never raise, are
refused or sandboxed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GOOD_ROWS = [{"question": f"How many heads are older than {n}?", "context": "CREATE TABLE head (age INTEGER)",
              "answer": f"SELECT COUNT(*) FROM head WHERE age > {n}"} for n in range(20)]


def params(**changes) -> dict:
    d = yaml.safe_load((ROOT / "params.yaml").read_text())
    d["prepare"].update({"dataset": "data.jsonl", "train_size": 12, "test_size": 4})
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        node = d
        for p in path:
            node = node[p]
        node[last] = value
    return d


def stage(tmp: Path, name: str, extra_env=None) -> subprocess.CompletedProcess:
    args = {
        "prepare": ["--out", "data/prepared", "--stats", "metrics/prepare.json"],
        "train": ["--data", "data/prepared/train.jsonl", "--adapter", "models/adapter", "--checkpoints",
                  "models/checkpoints", "--live", "metrics/train", "--base-cache", "models/base"],
    }[name]
    return subprocess.run([sys.executable, str(ROOT / "stages" / f"{name}.py"), *args], cwd=tmp,
                          capture_output=True, text=True, timeout=600, env={**os.environ, **(extra_env or {})})


def write_data(tmp: Path, rows=GOOD_ROWS, raw: bytes | None = None, name="data.jsonl") -> None:
    (tmp / name).write_bytes(raw if raw is not None else "\n".join(json.dumps(r) for r in rows).encode())


def expect_clean_failure(proc, tmp: Path, *needles: str, outputs=("data", "metrics", "models/adapter")):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)
    for out in outputs:
        assert not (tmp / out).exists(), f"partial output {out}"


PARAMS_CASES = {
    "unknown key at depth": ({"train.lora.rank": 8}, ["train.lora.rank: unknown key"]),
    "wrong type": ({"evaluate.batch_tokens": "sixteen"}, ["evaluate.batch_tokens", "number of tokens or 'auto'"]),
    "negative lr": ({"train.trainer.learning_rate": -0.1}, ["train.trainer.learning_rate", "greater than 0"]),
    "lora r of 0": ({"train.lora.r": 0}, ["train.lora.r", "greater than 0"]),
    "test size larger than the data": ({"prepare.test_size": 500}, ["exceeds the 20 usable rows", "lower them"]),
    "missing local dataset": ({"prepare.dataset": "nope/missing.jsonl"}, ["nope/missing.jsonl not found",
                                                                         "prepare.dataset"]),
}


@pytest.mark.parametrize("case", sorted(PARAMS_CASES))
def test_bad_params(tmp_path, case):
    changes, needles = PARAMS_CASES[case]
    write_data(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params(**changes)))
    expect_clean_failure(stage(tmp_path, "prepare"), tmp_path, *needles)


def test_invalid_yaml(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: 1\nprepare: {dataset: [\n")
    expect_clean_failure(stage(tmp_path, "prepare"), tmp_path, "not valid YAML at line")


DATA_CASES = {
    "empty file": (b"", ["is empty"]),
    "missing column": (b'{"question": "q", "sql": "SELECT 1"}\n', ["lacks column(s) context, answer"]),
    "not UTF-8": (b'{"question": "\xff\xfe"}\n', ["not UTF-8"]),
    "invalid JSON line": (b'{"question": "q", "context": "c", "answer": "a"}\n{"question": \n', ["line 2: invalid JSON"]),
    "context is not DDL": ("\n".join(json.dumps({**r, "context": "CREATE TABEL head (age"}) for r in GOOD_ROWS).encode(),
                           ["invalid_context_ddl: 20", "max_dropped_fraction"]),
    "too many unparsable SQL rows": ("\n".join(json.dumps({**r, "answer": "SELEC age FRM"}) if i % 2 else json.dumps(r)
                                               for i, r in enumerate(GOOD_ROWS)).encode(),
                                     ["unparsable_sql: 10", "max_dropped_fraction"]),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_data(tmp_path, case):
    raw, needles = DATA_CASES[case]
    write_data(tmp_path, raw=raw)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params()))
    expect_clean_failure(stage(tmp_path, "prepare"), tmp_path, *needles)


def prepared(tmp: Path, **changes) -> None:
    write_data(tmp)
    (tmp / "params.yaml").write_text(yaml.safe_dump(params(**changes)))
    assert stage(tmp, "prepare").returncode == 0


def test_4bit_without_cuda(tmp_path, tiny_model_dir):
    prepared(tmp_path, **{"train.method": "qlora", "model.name": str(tiny_model_dir)})
    proc = stage(tmp_path, "train", {"CUDA_VISIBLE_DEVICES": ""})
    expect_clean_failure(proc, tmp_path, "train.method is qlora but no CUDA GPU", "Set train.method to lora",
                         outputs=("models/adapter", "metrics/train", "models/checkpoints"))


@pytest.mark.parametrize("name,needle", [
    ("not a model", "neither a local folder, an embedded model"),
    ("nobody-here/no-such-model", "could not load model 'nobody-here/no-such-model'"),
])
def test_model_neither_local_embedded_nor_reachable(tmp_path, name, needle):
    prepared(tmp_path, **{"model.name": name})
    proc = stage(tmp_path, "train", {"HF_HUB_OFFLINE": "1"})
    expect_clean_failure(proc, tmp_path, needle, outputs=("models/adapter", "metrics/train"))


def test_rows_dropped_below_threshold_are_counted_not_fatal(tmp_path):
    rows = GOOD_ROWS + [{**GOOD_ROWS[0], "answer": "SELEC age FRM"}]
    write_data(tmp_path, rows)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params(**{"prepare.max_dropped_fraction": 0.1})))
    proc = stage(tmp_path, "prepare")
    assert proc.returncode == 0 and "dropped 1 of 21" in proc.stdout
    stats = json.loads((tmp_path / "metrics/prepare.json").read_text())
    assert all(isinstance(v, (int, float)) for v in stats.values()), stats  # flat: DVC reads scalars only
    assert (stats["dropped"], stats["dropped_unparsable_sql"], stats["dropped_destructive_sql"]) == (1, 1, 0)


def test_hf_token_never_reaches_a_file_or_log(tmp_path, tiny_model_dir):
    secret = "hf_sqltuneSECRETtoken0123456789"
    (tmp_path / ".env").write_text(f"HF_TOKEN={secret}\n")
    prepared(tmp_path, **{"model.name": str(tiny_model_dir), "train.trainer.epochs": 1,
                          "train.trainer.max_length": 256, "train.trainer.save_steps": 2})
    proc = stage(tmp_path, "train", {"HF_TOKEN": secret})
    assert proc.returncode == 0, proc.stderr
    assert secret not in proc.stdout + proc.stderr
    for f in tmp_path.rglob("*"):
        if f.is_file() and f.name != ".env":
            assert secret.encode() not in f.read_bytes(), f


def test_an_error_during_a_progress_bar_starts_its_own_line(capsys):
    """A bar mid-line (a training step, no newline yet) does not swallow the error's start: the
    error is a line of its own beginning with `error:`, as when several machines lose one."""
    import sys

    from tqdm import tqdm

    from sqltune.errors import SqltuneError, run_main

    def step():
        bar = tqdm(total=38, file=sys.stderr)
        bar.update(5)
        raise SqltuneError("lost machine 1 of 2 during training")

    with pytest.raises(SystemExit) as exit_:
        run_main(step)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "5/38" in err
    assert [line for line in err.splitlines() if "error" in line] == ["error: lost machine 1 of 2 during training"]


def test_out_of_gpu_memory_is_one_error_line_naming_the_settings(capsys):
    """A batch too large for the card is a setting to change, not a bug: one `error:` line, exit 2."""
    import torch

    from sqltune.errors import run_main

    def step():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 144.00 MiB.\nmore detail")

    with pytest.raises(SystemExit) as exit_:
        run_main(step)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith("error: out of GPU memory (CUDA out")
    assert "per_device_batch_size" in err and "evaluate.batch_tokens" in err and "Traceback" not in err

    def wrapped():  # a library catching it and raising its own error from it
        try:
            step()
        except torch.OutOfMemoryError as exc:
            raise RuntimeError("generation failed") from exc

    with pytest.raises(SystemExit) as exit_:
        run_main(wrapped)
    assert exit_.value.code == 2 and capsys.readouterr().err.startswith("error: out of GPU memory (generation failed)")

    def bug():
        raise RuntimeError("a real bug")

    with pytest.raises(RuntimeError, match="a real bug"):  # anything else keeps its traceback
        run_main(bug)
