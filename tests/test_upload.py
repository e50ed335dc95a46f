"""`sqltune upload`, tested up to the network boundary: huggingface_hub's HfApi is replaced by a
recorder; everything before it (credentials, plan, card, errors, token hygiene) is real."""

import json
from pathlib import Path

import pytest
import yaml

from sqltune import upload as up
from sqltune.cards import REPO_PLACEHOLDER
from sqltune.errors import SqltuneError

TOKEN = "hf_sqltuneUPLOADsecret987654321"


class FakeApi:
    calls: list = []
    fail: Exception | None = None

    def __init__(self, token=None):
        FakeApi.calls.append(("init", token))

    def create_repo(self, repo_id, private, exist_ok):
        if FakeApi.fail:
            raise FakeApi.fail
        FakeApi.calls.append(("create_repo", repo_id, private))

    def upload_folder(self, folder_path, repo_id, commit_message, allow_patterns, ignore_patterns):
        # What huggingface_hub would send: its own filter over the folder, with our patterns.
        from huggingface_hub.utils import filter_repo_objects

        sent = sorted(filter_repo_objects(
            [str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file()],
            allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
        FakeApi.calls.append(("upload_folder", folder_path, repo_id, tuple(sent)))

    def upload_file(self, path_or_fileobj, path_in_repo, repo_id, commit_message):
        FakeApi.calls.append(("upload_file", path_in_repo, path_or_fileobj.decode()))


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(up, "merge_with_dvc", lambda: FakeApi.calls.append(("merge",)))
    FakeApi.calls, FakeApi.fail = [], None
    for name in ("merged", "adapter"):
        (tmp_path / "models" / name).mkdir(parents=True)
        (tmp_path / "models" / name / "model.safetensors").write_bytes(b"x" * 1024)
    (tmp_path / "models/merged/README.md").write_text("# merge's README\n")
    for name in ("merged", "adapter"):
        (tmp_path / "models/cards" / name).mkdir(parents=True)
        (tmp_path / "models/cards" / name / "README.md").write_text(f"# {name} card\nmodel = \"{REPO_PLACEHOLDER}\"\n")
    (tmp_path / "metrics/eval").mkdir(parents=True)
    (tmp_path / "metrics/eval/metrics.json").write_text(json.dumps(
        {"finetuned": {"execution_accuracy": 0.5, "exact_match": 0.4, "n": 10}}))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_USERNAME", raising=False)
    return tmp_path


def run(workspace, **kw):
    out = []
    args = dict(repo=None, merged=workspace / "models/merged", adapter=workspace / "models/adapter",
                skip_merge=False, skip_upload=False, private=False, yes=True)
    args.update(kw)
    up.upload(**args, say=out.append)
    return "\n".join(out)


def test_merge_then_push_with_plan_and_card(workspace):
    (workspace / ".env").write_text(f"HF_TOKEN={TOKEN}\nHF_USERNAME=ada\n")
    out = run(workspace, private=True)
    assert "will push" in out and "ada/sqltune-merged (private)" in out and "model.safetensors" in out
    assert TOKEN not in out
    names = [c[0] for c in FakeApi.calls]
    assert names == ["merge", "init", "create_repo", "upload_folder", "upload_file"]
    assert FakeApi.calls[1] == ("init", TOKEN) and FakeApi.calls[2] == ("create_repo", "ada/sqltune-merged", True)
    # The card stage's card goes up as README.md, naming the repo it is pushed to; merge's README does not.
    assert FakeApi.calls[-1][1:] == ("README.md", '# merged card\nmodel = "ada/sqltune-merged"\n')
    assert "README.md" not in FakeApi.calls[3][3] and "README.md  the model card, from models/cards/merged/README.md" in out


def test_skip_merge_pushes_the_adapter(workspace, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_USERNAME", "ada")
    run(workspace, skip_merge=True, repo="org/my-sql")
    assert ("merge",) not in FakeApi.calls
    assert FakeApi.calls[1] == ("create_repo", "org/my-sql", False)
    assert FakeApi.calls[2][1].endswith("models/adapter")
    assert FakeApi.calls[-1][1:] == ("README.md", '# adapter card\nmodel = "org/my-sql"\n')


def test_skip_upload_only_merges(workspace):
    out = run(workspace, skip_upload=True)
    assert FakeApi.calls == [("merge",)] and "not uploaded" in out


def test_no_token_is_one_clear_line(workspace):
    with pytest.raises(SqltuneError, match="HF_TOKEN and HF_USERNAME not set"):
        run(workspace)


def test_offline_failure_is_clear_and_hides_the_token(workspace, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_USERNAME", "ada")
    FakeApi.fail = OSError(f"could not connect (token {TOKEN})")
    with pytest.raises(SqltuneError) as exc:
        run(workspace)
    assert "upload to ada/sqltune-merged failed" in str(exc.value) and TOKEN not in str(exc.value)


def test_both_skips_is_an_error(workspace):
    with pytest.raises(SqltuneError, match="nothing to do"):
        run(workspace, skip_merge=True, skip_upload=True)


def test_only_model_files_are_pushed_never_dotfiles_or_secrets(workspace, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_USERNAME", "ada")
    merged = workspace / "models/merged"
    (merged / ".env").write_text(f"HF_TOKEN={TOKEN}\n")
    (merged / ".cache").mkdir()
    (merged / ".cache" / "x.safetensors").write_bytes(b"x")
    (merged / "notes.txt").write_text("private notes")
    (merged / "config.json").write_text("{}")
    (merged / "sub").mkdir()
    (merged / "sub" / "model.safetensors").write_bytes(b"x")
    out = run(workspace)
    sent = next(c for c in FakeApi.calls if c[0] == "upload_folder")[3]
    assert sent == ("config.json", "model.safetensors")  # README.md goes up separately, as the card
    assert "left out (4" in out and ".env" in out and "notes.txt" in out


def test_a_token_inside_a_pushed_file_stops_the_upload(workspace, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_USERNAME", "ada")
    (workspace / "models/merged/config.json").write_text(json.dumps({"token": TOKEN}))
    with pytest.raises(SqltuneError, match="config.json contains HF_TOKEN") as exc:
        run(workspace)
    assert TOKEN not in str(exc.value) and not [c for c in FakeApi.calls if c[0] == "create_repo"]


def test_private_by_default_and_the_plan_says_public_loudly(workspace, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_USERNAME", "ada")
    out = []
    up.upload(None, workspace / "models/merged", workspace / "models/adapter", False, False, yes=True, say=out.append)
    assert ("create_repo", "ada/sqltune-merged", True) in FakeApi.calls and "(private)" in out[0]
    assert "PUBLIC" in run(workspace, private=False)


def test_no_confirmation_without_a_terminal_pushes_nothing(workspace, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_USERNAME", "ada")
    monkeypatch.setattr("sys.stdin.isatty", lambda: False, raising=False)
    with pytest.raises(SqltuneError, match="pass --yes"):
        run(workspace, yes=False)
    assert not [c for c in FakeApi.calls if c[0] in ("create_repo", "upload_folder")]


def test_answering_no_pushes_nothing(workspace, monkeypatch):
    import sys

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_USERNAME", "ada")
    monkeypatch.setattr(sys, "stdin", type("Tty", (), {"isatty": staticmethod(lambda: True)})())
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    with pytest.raises(SqltuneError, match="cancelled"):
        run(workspace, yes=False)
    assert not [c for c in FakeApi.calls if c[0] in ("create_repo", "upload_folder")]


def pushed(calls) -> list:
    return [c for c in calls if c[0] in ("create_repo", "upload_folder", "upload_file")]


def test_a_missing_card_is_refused_before_anything_is_pushed(workspace, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_USERNAME", "ada")
    (workspace / "models/cards/merged/README.md").unlink()
    with pytest.raises(SqltuneError, match=r"models/cards/merged/README.md not found: .* run `dvc repro card`"):
        run(workspace)
    assert not pushed(FakeApi.calls)


def lock(card_metrics_md5: str = "m1", merge_train: dict | None = None) -> dict:
    """A dvc.lock of the stages a shipped card must agree with: evaluate wrote metrics m1 for adapter
    a1, and the card stage read ``card_metrics_md5``; merge ran on ``merge_train``."""
    params = {"seed": 1, "model": {"name": "m"}, "train": {"lora": {"r": 8}}}
    return {"stages": {
        "train": {"params": {"params.yaml": params}, "outs": [{"path": "models/adapter", "md5": "a1.dir"}]},
        "evaluate": {"deps": [{"path": "models/adapter", "md5": "a1.dir"}],
                     "params": {"params.yaml": {"seed": 1, "model": {"name": "m"}, "evaluate": {"n_databases": 2}}},
                     "outs": [{"path": "metrics/eval/metrics.json", "md5": "m1"}]},
        "merge": {"deps": [{"path": "models/adapter", "md5": "a1.dir"}],
                  "params": {"params.yaml": {**params, "train": merge_train or params["train"]}}},
        "card": {"deps": [{"path": "metrics/eval/metrics.json", "md5": card_metrics_md5}],
                 "params": {"params.yaml": {**params, "evaluate.n_databases": 2}}},
    }}


def test_a_card_of_other_scores_or_another_merge_is_refused(workspace, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_USERNAME", "ada")
    (workspace / "dvc.lock").write_text(yaml.safe_dump(lock(card_metrics_md5="m0")))
    with pytest.raises(SqltuneError, match=r"models/cards/merged/README.md does not describe the merged model: "
                                           r"in dvc.lock, evaluate and card ran on different metrics/eval/metrics.json; "
                                           r"run `dvc repro`"):
        run(workspace)
    (workspace / "dvc.lock").write_text(yaml.safe_dump(lock(merge_train={"lora": {"r": 4}})))
    with pytest.raises(SqltuneError, match="train and merge ran on different train;"):
        run(workspace)
    assert not pushed(FakeApi.calls)
    # The adapter ships without the merge: its card only has to agree with train and evaluate.
    run(workspace, skip_merge=True)
    assert FakeApi.calls[-1][:2] == ("upload_file", "README.md")
    (workspace / "dvc.lock").write_text(yaml.safe_dump(lock()))
    run(workspace)
    assert FakeApi.calls[-1][2].startswith("# merged card")


def test_a_token_inside_the_card_stops_the_upload(workspace, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_USERNAME", "ada")
    (workspace / "models/cards/merged/README.md").write_text(f"# card\n{TOKEN}\n")
    with pytest.raises(SqltuneError, match="README.md contains HF_TOKEN"):
        run(workspace)
    assert not pushed(FakeApi.calls)


def test_merge_with_dvc_rebuilds_evaluate_merge_and_card(monkeypatch):
    ran = []

    def fake_run(cmd, text, returncode=0):
        ran.append(cmd)
        return type("Done", (), {"returncode": returncode})()

    monkeypatch.setattr(up.subprocess, "run", fake_run)
    up.merge_with_dvc()
    assert ran == [["dvc", "repro", "evaluate", "merge", "card"]]
    monkeypatch.setattr(up.subprocess, "run", lambda cmd, text: fake_run(cmd, text, returncode=1))
    with pytest.raises(SqltuneError, match=r"`dvc repro evaluate merge card` failed"):
        up.merge_with_dvc()
