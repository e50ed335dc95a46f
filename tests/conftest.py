import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))


@pytest.fixture
def shared_dir() -> Path:
    """Real data beside the checkout; a user's clone has none, so tests using it skip."""
    if not SHARED.is_dir():
        pytest.skip("../shared is absent")
    return SHARED


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """The embedded model's real tokenizer and chat template, saved as a normal folder."""
    from transformers import AutoTokenizer

    from sqltune.modeling import embedded_gguf

    gguf = embedded_gguf("smollm2-135m-instruct")
    out = tmp_path_factory.mktemp("tok")
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer_dir, tmp_path_factory) -> Path:
    """A 2-layer random Llama with the real tokenizer: real code paths, CPU-fast."""
    from dvc_project import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("tiny"), tokenizer_dir)
