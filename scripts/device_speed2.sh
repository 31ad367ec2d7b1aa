#!/usr/bin/env bash
# GPU machine, issue 20 (speed, second round), one call of at most 9 minutes on one H200
# (the timeouts below add up to 510 s, plus about 30 s of unpacking and preparing):
#   1. GPU tests of the new code (device labels/LCC, compile) and of the optimizers, -m gpu
#   2. benchmarks/predict.py: the 20-case LA test evaluation (--lcc --evaluate), serial vs
#      pipelined path (+ 16-window batches), stages, cold and a fresh process
#   3. benchmarks/train_step.py, self-training and pre-training: sgd vs sgd+batched (teacher in
#      one pass), sgd+compile; then sgd vs sgd+compile-ro (CUDA graphs); roofline estimates
# Results (JSON + text) go to $OUT. Expects, carried from the checkout (64 MiB in all):
#   .carry/wheels     pydantic, nibabel and their dependencies (the GPU image lacks them)
#   .carry/speed2     the LA dataset's unpack, manifest.json, train.list, test.list and
#                     parts/la-train-00.tar.xz, la-test-00.tar.xz, la-test-01.tar.xz (~42 MB)
# Stage it here with `python3 scripts/stage_carry.py speed2`, which prints the device calls:
# one (carry .carry/wheels and .carry/speed2) where both fit, else `device_speed2.sh install`
# with the wheels first, then the run with .carry/speed2, back to back on the same machine.
set -uo pipefail
export PYTHONUNBUFFERED=1 COLUMNS=160 OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
[ -d /tmp/site/pydantic ] || python3 -m pip install -q --no-index --no-deps --no-compile \
  --no-cache-dir --upgrade --target /tmp/site .carry/wheels/*.whl || exit 1
[ "${1:-}" = install ] && { echo "wheels installed in /tmp/site"; exit 0; }
export PYTHONPATH=/tmp/site:$PWD HCO_SHARED=/tmp/shared
hco() { python3 -m hco_cli "$@"; }
step() { echo "=== $* ($(date +%T))"; }
{
step env; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
python3 -c "import cupy; print('cupy', cupy.__version__)" || echo "no cupy: LCC on the GPU by the torch fallback"
step unpack
# The tests find LA through $HCO_SHARED/datasets/la (unpack + parts), as on the CPU box.
mkdir -p /tmp/shared/datasets && ln -sfn "$PWD/.carry/speed2" /tmp/shared/datasets/la
[ -d /tmp/la ] || python3 .carry/speed2/unpack /tmp/la .carry/speed2/parts/*.tar.xz | tail -n 1
step prepare
[ -d /tmp/data/la ] || hco prepare la /tmp/la --out /tmp/data/la --labeled 8 --allow-missing | tail -n 3
step gpu-tests
timeout 100 python3 -m pytest -q -m gpu -p no:cacheprovider tests/inference/test_device_labels.py \
  tests/models tests/optim 2>&1 | tail -n 15
step predict-bench
timeout 150 python3 benchmarks/predict.py --data /tmp/data/la --cases 20 --rounds 3 \
  --arms serial,pipelined,pipelined-b16 --cli --json "$OUT/predict.json"
step train-step  # compilation happens in the warm-up: one per mode, phase and grad mode
timeout 180 python3 benchmarks/train_step.py --data /tmp/data/la --phases selftrain,pretrain \
  --optimizers sgd,sgd+batched,sgd+compile --iterations 20 --rounds 4 --warmup 15 \
  --json "$OUT/train_step.json"
step train-step-cuda-graphs  # apart, so that a slow compile cannot cost the rows above
timeout 80 python3 benchmarks/train_step.py --data /tmp/data/la --phases selftrain \
  --optimizers sgd,sgd+compile-ro --iterations 20 --rounds 4 --warmup 15 \
  --json "$OUT/train_step_cuda_graphs.json"
step done
} 2>&1 | tee -a "$OUT/log-speed2.txt"
exit 0
