#!/usr/bin/env bash
# One DVC experiment on the GPU machine: `dvc exp run` (the stages' own commands) in the workspace
# that setup.sh made, from the baseline params with these overrides, up to TARGET. Then the whole
# `dvc exp show` table and each experiment's metrics go to $OUT/exps.tar.gz.
#   scripts/gpu/exp.sh NAME TARGET [section.key=value ...]     (TARGET: evaluate or merge)
set -uo pipefail
name=$1 target=$2; shift 2
export PYTHONUNBUFFERED=1 PYTHONPATH=/root/site${PYTHONPATH:+:$PYTHONPATH}
cd /root/ws || exit 1
cp /root/baseline-params.yaml params.yaml  # every experiment starts from the baseline, not the last one
sets=(); for kv in "$@"; do sets+=(-S "$kv"); done
t0=$(date +%s.%N)
python3 -m dvc exp run -n "$name" "${sets[@]}" "$target" 2>&1 | tee "/root/logs-$name.txt"
rc=${PIPESTATUS[0]}
mkdir -p "/root/exps/$name" "$OUT"
python3 - "$name" "$rc" "$(python3 -c "print(round($(date +%s.%N) - $t0, 1))")" "$*" \
  "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" > "/root/exps/$name/run-info.json" <<'PY'
import json, sys
name, rc, wall, overrides, card = sys.argv[1:]
print(json.dumps({"experiment": name, "rc": int(rc), "exp_run_seconds": float(wall), "card": card,
                  "overrides": overrides.split()}, indent=2))
PY
cp -r params.yaml dvc.lock metrics "/root/exps/$name/" 2>/dev/null
cp "/root/logs-$name.txt" "/root/exps/$name/log.txt"
python3 -m dvc exp show --no-pager --md > /root/exps/exp-show.md 2>&1
python3 -m dvc exp show --no-pager --json > /root/exps/exp-show.json 2>/dev/null
tar czf "$OUT/exps.tar.gz" -C /root exps
echo "experiment $name rc=$rc"
