"""Dice + Jaccard + HD95 + ASD: hco's metrics against medpy 0.5.2 on real Left Atrium masks.

    .venv/bin/python benchmarks/metrics.py [--la DIR] [--cases 5] [--repeats 1]

Perturbs each reference label (erosion, dilation, a shift, a distant blob, a smooth random
boundary change), then times medpy's dc, jc, hd95 and asd and hco's ``binary_metrics`` on the
same pair, in voxels and with an anisotropic spacing, one thread, in the same process. Prints
seconds per pair, the ratio, and the largest relative difference (must be <= 1e-6).
Target: >= 10x faster than medpy. ``--la`` takes an unpacked LA folder (the one holding
'2018LA_Seg_Training Set'); without it, part la-test-00 is unpacked into a temporary folder.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # single core, set before numpy and scipy load their thread pools

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402
from medpy.metric import binary as medpy_binary  # noqa: E402
from scipy import ndimage  # noqa: E402

from hco_cli.evaluation.metrics import METRICS, binary_metrics  # noqa: E402
from hco_cli.settings import datasets_dir  # noqa: E402

SPACINGS: dict[str, tuple[float, float, float] | None] = {
    "voxel": None,
    "aniso": (0.625, 0.625, 2.5),
}


def perturbations(gt: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Prediction-like masks: uniform errors, a displacement, an outlier, an irregular border."""
    blob = gt.copy()
    blob[3:9, 3:9, 3:9] = True
    noise = ndimage.gaussian_filter(rng.standard_normal(gt.shape), 4.0)
    signed = ndimage.distance_transform_edt(~gt) - ndimage.distance_transform_edt(gt)
    return {
        "erode1": ndimage.binary_erosion(gt),
        "dilate2": ndimage.binary_dilation(gt, iterations=2),
        "shift3": np.roll(gt, (3, -2, 1), axis=(0, 1, 2)),
        "blob": blob,
        "noisy": signed + 40.0 * noise < 0,
    }


def medpy_metrics(pred: np.ndarray, gt: np.ndarray, spacing: tuple | None) -> dict[str, float]:
    return {
        "dice": medpy_binary.dc(pred, gt),
        "jaccard": medpy_binary.jc(pred, gt),
        "hd95": medpy_binary.hd95(pred, gt, voxelspacing=spacing),
        "asd": medpy_binary.asd(pred, gt, voxelspacing=spacing),
    }


def timed(fn, repeats: int):  # type: ignore[no-untyped-def]
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def label_files(la: Path | None, cases: int, scratch: Path) -> list[Path]:
    if la is None:
        la = scratch / "la"
        unpack = datasets_dir() / "la" / "unpack"
        subprocess.run([sys.executable, str(unpack), str(la), "la-test-00"], check=True,
                       capture_output=True)
    folder = la / "2018LA_Seg_Training Set" if (la / "2018LA_Seg_Training Set").is_dir() else la
    files = sorted(folder.glob("*/mri_norm2.h5"))[:cases]
    if not files:
        sys.exit(f"no */mri_norm2.h5 under {folder}")
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--la", type=Path, default=None, help="unpacked LA folder")
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1, help="best of N timings, both sides")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    totals = {name: [0.0, 0.0] for name in SPACINGS}
    worst = 0.0
    with tempfile.TemporaryDirectory() as scratch:
        files = label_files(args.la, args.cases, Path(scratch))
        print(f"{'case':<22}{'perturbation':<13}{'spacing':<8}{'medpy s':>9}{'hco s':>9}"
              f"{'ratio':>8}{'max rel diff':>14}")
        for path in files:
            with h5py.File(path, "r") as handle:
                gt = handle["label"][()].astype(bool)
            for name, pred in perturbations(gt, rng).items():
                for unit, spacing in SPACINGS.items():
                    t_ref, ref = timed(partial(medpy_metrics, pred, gt, spacing), args.repeats)
                    t_ours, ours = timed(partial(binary_metrics, pred, gt, spacing=spacing),
                                         args.repeats)
                    diff = max(abs(ours[m] - ref[m]) / max(abs(ref[m]), 1e-12) for m in METRICS)
                    worst = max(worst, diff)
                    totals[unit][0] += t_ref
                    totals[unit][1] += t_ours
                    print(f"{path.parent.name:<22}{name:<13}{unit:<8}{t_ref:9.3f}{t_ours:9.4f}"
                          f"{t_ref / t_ours:8.1f}{diff:14.1e}")
    for unit, (t_ref, t_ours) in totals.items():
        print(f"total {unit}: medpy {t_ref:.2f} s, hco {t_ours:.3f} s, {t_ref / t_ours:.1f}x")
    all_ref, all_ours = sum(t[0] for t in totals.values()), sum(t[1] for t in totals.values())
    print(f"overall: {all_ref / all_ours:.1f}x faster (target >= 10x); "
          f"largest relative difference {worst:.1e} (limit 1e-6)")
    if worst > 1e-6:
        sys.exit("values differ from medpy beyond 1e-6")


if __name__ == "__main__":
    main()
