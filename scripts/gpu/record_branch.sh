#!/usr/bin/env bash
# Put a GPU run's record (metrics/runs/NAME: params.yaml, dvc.lock, metrics/, run-info.json) on the
# git branch NAME, based on the commit whose code ran (run-info.json "code"), so that DVC compares
# it with any other commit:  dvc metrics diff main NAME;  dvc exp show -A
# The record lives on main too, so the branch can be rebuilt from any clone.
#   scripts/gpu/record_branch.sh NAME
set -euo pipefail
name=${1:?usage: scripts/gpu/record_branch.sh NAME (a folder of metrics/runs)}
rec=$(pwd)/metrics/runs/$name
[ -f "$rec/run-info.json" ] || { echo "error: $rec/run-info.json not found; NAME must be a folder of metrics/runs" >&2; exit 2; }
base=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['code'])" "$rec/run-info.json")
git rev-parse -q --verify "$base^{commit}" >/dev/null || { echo "error: the run's code commit $base is not in this clone" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'git worktree remove --force "$tmp" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
git worktree add -q --detach "$tmp" "$base"
# The branch holds this run's metrics only: the default run's files (merge.json, ...) would pass for its own.
git -C "$tmp" rm -rq --ignore-unmatch metrics
mkdir -p "$tmp/metrics"
cp -r "$rec/metrics/." "$tmp/metrics/"
cp "$rec/params.yaml" "$rec/dvc.lock" "$rec/run-info.json" "$tmp/"
git -C "$tmp" add -A params.yaml dvc.lock run-info.json metrics
git -C "$tmp" -c user.name="${GIT_AUTHOR_NAME:-sqltune}" -c user.email="${GIT_AUTHOR_EMAIL:-sqltune@localhost}" \
  commit -qm "GPU run record: $name (from metrics/runs/$name)"
git branch -f "$name" "$(git -C "$tmp" rev-parse HEAD)"
echo "branch $name -> $(git rev-parse --short "$name") (code $base)"
