#!/usr/bin/env bash
# GPU machine: one seed of Study 1 (BCP on LA, 8 labeled): sgd, sgd-co and sgd-hco share the
# sgd run's pre-training and self-train side by side on one GPU; each is predicted on the 20 test
# cases (best-on-val and last checkpoints, LCC) and compared. Usage: device_la_study.sh SEED [LABELED]
# (LABELED < 8 trains on the first LABELED of the 8 labeled cases; the unlabeled pool is unchanged).
# Needs .carry/wheels and .carry/la (unpack, lists, parts train-00/01 and test-00/01), or LA
# already unpacked in /tmp/la. DATA (prepared dataset path) and TAG (run-name suffix) are optional.
set -uo pipefail
SEED=${1:-1}
LABELED=${2:-8}
export PYTHONUNBUFFERED=1 COLUMNS=160 OUT=${OUT:-/tmp/out}
[ -d /tmp/site/pydantic ] || python3 -m pip install -q --no-index --no-deps --no-compile \
  --no-cache-dir --upgrade --target /tmp/site .carry/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
hco() { python3 -m hco_cli "$@"; }
step() { echo "=== $* ($(date +%T))"; }
DATA=${DATA:-/tmp/data/la} TAG=${TAG:-}
R=/tmp/runs/la$LABELED$TAG-s$SEED
CFG=sample_configs/la_bcp_sgd_short.yaml
{
step env; nvidia-smi --query-gpu=name --format=csv,noheader
[ -d /tmp/la ] || python3 .carry/la/unpack /tmp/la
[ -d $DATA ] || hco prepare la /tmp/la --out $DATA --labeled 8 --val 4 --allow-missing
step train; mkdir -p $R
train() { timeout "$2" python3 -m hco_cli train --config $CFG --data $DATA --seed "$SEED" --labeled "$LABELED" \
  --optimizer "$1" --run-dir "$R/$1" "${@:3}" > "$R/$1.log" 2>&1; echo "train $1 rc=$?"; }
train sgd 560 &
while [ ! -f $R/sgd/checkpoints/pretrain.pt ]; do sleep 2; [ -d /proc/$! ] || break; done
train sgd-co 500 --init-from $R/sgd &
train sgd-hco 500 --init-from $R/sgd &
wait
for arm in sgd sgd-co sgd-hco; do tail -n 8 $R/$arm.log; done
for ck in best last; do
  for arm in sgd sgd-co sgd-hco; do
    hco predict $R/$arm --checkpoint $ck --split test --lcc --evaluate --force | tail -n 2
  done
  hco compare $R/sgd $R/sgd-co $R/sgd-hco --checkpoint $ck --json $R/compare-$ck.json
done
step done
} 2>&1 | tee "$OUT/log-la$LABELED$TAG-s$SEED.txt"
tar czf "$OUT/la$LABELED$TAG-s$SEED.tar.gz" --exclude='*.pt' --exclude='*.nii.gz' -C /tmp/runs "la$LABELED$TAG-s$SEED"
