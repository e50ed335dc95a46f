#!/usr/bin/env bash
# Run the real pipeline (`dvc repro`, the stages' own commands) for one params variant on a GPU
# machine prepared by setup.sh, and pack what it produced into $OUT/NAME.tar.gz.
#   scripts/gpu/repro.sh NAME PRESET [TARGET] [section.key=value ...]
# TARGET is a dvc stage (e.g. evaluate) or "all". Overrides are applied to a copy of PRESET.
set -uo pipefail
name=$1 preset=$2 target=${3:-all}; shift 3 || shift $#
export PYTHONUNBUFFERED=1
if [ ! -d .git ] && [ ! -d .dvc/tmp ]; then dvc config --local core.no_scm true; fi
python3 - "$preset" "$@" <<'PY'
import sys, yaml
data = yaml.safe_load(open(sys.argv[1]))
for item in sys.argv[2:]:
    key, value = item.split("=", 1)
    *path, last = key.split(".")
    node = data
    for p in path:
        node = node[p]
    node[last] = yaml.safe_load(value)
yaml.safe_dump(data, open("params.yaml", "w"), sort_keys=False)
PY
start=$(date +%s)
if [ "$target" = all ]; then dvc repro 2>&1 | tee /tmp/$name.log; else dvc repro "$target" 2>&1 | tee /tmp/$name.log; fi
rc=${PIPESTATUS[0]}
echo "{\"variant\": \"$name\", \"rc\": $rc, \"wall_s\": $(( $(date +%s) - start )), \"overrides\": \"$*\", \"card\": \"$(nvidia-smi --query-gpu=name --format=csv,noheader -i ${CUDA_VISIBLE_DEVICES:-0})\"}" > metrics/run-info.json
cp /tmp/$name.log metrics/repro.log
tar czf "$OUT/$name.tar.gz" params.yaml dvc.lock metrics
echo "variant $name rc=$rc"
