#!/usr/bin/env bash
# GPU machine: GPU tests, optimizer benchmark, and a short BCP run on real LA data (sgd vs sgd-hco).
# Expects .carry/wheels (pydantic, nibabel for Python 3.12) and .carry/la (unpack + parts).
set -uo pipefail
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out}
LOG=$OUT/log.txt
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .carry/wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
hco() { python3 -m hco_cli "$@"; }
step() { echo "=== $* ($(date +%T))" | tee -a "$LOG"; }
{
step env; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, cupy; print('torch', torch.__version__, 'cupy', cupy.__version__)"
[ -d /tmp/la ] || python3 .carry/la/unpack /tmp/la
[ ! -f .carry/la_extra/la-test-01.tar.xz ] || python3 .carry/la/unpack /tmp/la .carry/la_extra/la-test-01.tar.xz
step prepare; hco prepare la /tmp/la --out /tmp/data/la --labeled 8 --val 4 --allow-missing --force
step gpu-tests; timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider tests/optim tests/models tests/data/test_sampling.py
step optim-bench; timeout 90 python3 benchmarks/optim_step.py --device cuda --json "$OUT/optim_step.json"
CFG=sample_configs/la_bcp_sgd_short.yaml
step train-sgd; timeout 240 python3 -m hco_cli train --config $CFG --data /tmp/data/la --optimizer sgd --run-dir /tmp/runs/sgd --force
step train-sgd-hco; timeout 150 python3 -m hco_cli train --config $CFG --data /tmp/data/la --optimizer sgd-hco --init-from /tmp/runs/sgd --run-dir /tmp/runs/sgd-hco --force
for arm in sgd sgd-hco; do
  step predict-$arm; timeout 60 python3 -m hco_cli predict /tmp/runs/$arm --split test --lcc --evaluate --force
done
step compare; hco compare /tmp/runs/sgd /tmp/runs/sgd-hco --json /tmp/runs/compare.json
step done
} 2>&1 | tee -a "$LOG"
tar czf "$OUT/runs.tar.gz" --exclude='*.pt' --exclude='*.nii.gz' -C /tmp runs
