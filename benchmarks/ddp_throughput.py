"""Data-parallel throughput: BCP pre- and self-training with 1 process and with N, one run.

    python benchmarks/ddp_throughput.py data/la --gpus 2 --out results/ddp.json
    python benchmarks/ddp_throughput.py data/synthetic --dataset synthetic --device cpu \\
        --gpus 2 --iterations 4 --warmup 1 --out /tmp/ddp.json      # the CPU check (gloo)

Both runs go through the real ``hco train`` loop (``train`` with ``distributed.processes``)
on the prepared dataset given, with validation and periodic checkpoints pushed beyond the last
iteration. Rank 0 synchronises the device and reads the clock after iteration ``--warmup`` and
after the last iteration of each phase (a worker hook), so process start-up, data loading and
cuDNN autotuning are excluded. Every process draws its own batch of the configured size, so
samples/s counts ``processes x batch`` per iteration; the ratio is samples/s with N processes
over samples/s with one, measured in the same invocation on the same machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from hco_cli.config import TrainConfig, validate_config
from hco_cli.io_utils import write_json
from hco_cli.training.entry import train
from hco_cli.training.events import ProgressEvent
from hco_cli.training.launch import launch
from hco_cli.training.presets import Overrides, build_config


def clock_hook(path: str, warmup: int, rank: int, event: ProgressEvent) -> None:
    """Worker hook: rank 0 appends a synchronised time after ``warmup`` and at a phase's end."""
    if rank != 0 or event.kind != "step" or event.iteration not in (warmup, event.total):
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"phase": event.phase, "iteration": event.iteration,
                            "time": time.perf_counter()}) + "\n")


def bench_config(args: argparse.Namespace, run_dir: Path, processes: int) -> TrainConfig:
    """The preset (or --config) on ``args.data``, with this benchmark's iteration counts."""
    config = build_config(
        config_file=args.config, dataset=None if args.config else args.dataset,
        overrides=Overrides(data=args.data, device=args.device, optimizer=args.optimizer,
                            run_dir=run_dir, processes=processes))
    raw = config.model_dump(mode="json")
    total = args.warmup + args.iterations
    if raw["framework"]["name"] != "bcp":
        raise SystemExit("ddp_throughput times BCP (pre- and self-training); use a bcp config")
    raw["framework"].update(pretrain_iterations=total, selftrain_iterations=total)
    raw["validation"]["every"] = 10 * total + 1  # no validation inside the timed iterations
    raw["checkpoint_every"] = 10 * total + 1
    raw["log_every"] = min(raw["log_every"], args.iterations)
    if args.bucket_mb is not None:
        raw["distributed"]["bucket_mb"] = args.bucket_mb
    return validate_config(raw, source="ddp_throughput")


def timed_run(args: argparse.Namespace, workdir: Path, processes: int) -> dict[str, Any]:
    """Train once with ``processes`` processes; iterations/s and samples/s per phase."""
    clock = workdir / f"clock-{processes}.jsonl"
    hook = functools.partial(clock_hook, str(clock), args.warmup)
    config = bench_config(args, workdir / f"run-{processes}", processes)
    if processes == 1:
        train(config, progress=lambda event: hook(0, event))
    else:
        launch(config, processes=processes, worker_hook=hook)
    marks = [json.loads(line) for line in clock.read_text(encoding="utf-8").splitlines()]
    d = config.data
    per_iteration = {"pretrain": d.labeled_batch_size,
                     "selftrain": d.labeled_batch_size + d.unlabeled_batch_size}
    out: dict[str, Any] = {"processes": processes}
    for phase, batch in per_iteration.items():
        times = [m["time"] for m in marks if m["phase"] == phase]
        seconds = times[-1] - times[0]
        out[phase] = {"iterations": args.iterations, "seconds": seconds,
                      "ms_per_iteration": 1000 * seconds / args.iterations,
                      "samples_per_s": processes * batch * args.iterations / seconds}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="prepared dataset folder")
    parser.add_argument("--gpus", type=int, default=2, help="processes of the parallel run")
    parser.add_argument("--dataset", default="la", help="preset (default la)")
    parser.add_argument("--config", type=Path, default=None, help="a bcp YAML instead")
    parser.add_argument("--optimizer", default="sgd-hco")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--iterations", type=int, default=200, help="timed, per phase")
    parser.add_argument("--warmup", type=int, default=20, help="untimed, per phase")
    parser.add_argument("--bucket-mb", type=float, default=None,
                        help="all-reduce bucket size (default: the config's, 25 MB)")
    parser.add_argument("--out", type=Path, required=True, help="results JSON")
    args = parser.parse_args()
    if args.gpus < 2 or args.iterations < 1 or args.warmup < 1:
        raise SystemExit("--gpus must be >= 2, --iterations and --warmup >= 1")
    with tempfile.TemporaryDirectory(prefix="hco-ddp-") as tmp:
        runs = [timed_run(args, Path(tmp), n) for n in (1, args.gpus)]
    device = (torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu")
    result = {"device": device, "optimizer": args.optimizer, "data": str(args.data),
              "iterations": args.iterations, "warmup": args.warmup, "runs": runs,
              "ratio": {phase: runs[1][phase]["samples_per_s"] / runs[0][phase]["samples_per_s"]
                        for phase in ("pretrain", "selftrain")}}
    write_json(args.out, result)
    for run in runs:
        for phase in ("pretrain", "selftrain"):
            r = run[phase]
            print(f"{run['processes']} process(es) {phase:9s} {r['ms_per_iteration']:8.1f} "
                  f"ms/iteration {r['samples_per_s']:8.1f} samples/s")
    for phase, ratio in result["ratio"].items():
        print(f"{phase}: {args.gpus} processes / 1 = {ratio:.2f}x samples/s ({device})")


if __name__ == "__main__":
    main()
