"""Validation during training: sliding-window Dice over a split, without post-processing.

As BCP's ``var_all_case_LA``: the argmax of the window-averaged softmax (for two classes the
same as foreground probability > 0.5), no largest-component filtering, mean foreground Dice
over classes then over cases. All per-case numbers stay on the device until the end, so one
validation costs one host synchronisation. The cases' windows run as one stream
(:func:`~hco_cli.inference.sliding_window.predict_volumes`; ``validation.stream_cases``):
under a static batch shape only the split's last batch is padded with zero windows, not every
case's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from hco_cli.data.dataset import PreparedDataset
from hco_cli.errors import DataError
from hco_cli.inference.sliding_window import predict_volumes


@dataclass(frozen=True)
class MidSlice:
    """The middle axial slice (last axis) of a case: image channel 0, label and prediction."""

    case: str
    image: np.ndarray  # float32 (X, Y)
    label: np.ndarray  # int64 (X, Y)
    prediction: np.ndarray  # int64 (X, Y)
    num_classes: int


@dataclass(frozen=True)
class ValidationResult:
    """Mean foreground Dice, and per case (mean over classes) and per class (mean over cases)."""

    dice: float
    per_case: dict[str, float]
    per_class: list[float]
    slices: list[MidSlice] = field(default_factory=list)


def dice_per_class(prediction: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Dice of classes 1..K-1 as a (K-1,) float tensor; NaN where both masks are empty.

    Voxels whose target is K or more (the ignore label) count in neither mask.
    """
    classes = torch.arange(1, num_classes, device=prediction.device).view(-1, 1)
    pred = (prediction.reshape(1, -1) == classes) & (target.reshape(1, -1) < num_classes)
    true = target.reshape(1, -1) == classes
    inter = (pred & true).sum(1).double()
    total = (pred.sum(1) + true.sum(1)).double()
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.nan)


class Validator:
    """Scores a network on the cases of one split; the volumes are loaded once, on ``device``."""

    def __init__(
        self,
        dataset: PreparedDataset,
        cases: Sequence[str],
        *,
        patch_size: Sequence[int],
        stride: Sequence[int],
        num_classes: int,
        device: torch.device,
        batch_size: int = 4,
        amp: bool = False,
        full_batches: bool = False,
        stream: bool = True,
    ) -> None:
        self.cases = list(cases)
        for case in self.cases:
            if not dataset.has_label(case):
                raise DataError(f"validation case {case} has no label array")
        self.images = [torch.from_numpy(np.array(dataset.image(c), dtype=np.float32)).to(device)
                       for c in self.cases]
        self.labels = [torch.from_numpy(np.array(dataset.label(c), dtype=np.int64)).to(device)
                       for c in self.cases]
        self.patch_size = tuple(patch_size)
        self.stride = tuple(stride)
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.amp = amp
        # a compiled network (static shapes) sees one batch shape: no recompile per remainder
        self.full_batches = full_batches
        # one stream of windows over the cases (False: case by case, each last batch its own)
        self.stream = stream

    def __len__(self) -> int:
        return len(self.cases)

    def _stream(self, model: nn.Module, images: list[Tensor]) -> Iterator[Tensor]:
        return predict_volumes(model, images, patch_size=self.patch_size, stride=self.stride,
                               num_classes=self.num_classes, batch_size=self.batch_size,
                               amp=self.amp, full_batches=self.full_batches)

    def evaluate(self, model: nn.Module, *, slices: int = 0) -> ValidationResult:
        """Score every case; ``slices`` > 0 also returns the mid-slices of the first cases."""
        scores, kept = [], []
        maps = (self._stream(model, self.images) if self.stream
                else (probs for image in self.images for probs in self._stream(model, [image])))
        for index, (image, label, probs) in enumerate(zip(self.images, self.labels, maps,
                                                          strict=True)):
            prediction = probs.argmax(0)
            scores.append(dice_per_class(prediction, label, self.num_classes))
            if index < slices:  # small device slices, copied with the scores below
                z = image.shape[-1] // 2
                kept.append((self.cases[index], image[0, :, :, z], label[:, :, z],
                             prediction[:, :, z]))
        table = torch.stack(scores).cpu().numpy()  # (cases, K-1): the one synchronisation
        mid = [MidSlice(case, i.float().cpu().numpy(), lab.cpu().numpy(), p.cpu().numpy(),
                        self.num_classes) for case, i, lab, p in kept]
        with np.errstate(all="ignore"):
            per_case = [_nanmean(row) for row in table]
            per_class = [_nanmean(col) for col in table.T]
        return ValidationResult(dice=_nanmean(np.array(per_case)),
                                per_case=dict(zip(self.cases, per_case, strict=True)),
                                per_class=per_class, slices=mid)


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan
