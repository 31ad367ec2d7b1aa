"""One iteration's training data: the labeled patches and, for SSL, the unlabeled ones."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Batch:
    """One iteration's data, already on the training device."""

    labeled_image: Tensor  # (B_l, C, X, Y, Z) float
    labeled_label: Tensor  # (B_l, X, Y, Z) int64
    unlabeled_image: Tensor | None = None  # (B_u, C, X, Y, Z) float
