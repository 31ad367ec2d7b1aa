#!/usr/bin/env bash
# GPU machine with 2 GPUs, issue 7: DDP throughput (1 vs 2 processes), a two-GPU sweep of two runs
# against one run alone, and the bf16-vs-fp32 numerics check (same seed, one run per GPU).
# Expects .carry/wheels, .carry/la and LA parts in .carry/s*/ (train-00, train-01, test-00).
set -uo pipefail
export PYTHONUNBUFFERED=1 COLUMNS=160 OUT=${OUT:-/tmp/out} NCCL_NVLS_ENABLE=0
[ -d /tmp/site/pydantic ] || python3 -m pip install -q --no-index --no-deps --no-compile \
  --no-cache-dir --upgrade --target /tmp/site .carry/wheels/*.whl || exit 1
SRC=${SRC:-$PWD}
export PYTHONPATH=/tmp/site:$SRC
hco() { python3 -m hco_cli "$@"; }
step() { echo "=== $* ($(date +%T))"; }
{
step env; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for f in .carry/s*/*.tar.xz; do python3 .carry/la/unpack /tmp/la "$f" | tail -n 1; done
step prepare; hco prepare la /tmp/la --out /tmp/data/la --labeled 8 --val 4 --allow-missing --force | tail -n 2
step ddp-throughput
timeout 200 python3 $SRC/benchmarks/ddp_throughput.py /tmp/data/la --gpus 2 --iterations 200 --warmup 20 --out $OUT/ddp_throughput.json
step sweep
Q=/tmp/quick.yaml
sed -e 's/pretrain_iterations: 1000/pretrain_iterations: 300/' -e 's/selftrain_iterations: 2400/selftrain_iterations: 600/' \
  -e 's/lr_decay_every: 800/lr_decay_every: 250/' $SRC/sample_configs/la_bcp_sgd_short.yaml > $Q
sed -i 's#path: data/la#path: /tmp/data/la#' $Q
sed 's/amp: true/amp: false/' $Q > /tmp/quick_fp32.yaml
s=$(date +%s.%N); timeout 150 python3 -m hco_cli sweep --config $Q --optimizers sgd --seeds 7 --out /tmp/sweep1 --no-share-pretraining --gpus 1 | tail -n 4
m=$(date +%s.%N); timeout 150 python3 -m hco_cli sweep --config $Q --optimizers sgd --seeds 8,9 --out /tmp/sweep2 --no-share-pretraining --gpus 2 | tail -n 5
e=$(date +%s.%N); python3 -c "print(f'sweep: one run alone {$m-$s:.1f} s; two runs on two GPUs {$e-$m:.1f} s; ratio {($e-$m)/($m-$s):.3f}')"
step bf16-vs-fp32
CUDA_VISIBLE_DEVICES=0 timeout 240 python3 -m hco_cli train --config $Q --optimizer sgd --seed 5 --run-dir /tmp/runs/bf16 --force > /tmp/bf16.log 2>&1 &
CUDA_VISIBLE_DEVICES=1 timeout 240 python3 -m hco_cli train --config /tmp/quick_fp32.yaml --optimizer sgd --seed 5 --run-dir /tmp/runs/fp32 --force > /tmp/fp32.log 2>&1 &
wait; tail -n 4 /tmp/bf16.log /tmp/fp32.log
for r in bf16 fp32; do for ck in best last; do
  echo "$r $ck: $(timeout 60 python3 -m hco_cli predict /tmp/runs/$r --checkpoint $ck --split test --lcc --evaluate --force | grep -i 'mean dice')"
done; done
python3 $SRC/scripts/phase_rates.py /tmp/runs/bf16 /tmp/runs/fp32
step done
} 2>&1 | tee -a "$OUT/log-multi.txt"
tar czf "$OUT/runs-multi.tar.gz" --exclude='*.pt' --exclude='*.nii.gz' -C /tmp runs sweep1 sweep2 2>/dev/null
exit 0
