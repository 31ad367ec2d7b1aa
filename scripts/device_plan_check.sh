#!/usr/bin/env bash
# GPU machine (issue 19): the planner's memory estimate against measured peak memory, and
# planned BCP runs (hco plan + hco train --config auto) on the fetal atlas at 1.2 mm and on a
# synthetic thick-slice dataset (0.8 x 0.8 x 6 mm, 12 slices), scored on their test splits.
# Needs .carry/wheels and .carry/fetal (a copy of datasets/fetal-sb-atlas). Its steps ran on
# 2 x H200 on 2026-11-30 as two shorter calls (results/planning/, README "Planning any dataset").
set -uo pipefail
export PYTHONUNBUFFERED=1 COLUMNS=160 OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .carry/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
hco() { python3 -m hco_cli "$@"; }
step() { echo "=== $* ($(date +%T))"; }
ITERS=${ITERS:-1500}
{
step env; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
step prepare-fetal
hco prepare generic --images '.carry/fetal/*/srr.nii.gz' --labels '.carry/fetal/*/parcellation.nii.gz' \
  --spacing 1.2 --crop-foreground --crop-margin 4 --test 5 --val 2 --labeled 4 --out /tmp/data/fetal --force
step prepare-thick-slice
python3 -c "from pathlib import Path; from tests.planning.anisotropic import write_scans; write_scans(Path('/tmp/raw/aniso'), cases=24, contrast=25.0)"
hco prepare generic /tmp/raw/aniso --images 'images/*.nii.gz' --labels 'labels/*.nii.gz' \
  --test 6 --val 2 --labeled 4 --out /tmp/data/aniso --force
step gpu-tests; timeout 180 python3 -m pytest -q -m gpu -p no:cacheprovider tests/models tests/planning
step memory-benchmark
timeout 420 python3 benchmarks/plan_memory.py --device cuda --data /tmp/data/fetal /tmp/data/aniso \
  --json "$OUT/plan_memory.json"
for name in fetal aniso; do
  step plan-$name; hco plan /tmp/data/$name --framework bcp
  step train-$name
  timeout 900 python3 -m hco_cli train --config auto --data /tmp/data/$name --iterations "$ITERS" \
    --run-dir /tmp/runs/$name --force
  step predict-$name
  timeout 120 python3 -m hco_cli predict /tmp/runs/$name --split test --evaluate --force | tail -n 15
done
step done
} 2>&1 | tee "$OUT/log-plan.txt"
tar czf "$OUT/plan_runs.tar.gz" --exclude='*.pt' --exclude='*.nii.gz' -C /tmp runs
