"""Validation Dice per class: analytic values, empty classes, ignored voxels."""

from __future__ import annotations

import math

import torch

from hco_cli.training.validation import dice_per_class


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
