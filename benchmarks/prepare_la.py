"""Time `hco prepare la` on all 100 Left Atrium cases (target: under 180 s on 2 cores).

    .venv/bin/python benchmarks/prepare_la.py [LA_ROOT] [--workers N ...]

Without LA_ROOT, every part of ``$HCO_SHARED/datasets/la`` is unpacked once into
``/tmp/hco-bench-la`` (outside the repository). Reported: seconds for 1 and 2 worker
processes, and their ratio against a baseline of plain h5 reading in the same process.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py

from hco_cli.data.prepare import SplitOptions, prepare_la
from hco_cli.data.sources.la import IMAGE_DIR
from hco_cli.settings import datasets_dir

DEFAULT_ROOT = Path(tempfile.gettempdir()) / "hco-bench-la"


def unpack_all(dest: Path) -> Path:
    """Unpack every LA part into ``dest`` unless it already holds the 100 cases."""
    if len(list((dest / IMAGE_DIR).glob("*/mri_norm2.h5"))) < 100:
        unpack = datasets_dir() / "la" / "unpack"
        subprocess.run([sys.executable, str(unpack), str(dest)], check=True)
    return dest


def read_only(root: Path) -> float:
    """Baseline: read every image and label array, nothing else."""
    start = time.perf_counter()
    for path in sorted((root / IMAGE_DIR).glob("*/mri_norm2.h5")):
        with h5py.File(path, "r") as handle:
            handle["image"][()], handle["label"][()]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", nargs="?", type=Path, default=None)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    root = args.root or unpack_all(DEFAULT_ROOT)
    baseline = read_only(root)
    print(f"h5 read only (baseline): {baseline:.2f} s")
    with tempfile.TemporaryDirectory(dir=tempfile.gettempdir()) as tmp:
        for workers in args.workers:
            start = time.perf_counter()
            summary = prepare_la(root, Path(tmp) / f"la{workers}", split=SplitOptions(),
                                 workers=workers)
            seconds = time.perf_counter() - start
            print(f"prepare la, {len(summary.cases)} cases, {workers} worker(s): "
                  f"{seconds:.2f} s ({seconds / baseline:.2f} x baseline; target < 180 s)")


if __name__ == "__main__":
    main()
