"""Where the sliding window's probability map is stitched, and how much GPU memory a case took.

The map of a volume holds K floats per voxel (plus the window counts, the padded image and the
label map made from it): 5.7 GB for a 14-class 512 x 512 x 300 CT, more than an 8 GB card
keeps free beside the network. ``--stitch auto`` stitches on the GPU when that estimate fits
into half the memory the GPU has free (the other half is left to the network's activations)
and on the CPU otherwise; should the GPU still run out of memory, the case is predicted again
with CPU stitching (nnU-Net's fallback). ``cpu`` and ``gpu`` force the choice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

Stitch = Literal["auto", "cpu", "gpu"]
# Share of the free GPU memory the map may take under ``auto``.
GPU_SHARE = 0.5
_CPU = torch.device("cpu")


def map_bytes(shape: Sequence[int], *, patch: Sequence[int], channels: int,
              num_classes: int) -> int:
    """Bytes the stitching device holds for one case: the padded image and probability map
    (float32), the window counts (float32) and the label map made from it (int64)."""
    padded = math.prod(max(s, p) for s, p in zip(shape, patch, strict=True))
    return padded * 4 * (channels + num_classes + 1) + math.prod(shape) * 8


def gpu_free_bytes(device: torch.device) -> int:
    """Memory this process could still take on ``device``: free plus cached but unused."""
    free, _total = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def stitch_device(stitch: Stitch, device: torch.device, *, needed: int,
                  free: int | None = None) -> torch.device:
    """The device the map of a case that ``needed`` bytes is stitched on (``free``: the GPU's
    free bytes, measured when not given)."""
    if device.type != "cuda" or stitch == "cpu":
        return _CPU
    if stitch == "gpu":
        return device
    available = gpu_free_bytes(device) if free is None else free
    return device if needed <= GPU_SHARE * available else _CPU


def reset_peak(device: torch.device) -> None:
    """Start measuring the peak GPU memory of one case (nothing on the CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    """Peak GPU memory allocated since :func:`reset_peak`, in MiB (None on the CPU)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20
