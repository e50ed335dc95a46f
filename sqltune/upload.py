"""`sqltune upload`: merge (through DVC) and push the model to the Hugging Face Hub.

Outside the DVC graph on purpose: pushing has side effects. HF_TOKEN and HF_USERNAME come from the
environment or `.env`; the token is handed to huggingface_hub and never printed or written.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from sqltune.errors import SqltuneError
from sqltune.merging import eval_section


def credentials(env_file: str | Path = ".env") -> tuple[str, str]:
    from dotenv import dotenv_values

    values = {**dotenv_values(env_file), **os.environ} if Path(env_file).is_file() else dict(os.environ)
    token, user = values.get("HF_TOKEN"), values.get("HF_USERNAME")
    if not token or not user:
        missing = " and ".join(k for k, v in (("HF_TOKEN", token), ("HF_USERNAME", user)) if not v)
        raise SqltuneError(f"{missing} not set; export it or put it in .env (see README, 'Ship the model')")
    return token, user


def plan(folder: Path, repo_id: str, private: bool) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise SqltuneError(f"{folder} is empty; run `dvc repro` first")
    lines = [f"will push {folder} to https://huggingface.co/{repo_id} ({'private' if private else 'public'}):"]
    lines += [f"  {p.relative_to(folder)}  {p.stat().st_size / 2**20:.1f} MiB" for p in files]
    return "\n".join(lines)


def push(folder: Path, repo_id: str, token: str, private: bool, card: str) -> str:
    """Create the repo and push the folder; the card (README.md) goes up with the eval metrics
    added, so the DVC-tracked folder itself is never modified."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="sqltune upload",
                          ignore_patterns=["README.md"])
        api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=repo_id,
                        commit_message="sqltune model card")
    except Exception as exc:  # network, auth and hub errors all end the same way for the user
        msg = str(exc).replace(token, "***").splitlines()[0] if str(exc) else type(exc).__name__
        raise SqltuneError(f"upload to {repo_id} failed: {msg}. Check the network and HF_TOKEN's write access") from None
    return f"https://huggingface.co/{repo_id}"


def merge_with_dvc() -> None:
    proc = subprocess.run(["dvc", "repro", "merge"], text=True)
    if proc.returncode != 0:
        raise SqltuneError("`dvc repro merge` failed; see its output above")


def upload(repo: str | None, merged: Path, adapter: Path, skip_merge: bool, skip_upload: bool,
           private: bool, say=print) -> str | None:
    if skip_merge and skip_upload:
        raise SqltuneError("--skip-merge with --skip-upload leaves nothing to do; drop one of them")
    if not skip_merge:
        merge_with_dvc()
    if skip_upload:
        say(f"merged model in {merged}; not uploaded (--skip-upload)")
        return None
    token, user = credentials()
    folder = adapter if skip_merge else merged
    repo_id = repo if repo and "/" in repo else f"{user}/{repo or 'sqltune-' + folder.name}"
    say(plan(folder, repo_id, private))
    card_file = folder / "README.md"
    card = card_file.read_text() if card_file.is_file() else f"# {repo_id}\n"
    if "## Evaluation" not in card:  # the merged model's card has it; an adapter's (PEFT's) does not
        card += eval_section("metrics/eval/metrics.json")
    url = push(folder, repo_id, token, private, card)
    say(f"pushed: {url}")
    return url
