#!/usr/bin/env bash
# GPU machine, issue 7 (speed): GPU tests, optimizer-step benchmark, the stage benchmark on real LA
# data, and timed BCP runs (sgd with pre-training, sgd-hco from its pre-training) whose rates
# scripts/phase_rates.py extrapolates to the 2K + 15K protocol, plus the 20-case test evaluation.
# Usage: device_speed.sh STAGE, STAGE = bench (optimizer benchmark + tests; unpacks what is carried)
# or train (stage benchmark + timed runs). Expects .carry/wheels, .carry/la, parts in .carry/s*.
set -uo pipefail
export PYTHONUNBUFFERED=1 COLUMNS=160 OUT=${OUT:-/tmp/out}
[ -d /tmp/site/pydantic ] || python3 -m pip install -q --no-index --no-deps --no-compile \
  --no-cache-dir --upgrade --target /tmp/site .carry/wheels/*.whl || exit 1
SRC=${SRC:-$PWD}  # the code to run (a clean export of a commit may be carried in .carry/src)
export PYTHONPATH=/tmp/site:$SRC
hco() { python3 -m hco_cli "$@"; }
step() { echo "=== $* ($(date +%T))"; }
{
step env; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
for f in .carry/s*/*.tar.xz; do
  [ -e "/tmp/la/.$(basename "$f")" ] || { python3 .carry/la/unpack /tmp/la "$f" | tail -n 1 && touch "/tmp/la/.$(basename "$f")"; }
done
if [ "$1" = bench ]; then
  step gpu-tests; timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider $SRC/tests/optim
  step optim-bench; timeout 150 python3 $SRC/benchmarks/optim_step.py --device cuda --repeat 20 --rounds 7 --json "$OUT/optim_step.json"
elif [ "$1" = numerics ]; then
  # bf16 vs fp32 (amp off; convolutions may still use TF32, torch's default) on seeds given as $2..
  [ -d /tmp/data/la ] || hco prepare la /tmp/la --out /tmp/data/la --labeled 8 --val 4 --allow-missing | tail -n 2
  Q=/tmp/quick.yaml
  sed -e 's/pretrain_iterations: 1000/pretrain_iterations: 300/' -e 's/selftrain_iterations: 2400/selftrain_iterations: 600/' \
    -e 's/lr_decay_every: 800/lr_decay_every: 250/' -e 's#path: data/la#path: /tmp/data/la#' $SRC/sample_configs/la_bcp_sgd_short.yaml > $Q
  sed 's/amp: true/amp: false/' $Q > /tmp/quick_fp32.yaml
  for seed in "${@:2}"; do
    timeout 400 python3 -m hco_cli train --config $Q --optimizer sgd --seed $seed --run-dir /tmp/runs/bf16-s$seed --force > /tmp/bf16-$seed.log 2>&1 &
    timeout 400 python3 -m hco_cli train --config /tmp/quick_fp32.yaml --optimizer sgd --seed $seed --run-dir /tmp/runs/fp32-s$seed --force > /tmp/fp32-$seed.log 2>&1 &
  done
  wait
  for seed in "${@:2}"; do for r in bf16 fp32; do
    tail -n 2 /tmp/$r-$seed.log | head -n 1
    timeout 60 python3 -m hco_cli predict /tmp/runs/$r-s$seed --split test --lcc --evaluate --force | grep -i "mean dice"
  done; done
else
  step prepare; hco prepare la /tmp/la --out /tmp/data/la --labeled 8 --val 4 --allow-missing --force | tail -n 3
  step train-step-bench; timeout 200 python3 $SRC/benchmarks/train_step.py --data /tmp/data/la --rounds 8 --json "$OUT/train_step.json"
  CFG=$SRC/sample_configs/la_bcp_sgd_timing.yaml
  step train-sgd; timeout 200 python3 -m hco_cli train --config $CFG --data /tmp/data/la --optimizer sgd --run-dir /tmp/runs/sgd --force | tail -n 4
  step train-sgd-hco; timeout 170 python3 -m hco_cli train --config $CFG --data /tmp/data/la --optimizer sgd-hco --init-from /tmp/runs/sgd --run-dir /tmp/runs/sgd-hco --force | tail -n 4
  for arm in sgd sgd-hco; do
    step predict-$arm; /usr/bin/time -f "test evaluation %e s" timeout 60 python3 -m hco_cli predict /tmp/runs/$arm --split test --lcc --evaluate --force | tail -n 3
  done
  step rates; python3 $SRC/scripts/phase_rates.py /tmp/runs/sgd /tmp/runs/sgd-hco
fi
step done
} 2>&1 | tee -a "$OUT/log-$1.txt"
[ -d /tmp/runs ] && tar czf "$OUT/runs-$1.tar.gz" --exclude='*.pt' --exclude='*.nii.gz' -C /tmp runs
exit 0
