"""Patch sampler speed on real Left Atrium volumes, per CPU core.

    .venv/bin/python benchmarks/sampling.py [--cases 8] [--seconds 5]

Unpacks part la-train-00 of ../shared/datasets/la into a temporary folder, writes its first
cases as a prepared dataset (h5 read directly), and times 112x112x80 patches with BCP's
augmentation on one thread. The baseline, run in the same process, is BCP's own NumPy
pipeline (rot90 and flip of the whole volume, pad, crop). Target: >= 100 patches/s/core.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import torch

from hco_cli.data.dataset import PreparedDataset
from hco_cli.data.sampling import PatchSampler
from hco_cli.settings import datasets_dir

PATCH = (112, 112, 80)


def prepare_la(dest: Path, cases: int) -> Path:
    """Unpack one LA part and store its first ``cases`` volumes as a prepared dataset."""
    raw = dest / "raw"
    la = datasets_dir() / "la"
    subprocess.run([sys.executable, str(la / "unpack"), str(raw), "la-train-00"], check=True,
                   capture_output=True)
    ids = (raw / "train.list").read_text(encoding="utf-8").split()[:cases]
    root = dest / "prepared"
    (root / "cases").mkdir(parents=True)
    for case in ids:
        with h5py.File(raw / "2018LA_Seg_Training Set" / case / "mri_norm2.h5") as f:
            np.save(root / "cases" / f"{case}_image.npy", f["image"][()][None].astype(np.float32))
            np.save(root / "cases" / f"{case}_label.npy", f["label"][()].astype(np.uint8))
    info = {"name": "la", "classes": {"0": "background", "1": "left atrium"},
            "spacing": [0.625] * 3, "source": "benchmark", "hco_version": "0"}
    (root / "dataset.json").write_text(json.dumps(info), encoding="utf-8")
    splits = json.dumps({"labeled": ids, "unlabeled": ids})
    (root / "splits.json").write_text(splits, encoding="utf-8")
    return root


def bcp_numpy(images: list[np.ndarray], labels: list[np.ndarray], rng: np.random.Generator):
    """BCP's RandomRotFlip + RandomCrop on one random case (whole-volume NumPy ops)."""
    i = int(rng.integers(len(images)))
    image, label = images[i][0], labels[i]
    k, axis = int(rng.integers(4)), int(rng.integers(2))
    image = np.flip(np.rot90(image, k), axis=axis).copy()
    label = np.flip(np.rot90(label, k), axis=axis).copy()
    pads = [(p - d) // 2 + 3 if d <= p else 0 for d, p in zip(image.shape, PATCH, strict=True)]
    if any(pads):
        image = np.pad(image, [(p, p) for p in pads])
        label = np.pad(label, [(p, p) for p in pads])
    o = [int(rng.integers(0, d - p)) for d, p in zip(image.shape, PATCH, strict=True)]
    box = tuple(slice(s, s + p) for s, p in zip(o, PATCH, strict=True))
    return image[box], label[box]


def rate(draw: Callable[[], object], seconds: float) -> float:
    """Patches per second of ``draw`` (one patch per call) over about ``seconds``."""
    draw()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        draw()
        count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = prepare_la(Path(tmp), args.cases)
        ds = PreparedDataset(root)
        ids = ds.split("labeled")
        sampler = PatchSampler(ds, labeled=ids, unlabeled=ids, patch_size=PATCH,
                               labeled_batch_size=1, unlabeled_batch_size=0, augment="bcp", seed=0)
        images = [np.array(ds.image(c)) for c in ids]
        labels = [np.array(ds.label(c)) for c in ids]
        rng = np.random.default_rng(0)
        ours = rate(lambda: sampler.next_batch(with_unlabeled=False), args.seconds)
        base = rate(lambda: bcp_numpy(images, labels, rng), args.seconds)
    shape = tuple(images[0].shape[1:])
    print(f"LA volumes ({len(ids)} cases, first {shape}), patch {PATCH}, 1 thread")
    print(f"  hco PatchSampler (image+label): {ours:8.1f} patches/s/core")
    print(f"  BCP NumPy pipeline baseline:    {base:8.1f} patches/s/core")
    print(f"  ratio: {ours / base:.2f}x  (target >= 100 patches/s/core: "
          f"{'met' if ours >= 100 else 'NOT met'})")


if __name__ == "__main__":
    main()
