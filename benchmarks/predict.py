"""Time ``hco predict``: the whole test evaluation (serial vs pipelined path), per case,
per stage, warm and cold; with ``--tta`` and with CPU vs GPU stitching.

    .venv/bin/python benchmarks/predict.py --data data/la [--run RUN] [--cases 20] [--json F]
    .venv/bin/python benchmarks/predict.py --synthetic --cases 4 --patch 32,32,16 \
        --stride 16,16,8 --filters 4                           # a CPU check of the script

Every arm goes through the library call of ``hco predict --split test --lcc --evaluate``
(reading each prepared case, sliding window, writing NIfTI in original geometry, scoring it
against the original labels) on the first ``--cases`` test cases (``--no-evaluate``,
``--no-lcc`` leave those out). Without ``--run``, a randomly initialised V-Net with the LA
protocol's window (patch 112x112x80, stride 18/18/4, batch 4, bf16 on CUDA) is written to a
temporary run folder (seeded with ``--seed``): the forward's time does not depend on the
weights, but scoring's does, a lot: a random V-Net's prediction can cover most of the volume
with a ragged surface far from the atrium, whose surface distances cost about 1.3 s of CPU
per LA case, against about 0.03 s for an atrium-like prediction (the labels eroded by a
voxel; ``results/speed/predict-scoring-cpu.txt``).

Arms, interleaved over ``--rounds`` after one cold call per path: ``serial`` (the path before
issue 20, ``pipeline=False``: one case after another, labels and components on the host,
writing and scoring after each other), ``pipelined`` (the default), ``pipelined-b16`` (16
windows per forward; ``-cl`` / ``-contiguous``: the network in the channels-last layout or not,
where the default follows the run's training), ``tta`` (8 mirrored copies, pipelined),
``stitch-cpu`` and ``stitch-gpu``. Reported per arm: median wall seconds of the whole call and
its ratio to ``serial`` from the same run, median seconds per case, stage seconds per call
(forward, labels + LCC, writing, scoring; in the pipelined arms writing and scoring run beside
the device work, so stages add up to more than the wall time; ``rest``: the call's wall time
beyond its cases' main-loop seconds, i.e. model loading, then waiting for the writers and
scorers after the last case, and the summary), and the peak GPU memory of a case. Scoring is
not timed alike in both paths: ``serial``'s ``score_wall`` is the wall time of ``hco
evaluate``'s pool (min(cores, cases) forked workers after the last file), the pipelined arms'
``score`` the sum of each case's seconds in its worker (their medians per case, wall and CPU,
are printed too); for reference, the last arm's files are then scored one case after another in
this process.
Cold: the first call of each path in this process (CUDA context, cuDNN autotuning), after
the imports (their seconds are printed); ``--cli`` also times one fresh ``hco predict``
process, imports included.

Measured on an H200 with 10 of the 20 LA test cases (``results/speed/predict-la-h200.txt``):
0.15 s of sliding window per case, 1.1 s with ``--tta``, 1.6 s with CPU stitching; peak GPU
memory 0.8 GiB (0.9 GiB with ``--tta``); the pipelined call 1.30x faster than the serial one.
"""

from __future__ import annotations

import time

_START = time.perf_counter()

import argparse  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

import hco_cli.inference.cases as cases_module  # noqa: E402
import hco_cli.inference.predict as predict_module  # noqa: E402
from hco_cli.config import validate_config  # noqa: E402
from hco_cli.data.dataset import PreparedDataset  # noqa: E402
from hco_cli.data.prepare import prepare_synthetic  # noqa: E402
from hco_cli.evaluation.evaluate import evaluate_case  # noqa: E402
from hco_cli.inference.predict import PredictionReport, PredictOptions, predict  # noqa: E402
from hco_cli.inference.scoring import case_task, reference_labels  # noqa: E402
from hco_cli.io_utils import write_json  # noqa: E402
from hco_cli.models.vnet import build_model  # noqa: E402
from hco_cli.runs.checkpoint import save_checkpoint  # noqa: E402
from hco_cli.runs.folder import copy_plan, write_config  # noqa: E402
from hco_cli.runs.layout import RunFolder  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - _START
ARMS: dict[str, dict[str, Any]] = {
    "serial": {"pipeline": False},
    "pipelined": {},
    "pipelined-b16": {"batch_size": 16},
    "pipelined-b16-cl": {"batch_size": 16, "channels_last": True},
    "pipelined-b16-contiguous": {"batch_size": 16, "channels_last": False},
    "tta": {"tta": True},
    "stitch-cpu": {"stitch": "cpu"},
    "stitch-gpu": {"stitch": "gpu"},
}
# The serial path's stages, timed by wrapping what it calls (module globals, as train_step.py).
SERIAL_STAGES = {"forward": (cases_module, "case_probabilities"),
                 "labels": (cases_module, "labels_of"),
                 "write": (cases_module, "write_prediction"),
                 "score_wall": (predict_module, "score_predictions")}


def random_run(folder: Path, dataset: Path, *, patch: list[int], stride: list[int],
               filters: int, amp: bool) -> Path:
    """A run folder holding a randomly initialised V-Net for ``dataset``."""
    data = PreparedDataset(dataset)
    config = validate_config({
        "data": {"path": str(dataset), "patch_size": patch},
        "model": {"n_filters": filters},
        "framework": {"name": "supervised", "iterations": 1},
        "optimizer": {"name": "sgd"},
        "validation": {"stride": stride, "batch_size": 4},
        "amp": amp,
    })
    model = build_model(config.model, in_channels=data.info.channels,
                        num_classes=data.num_classes)
    folder.mkdir(parents=True, exist_ok=True)
    write_config(folder, config.model_dump(mode="json"))
    copy_plan(folder, dataset, tuple(patch))  # type: ignore[arg-type]
    save_checkpoint(RunFolder(folder).checkpoint("best"), {
        "model": model.state_dict(), "config": config.model_dump(mode="json"),
        "in_channels": data.info.channels, "num_classes": data.num_classes})
    return folder


def one_subset(dataset: Path, cases: int, folder: Path) -> Path:
    """A view of ``dataset`` whose test split is its first ``cases`` test cases."""
    data = PreparedDataset(dataset)
    splits = data.splits.model_copy(update={"test": data.splits.test[:cases]})
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("dataset.json", "plans.json"):
        if (dataset / name).is_file():
            (folder / name).write_text((dataset / name).read_text(encoding="utf-8"),
                                       encoding="utf-8")
    (folder / "splits.json").write_text(splits.model_dump_json(indent=2), encoding="utf-8")
    (folder / "cases").symlink_to(data.cases_dir.resolve())
    return folder


class SerialStages:
    """Seconds per stage of the serial path in one call (synchronised after the forward)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self._saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> SerialStages:
        for stage, (module, name) in SERIAL_STAGES.items():
            original = getattr(module, name)
            self._saved.append((module, name, original))
            setattr(module, name, self._timed(stage, original))
        return self

    def __exit__(self, *exc: object) -> None:
        for module, name, original in self._saved:
            setattr(module, name, original)

    def _timed(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            if stage == "forward" and self.device == "cuda":
                torch.cuda.synchronize()
            self.seconds[stage] += time.perf_counter() - start
            return out
        return timed


def one_call(run: Path, data: Path, out: Path, device: str, options: dict[str, Any],
             lcc: bool, evaluate: bool) -> tuple[float, PredictionReport, dict[str, float]]:
    """Wall seconds of one ``predict`` call, its report and its stage seconds."""
    serial = options.get("pipeline") is False
    watch = SerialStages(device) if serial else None
    opts = PredictOptions(device=device, data=data, out=out, split="test", lcc=lcc,  # type: ignore[arg-type]
                          evaluate=evaluate, force=True, **options)
    if watch is not None:
        watch.__enter__()
    try:
        start = time.perf_counter()
        report = predict(run, opts)
        wall = time.perf_counter() - start
    finally:
        if watch is not None:
            watch.__exit__()
    stages: dict[str, float] = dict(watch.seconds) if watch else defaultdict(float)
    if watch is None:
        for case in report.cases:
            for stage, seconds in case.stages.items():
                stages[stage] += seconds
        # model loading, then waiting for the writers and scorers after the last case, summary
        stages["rest"] = wall - sum(case.seconds for case in report.cases)
    return wall, report, dict(stages)


def time_arms(run: Path, data: Path, arms: list[str], args: argparse.Namespace,
              out: Path) -> dict[str, dict[str, Any]]:
    """Per arm: wall seconds per call, seconds per case, stage seconds, cold call, peak."""
    results: dict[str, dict[str, Any]] = {
        a: {"wall": [], "seconds": [], "stages": defaultdict(list), "peak_gpu_mib": None,
            "case_score": [], "case_score_cpu": []}
        for a in arms}
    # cold: the first call of each path in this process (of the paths measured)
    for arm in [a for a in ("serial", "pipelined") if a in arms]:
        wall, _, stages = one_call(run, data, out / f"cold-{arm}", args.device, ARMS[arm],
                                   args.lcc, args.evaluate)
        results[arm]["cold_s"], results[arm]["cold_stages_s"] = wall, stages
    for r in range(args.rounds):
        for arm in arms:
            wall, report, stages = one_call(run, data, out / f"{arm}-{r}", args.device,
                                            ARMS[arm], args.lcc, args.evaluate)
            result = results[arm]
            result["wall"].append(wall)
            result["seconds"] += [c.seconds for c in report.cases]
            for stage in ("score", "score_cpu"):
                result["case_" + stage] += [c.stages[stage] for c in report.cases
                                            if stage in c.stages]
            for stage, seconds in stages.items():
                result["stages"][stage].append(seconds)
            peaks = [c.peak_gpu_mib for c in report.cases if c.peak_gpu_mib is not None]
            if peaks:
                result["peak_gpu_mib"] = max([*peaks, result["peak_gpu_mib"] or 0])
    return results


def score_in_process(data: Path, preds: Path) -> list[float]:
    """Seconds of :func:`evaluate_case` per written prediction, one after another in this
    process (the reference for the pipelined workers' per-case seconds)."""
    dataset = PreparedDataset(data)
    cases = sorted(p.name[: -len(".nii.gz")] for p in preds.glob("*.nii.gz"))
    references = reference_labels(dataset, cases, "test")
    seconds = []
    for case in cases:
        task = case_task(case, preds / f"{case}.nii.gz", references[case], dataset.labels)
        start = time.perf_counter()
        evaluate_case(task)
        seconds.append(time.perf_counter() - start)
    return seconds


def cli_cold(run: Path, data: Path, out: Path, args: argparse.Namespace) -> float:
    """Seconds of one fresh ``hco predict`` process (imports, CUDA start-up, everything)."""
    command = [sys.executable, "-m", "hco_cli", "predict", str(run), "--data", str(data),
               "--split", "test", "--out", str(out), "--force", "--device", args.device,
               *(["--lcc"] if args.lcc else []), *(["--evaluate"] if args.evaluate else [])]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def report_rows(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Medians and ratios to ``serial``; prints one line per arm."""
    base = statistics.median(results["serial"]["wall"])
    rows = {}
    for arm, result in results.items():
        wall = statistics.median(result["wall"])
        stages = {k: statistics.median(v) for k, v in result["stages"].items()}
        per_case = {k: statistics.median(result[k]) if result[k] else None
                    for k in ("case_score", "case_score_cpu")}
        rows[arm] = {"median_wall_s": wall, "ratio_to_serial": wall / base,
                     "median_s_per_case": statistics.median(result["seconds"]),
                     "median_score_s_per_case": per_case["case_score"],
                     "median_score_cpu_s_per_case": per_case["case_score_cpu"],
                     "stages_s": stages, "cold_s": result.get("cold_s"),
                     "cold_stages_s": result.get("cold_stages_s"),
                     "peak_gpu_mib": result["peak_gpu_mib"], "calls": len(result["wall"])}
        peak = result["peak_gpu_mib"]
        cold = result.get("cold_s")
        print(f"{arm:>14}: {wall:7.3f} s per call ({wall / base:5.2f} x serial, "
              f"{base / wall:5.2f}x faster), {rows[arm]['median_s_per_case']:6.3f} s per case"
              + (f", cold {cold:6.2f} s" if cold is not None else "")
              + (f", peak GPU {peak:6.0f} MiB" if peak is not None else ""))
        print(" " * 16 + "stages per call: " + ", ".join(f"{k} {v:.3f} s"
                                                         for k, v in stages.items()))
        if per_case["case_score"] is not None:
            print(" " * 16 + f"scoring per case in its worker: {per_case['case_score']:.3f} s "
                  f"wall, {per_case['case_score_cpu']:.3f} s CPU (medians)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="prepared dataset (e.g. data/la)")
    parser.add_argument("--synthetic", action="store_true",
                        help="prepare a small synthetic dataset instead (a CPU check)")
    parser.add_argument("--run", type=Path, help="trained run (default: random V-Net)")
    parser.add_argument("--cases", type=int, default=20, help="test cases per call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--patch", default="112,112,80")
    parser.add_argument("--stride", default="18,18,4")
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0,
                        help="of the random V-Net: the same predictions, so the same scoring "
                             "work, from run to run")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset")
    parser.add_argument("--lcc", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--evaluate", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--cli", action="store_true", help="also time a fresh hco process")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if (args.data is None) == (not args.synthetic):
        parser.error("give --data or --synthetic")
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    arms = [a for a in args.arms.split(",") if a != "stitch-gpu" or args.device == "cuda"]
    arms = ["serial", *[a for a in arms if a != "serial"]]
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}, imports {IMPORT_SECONDS:.2f} s, "
          f"{args.cases} cases, lcc {args.lcc}, evaluate {args.evaluate}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = args.data
        if args.synthetic:
            prepare_synthetic(root / "syn", labeled=1, unlabeled=0, test=args.cases, classes=1,
                              shape=(48, 48, 32))
            data = root / "syn"
        subset = one_subset(Path(data), args.cases, root / "subset")
        torch.manual_seed(args.seed)
        run = args.run or random_run(
            root / "run", Path(data), patch=[int(v) for v in args.patch.split(",")],
            stride=[int(v) for v in args.stride.split(",")], filters=args.filters,
            amp=args.device == "cuda")
        results = time_arms(run, subset, arms, args, root / "preds")
        in_process = (score_in_process(subset, root / "preds" / f"{arms[-1]}-0")
                      if args.evaluate and args.rounds else None)
        fresh = cli_cold(run, subset, root / "cli", args) if args.cli else None
    rows = report_rows(results)
    if in_process:
        print(f"scoring {arms[-1]}'s files in this process, one case after another: "
              f"{statistics.median(in_process):.3f} s per case (median; "
              f"{sum(in_process):.2f} s in all)")
    if fresh is not None:
        print(f"fresh hco predict process (imports included): {fresh:.2f} s")
    if args.json:
        write_json(args.json, {"device": name, "torch": torch.__version__,
                               "data": str(args.data or "synthetic"),
                               "run": str(args.run) if args.run else None,
                               "cases": args.cases, "lcc": args.lcc, "evaluate": args.evaluate,
                               "import_s": IMPORT_SECONDS, "fresh_process_s": fresh,
                               "score_in_process_s": in_process,
                               "rounds": args.rounds, "arms": rows})


if __name__ == "__main__":
    main()
