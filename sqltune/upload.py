"""`sqltune upload`: merge (through DVC) and push the model to the Hugging Face Hub.

Outside the DVC graph on purpose: pushing has side effects. HF_TOKEN and HF_USERNAME come from the
environment or `.env`; the token is handed to huggingface_hub and never printed or written.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
from pathlib import Path

from sqltune.cards import for_repo
from sqltune.errors import SqltuneError
from sqltune.merging import SHIPPED_STAGES, check_same_model


def credentials(env_file: str | Path = ".env") -> tuple[str, str]:
    from dotenv import dotenv_values

    values = {**dotenv_values(env_file), **os.environ} if Path(env_file).is_file() else dict(os.environ)
    token, user = values.get("HF_TOKEN"), values.get("HF_USERNAME")
    if not token or not user:
        missing = " and ".join(k for k, v in (("HF_TOKEN", token), ("HF_USERNAME", user)) if not v)
        raise SqltuneError(f"{missing} not set; export it or put it in .env (see README, 'Ship the model')")
    return token, user


# What a model repo needs, and nothing else: weights, config, tokenizer, chat template, card,
# adapter files and sqltune's prompt format. Anything else in the folder (a stray .env, notes,
# checkpoints) stays local.
ALLOWED_FILES = (
    "*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
    "adapter_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
    "chat_template.json", "README.md", "sqltune.json",
)
_SCAN_LIMIT = 16 * 2**20  # text files up to this size are checked for the token before pushing


def select_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(files to push, files left out): top-level files matching :data:`ALLOWED_FILES`, never a dotfile."""
    if not folder.is_dir():
        raise SqltuneError(f"{folder} is not a folder; run `dvc repro` first (or pass --merged/--adapter)")
    chosen, left = [], []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() and not p.is_symlink():
            continue
        rel = p.relative_to(folder)
        ok = (len(rel.parts) == 1 and not p.name.startswith(".") and not p.is_symlink()
              and any(fnmatch.fnmatchcase(p.name, pat) for pat in ALLOWED_FILES))
        (chosen if ok else left).append(p)
    if not any(p.suffix == ".safetensors" for p in chosen):
        raise SqltuneError(f"{folder} holds no .safetensors weights; run `dvc repro` first")
    return chosen, left


def check_no_secret(files: list[Path], token: str) -> None:
    for p in files:
        if p.suffix != ".safetensors" and p.stat().st_size <= _SCAN_LIMIT and token.encode() in p.read_bytes():
            raise SqltuneError(f"{p} contains HF_TOKEN; remove the token from it before uploading")


def plan(folder: Path, repo_id: str, private: bool, files: list[Path], left_out: list[Path], card_file: Path) -> str:
    visibility = "private" if private else "PUBLIC: anyone can download it"
    lines = [f"will push {len(files) + 1} files of {folder} to https://huggingface.co/{repo_id} ({visibility}):"]
    lines += [f"  {p.relative_to(folder)}  {p.stat().st_size / 2**20:.1f} MiB" for p in files]
    lines.append(f"  README.md  the model card, from {card_file}")
    if left_out:
        lines.append(f"left out ({len(left_out)}, not model files): "
                     + ", ".join(str(p.relative_to(folder)) for p in left_out))
    return "\n".join(lines)


def confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise SqltuneError("uploading needs a confirmation; pass --yes to push without the prompt")
    if input(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
        raise SqltuneError("upload cancelled; nothing was pushed")


def push(folder: Path, repo_id: str, token: str, private: bool, card: str, files: list[Path]) -> str:
    """Create the repo and push the chosen files, then the card as README.md: the card stage's, not
    the README inside the model folder, which holds no evaluation."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    names = [p.name for p in files]
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="sqltune upload",
                          allow_patterns=names, ignore_patterns=[".*", "README.md"])
        api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=repo_id,
                        commit_message="sqltune model card")
    except Exception as exc:  # network, auth and hub errors all end the same way for the user
        msg = str(exc).replace(token, "***").splitlines()[0] if str(exc) else type(exc).__name__
        raise SqltuneError(f"upload to {repo_id} failed: {msg}. Check the network and HF_TOKEN's write access") from None
    return f"https://huggingface.co/{repo_id}"


# `sqltune upload` rebuilds these before pushing: the card stage reads evaluate's scores and merge
# does not, so only together are the card and the model of one run.
REPRO_STAGES = ("evaluate", "merge", "card")


def merge_with_dvc() -> None:
    proc = subprocess.run(["dvc", "repro", *REPRO_STAGES], text=True)
    if proc.returncode != 0:
        raise SqltuneError(f"`dvc repro {' '.join(REPRO_STAGES)}` failed; see its output above")


def shipped_card(cards: Path, kind: str, lock_file: str | Path = "dvc.lock") -> tuple[Path, str]:
    """The card stage's card for ``kind`` (merged | adapter), refused when missing or when dvc.lock
    shows it was made from other inputs than the model and scores it ships with."""
    card_file = cards / kind / "README.md"
    if not card_file.is_file():
        raise SqltuneError(f"{card_file} not found: the model card comes from the card stage; run `dvc repro card`")
    stages = SHIPPED_STAGES if kind == "merged" else tuple(s for s in SHIPPED_STAGES if s != "merge")
    check_same_model(card_file, lock_file, stages, problem=f"does not describe the {kind} model")
    return card_file, card_file.read_text(encoding="utf-8")


def upload(repo: str | None, merged: Path, adapter: Path, skip_merge: bool, skip_upload: bool,
           private: bool = True, yes: bool = False, say=print, cards: Path = Path("models/cards")) -> str | None:
    if skip_merge and skip_upload:
        raise SqltuneError("--skip-merge with --skip-upload leaves nothing to do; drop one of them")
    if not skip_merge:
        merge_with_dvc()
    if skip_upload:
        say(f"merged model in {merged}; not uploaded (--skip-upload)")
        return None
    token, user = credentials()
    folder, kind = (adapter, "adapter") if skip_merge else (merged, "merged")
    repo_id = repo if repo and "/" in repo else f"{user}/{repo or 'sqltune-' + folder.name}"
    files, left_out = select_files(folder)
    files = [p for p in files if p.name != "README.md"]  # the card stage's card goes up in its place
    card_file, card = shipped_card(cards, kind)
    check_no_secret([*files, card_file], token)
    say(plan(folder, repo_id, private, files, left_out, card_file))
    confirm(f"push to {repo_id} ({'private' if private else 'public'})?", yes)
    url = push(folder, repo_id, token, private, for_repo(card, repo_id), files)
    say(f"pushed: {url}")
    return url
