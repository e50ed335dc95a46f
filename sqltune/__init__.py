"""sqltune: reproducible QLoRA fine-tuning of open LLMs for text-to-SQL."""

from __future__ import annotations

import importlib.metadata

# The one place the version is written: pyproject.toml reads it from here at build time.
__version__ = "0.1.0"


def version() -> str:
    """The installed distribution's version; ``__version__`` when run from a checkout that is not installed."""
    try:
        return importlib.metadata.version("sqltune")
    except importlib.metadata.PackageNotFoundError:
        return __version__
