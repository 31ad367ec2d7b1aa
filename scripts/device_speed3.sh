#!/usr/bin/env bash
# GPU machine, issue 20 (speed), third round: what CUDA graphs (`compile: reduce-overhead`)
# give end to end, whether they change the numerics, and how many runs per GPU pay with them.
# The work runs in the background (setsid), so that it outlives the device call; poll it with
# `wait` calls back to back (a machine idle for 30 s is given back) and it collects itself.
#   device_speed3.sh start STEP...      STEP: e2e, e2e-2gpu, predict, cold, profile, reorder,
#                                       loop-test, graph-test, gpu-tests, numerics,
#                                       concurrency, closs, det, det-ro, lcc, first-conv, val-fwd,
#                                       val-stream,
#                                       run in the order given (predict and cold need e2e's run);
#                                       results in /tmp/speed3
#   device_speed3.sh wait SECONDS       progress; when the steps have ended, collect to $OUT
#   device_speed3.sh collect            log.txt, and logs, JSON, tables and run summaries (no
#                                       weights) in speed3.tar.gz, to $OUT
# Steps (minutes on one H200, estimated from round 2's 31-33 ms per self-training iteration):
#   e2e          the `la` preset's full protocol (2K + 15K, validation every 200) with sgd-hco
#                and compile: reduce-overhead, then `hco predict --split test --lcc --evaluate`
#                timed as a fresh process (about 10 min)
#   e2e-2gpu     on the 2-GPU kind: the same protocol for sgd and sgd-hco at once, one per
#                GPU (`hco sweep --gpus 2`), each run's time breakdown (about 10 min)
#   predict      benchmarks/predict.py on e2e's trained run, 20 test cases: serial, pipelined,
#                16 windows per forward, warm and cold, and a fresh process (about 1 min)
#   profile      benchmarks/train_step.py --profile 5: top kernels, categories and stages of
#                sgd and sgd-hco, eager and with CUDA graphs, both phases (about 3 min)
#   reorder      benchmarks/train_step.py, self-training, sgd and sgd-hco in hco's order and
#                in BCP's (+lcc-first: the component step before the student's forwards),
#                interleaved in one process: the reorder's effect as a ratio; then
#                benchmarks/components.py, the component sizes over the foreground only
#                against the histogram over every voxel (about 2 min; alone on the card)
#   cold         benchmarks/predict_cold.py on e2e's run (or RUN=...): a fresh predict's
#                stages, imports to the second call, and a fresh hco predict (about 1 min);
#                BYTECODE=N adds N fresh processes with and N without compiled bytecode
#                (about 20 s per pair more)
#   loop-test    the GPU tests of compiled training: tests/training/test_compile_loop.py (the
#                real BCP and mean-teacher loops, float64 network with dropout, CUDA graphs
#                against eager to 1e-8 after 4 steps) and tests/models/test_compile.py (about
#                4 min)
#   graph-test   tests/training/test_cuda_graph_loop.py: BCP with sgd-hco (bf16, channels last,
#                dropout, 20 + 60 iterations) compiled with CUDA graphs against the same compiled
#                code without them, which must end bit for bit alike (about 4 min)
#   gpu-tests    pytest -m gpu over all of tests/ (every GPU-marked test, graph-test's
#                included; about 10 min)
#   numerics     sgd-hco eager vs compile: reduce-overhead (graphs) vs compile: default
#                (inductor), seeds 1-3, 300 + 600 iterations as results/speed/bf16-vs-fp32.md,
#                diagnostics every 10 iterations, nine runs at once, then hco compare (6 min);
#                NUMERICS_SEEDS="4 5 6" for other seeds
#   det-ro       sgd-hco's self-training iteration under CUDA graphs without and with
#                deterministic kernels (two processes, random volumes, no data needed: from a
#                session's first call on, about 3 min), for a study's choice of compile setting
#   val-fwd      benchmarks/window_forward.py: the sliding window's forward as validation and
#                predict run it, CUDA graphs or eager, 8/16/32 windows per forward, channels-last
#                or not, then the graph arms again with deterministic kernels (random windows, no
#                data needed: from a session's first call on, about 3 min)
#   val-stream   benchmarks/validation_stream.py: validation's windows case by case (each case's
#                last batch padded) against one stream over the 20 LA test shapes, CUDA graphs,
#                with and without deterministic kernels: the time ratio and whether every
#                case's map is bit for bit the same (random volumes, no data needed, about 1 min)
#   concurrency  benchmarks/concurrency.py: 1, 2 and 4 processes of sgd and of sgd+compile-ro
#                on the GPU (about 3.5 min); CONC_OPTIMIZERS="sgd,sgd+compile" CONC_PROCESSES=1,3
#                for what an ablation round (three runs per GPU) would gain from compile: true
#   closs        benchmarks/train_step.py: sgd-hco eager, compile: true and CUDA graphs, each
#                without and with the losses compiled (+closs, compile_losses: true), both
#                phases, interleaved in one process (about 5 min; alone on the card)
#   det          what `deterministic: true` (cuDNN and torch algorithms, no autotuning) costs:
#                sgd-hco eager, compile: true and CUDA graphs, self-training, one process without and
#                one with --deterministic, each with its eager row as the baseline (about 4 min).
#                With deterministic kernels CUDA graphs train bit for bit as compile: true does
#                (graph-test), which sets aside the numerics rounds' question for such runs
#   lcc          the pseudo-labels' largest component by the Triton union-find (no host sync)
#                against CuPy's labelling: the GPU tests of both, benchmarks/lcc_step.py (the
#                step alone: device and host time), and benchmarks/train_step.py with sgd and
#                sgd+compile-ro, each with and without +cupy-lcc, in one process (about 3 min;
#                alone on the card)
#   first-conv   benchmarks/first_conv.py: the V-Net's first convolution (one input channel,
#                cuDNN's generic kernel in the profile) against the same with the channel
#                zero-padded to 8, forward and weight gradient (under 1 min; alone on the card)
# Data: the whole LA set staged into /tmp/la by `device_ablation.sh stage` calls (see
# scripts/stage_carry.py la); needs .carry/wheels from the first call on.
set -uo pipefail
export PYTHONUNBUFFERED=1 COLUMNS=160
SITE=/tmp/site WORK=/tmp/speed3 DATA=/tmp/data/la
[ -d $SITE/pydantic ] || python3 -m pip install -q --no-index --no-deps --no-compile \
  --no-cache-dir --upgrade --target $SITE .carry/wheels/*.whl || exit 1
export PYTHONPATH=$SITE:$PWD
hco() { python3 -m hco_cli "$@"; }
step() { echo "=== $* ($(date +%T))"; }
timed() {  # timed LABEL CMD...: the command's wall seconds (/usr/bin/time may be missing)
  local label=$1 t0=$EPOCHREALTIME; shift
  "$@"; awk -v a="$t0" -v b="$EPOCHREALTIME" -v l="$label" 'BEGIN { printf "%s: %.1f s wall\n", l, b - a }'
}
with_compile() {  # a copy of config $1 with compile: ${3:-reduce-overhead} and the data path
  sed -e "s#path: data/la#path: $DATA#" "$1" > "$2"
  printf 'compile: %s\n' "${3:-reduce-overhead}" >> "$2"
}
run_steps() {
  mkdir -p $WORK/runs
  local what needs_data=0
  for what in "$@"; do case $what in det-ro|first-conv|val-fwd|val-stream) ;; *) needs_data=1 ;; esac; done
  [ $needs_data = 0 ] || [ -d $DATA ] || hco prepare la /tmp/la --out $DATA --val 4 | tail -n 3
  for what in "$@"; do
    case $what in
    e2e)
      step e2e
      with_compile sample_configs/la_bcp_sgd.yaml $WORK/e2e.yaml
      timed "e2e training" hco train --config $WORK/e2e.yaml --optimizer sgd-hco \
        --run-dir $WORK/runs/e2e-sgd-hco --force > $WORK/e2e-train.log 2>&1
      tail -n 6 $WORK/e2e-train.log
      python3 scripts/time_breakdown.py $WORK/runs/e2e-sgd-hco
      timed "e2e test evaluation, fresh process" hco predict $WORK/runs/e2e-sgd-hco \
        --split test --lcc --evaluate --force > $WORK/e2e-predict.log 2>&1
      tail -n 3 $WORK/e2e-predict.log ;;
    e2e-2gpu)  # the 2-GPU kind: sgd and sgd-hco on the two GPUs of one host at once
      step e2e-2gpu
      with_compile sample_configs/la_bcp_sgd.yaml $WORK/e2e.yaml
      timed "e2e two runs on two GPUs" hco sweep --config $WORK/e2e.yaml \
        --optimizers sgd,sgd-hco --seeds 1 --gpus 2 --out $WORK/runs/two-gpus \
        > $WORK/e2e-2gpu.log 2>&1
      tail -n 8 $WORK/e2e-2gpu.log
      python3 scripts/time_breakdown.py $WORK/runs/two-gpus/[!_]*/* ;;
    predict)
      step predict
      python3 benchmarks/predict.py --data $DATA --run $WORK/runs/e2e-sgd-hco --cases 20 \
        --rounds 3 --arms serial,pipelined,pipelined-b16,pipelined-b16-contiguous --cli \
        --json $WORK/predict-trained.json ;;
    profile)  # where an iteration's GPU time goes: kernels, categories, stages, busy vs wall
      step profile
      mkdir -p $WORK/traces
      python3 benchmarks/train_step.py --data $DATA --phases selftrain,pretrain \
        --optimizers sgd,sgd-hco,sgd+compile-ro,sgd-hco+compile-ro --iterations 20 --rounds 3 \
        --profile 5 --profile-trace $WORK/traces --json $WORK/profile.json ;;
    closs)  # compile_losses' effect on each path, as ratios in one process
      step closs
      python3 benchmarks/train_step.py --data $DATA --phases selftrain,pretrain \
        --optimizers sgd-hco,sgd-hco+closs,sgd-hco+compile,sgd-hco+compile+closs,sgd-hco+compile-ro,sgd-hco+compile-ro+closs \
        --iterations 20 --rounds 4 --warmup 15 --json $WORK/closs.json ;;
    det)  # deterministic kernels' price on each path (the setting is per process)
      step det
      for flag in "" --deterministic; do
        python3 benchmarks/train_step.py --data $DATA --phases selftrain $flag \
          --optimizers sgd-hco,sgd-hco+compile,sgd-hco+compile-ro --iterations 20 --rounds 4 \
          --warmup 15 --json $WORK/det${flag:+-deterministic}.json
      done ;;
    val-fwd)  # validation's and predict's window forward: shapes, layouts, graphs, determinism
      step val-fwd
      python3 benchmarks/window_forward.py --json $WORK/val-fwd.json
      python3 benchmarks/window_forward.py --deterministic --arms ro-b16-cl,ro-b32-cl \
        --json $WORK/val-fwd-deterministic.json ;;
    val-stream)  # validation streamed across cases: bit for bit the same maps, and how fast
      step val-stream
      python3 benchmarks/validation_stream.py --json $WORK/val-stream.json
      python3 benchmarks/validation_stream.py --deterministic \
        --json $WORK/val-stream-deterministic.json ;;
    det-ro)  # deterministic kernels' price under CUDA graphs alone, on random volumes (no
      # data: it can run from a session's first call, while the LA parts are still staged)
      step det-ro
      for flag in "" --deterministic; do
        python3 benchmarks/train_step.py --phases selftrain $flag \
          --optimizers sgd-hco+compile-ro --iterations 20 --rounds 3 --warmup 10 \
          --json $WORK/det-ro${flag:+-deterministic}.json 2>&1 | tail -n 1
      done ;;
    lcc)  # the Triton union-find against CuPy's labelling: GPU tests, the step, the iteration
      step lcc
      timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short \
        tests/ops/test_ccl_triton.py tests/ops/test_components.py 2>&1 | tail -n 20
      python3 benchmarks/lcc_step.py --json $WORK/lcc-step.json
      python3 benchmarks/train_step.py --data $DATA --phases selftrain \
        --optimizers sgd+compile-ro,sgd+compile-ro+cupy-lcc,sgd,sgd+cupy-lcc --iterations 20 \
        --rounds 5 --warmup 15 --json $WORK/lcc-train-step.json ;;
    first-conv)  # is the first convolution's generic kernel worth padding away?
      step first-conv
      python3 benchmarks/first_conv.py --rounds 7 --json $WORK/first-conv.json ;;
    reorder)  # hco's order of the self-training step against BCP's (+lcc-first), one process
      step reorder
      python3 benchmarks/train_step.py --data $DATA --phases selftrain \
        --optimizers sgd,sgd+lcc-first,sgd-hco,sgd-hco+lcc-first --iterations 20 --rounds 5 \
        --json $WORK/reorder.json
      python3 benchmarks/components.py --json $WORK/components.json ;;
    cold)  # a fresh predict's stages; RUN=... names another finished run (default e2e's)
      step cold
      python3 benchmarks/predict_cold.py --run "${RUN:-$WORK/runs/e2e-sgd-hco}" --data $DATA \
        --bytecode "${BYTECODE:-0}" --json $WORK/predict-cold.json ;;
    loop-test)
      step loop-test
      timeout 400 python3 -m pytest -q -m gpu -p no:cacheprovider \
        --tb=short tests/training/test_compile_loop.py tests/models/test_compile.py 2>&1 \
        | tail -n 60 ;;
    graph-test)
      step graph-test
      timeout 500 python3 -m pytest -q -p no:cacheprovider --tb=short \
        tests/training/test_cuda_graph_loop.py 2>&1 | tail -n 40 ;;
    gpu-tests)  # every GPU test of the repository (the compile modules too), SimpleITK absent
      step gpu-tests
      timeout 900 python3 -m pytest -q -m gpu -p no:cacheprovider --tb=short tests 2>&1 \
        | tee $WORK/gpu-tests.log | tail -n 40 ;;
    numerics)
      step numerics
      Q=$WORK/quick.yaml
      sed -e 's/pretrain_iterations: 1000/pretrain_iterations: 300/' \
        -e 's/selftrain_iterations: 2400/selftrain_iterations: 600/' \
        -e 's/lr_decay_every: 800/lr_decay_every: 250/' -e "s#path: data/la#path: $DATA#" \
        sample_configs/la_bcp_sgd_short.yaml > $Q
      printf 'diagnostics_every: 10\n' >> $Q
      with_compile $Q $WORK/quick-ro.yaml reduce-overhead
      with_compile $Q $WORK/quick-inductor.yaml default
      for seed in ${NUMERICS_SEEDS:-1 2 3}; do
        for arm in eager:$Q graphs:$WORK/quick-ro.yaml inductor:$WORK/quick-inductor.yaml; do
          hco train --config "${arm#*:}" --optimizer sgd-hco --seed $seed \
            --run-dir $WORK/runs/${arm%%:*}-s$seed --force > $WORK/${arm%%:*}-s$seed.log 2>&1 &
        done
      done
      wait
      for r in $WORK/runs/eager-s* $WORK/runs/graphs-s* $WORK/runs/inductor-s*; do
        hco predict "$r" --checkpoint last --split test --lcc --evaluate --force > /dev/null &
      done
      wait
      arms=(eager="$WORK/runs/eager-s*" graphs="$WORK/runs/graphs-s*"
            inductor="$WORK/runs/inductor-s*")
      hco compare "${arms[@]}" --checkpoint last --alternative two-sided \
        --markdown $WORK/numerics-last.md --json $WORK/numerics-last.json | tail -n 30
      hco compare "${arms[@]}" --dynamics --bin 100 \
        --markdown $WORK/numerics-dynamics.md --json $WORK/numerics-dynamics.json | tail -n 30 ;;
    concurrency)
      step concurrency
      python3 benchmarks/concurrency.py --data $DATA --optimizer "${CONC_OPTIMIZERS:-sgd,sgd+compile-ro}" \
        --processes "${CONC_PROCESSES:-1,2,4}" --rounds 4 --iterations 20 --warmup 10 \
        --json $WORK/concurrency.json ;;
    *) echo "unknown step $what" ;;
    esac
  done
  step done
}
case "${1:-}" in
start)
  shift
  nvidia-smi --query-gpu=name --format=csv,noheader
  mkdir -p $WORK
  export -f run_steps step timed hco with_compile
  export WORK DATA RUN NUMERICS_SEEDS
  setsid nohup bash -c 'run_steps "$@"' _ "$@" > $WORK/log.txt 2>&1 < /dev/null &
  sleep 15; cat $WORK/log.txt ;;
wait)
  end=$((SECONDS + $2))
  while [ $SECONDS -lt $end ]; do
    grep -q "^=== done" $WORK/log.txt 2>/dev/null && break
    sleep 10
  done
  tail -n 8 $WORK/log.txt
  for m in $WORK/runs/*/metrics.jsonl; do
    [ -f "$m" ] && printf '%s %s\n' "$m" "$(grep -o '"iter": [0-9]*' "$m" | tail -n 1)"
  done
  grep -q "^=== done" $WORK/log.txt && exec bash "$0" collect ;;
collect)
  # Three files: a call brings back at most 8, and the nine numerics runs' logs alone are more.
  cp $WORK/log.txt "$OUT/"
  (cd $WORK && tar czf "$OUT/speed3.tar.gz" --exclude='*.pt' --exclude='*.nii.gz' \
    --exclude=traces --exclude=log.txt *.log *.json *.md runs 2>/dev/null)
  [ -d $WORK/traces ] && tar czf "$OUT/speed3-traces.tar.gz" -C $WORK traces
  ls -la "$OUT" ;;
*) echo "usage: $0 start STEP... | wait SECONDS | collect"; exit 2 ;;
esac
