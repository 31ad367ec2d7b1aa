"""The pseudo-labels' largest-component step: component sizes over the foreground only, against
the histogram over every voxel that hco used before 2026-12-01, in one process.

    python benchmarks/components.py [--device cpu|cuda] [--rounds N] [--json out.json]

A BCP self-training batch: 4 volumes of 112x112x80 with a blobby foreground of about 10 %
(smoothed noise, thresholded; several components per volume), labelled once as a batch (CuPy
on CUDA, as ``hco_cli.ops.components`` does; scipy on the CPU). Both arms take the same labels
and return the same masks (checked); the rows time what follows the labelling: per volume a
histogram, its argmax and the selection. ``before`` counts all labels 0..count, so the
background's voxels all add into one bin; ``foreground`` (``largest_of_labels``) leaves them out
of the histogram's range. Rounds are interleaved; the ratio is before / foreground.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from hco_cli.io_utils import write_json
from hco_cli.ops.components import _batch_structure, largest_of_labels


def before(labels: Tensor, count: int) -> Tensor:
    """The step as it was: a histogram of every voxel (bins 0..count), background zeroed."""
    out = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    for i in range(labels.shape[0]):
        sizes = torch.histc(labels[i].float(), bins=count + 1, min=-0.5, max=count + 0.5)
        sizes[0] = 0
        best = sizes.argmax()
        out[i] = (labels[i] == best) & (sizes[best] > 0)
    return out


def batch_labels(device: torch.device, seed: int) -> tuple[Tensor, int]:
    rng = np.random.default_rng(seed)
    mask = ndimage.gaussian_filter(rng.random((4, 112, 112, 80)), (0, 3, 3, 3)) > 0.512
    structure = _batch_structure(26)
    if device.type == "cuda":
        import cupy
        import cupyx.scipy.ndimage as cnd

        labels, count = cnd.label(cupy.asarray(mask.astype(np.uint8)), cupy.asarray(structure))
        return torch.from_dlpack(labels), int(count)
    labels, count = ndimage.label(mask, structure=structure)
    return torch.from_numpy(labels.astype(np.int32)), int(count)


def timed(fn: Callable[[Tensor, int], Tensor], labels: Tensor, count: int, repeat: int,
          device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn(labels, count)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeat * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=20, help="calls per timed round")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    labels, count = batch_labels(device, seed=0)
    foreground = float((labels > 0).float().mean())
    assert torch.equal(before(labels, count), largest_of_labels(labels, count))
    arms = {"before": before, "foreground": largest_of_labels}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for fn in arms.values():  # warm-up
        timed(fn, labels, count, 2, device)
    for _ in range(args.rounds):
        for name, fn in arms.items():
            times[name].append(timed(fn, labels, count, args.repeat, device))
    median = {name: statistics.median(t) for name, t in times.items()}
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{card}, torch {torch.__version__}: 4 x 112x112x80, {count} components, "
          f"foreground {100 * foreground:.1f} %")
    for name in arms:
        print(f"  {name:10s} {median[name]:8.3f} ms per batch")
    print(f"  ratio before / foreground: {median['before'] / median['foreground']:.2f}x")
    if args.json:
        write_json(args.json, {"device": card, "torch": torch.__version__, "components": count,
                               "foreground": foreground, "ms": times, "median_ms": median,
                               "ratio": median["before"] / median["foreground"]})


if __name__ == "__main__":
    main()
