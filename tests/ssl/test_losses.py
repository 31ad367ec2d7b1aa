"""Losses against float64 references written from PROTOCOLS 1.5 (BCP mask_DiceLoss, mix_loss)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hco_cli.ssl.losses import (
    ce_dice_loss,
    mix_loss,
    mix_loss_parts,
    region_cross_entropy,
    soft_dice_loss,
    softmax_mse,
    supervised_loss,
)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def dice_reference(logits: np.ndarray, target: np.ndarray, mask: np.ndarray | None) -> float:
    """1 - mean_{n,c} (2 sum p t m + 1e-5) / (sum (p + t) m + 1e-5), loops in float64."""
    prob = _softmax(logits)
    n, c = logits.shape[:2]
    m = np.ones(target.shape) if mask is None else mask
    values = []
    for i in range(n):
        for k in range(c):
            t = (target[i] == k).astype(np.float64)
            inter = np.sum(prob[i, k] * t * m[i])
            union = np.sum((prob[i, k] + t) * m[i])
            values.append((2 * inter + 1e-5) / (union + 1e-5))
    return 1 - float(np.mean(values))


def ce_map(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    logp = np.log(_softmax(logits))
    return -np.take_along_axis(logp, target[:, None], axis=1)[:, 0]


@pytest.fixture
def case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 6, 5, 4, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, 3, (2, 6, 5, 4), generator=g)
    region = (torch.rand(2, 6, 5, 4, generator=g) > 0.4).double()
    return logits, target, region


def test_soft_dice_matches_reference(case: tuple[torch.Tensor, ...]) -> None:
    logits, target, region = case
    ref = dice_reference(logits.numpy(), target.numpy(), None)
    assert soft_dice_loss(logits, target).item() == pytest.approx(ref, rel=1e-12)
    ref_masked = dice_reference(logits.numpy(), target.numpy(), region.numpy())
    got = soft_dice_loss(logits, target, mask=region).item()
    assert got == pytest.approx(ref_masked, rel=1e-12)


def test_soft_dice_analytic_values() -> None:
    target = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    target[0, :2] = 1
    perfect = torch.stack([(target == 0), (target == 1)], dim=1).double() * 200 - 100
    assert soft_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-12)
    # Uniform prediction: class k has 32 voxels, p = 1/2 everywhere: dice = 32 / (32 + 32).
    uniform = torch.zeros(1, 2, 4, 4, 4, dtype=torch.float64)
    expected = 1 - (2 * 16 + 1e-5) / (64 + 1e-5)
    assert soft_dice_loss(uniform, target).item() == pytest.approx(expected, rel=1e-12)


def test_dice_includes_background_with_p_plus_t_denominator() -> None:
    target = torch.ones(1, 2, 2, 2, dtype=torch.long)  # no background voxel at all
    logits = torch.zeros(1, 2, 2, 2, 2, dtype=torch.float64)
    # Background: inter 0, union 4 -> dice 1e-5/(4+1e-5); foreground: (2*4+s)/(4+8+s).
    bg = 1e-5 / (4 + 1e-5)
    fg = (8 + 1e-5) / (12 + 1e-5)
    assert soft_dice_loss(logits, target).item() == pytest.approx(1 - (bg + fg) / 2, rel=1e-12)


def test_region_cross_entropy_is_normalised_by_region_size(case: tuple[torch.Tensor, ...]) -> None:
    logits, target, region = case
    ce = ce_map(logits.numpy(), target.numpy())
    r = region.numpy()
    ref = 0.5 * np.sum(ce * r) / np.sum(r)
    got = region_cross_entropy(logits, target, region, weight=0.5).item()
    assert got == pytest.approx(ref, rel=1e-12)
    empty = region_cross_entropy(logits, target, torch.zeros_like(region)).item()
    assert empty == 0.0


def test_mix_loss_formula_and_split(case: tuple[torch.Tensor, ...]) -> None:
    logits, target, region = case
    g = torch.Generator().manual_seed(1)
    patch_target = torch.randint(0, 3, target.shape, generator=g)
    lg, t, pt, r = logits.numpy(), target.numpy(), patch_target.numpy(), region.numpy()
    ce_img, ce_patch = ce_map(lg, t), ce_map(lg, pt)
    ref = 0.5 * (1.0 * dice_reference(lg, t, r) + 0.5 * dice_reference(lg, pt, 1 - r)
                 + 1.0 * np.sum(ce_img * r) / np.sum(r)
                 + 0.5 * np.sum(ce_patch * (1 - r)) / np.sum(1 - r))
    got = mix_loss(logits, target, patch_target, region, image_weight=1.0, patch_weight=0.5)
    assert got.item() == pytest.approx(ref, rel=1e-12)
    image_part, patch_part = mix_loss_parts(logits, target, patch_target, region,
                                            image_weight=1.0, patch_weight=0.5)
    assert (image_part + patch_part).item() == pytest.approx(ref, rel=1e-12)
    ref_image = 0.5 * (dice_reference(lg, t, r) + np.sum(ce_img * r) / np.sum(r))
    assert image_part.item() == pytest.approx(ref_image, rel=1e-12)


def test_ce_dice_and_supervised_kinds(case: tuple[torch.Tensor, ...]) -> None:
    logits, target, _ = case
    ce = float(np.mean(ce_map(logits.numpy(), target.numpy())))
    dice = dice_reference(logits.numpy(), target.numpy(), None)
    assert ce_dice_loss(logits, target).item() == pytest.approx((ce + dice) / 2, rel=1e-12)
    assert supervised_loss(logits, target, kind="dice").item() == pytest.approx(dice, rel=1e-12)
    with pytest.raises(ValueError, match="unknown supervised loss"):
        supervised_loss(logits, target, kind="focal")


def test_softmax_mse(case: tuple[torch.Tensor, ...]) -> None:
    logits, _, _ = case
    other = logits.flip(0)
    ref = np.mean((_softmax(logits.numpy()) - _softmax(other.numpy())) ** 2)
    assert softmax_mse(logits, other).item() == pytest.approx(ref, rel=1e-12)


def test_half_precision_logits_are_promoted(case: tuple[torch.Tensor, ...]) -> None:
    logits, target, region = case
    out = soft_dice_loss(logits.bfloat16(), target, mask=region)
    assert out.dtype == torch.float32
    full = soft_dice_loss(logits, target, mask=region).item()
    assert math.isclose(out.item(), full, rel_tol=2e-2)


def _with_ignored(case: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor,
                                                            torch.Tensor, torch.Tensor]:
    """The case with a quarter of the voxels ignored (target = C = 3), and changed logits there."""
    logits, target, region = case
    g = torch.Generator().manual_seed(7)
    ignored = torch.rand(target.shape, generator=g) < 0.25
    target = torch.where(ignored, 3, target)
    noise = torch.randn(logits.shape, generator=g, dtype=logits.dtype) * 5
    changed = torch.where(ignored.unsqueeze(1), logits + noise, logits)
    return logits, changed, target, region


def test_ignored_voxels_leave_every_loss_unchanged(case: tuple[torch.Tensor, ...]) -> None:
    logits, changed, target, region = _with_ignored(case)
    pseudo = torch.randint(0, 3, target.shape, generator=torch.Generator().manual_seed(2))
    losses = {
        "dice": lambda x: soft_dice_loss(x, target),
        "masked dice": lambda x: soft_dice_loss(x, target, mask=region),
        "region ce": lambda x: region_cross_entropy(x, target, region),
        "ce + dice": lambda x: ce_dice_loss(x, target),
    }
    for name, loss in losses.items():
        assert loss(changed).item() == loss(logits).item(), name
    # Mixed images: the ground truth counts in its own region only; elsewhere the pseudo-label
    # (never ignored) does, so only the ignored voxels of the ground truth's region may change.
    for name, weights, gt_region in (("mix", (1.0, 0.5), region),
                                     ("mix (pasted gt)", (0.5, 1.0), 1 - region)):
        inside = (gt_region > 0).unsqueeze(1)
        moved = torch.where(inside, changed, logits)
        labels = (target, pseudo) if gt_region is region else (pseudo, target)
        def mixed(x: torch.Tensor, labels: tuple[torch.Tensor, ...] = labels,
                  weights: tuple[float, float] = weights) -> float:
            return mix_loss(x, *labels, region, image_weight=weights[0],
                            patch_weight=weights[1]).item()
        assert mixed(moved) == mixed(logits), name
        assert mixed(changed) != mixed(logits), name
    # And each equals the loss with the ignored voxels outside the region mask.
    valid = (target < 3).double()
    clean = torch.where(target < 3, target, 0)
    ref = dice_reference(logits.numpy(), clean.numpy(), valid.numpy())
    assert soft_dice_loss(logits, target).item() == pytest.approx(ref, rel=1e-12)
    ce = ce_map(logits.numpy(), clean.numpy())
    r = (region * valid).numpy()
    assert region_cross_entropy(logits, target, region).item() == pytest.approx(
        np.sum(ce * r) / np.sum(r), rel=1e-12)
    mean_ce = float(np.sum(ce * valid.numpy()) / valid.sum().item())
    assert ce_dice_loss(logits, target).item() == pytest.approx((mean_ce + ref) / 2, rel=1e-12)


def test_a_patch_with_every_voxel_ignored_adds_nothing() -> None:
    logits = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    target = torch.full((1, 4, 4, 4), 2)
    loss = ce_dice_loss(logits, target)
    loss.backward()
    assert loss.item() == 0.0
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros_like(logits))
