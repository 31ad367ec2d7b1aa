"""Sliding-window inference over a whole volume (BCP's ``test_single_case`` semantics).

The volume is zero-padded symmetrically where it is smaller than the patch; window starts are
``stride * i`` clamped to ``dim - patch``; softmax probabilities are summed and divided by the
number of windows covering each voxel, and the padding is cut off again. Windows are batched
so the GPU sees a few patches per forward pass instead of one.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Starts ``stride * i`` for i < ceil((size - patch) / stride) + 1, clamped to size - patch."""
    count = math.ceil((size - patch) / stride) + 1
    return [min(stride * i, size - patch) for i in range(count)]


def logits_of(output: object) -> Tensor:
    """The logits of a network output: a tensor, the first item of a tuple, or ``out``."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    if isinstance(output, dict) and isinstance(output.get("out"), Tensor):
        return output["out"]
    raise TypeError(f"cannot find logits in a network output of type {type(output).__name__}")


@torch.inference_mode()
def predict_volume(
    model: nn.Module,
    image: Tensor,
    *,
    patch_size: Sequence[int],
    stride: int | Sequence[int],
    num_classes: int,
    batch_size: int = 4,
    amp: bool = False,
) -> Tensor:
    """Softmax probabilities (K, X, Y, Z), float32, averaged over overlapping windows.

    ``image`` is (C, X, Y, Z) on the model's device. The model is run in eval mode and its
    previous mode is restored afterwards. ``amp`` runs the forward passes under bf16 autocast.
    """
    strides = [stride] * 3 if isinstance(stride, int) else list(stride)
    if len(patch_size) != 3 or len(strides) != 3 or min(strides) < 1:
        raise ValueError(f"need 3 patch sizes and 3 positive strides, got {patch_size}, {stride}")
    shape = image.shape[-3:]
    pads = [max(p - d, 0) for d, p in zip(shape, patch_size, strict=True)]
    # F.pad takes (z_lo, z_hi, y_lo, y_hi, x_lo, x_hi); BCP puts the odd voxel after the volume.
    pad_arg = [v for p in reversed(pads) for v in (p // 2, p - p // 2)]
    padded = F.pad(image, pad_arg) if any(pads) else image
    size = padded.shape[-3:]
    starts = itertools.product(
        *(window_starts(s, p, st) for s, p, st in zip(size, patch_size, strides, strict=True))
    )
    scores = torch.zeros((num_classes, *size), dtype=torch.float32, device=image.device)
    counts = torch.zeros(size, dtype=torch.float32, device=image.device)
    was_training = model.training
    model.eval()
    try:
        pending = list(starts)
        for first in range(0, len(pending), batch_size):
            boxes = [
                tuple(slice(s, s + p) for s, p in zip(start, patch_size, strict=True))
                for start in pending[first : first + batch_size]
            ]
            windows = torch.stack([padded[(slice(None), *box)] for box in boxes])
            with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=amp):
                logits = logits_of(model(windows))
            probs = torch.softmax(logits.float(), dim=1)
            for box, prob in zip(boxes, probs, strict=True):
                scores[(slice(None), *box)] += prob
                counts[box] += 1
    finally:
        model.train(was_training)
    scores /= counts
    crop = tuple(slice(p // 2, p // 2 + d) for p, d in zip(pads, shape, strict=True))
    return scores[(slice(None), *crop)]
