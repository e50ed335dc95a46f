#!/usr/bin/env bash
# One DVC experiment on the GPU machine: `dvc exp run` (the stages' own commands) in the workspace
# that setup.sh made, from the baseline params with these overrides, up to TARGET. Then the whole
# `dvc exp show` table and each experiment's metrics go to $SQLTUNE_GPU_RESULTS/exps.tar.gz (the
# folder to collect results in; default /root/results).
#   scripts/gpu/exp.sh NAME TARGET [section.key=value ...]     (TARGET: evaluate or merge)
# A value with Hydra syntax in it needs quotes inside the argument: "prepare.system_prompt='{context}'".
# SQLTUNE_GPU_WS (the workspace) and SQLTUNE_GPU_STATE (baseline params, logs, records) default to
# setup.sh's /root/ws and /root; the tests point them at a temp project.
set -uo pipefail
name=$1 target=$2; shift 2
ws=${SQLTUNE_GPU_WS:-/root/ws} state=${SQLTUNE_GPU_STATE:-/root} results=${SQLTUNE_GPU_RESULTS:-/root/results}
export PYTHONUNBUFFERED=1 PYTHONPATH=/root/site${PYTHONPATH:+:$PYTHONPATH}
cd "$ws" || exit 1
cp "$state/baseline-params.yaml" params.yaml || exit 1  # every experiment starts from the baseline, not the last one
mkdir -p "$state/exps/$name" "$results"
sets=(); for kv in "$@"; do sets+=(-S "$kv"); done
t0=$(date +%s.%N)
python3 -m dvc exp run -n "$name" "${sets[@]}" "$target" 2>&1 | tee "$state/logs-$name.txt"
rc=${PIPESTATUS[0]}
python3 - "$name" "$rc" "$(python3 -c "print(round($(date +%s.%N) - $t0, 1))")" "$*" \
  "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)" > "$state/exps/$name/run-info.json" <<'PY'
import json, sys
name, rc, wall, overrides, card = sys.argv[1:]
print(json.dumps({"experiment": name, "rc": int(rc), "exp_run_seconds": float(wall), "card": card,
                  "overrides": overrides.split()}, indent=2))
PY
cp -r params.yaml dvc.lock metrics "$state/exps/$name/" 2>/dev/null
cp "$state/logs-$name.txt" "$state/exps/$name/log.txt"
python3 -m dvc exp show --no-pager --md > "$state/exps/exp-show.md" 2>&1
python3 -m dvc exp show --no-pager --json > "$state/exps/exp-show.json" 2>/dev/null
tar czf "$results/exps.tar.gz" -C "$state" exps
echo "experiment $name rc=$rc"
exit "$rc"
