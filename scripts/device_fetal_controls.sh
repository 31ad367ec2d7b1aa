#!/usr/bin/env bash
# GPU machine: the fetal CMT study with learning-rate controls (sample_configs/arms/
# fetal_lr_controls.yaml) on folds L0U0 and L1U1, all runs at once over the GPUs, in one call:
# prepare (image-only crop), hco sweep with test evaluation, then the run summaries to $OUT.
# Usage: device_fetal_controls.sh [GPUS] [RUNS_PER_GPU] [WAIT_SECONDS]
# Needs .carry/wheels and .carry/fetal (a copy of datasets/fetal-sb-atlas).
set -uo pipefail
GPUS=${1:-2} PER=${2:-5} WAIT=${3:-480}
export PYTHONUNBUFFERED=1 COLUMNS=160 OUT=${OUT:-/tmp/out}
[ -d /tmp/site/pydantic ] || python3 -m pip install -q --no-index --no-deps --no-compile \
  --no-cache-dir --upgrade --target /tmp/site .carry/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
R=/tmp/runs/fetal-controls
CLASSES="1=white matter,2=ventricles,3=cerebellum,4=extra-axial CSF,5=cortical grey matter,6=deep grey matter,7=brainstem,8=corpus callosum"
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m hco_cli prepare generic --images '.carry/fetal/*/srr.nii.gz' \
  --labels '.carry/fetal/*/parcellation.nii.gz' --spacing 1.2 --crop-foreground --crop-margin 4 \
  --test 5 --val 2 --labeled 4 --folds-labeled 2 --folds-unlabeled 2 --fold-size 2 \
  --classes "$CLASSES" --out data/fetal --force > /dev/null || exit 1
mkdir -p $R
python3 -m hco_cli sweep --config sample_configs/fetal_cmt_adamw_short.yaml \
  --arms sample_configs/arms/fetal_lr_controls.yaml --seeds 1 --folds L0U0,L1U1 --out $R \
  --evaluate --lcc --gpus "$GPUS" --runs-per-gpu "$PER" > $R/sweep.log 2>&1 &
SWEEP=$!
end=$((SECONDS + WAIT))
while [ $SECONDS -lt $end ] && kill -0 $SWEEP 2>/dev/null; do sleep 15; done
date +%T; tail -n 25 $R/sweep.log
tar czf "$OUT/fetal-controls.tar.gz" --exclude='*.pt' --exclude='*.nii.gz' -C /tmp/runs fetal-controls
