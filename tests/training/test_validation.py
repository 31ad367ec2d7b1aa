"""Validation Dice per class: analytic values, empty classes, ignored voxels; the split's
windows as one stream against case by case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from hco_cli.training.validation import Validator, dice_per_class


def test_dice_per_class_analytic_and_ignored_voxels() -> None:
    target = torch.zeros(4, 4, 4, dtype=torch.long)
    target[:2] = 1  # 32 voxels of class 1; class 2 absent
    prediction = torch.zeros_like(target)
    prediction[1:3] = 1  # 16 of them right, 16 wrong
    dice = dice_per_class(prediction, target, 3)
    assert dice[0].item() == 2 * 16 / (32 + 32) and math.isnan(dice[1].item())
    # Ignore label (index 3 = K): the 16 wrong voxels count in neither mask.
    ignored = target.clone()
    ignored[2] = 3
    assert dice_per_class(prediction, ignored, 3)[0].item() == 2 * 16 / (16 + 32)
    assert dice_per_class(ignored.clamp(max=1), ignored, 3)[0].item() == 1.0


class _Cases:
    """The three calls a Validator makes of a prepared dataset."""

    def __init__(self, images: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> None:
        self.images, self.labels = images, labels

    def has_label(self, case: str) -> bool:
        return case in self.labels

    def image(self, case: str) -> np.ndarray:
        return self.images[case]

    def label(self, case: str) -> np.ndarray:
        return self.labels[case]


class _Recorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(1, 2, 3, padding=1).double()
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return self.conv(x.double())


def test_streamed_validation_scores_as_case_by_case_with_fewer_padded_windows() -> None:
    rng = np.random.default_rng(2)
    shapes = {"a": (10, 9, 8), "b": (7, 9, 6), "c": (12, 8, 8)}
    images = {c: rng.normal(size=(1, *s)).astype(np.float32) for c, s in shapes.items()}
    labels = {c: (images[c][0] > 0.3).astype(np.int64) for c in shapes}
    results, batches = [], []
    for stream in (True, False):
        validator = Validator(_Cases(images, labels), list(shapes), patch_size=(6, 6, 6),
                              stride=(3, 3, 2), num_classes=2, device=torch.device("cpu"),
                              batch_size=5, full_batches=True, stream=stream)
        net = _Recorder()
        results.append(validator.evaluate(net))
        batches.append(net.batches)
    streamed, by_case = results
    # windows: a 3x2x2 = 12, b 2x2x1 = 4, c 3x2x2 = 12: 28 in all, in batches of 5
    assert batches[0] == [5] * 6  # one stream: 30 windows computed
    assert batches[1] == [5] * 3 + [5] + [5] * 3  # each case's last batch padded: 35
    assert streamed.per_case.keys() == by_case.per_case.keys() == set(shapes)
    for case in shapes:
        assert streamed.per_case[case] == pytest.approx(by_case.per_case[case], abs=1e-12)
    assert streamed.dice == pytest.approx(by_case.dice, abs=1e-12)
    assert 0.0 < streamed.dice < 1.0
