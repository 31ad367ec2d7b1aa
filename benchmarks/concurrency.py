"""How many training processes should share one GPU: K train_step.py processes at once.

    python benchmarks/concurrency.py [--data data/la] [--processes 1,2,4] [--optimizer sgd]
    python benchmarks/concurrency.py --optimizer sgd,sgd+compile-ro --gpu 0 --json F
    python benchmarks/concurrency.py --device cpu --processes 1,2 --patch 16,16,16 \\
        --iterations 2 --rounds 2 --warmup 1                  # a CPU check of the script

For each K of ``--processes`` (K = 1 always first, added when left out: it is the baseline),
K processes of ``benchmarks/train_step.py`` run the same BCP phase (``--phase``, default
selftrain) with the same optimizer (``--optimizer``: any train_step spec, e.g. ``sgd-hco`` or
``sgd+compile-ro``; several, comma-separated, are measured one after the other, each with its
own K = 1) on one GPU: ``--gpu N`` sets their ``CUDA_VISIBLE_DEVICES`` to N, else they
inherit it and all take train_step's default device (the first GPU visible). Each process
builds, warms up (and compiles, ``--warmup`` iterations) on its own, then waits at a barrier
(train_step's ``--barrier``); all start their timed rounds at one wall time, and each keeps
training, untimed, after its own rounds until all K have finished theirs, so that every timed
round ran beside K - 1 others. Per process: the median ms per iteration over ``--rounds``
rounds of ``--iterations`` (train_step's "total", no stage breakdown). Per K: the aggregate
throughput, the sum over the processes of iterations/s (1000 / median ms), and its ratio to
K = 1 from the same invocation.

Reading the ratio: without MPS the GPU time-slices between the processes' contexts (kernels
of two processes do not run at once), so sharing gains only the time one process leaves the
GPU idle: launch gaps, host synchronisations, the CPU's share of an iteration. A ratio of K
means the processes did not slow each other down; 1 means one process already kept the GPU
busy and K processes only share it; below 1, sharing costs (context switches, caches, memory).
Between 1 and K, each of K runs takes K / ratio times as long as alone ("slower", the per
process mean ms against K = 1), but the K runs finish together ratio times sooner than one
after another. Memory bounds K too: a process that runs out of it fails the benchmark.

Each process's timed window (wall clock) is recorded; a K counts as overlapped when every
process's window lies (to 1 %) inside the span in which all K were training. Otherwise the
table says so: a measurement without overlap is not a concurrency measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hco_cli.io_utils import write_json

TRAIN_STEP = Path(__file__).with_name("train_step.py")
COVERAGE = 0.99  # share of each timed window that must lie inside the all-K span
LEAD = 1.0  # seconds from the last process ready to the common start
TAIL = 20  # stderr lines shown of a failed process


class BenchmarkError(Exception):
    """A failure to report in one line (after ``details``, printed first)."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


@dataclass(frozen=True)
class Child:
    """One process's figures: median and per-round ms per iteration, and its wall window."""

    ms: float
    rounds_ms: list[float]
    start: float
    end: float
    busy_until: float
    device: str
    torch: str


def parse_processes(text: str) -> list[int]:
    """``"2,4"`` -> ``[1, 2, 4]``: distinct counts >= 1, ascending, with the baseline 1 first."""
    try:
        counts = {int(v) for v in text.split(",") if v.strip()}
    except ValueError:
        raise BenchmarkError(f"--processes {text!r}: expected counts like 1,2,4") from None
    if not counts or min(counts) < 1:
        raise BenchmarkError(f"--processes {text!r}: counts must be >= 1")
    return sorted(counts | {1})


def read_child(data: dict[str, Any], phase: str, optimizer: str) -> Child:
    """The figures of ``phase`` and ``optimizer`` from one train_step.py JSON."""
    rows = [r for r in data.get("rows", [])
            if r.get("phase") == phase and r.get("optimizer") == optimizer]
    window = data.get("windows", {}).get(phase)
    if len(rows) != 1 or not window:
        raise BenchmarkError(f"train_step JSON has no single row and window for {phase} "
                             f"{optimizer}")
    row = rows[0]
    return Child(ms=float(row["ms"]), rounds_ms=[float(v) for v in row.get("rounds_ms", [])],
                 start=float(window["start"]), end=float(window["end"]),
                 busy_until=float(window.get("busy_until", window["end"])),
                 device=str(data.get("device", "?")), torch=str(data.get("torch", "?")))


def aggregate_it_s(children: list[Child]) -> float:
    """Iterations per second of all processes together: the sum of 1000 / median ms."""
    return sum(1000.0 / c.ms for c in children)


def coverage(children: list[Child]) -> list[float]:
    """Per process, the share of its timed window inside the span in which all were training
    (from the latest start to the earliest end of training, untimed iterations included)."""
    first, last = max(c.start for c in children), min(c.busy_until for c in children)
    out = []
    for c in children:
        inside = max(0.0, min(c.end, last) - max(c.start, first))
        out.append(inside / (c.end - c.start) if c.end > c.start else 0.0)
    return out


def summarise(k: int, children: list[Child], baseline: dict[str, Any] | None) -> dict[str, Any]:
    """The figures of one K; ``baseline`` is K = 1's summary (None for K = 1 itself)."""
    it_s = aggregate_it_s(children)
    shares = coverage(children)
    ms = [c.ms for c in children]
    base_it_s = baseline["aggregate_it_s"] if baseline else it_s
    base_ms = baseline["ms"][0] if baseline else ms[0]
    return {"processes": k, "ms": ms, "mean_ms": sum(ms) / k, "slower": sum(ms) / k / base_ms,
            "aggregate_it_s": it_s, "ratio": it_s / base_it_s,
            "coverage": shares, "overlap_full": min(shares) >= COVERAGE,
            "children": [{"ms": c.ms, "rounds_ms": c.rounds_ms, "window":
                          {"start": c.start, "end": c.end, "busy_until": c.busy_until}}
                         for c in children]}


def table(optimizer: str, runs: list[dict[str, Any]]) -> str:
    """The printed table of one optimizer, a line per K."""
    lines = [f"{optimizer}:",
             f"{'K':>3}  {'ms per iteration, per process':<34}{'mean ms':>9}{'slower':>8}"
             f"{'it/s, all':>11}{'vs K=1':>8}  overlap"]
    for run in runs:
        ms = " ".join(f"{v:.1f}" for v in run["ms"])
        overlap = ("full" if run["overlap_full"] else
                   f"PARTIAL (min {100 * min(run['coverage']):.0f}% of a window): "
                   "not a concurrency measurement")
        lines.append(f"{run['processes']:>3}  {ms:<34}{run['mean_ms']:>9.1f}"
                     f"{run['slower']:>7.2f}x{run['aggregate_it_s']:>11.2f}"
                     f"{run['ratio']:>7.2f}x  {overlap}")
    return "\n".join(lines)


def child_command(args: argparse.Namespace, optimizer: str, barrier: Path,
                  out: Path) -> list[str]:
    command = [sys.executable, str(TRAIN_STEP), "--optimizers", optimizer,
               "--phases", args.phase, "--iterations", str(args.iterations),
               "--rounds", str(args.rounds), "--warmup", str(args.warmup), "--no-stages",
               "--barrier", str(barrier), "--json", str(out)]
    for option in ("data", "device", "patch"):
        if getattr(args, option) is not None:
            command += [f"--{option}", str(getattr(args, option))]
    return command


def _tail(path: Path) -> str:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(lines[-TAIL:])


def _failure(index: int, k: int, optimizer: str, rc: int, folder: Path) -> BenchmarkError:
    how = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
    return BenchmarkError(f"process {index + 1} of K={k} ({optimizer}) failed ({how})",
                          f"last stderr lines of process {index + 1} of K={k}:\n"
                          + _tail(folder / f"{index}.err"))


def run_group(args: argparse.Namespace, optimizer: str, k: int, workdir: Path,
              env: dict[str, str]) -> list[Child]:
    """Run K processes through the barrier; their figures, or a BenchmarkError."""
    folder = workdir / f"{optimizer.replace(':', '_')}-k{k}"
    barrier = folder / "barrier"
    barrier.mkdir(parents=True)
    procs: list[subprocess.Popen[bytes]] = []
    deadline = time.monotonic() + args.timeout

    def check(what: str) -> None:
        for i, proc in enumerate(procs):
            rc = proc.poll()
            if rc not in (None, 0):
                raise _failure(i, k, optimizer, rc, folder)
        if time.monotonic() > deadline:
            raise BenchmarkError(f"K={k} ({optimizer}): no {what} after --timeout "
                                 f"{args.timeout:.0f} s")

    try:
        for i in range(k):
            with open(folder / f"{i}.out", "wb") as out, open(folder / f"{i}.err", "wb") as err:
                procs.append(subprocess.Popen(
                    child_command(args, optimizer, barrier, folder / f"{i}.json"),
                    stdout=out, stderr=err, env=env))
        while len(list(barrier.glob(f"ready-{args.phase}-*"))) < k:
            check("barrier (all processes warmed up)")
            if any(p.poll() == 0 for p in procs):
                raise BenchmarkError(f"K={k} ({optimizer}): a process ended before its "
                                     "timed rounds")
            time.sleep(0.05)
        go = {"start": time.time() + LEAD, "parties": k}
        tmp = barrier / f".go-{args.phase}.tmp"
        tmp.write_text(json.dumps(go), encoding="utf-8")
        os.replace(tmp, barrier / f"go-{args.phase}")
        while any(p.poll() is None for p in procs):
            check("end")
            time.sleep(0.05)
        check("end")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    children = []
    for i in range(k):
        try:
            data = json.loads((folder / f"{i}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise BenchmarkError(f"process {i + 1} of K={k} ({optimizer}): no readable "
                                 f"JSON ({e})") from None
        children.append(read_child(data, args.phase, optimizer))
    return children


def measure(args: argparse.Namespace, counts: list[int]) -> dict[str, Any]:
    env = dict(os.environ)
    if args.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(args.gpu)
    visible = env.get("CUDA_VISIBLE_DEVICES")
    results: list[dict[str, Any]] = []
    out: dict[str, Any] = {"device": None, "torch": None, "cuda_visible_devices": visible,
                           "phase": args.phase, "data": args.data, "patch": args.patch,
                           "iterations": args.iterations, "rounds": args.rounds,
                           "warmup": args.warmup, "processes": counts, "results": results}
    with tempfile.TemporaryDirectory(prefix="hco-concurrency-") as tmp:
        for optimizer in args.optimizer.split(","):
            runs: list[dict[str, Any]] = []
            for k in counts:
                print(f"{optimizer}: {k} process(es) ...", flush=True)
                children = run_group(args, optimizer, k, Path(tmp), env)
                if out["device"] is None:
                    out["device"], out["torch"] = children[0].device, children[0].torch
                    print(f"{out['device']}, torch {out['torch']}, CUDA_VISIBLE_DEVICES="
                          f"{visible if visible is not None else '(unset)'}, {args.phase}, "
                          f"{args.rounds} rounds x {args.iterations} iterations after "
                          f"{args.warmup} warm-up, "
                          f"{'data ' + args.data if args.data else 'random volumes'}",
                          flush=True)
                runs.append(summarise(k, children, runs[0] if runs else None))
            results.append({"optimizer": optimizer, "runs": runs})
            print(table(optimizer, runs), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", default="1,2,4",
                        help="process counts K (1, the baseline, is always run first)")
    parser.add_argument("--optimizer", default="sgd",
                        help="a train_step spec (e.g. sgd-hco, sgd+compile-ro); several, "
                        "comma-separated, are measured one after the other")
    parser.add_argument("--phase", default="selftrain", choices=["selftrain", "pretrain"])
    parser.add_argument("--gpu", type=int, help="set CUDA_VISIBLE_DEVICES of the processes")
    parser.add_argument("--device", help="train_step's --device (default: its own)")
    parser.add_argument("--data", help="prepared LA dataset (default: random volumes)")
    parser.add_argument("--patch", help="train_step's --patch (default: LA's)")
    parser.add_argument("--iterations", type=int, default=20, help="iterations per round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per process")
    parser.add_argument("--warmup", type=int, default=10,
                        help="untimed iterations before the barrier (compilation included)")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds one K may take, start-up included")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    try:
        if args.iterations < 1 or args.rounds < 1 or args.warmup < 0:
            raise BenchmarkError("--iterations and --rounds must be >= 1, --warmup >= 0")
        result = measure(args, parse_processes(args.processes))
    except BenchmarkError as e:
        if e.details:
            print(e.details, file=sys.stderr)
        raise SystemExit(f"concurrency: {e}") from None
    partial = [f"{r['optimizer']} K={run['processes']}" for r in result["results"]
               for run in r["runs"] if not run["overlap_full"]]
    if partial:
        print(f"not fully overlapped: {', '.join(partial)}; those rows are not concurrency "
              "measurements")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
