#!/usr/bin/env bash
# Run the real pipeline (`dvc repro`, the stages' own commands) for one params variant on a GPU
# machine prepared by setup.sh, from the persistent workspace /root/ws, and copy what it produced
# (params.yaml, dvc.lock, metrics/) to $OUT/NAME.tar.gz.
#   scripts/gpu/repro.sh NAME PRESET [section.key=value ...]
# Overrides are applied to a copy of PRESET; DVC reruns only the stages they affect.
set -uo pipefail
name=$1 preset=$2; shift 2
export PYTHONUNBUFFERED=1 PYTHONPATH=/root/site${PYTHONPATH:+:$PYTHONPATH}
src=$(pwd)
cd /root/ws || exit 1
# Code and presets come fresh from this call's checkout; dvc.lock, params and outputs stay.
(cd "$src" && tar --exclude=./carry --exclude=./.whl --exclude=./dvc.lock --exclude=./params.yaml \
   --exclude=./metrics --exclude=./models --exclude=./data/prepared -cf - .) | tar -xf -
[ -d .git ] || python3 -m dvc config --local core.no_scm true
python3 - "$src/$preset" "$@" <<'PY'
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
echo "variant $name: $*"
rc=0 times=""
for stage in prepare train evaluate merge; do
  t0=$(date +%s.%N)
  python3 -m dvc repro --single-item "$stage" 2>&1 | tee -a "/tmp/$name.log"
  rc=${PIPESTATUS[0]}
  times="$times\"$stage\": $(python3 -c "print(round($(date +%s.%N) - $t0, 1))"), "
  [ "$rc" = 0 ] || break
done
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
python3 - "$name" "$rc" "{${times%, }}" "$card" "$*" > metrics/run-info.json <<'PY'
import json, sys
name, rc, times, card, overrides = sys.argv[1:]
print(json.dumps({"variant": name, "rc": int(rc), "stage_seconds": json.loads(times), "card": card,
                  "overrides": overrides.split()}, indent=2))
PY
cp "/tmp/$name.log" metrics/repro.log
mkdir -p "$OUT" && tar czf "$OUT/$name.tar.gz" params.yaml dvc.lock metrics
echo "variant $name rc=$rc $(cat metrics/run-info.json | tr -d '\n ')"
