"""Time ``hco predict`` per case: plain, with ``--tta``, and with CPU vs GPU stitching.

    .venv/bin/python benchmarks/predict.py --data data/la [--run RUN] [--cases 5] [--json F]
    .venv/bin/python benchmarks/predict.py --synthetic --cases 2 --patch 32,32,16 \
        --stride 16,16,8 --filters 4                           # a CPU check of the script

Every arm goes through the library call of ``hco predict`` (reading each prepared case,
sliding window, writing NIfTI in original geometry) on the first ``--cases`` test cases.
Without ``--run``, a randomly initialised V-Net with the LA protocol's window (patch
112x112x80, stride 18/18/4, batch 4, bf16 on CUDA) is written to a temporary run folder: the
time does not depend on the weights. Arms, interleaved over ``--rounds`` after one warm-up
call: ``plain`` (``--stitch auto``, which is the GPU for LA volumes), ``tta`` (8 mirrored
copies), ``stitch-cpu`` and ``stitch-gpu``. Reported per arm: median seconds per case,
the ratio to ``plain`` from the same run, and the peak GPU memory of a case
(``torch.cuda.max_memory_allocated``, reset per case; model weights included). On a CPU,
``stitch-cpu`` is the plain path again (its ratio shows the timing noise) and ``stitch-gpu``
is left out.

Measured so far only as a check of the script, on the shared 2-core CPU this project is
developed on (load average about 4.6, so noise dominates): ``--synthetic --cases 2 --rounds 3
--patch 32,32,16 --stride 16,16,8 --filters 4`` gave plain 0.46 s, tta 1.98 s (4.3x; 8x the
forward passes plus the same reading and writing) and stitch-cpu 0.26 s (the plain path
again). The LA numbers on an H200 (time per case with and without ``--tta``, CPU vs GPU
stitching, peak GPU memory) are not measured yet.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from hco_cli.config import validate_config
from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.prepare import prepare_synthetic
from hco_cli.inference.predict import PredictOptions, predict
from hco_cli.io_utils import write_json
from hco_cli.models.vnet import build_model
from hco_cli.runs.checkpoint import save_checkpoint
from hco_cli.runs.folder import copy_plan, write_config
from hco_cli.runs.layout import RunFolder

ARMS: dict[str, dict[str, Any]] = {
    "plain": {},
    "tta": {"tta": True},
    "stitch-cpu": {"stitch": "cpu"},
    "stitch-gpu": {"stitch": "gpu"},
}


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


def time_arms(run: Path, data: Path, arms: list[str], rounds: int, device: str,
              out: Path) -> dict[str, dict[str, Any]]:
    """Per arm: seconds of every case over all rounds and the largest peak GPU memory."""
    results: dict[str, dict[str, Any]] = {a: {"seconds": [], "peak_gpu_mib": None} for a in arms}
    predict(run, PredictOptions(device=device, data=data, out=out / "warmup"))  # type: ignore[arg-type]
    for r in range(rounds):
        for arm in arms:
            report = predict(run, PredictOptions(device=device, data=data,  # type: ignore[arg-type]
                                                 out=out / f"{arm}-{r}", **ARMS[arm]))
            results[arm]["seconds"] += [c.seconds for c in report.cases]
            peaks = [c.peak_gpu_mib for c in report.cases if c.peak_gpu_mib is not None]
            if peaks:
                results[arm]["peak_gpu_mib"] = max([*peaks, results[arm]["peak_gpu_mib"] or 0])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="prepared dataset (e.g. data/la)")
    parser.add_argument("--synthetic", action="store_true",
                        help="prepare a small synthetic dataset instead (a CPU check)")
    parser.add_argument("--run", type=Path, help="trained run (default: random V-Net)")
    parser.add_argument("--cases", type=int, default=5, help="test cases per arm and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--patch", default="112,112,80")
    parser.add_argument("--stride", default="18,18,4")
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if (args.data is None) == (not args.synthetic):
        parser.error("give --data or --synthetic")
    arms = [a for a in ARMS if a != "stitch-gpu" or args.device == "cuda"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = args.data
        if args.synthetic:
            prepare_synthetic(root / "syn", labeled=1, unlabeled=0, test=args.cases, classes=1,
                              shape=(48, 48, 32))
            data = root / "syn"
        subset = one_subset(Path(data), args.cases, root / "subset")
        run = args.run or random_run(
            root / "run", Path(data), patch=[int(v) for v in args.patch.split(",")],
            stride=[int(v) for v in args.stride.split(",")], filters=args.filters,
            amp=args.device == "cuda")
        results = time_arms(run, subset, arms, args.rounds, args.device, root / "preds")
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    base = statistics.median(results["plain"]["seconds"])
    rows = {}
    for arm, result in results.items():
        median = statistics.median(result["seconds"])
        rows[arm] = {"median_s_per_case": median, "ratio_to_plain": median / base,
                     "peak_gpu_mib": result["peak_gpu_mib"], "cases": len(result["seconds"])}
        peak = result["peak_gpu_mib"]
        print(f"{arm:>10}: {median:7.3f} s per case ({median / base:5.2f} x plain)"
              + (f", peak GPU {peak:7.0f} MiB" if peak is not None else ""))
    if args.json:
        write_json(args.json, {"device": name, "torch": torch.__version__,
                               "data": str(args.data or "synthetic"),
                               "run": str(args.run) if args.run else None,
                               "rounds": args.rounds, "arms": rows})


if __name__ == "__main__":
    main()
