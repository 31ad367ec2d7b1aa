#!/usr/bin/env bash
# GPU machine: CMT (UCMT) on the fetal-sb-atlas, adamw vs adamw-hco on folds L0U0 and L1U1,
# four runs side by side on one GPU, then test-set prediction, per-class comparison with folds
# averaged per case (Study 3 protocol), and the loss-ratio dynamics plot (Study 5).
# Needs .carry/wheels and .carry/fetal (a copy of datasets/fetal-sb-atlas).
set -uo pipefail
export PYTHONUNBUFFERED=1 COLUMNS=160 OUT=${OUT:-/tmp/out}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .carry/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
hco() { python3 -m hco_cli "$@"; }
R=/tmp/runs/fetal
CFG=sample_configs/fetal_cmt_adamw_short.yaml
CLASSES="1=white matter,2=ventricles,3=cerebellum,4=extra-axial CSF,5=cortical grey matter,6=deep grey matter,7=brainstem,8=corpus callosum"
{
nvidia-smi --query-gpu=name --format=csv,noheader
hco prepare generic --images '.carry/fetal/*/srr.nii.gz' --labels '.carry/fetal/*/parcellation.nii.gz' \
  --spacing 1.2 --crop-foreground --crop-margin 4 --test 5 --val 2 --labeled 4 \
  --folds-labeled 2 --folds-unlabeled 2 --fold-size 2 --classes "$CLASSES" --out /tmp/data/fetal --force
mkdir -p $R
for arm in adamw adamw-hco; do for fold in L0U0 L1U1; do
  (timeout 420 python3 -m hco_cli train --config $CFG --data /tmp/data/fetal --optimizer $arm \
     --fold $fold --run-dir $R/$arm-$fold > $R/$arm-$fold.log 2>&1; echo "train $arm $fold rc=$?") &
done; done
wait
for f in $R/*.log; do tail -n 5 "$f"; done
for run in $R/adamw-L0U0 $R/adamw-L1U1 $R/adamw-hco-L0U0 $R/adamw-hco-L1U1; do
  hco predict $run --checkpoint best --split test --lcc --evaluate --force | tail -n 2
done
hco compare "adamw=$R/adamw-L*" "adamw-hco=$R/adamw-hco-L*" --checkpoint best --json $R/compare-best.json
hco compare --dynamics "adamw=$R/adamw-L*" "adamw-hco=$R/adamw-hco-L*" --bin 5 --plot "$OUT/fetal_dynamics.png"
} 2>&1 | tee "$OUT/log-fetal.txt"
tar czf "$OUT/fetal.tar.gz" --exclude='*.pt' --exclude='*.nii.gz' -C /tmp/runs fetal
