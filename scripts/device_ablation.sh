#!/usr/bin/env bash
# GPU machine: one round of the "Which HCO" ablation (README) on the whole Left Atrium set,
# started in the background so that it outlives the device call, then collected.
#   device_ablation.sh stage DIR          unpack the LA parts carried in DIR/parts into /tmp/la
#   device_ablation.sh bench              GPU tests of the optimizers + diagnostics overhead
#                                         benchmark, in the background (results in /tmp/bench)
#   device_ablation.sh start ARMS SEEDS [GPUS] [RUNS_PER_GPU]
#                                         prepare LA (all 100 cases), then hco sweep in the
#                                         background (setsid), runs in /tmp/ablation
#   device_ablation.sh wait SECONDS       wait until the sweep ends or SECONDS pass, then print a
#                                         short progress summary; when the sweep has ended it
#                                         collects in the same call (keep polling calls back to
#                                         back: a machine idle for 30 s is given back, runs and
#                                         all, and a separate collect call can come too late);
#                                         while it runs, the runs already done come back in
#                                         ablation-partial.tar.gz (and -then-partial), so that a
#                                         machine taken back mid-batch loses only the unfinished
#                                         run
#   device_ablation.sh collect            last-iterate evaluations, then logs/summaries to $OUT
#                                         (ablation.tar.gz; ablation-then.tar.gz with THEN_*)
# Staging: the parts of datasets/la in four carry folders of at most ~45 MB each (the repo
# travels too, 64 MiB per call), e.g. .carry/la1 (la-train-04,05,07, with .carry/wheels),
# .carry/la2 (la-train-00,01,02), .carry/la3 (la-train-03,06, la-test-00), .carry/la4
# (la-test-01, staged in the call that starts); each also holds unpack, manifest.json,
# train.list and test.list.
# Needs .carry/wheels (the GPU image lacks pydantic and nibabel) from the first call on.
# SHARE_PRETRAINING=0: every run pre-trains itself with its seed (no shared _pretrain run), so
# that the arms of one seed can run in different sessions and stay symmetric (issue 15).
set -uo pipefail
export PYTHONUNBUFFERED=1 COLUMNS=160
# (SITE, RUNS and THEN_RUNS can be set from outside, for tests/scripts/test_device_ablation.py)
SITE=${SITE:-/tmp/site} RUNS=${RUNS:-/tmp/ablation} THEN_RUNS=${THEN_RUNS:-/tmp/ablation-then}
DATA=data/la
# The screening schedule by default; CONFIG=sample_configs/la_bcp_study1.yaml (or _4l) runs
# issue 15's full protocol with the same verbs (one or two runs per GPU fit one lease).
CONFIG=${CONFIG:-sample_configs/la_bcp_sgd_screen.yaml}
# THEN_CONFIG with THEN_ARMS (and THEN_SEEDS, else the same seeds) chains a second sweep after
# the first, into $THEN_RUNS, collected into ablation-then.tar.gz: so that one lease can hold
# a run of each label count (issue 15: R3 at 8 labeled, then R1 at 4).
# COMPILE=reduce-overhead (or true) runs every arm through torch.compile (CUDA graphs), and
# DETERMINISTIC=1 with deterministic cuDNN and torch algorithms (with which CUDA graphs train
# bit for bit as compile: true, tests/training/test_cuda_graph_loop.py), from a copy of the
# config beside it; a study keeps one setting for all its arms and rounds.
derive() {  # the config with COMPILE / DETERMINISTIC appended, as a file beside it
  local config=$1 key derived
  [ -z "${COMPILE:-}${DETERMINISTIC:-}" ] && { echo "$config"; return 0; }
  for key in ${COMPILE:+compile} ${DETERMINISTIC:+deterministic}; do
    grep -q "^$key:" "$config" && { echo "$config already sets $key" >&2; return 2; }
  done
  derived="${config%.yaml}${COMPILE:+.compile-$COMPILE}${DETERMINISTIC:+.deterministic}.yaml"
  { cat "$config"
    [ -n "${COMPILE:-}" ] && printf 'compile: %s\n' "$COMPILE"
    [ -n "${DETERMINISTIC:-}" ] && printf 'deterministic: true\n'
    true; } > "$derived"
  echo "$derived"
}
CONFIG=$(derive "$CONFIG") || exit 2
if [ -n "${THEN_CONFIG:-}" ]; then
  [ -n "${THEN_ARMS:-}" ] || { echo "THEN_CONFIG needs THEN_ARMS"; exit 2; }
  THEN_CONFIG=$(derive "$THEN_CONFIG") || exit 2
fi
[ -d $SITE/pydantic ] || python3 -m pip install -q --no-index --no-deps --no-compile \
  --no-cache-dir --upgrade --target $SITE .carry/wheels/*.whl || exit 1
export PYTHONPATH=$SITE:$PWD
hco() { python3 -m hco_cli "$@"; }
progress() {  # each run's state; a running one's iteration, recent rate and minutes left
  date +%T
  [ -d $RUNS/_configs ] && hco sweep --status $RUNS 2>&1
  [ -d $THEN_RUNS/_configs ] && hco sweep --status $THEN_RUNS 2>&1
  return 0  # no plan yet is not a failure (`start ... && next` goes on)
}
is_done() {  # ROOT ARM RUN: the sweep's job for the run has ended well and scored its best
  grep -q '"state": *"done"' "$1/_jobs/$2/$3.state.json" 2>/dev/null \
    && [ -f "$1/$2/$3/eval/best/summary.json" ]
}
evaluate() {  # WHICH ROOT...: the last iterate and the test-selected checkpoint of the runs
  # (WHICH=all: every run folder, as the final collect; done: only finished ones, since a
  # running run keeps its resume checkpoint as last.pt)
  local which=$1 root run rel checkpoint; shift
  for root in "$@"; do
    for run in $root/[!_]*/*/; do
      [ -d "$run" ] || continue
      rel=${run#"$root"/}; rel=${rel%/}
      [ "$which" = all ] || is_done "$root" "${rel%%/*}" "${rel#*/}" || continue
      for checkpoint in last best-test; do
        [ -f "$run/checkpoints/$checkpoint.pt" ] \
          && [ ! -f "$run/eval/$checkpoint/summary.json" ] \
          && hco predict "$run" --checkpoint $checkpoint --split test --lcc --evaluate --force \
            > /dev/null &
      done
    done
  done
  wait
}
pack_done() {  # ROOT TARBALL: the runs whose job is done, with their config, job files and
  # the sweep's log, without weights or predictions; nothing where none is done yet
  local root=$1 tarball=$2 state rel arm run list=()
  for state in "$root"/_jobs/*/*.state.json; do
    rel=${state#"$root"/_jobs/}; arm=${rel%%/*}; run=${rel#*/}; run=${run%.state.json}
    is_done "$root" "$arm" "$run" || continue
    list+=("$arm/$run")
    for f in "$root/_configs/$arm/$run.yaml" "$root/_jobs/$arm/$run".*; do
      [ -f "$f" ] && list+=("${f#"$root"/}")
    done
  done
  [ ${#list[@]} -gt 0 ] || return 0
  [ -f "$root/sweep.log" ] && list+=(sweep.log)
  tar czf "$tarball.tmp" --exclude='*.pt' --exclude='*.nii.gz' -C "$root" "${list[@]}" \
    && mv "$tarball.tmp" "$tarball" && echo "done so far: $tarball (${#list[@]} paths)"
}
case "${1:-}" in
stage)
  python3 "$2/unpack" /tmp/la "$2"/parts/*.tar.xz ;;
bench)
  mkdir -p /tmp/bench
  setsid nohup bash -c "CUDA_VISIBLE_DEVICES=1 python3 -m pytest -q -m gpu tests/optim \
      > /tmp/bench/gpu-tests.txt 2>&1; \
    CUDA_VISIBLE_DEVICES=0 python3 benchmarks/train_step.py --phases selftrain \
      --optimizers sgd,sgd:diag50,sgd-hco,sgd-hco:diag50 --iterations 50 --rounds 6 \
      --json /tmp/bench/diagnostics-overhead.json > /tmp/bench/diagnostics-overhead.txt 2>&1" \
    > /dev/null 2>&1 < /dev/null &
  echo "bench started" ;;
start)
  ARMS=$2 SEEDS=$3 GPUS=${4:-2} PER=${5:-3}
  nvidia-smi --query-gpu=name --format=csv,noheader
  [ -d $DATA ] || hco prepare la /tmp/la --out $DATA --val 4 || exit 1
  # The GPU-only code of the training path (the pseudo-labels' largest component) against
  # scipy first, so that a round never trains on a path no test has seen on this machine: the
  # Triton union-find (its atomics race only on a GPU) and its step against CuPy's
  # (benchmarks/lcc_step.py, kept in $OUT); where Triton's tests fail or its step takes more
  # than twice CuPy's, the round labels with CuPy (HCO_LCC_BACKEND=cupy: the same masks,
  # scipy's) and says so. Then every GPU labelling's test (about 1.5 min in all).
  # LCC_CHECK=0 skips the Triton check and step benchmark (a minute of the lease) where a
  # session needs every minute for its runs and the check has passed on this kind of machine.
  if [ -z "${HCO_LCC_BACKEND:-}" ] && [ "${LCC_CHECK:-1}" != 0 ]; then
    if timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider tests/ops/test_ccl_triton.py \
          > /tmp/ccl-test.log 2>&1 \
        && timeout 150 python3 benchmarks/lcc_step.py --rounds 3 --repeat 10 \
          --json /tmp/lcc-step.json > /tmp/lcc-step.log 2>&1 \
        && python3 -c "import json, sys; sys.exit(json.load(open('/tmp/lcc-step.json'))\
['ratio']['device'] < 0.5)"; then
      tail -n 1 /tmp/ccl-test.log; tail -n 4 /tmp/lcc-step.log
    else
      tail -n 5 /tmp/ccl-test.log /tmp/lcc-step.log 2>/dev/null
      export HCO_LCC_BACKEND=cupy; echo "largest component: CuPy for this round"
    fi
  fi
  if [ "${LCC_CHECK:-1}" != 0 ]; then
    python3 -m pytest -q -m gpu -p no:cacheprovider tests/ops/test_components.py \
      ${HCO_LCC_BACKEND:+-k "not triton"} > /tmp/components-test.log 2>&1 \
      || { tail -n 5 /tmp/components-test.log; echo "GPU component tests failed"; exit 1; }
    tail -n 1 /tmp/components-test.log
  fi
  mkdir -p $RUNS
  share=--share-pretraining; [ "${SHARE_PRETRAINING:-1}" = 0 ] && share=--no-share-pretraining
  first=(python3 -m hco_cli sweep --config "$CONFIG" --arms "$ARMS" --seeds "$SEEDS"
         --out $RUNS $share --evaluate --lcc --gpus "$GPUS" --runs-per-gpu "$PER")
  if [ -n "${THEN_CONFIG:-}" ]; then  # one after the other, the second whatever the first did
    mkdir -p $THEN_RUNS
    then=(python3 -m hco_cli sweep --config "$THEN_CONFIG" --arms "$THEN_ARMS"
          --seeds "${THEN_SEEDS:-$SEEDS}" --out $THEN_RUNS $share --evaluate --lcc
          --gpus "$GPUS" --runs-per-gpu "$PER")
    setsid nohup bash -c "$(printf '%q ' "${first[@]}") > $RUNS/sweep.log 2>&1; \
      $(printf '%q ' "${then[@]}") > $THEN_RUNS/sweep.log 2>&1" > /dev/null 2>&1 < /dev/null &
  else
    setsid nohup "${first[@]}" > $RUNS/sweep.log 2>&1 < /dev/null &
  fi
  sleep 20; cat $RUNS/sweep.log; progress ;;
wait)
  end=$((SECONDS + $2))
  while [ $SECONDS -lt $end ]; do
    pgrep -f "hco_cli sweep" > /dev/null || break
    sleep 10
  done
  progress; tail -n 5 $RUNS/sweep.log
  [ -f $THEN_RUNS/sweep.log ] && tail -n 5 $THEN_RUNS/sweep.log
  pgrep -f "hco_cli sweep" > /dev/null || exec bash "$0" collect
  bash "$0" partial ;;
partial)  # what is done while the sweeps still run (wait calls it)
  evaluate done $RUNS $THEN_RUNS
  pack_done $RUNS "$OUT/ablation-partial.tar.gz"
  [ -d $THEN_RUNS ] && pack_done $THEN_RUNS "$OUT/ablation-then-partial.tar.gz"
  true ;;
collect)
  evaluate all $RUNS $THEN_RUNS
  tail -n 40 $RUNS/sweep.log
  tar czf "$OUT/ablation.tar.gz" --exclude='*.pt' --exclude='*.nii.gz' -C "$RUNS" .
  if [ -d $THEN_RUNS ]; then
    tail -n 20 $THEN_RUNS/sweep.log
    tar czf "$OUT/ablation-then.tar.gz" --exclude='*.pt' --exclude='*.nii.gz' -C "$THEN_RUNS" .
  fi
  cp /tmp/lcc-step.json /tmp/lcc-step.log /tmp/speed3/det-ro*.json "$OUT/" 2>/dev/null
  [ -d /tmp/bench ] && cp /tmp/bench/* "$OUT/" 2>/dev/null
  ls -la "$OUT" ;;
*) echo "usage: $0 stage DIR | bench | start ARMS SEEDS [GPUS PER] | wait S | partial | collect"
   exit 2 ;;
esac
