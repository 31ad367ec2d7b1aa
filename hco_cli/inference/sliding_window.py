"""Sliding-window inference over a whole volume (BCP's ``test_single_case`` semantics).

The volume is zero-padded symmetrically where it is smaller than the patch; window starts are
``stride * i`` clamped to ``dim - patch``; softmax probabilities are summed and divided by the
number of windows covering each voxel, and the padding is cut off again. Windows are batched
so the GPU sees a few patches per forward pass instead of one.

Several networks (an ensemble of runs) and test-time mirroring share one pass over the
windows: each window's probability is the mean over every network and every mirrored copy of
the window (nnU-Net mirrors each patch, not the volume), so one probability map is kept. As
window averaging is linear, this equals the mean of the networks' (or mirrors') own maps.

Where the map lives is a choice apart from where the networks run: ``stitch_device`` holds the
padded image and the probability map, and only each batch of windows travels to ``device``.
With the CPU as ``stitch_device`` a small GPU predicts volumes whose probability map would not
fit into its memory.

:func:`predict_volumes` scores several volumes in one stream of windows: a batch that ends one
volume's windows is filled with the next volume's, so a network compiled for one batch shape
pads only the last batch of the whole stream, not every volume's last batch (about a tenth of
the windows of the 20 LA test cases at batch 16). Each volume's map is the same as
:func:`predict_volume`'s wherever a window's output does not depend on the other windows of
its batch (eval mode; the GPU check is ``benchmarks/validation_stream.py``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Models = nn.Module | Sequence[nn.Module]


def window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Starts ``stride * i`` for i < ceil((size - patch) / stride) + 1, clamped to size - patch."""
    count = math.ceil((size - patch) / stride) + 1
    return [min(stride * i, size - patch) for i in range(count)]


def mirror_sets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of the spatial ``axes`` (0, 1, 2), the empty one (no mirroring) first."""
    if any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"mirror axes must be distinct values of 0, 1, 2; got {tuple(axes)}")
    ordered = sorted(axes)
    return [c for r in range(len(ordered) + 1) for c in itertools.combinations(ordered, r)]


def logits_of(output: object) -> Tensor:
    """The logits of a network output: a tensor, the first item of a tuple, or ``out``."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    if isinstance(output, dict) and isinstance(output.get("out"), Tensor):
        return output["out"]
    raise TypeError(f"cannot find logits in a network output of type {type(output).__name__}")


def window_probabilities(models: Sequence[nn.Module], windows: Tensor, *,
                         mirrors: Sequence[tuple[int, ...]] = ((),),
                         amp: bool = False) -> Tensor:
    """Softmax probabilities (N, K, ...) of a batch of windows (N, C, ...), averaged over the
    networks and the mirrored copies (each flipped back before it is added)."""
    total: Tensor | None = None
    for model in models:
        for axes in mirrors:
            dims = [a + 2 for a in axes]
            batch = torch.flip(windows, dims) if dims else windows
            with torch.autocast(windows.device.type, dtype=torch.bfloat16, enabled=amp):
                logits = logits_of(model(batch))
            probs = torch.softmax(logits.float(), dim=1)
            probs = torch.flip(probs, dims) if dims else probs
            total = probs if total is None else total.add_(probs)
    if total is None:
        raise ValueError("no network to predict with")
    return total.div_(len(models) * len(mirrors))


def predict_volume(
    model: Models,
    image: Tensor,
    *,
    patch_size: Sequence[int],
    stride: int | Sequence[int],
    num_classes: int,
    batch_size: int = 4,
    amp: bool = False,
    mirror_axes: Sequence[int] = (),
    device: torch.device | None = None,
    stitch_device: torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
    full_batches: bool = False,
) -> Tensor:
    """Softmax probabilities (K, X, Y, Z), float32, averaged over overlapping windows.

    ``image`` is (C, X, Y, Z). ``model`` is one network or several (their probabilities are
    averaged); each is run in eval mode and its previous mode restored afterwards. ``amp`` runs
    the forward passes under bf16 autocast; ``mirror_axes`` adds the window mirrored along
    every subset of these spatial axes. The networks run on ``device`` and the map is built on
    ``stitch_device`` (both default to the image's device) and returned there. ``progress``
    is called as ``progress(windows done, windows in all)`` after each batch.
    ``full_batches`` pads a volume's last, shorter batch of windows with zero windows (their
    outputs are dropped), so that the networks only ever see ``batch_size`` windows: a network
    compiled for static shapes then compiles its forward once, not once per remainder of
    windows per case (in eval mode the windows of a batch do not interact).
    """
    (probs,) = predict_volumes(model, [image], patch_size=patch_size, stride=stride,
                               num_classes=num_classes, batch_size=batch_size, amp=amp,
                               mirror_axes=mirror_axes, device=device,
                               stitch_device=stitch_device, progress=progress,
                               full_batches=full_batches)
    return probs


@dataclass
class _Volume:
    """One volume's state while its windows stream through the networks: padded, and its map
    allocated, when its first window is due."""

    image: Tensor
    boxes: list[tuple[slice, ...]]
    left: int
    padded: Tensor | None = None
    pads: list[int] | None = None
    scores: Tensor | None = None
    counts: Tensor | None = None

    def start(self, patch_size: Sequence[int], num_classes: int, device: torch.device) -> None:
        self.padded, self.pads = _pad(self.image.to(device), patch_size)
        size = self.padded.shape[-3:]
        self.scores = torch.zeros((num_classes, *size), dtype=torch.float32, device=device)
        self.counts = torch.zeros(size, dtype=torch.float32, device=device)

    def result(self) -> Tensor:
        assert self.scores is not None and self.counts is not None and self.pads is not None
        self.scores /= self.counts
        crop = tuple(slice(p // 2, p // 2 + d)
                     for p, d in zip(self.pads, self.image.shape[-3:], strict=True))
        return self.scores[(slice(None), *crop)]


def predict_volumes(
    model: Models,
    images: Sequence[Tensor],
    *,
    patch_size: Sequence[int],
    stride: int | Sequence[int],
    num_classes: int,
    batch_size: int = 4,
    amp: bool = False,
    mirror_axes: Sequence[int] = (),
    device: torch.device | None = None,
    stitch_device: torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
    full_batches: bool = False,
) -> Iterator[Tensor]:
    """:func:`predict_volume` of each of ``images``, in order, as one stream of windows.

    Batches run across volumes (a volume's last windows share a batch with the next one's
    first), and each volume's map is yielded once its last window is stitched; only the
    volumes of the current batch have a padded copy and a map in memory. ``device`` and
    ``stitch_device`` default to the first image's device; ``progress`` counts the windows of
    all volumes; ``full_batches`` pads only the stream's last batch.
    """
    models = [model] if isinstance(model, nn.Module) else list(model)
    strides = [stride] * 3 if isinstance(stride, int) else list(stride)
    if len(patch_size) != 3 or len(strides) != 3 or min(strides) < 1:
        raise ValueError(f"need 3 patch sizes and 3 positive strides, got {patch_size}, {stride}")
    if not images:
        return iter(())
    volumes = []
    for image in images:
        boxes = window_boxes(image.shape[-3:], patch_size, strides)
        volumes.append(_Volume(image, boxes, left=len(boxes)))
    return _stream(models, volumes, patch_size=patch_size, batch_size=batch_size,
                   num_classes=num_classes, mirrors=mirror_sets(mirror_axes), amp=amp,
                   device=device or images[0].device,
                   stitch_device=stitch_device or images[0].device,
                   progress=progress, full_batches=full_batches)


@torch.inference_mode()
def _stream(models: list[nn.Module], volumes: list[_Volume], *, patch_size: Sequence[int],
            batch_size: int, num_classes: int, mirrors: list[tuple[int, ...]], amp: bool,
            device: torch.device, stitch_device: torch.device,
            progress: Callable[[int, int], None] | None, full_batches: bool) -> Iterator[Tensor]:
    jobs = [(volume, box) for volume in volumes for box in volume.boxes]
    pending = list(volumes)  # not yet yielded, in order
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        for first in range(0, len(jobs), batch_size):
            batch = jobs[first : first + batch_size]
            crops = []
            for volume, box in batch:
                if volume.padded is None:
                    volume.start(patch_size, num_classes, stitch_device)
                assert volume.padded is not None
                crops.append(volume.padded[(slice(None), *box)])
            windows = torch.stack(crops).to(device)
            if full_batches and len(batch) < batch_size:
                filler = windows.new_zeros((batch_size - len(batch), *windows.shape[1:]))
                windows = torch.cat([windows, filler])
            probs = window_probabilities(models, windows, mirrors=mirrors, amp=amp)
            probs = probs[: len(batch)].to(stitch_device)
            for (volume, box), prob in zip(batch, probs, strict=True):
                assert volume.scores is not None and volume.counts is not None
                volume.scores[(slice(None), *box)] += prob
                volume.counts[box] += 1
                volume.left -= 1
            if progress is not None:
                progress(min(first + batch_size, len(jobs)), len(jobs))
            while pending and pending[0].left == 0:
                volume = pending.pop(0)
                result = volume.result()
                volume.padded = volume.scores = volume.counts = None  # only the result stays
                yield result
    finally:
        for m, mode in zip(models, was_training, strict=True):
            m.train(mode)


def window_boxes(shape: Sequence[int], patch_size: Sequence[int],
                 strides: Sequence[int]) -> list[tuple[slice, ...]]:
    """The windows of a volume of spatial ``shape``, as slices into it once :func:`_pad` has
    padded it to at least the patch, in raster order."""
    size = [d + pad for d, pad in zip(shape, _pads(shape, patch_size), strict=True)]
    starts = itertools.product(*(window_starts(s, p, st)
                                 for s, p, st in zip(size, patch_size, strides, strict=True)))
    return [tuple(slice(s, s + p) for s, p in zip(start, patch_size, strict=True))
            for start in starts]


def _pads(shape: Sequence[int], patch_size: Sequence[int]) -> list[int]:
    """Zero padding per axis that brings ``shape`` to at least the patch."""
    return [max(p - d, 0) for d, p in zip(shape, patch_size, strict=True)]


def _pad(image: Tensor, patch_size: Sequence[int]) -> tuple[Tensor, list[int]]:
    """``image`` zero-padded to at least the patch, and the padding per axis."""
    pads = _pads(image.shape[-3:], patch_size)
    # F.pad takes (z_lo, z_hi, y_lo, y_hi, x_lo, x_hi); BCP puts the odd voxel after the volume.
    pad_arg = [v for p in reversed(pads) for v in (p // 2, p - p // 2)]
    return (F.pad(image, pad_arg) if any(pads) else image), pads
