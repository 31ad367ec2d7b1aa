"""``hco evaluate`` as a whole process against medpy's per-case loop, on the 20 LA test masks.

    .venv/bin/python benchmarks/evaluate_process.py [--la DIR] [--repeats 3] [--baseline DIR]

Predictions are the test labels eroded by one voxel (written as CASE.nii.gz); the references
are the LA h5 files. Both sides run as fresh processes pinned to one core (``taskset -c 0``
where available, one BLAS/OpenMP thread): ``python -m hco_cli evaluate PRED LA --jobs 1``,
start-up included, and a script that imports medpy and runs ``dc, jc, hd95, asd`` case by case
(voxel units, as the papers report) on the same files. Prints both medians and the ratio; the
target is >= 20x. ``--baseline`` also times ``hco evaluate`` of another checkout. ``--la``
takes an unpacked LA folder; without it, parts la-test-00 and la-test-01 are unpacked into a
temporary folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from scipy import ndimage

from hco_cli.data.dataset import Geometry
from hco_cli.data.io import write_volume
from hco_cli.settings import datasets_dir

ROOT = Path(__file__).resolve().parents[1]
MEDPY_LOOP = """
import sys
from pathlib import Path
import h5py, nibabel as nib, numpy as np
from medpy.metric import binary
pred_dir, la = Path(sys.argv[1]), Path(sys.argv[2])
rows = []
for pred in sorted(pred_dir.glob("*.nii.gz")):
    case = pred.name[:-len(".nii.gz")]
    with h5py.File(la / case / "mri_norm2.h5", "r") as handle:
        gt = handle["label"][()] > 0
    p = np.asarray(nib.load(pred).dataobj) > 0
    rows.append((binary.dc(p, gt), binary.jc(p, gt), binary.hd95(p, gt), binary.asd(p, gt)))
print(len(rows), np.mean(rows, axis=0))
"""


def test_cases(la: Path | None, scratch: Path) -> Path:
    """The folder holding the 20 test cases' <CASE>/mri_norm2.h5."""
    if la is None:
        la = scratch / "la"
        subprocess.run([sys.executable, str(datasets_dir() / "la" / "unpack"), str(la),
                        "la-test-00", "la-test-01"], check=True, capture_output=True)
    folder = la / "2018LA_Seg_Training Set" if (la / "2018LA_Seg_Training Set").is_dir() else la
    ids = (datasets_dir() / "la" / "test.list").read_text().split()
    test = scratch / "test"
    test.mkdir()
    for case in ids:
        (test / case).symlink_to(folder / case)
    return test


def write_predictions(labels: Path, out: Path) -> int:
    out.mkdir()
    count = 0
    for case in sorted(p.name for p in labels.iterdir()):
        with h5py.File(labels / case / "mri_norm2.h5", "r") as handle:
            gt = handle["label"][()] > 0
        pred = ndimage.binary_erosion(gt).astype(np.uint8)
        shape = (int(gt.shape[0]), int(gt.shape[1]), int(gt.shape[2]))
        write_volume(out / f"{case}.nii.gz", pred, Geometry(shape=shape, spacing=(1.0,) * 3))
        count += 1
    return count


def wall(args: list[str], root: Path = ROOT) -> float:
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run([*pin, sys.executable, *args], check=True, env=env, cwd=root,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--la", type=Path, default=None, help="unpacked LA folder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        labels = test_cases(args.la, Path(scratch))
        preds = Path(scratch) / "pred"
        cases = write_predictions(labels, preds)
        hco = ["-m", "hco_cli", "evaluate", str(preds), str(labels), "--jobs", "1"]
        medpy = ["-c", MEDPY_LOOP, str(preds), str(labels)]
        t_hco, t_medpy, t_base = [], [], []
        for _ in range(args.repeats):
            t_hco.append(wall(hco))
            t_medpy.append(wall(medpy))
            if args.baseline is not None:
                t_base.append(wall(hco, args.baseline.resolve()))
    h, m = statistics.median(t_hco), statistics.median(t_medpy)
    print(f"{cases} LA test cases, eroded labels as predictions, one core, "
          f"median of {args.repeats} processes each")
    rows = [("hco evaluate", t_hco), ("medpy loop", t_medpy)]
    rows += [("hco evaluate, baseline", t_base)] if t_base else []
    for name, runs in rows:
        median = statistics.median(runs)
        print(f"{name + ' (whole process):':<40}{median:7.2f} s  {m / median:5.1f}x medpy  "
              f"(runs: {', '.join(f'{t:.2f}' for t in runs)})")
    print(f"hco evaluate is {m / h:.1f}x faster than medpy (target >= 20x)")


if __name__ == "__main__":
    main()
