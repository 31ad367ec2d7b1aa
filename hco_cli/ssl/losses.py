"""Segmentation losses of the reference code: BCP's masked soft Dice and region cross-entropy.

The arithmetic follows BCP's ``mask_DiceLoss`` and ``mix_loss`` operation by operation (same
reductions in the same order), so that our losses reproduce theirs in float64. Logits in half
precision (autocast) are promoted to float32 first.

Target values at or above the number of classes C (the logits' channel count) are *ignored*
voxels (a dataset's ignore label, stored as index C): they take no part in any term, as if
outside the region mask, so the losses do not change when their predictions change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

DICE_SMOOTH = 1e-5
REGION_EPS = 1e-16


def _full_precision(logits: Tensor) -> Tensor:
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def soft_dice_loss(logits: Tensor, target: Tensor, *, mask: Tensor | None = None,
                   smooth: float = DICE_SMOOTH) -> Tensor:
    """1 - mean over samples and classes (background included) of the soft Dice.

    Per sample n and class c: dice = (2 sum(p t m) + s) / (sum((p + t) m) + s), with p the softmax,
    t the one-hot target and m the optional region mask (B, X, Y, Z). The denominator is p + t,
    not squared (BCP ``mask_DiceLoss``; UCMT's ``DSCLoss`` with weight 1 computes the same).
    """
    logits = _full_precision(logits)
    n, c = logits.shape[0], logits.shape[1]
    prob = torch.softmax(logits.reshape(n, c, -1), dim=1)
    flat = target.reshape(n, 1, -1).long()
    valid = flat < c
    onehot = torch.zeros_like(prob).scatter_(1, torch.where(valid, flat, 0), 1.0)
    weight = valid.to(prob.dtype)
    if mask is not None:
        weight = weight * mask.reshape(n, 1, -1).to(prob.dtype)
    inter = prob * onehot * weight
    union = (prob + onehot) * weight
    dice = (2 * inter.sum(2) + smooth) / (union.sum(2) + smooth)
    return 1 - dice.mean()


def region_cross_entropy(logits: Tensor, target: Tensor, region: Tensor, *,
                         weight: float = 1.0) -> Tensor:
    """Weighted voxel-mean cross-entropy over a region, over the batch.

    (w sum(CE R)) / (sum(R) + 1e-16), associated as in BCP's ``mix_loss``; R excludes ignored
    voxels.
    """
    classes = logits.shape[1]
    ce = F.cross_entropy(_full_precision(logits), target.long(), reduction="none",
                         ignore_index=classes)
    region = region.to(ce.dtype) * (target < classes).to(ce.dtype)
    return weight * (ce * region).sum() / (region.sum() + REGION_EPS)


def ce_dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    """BCP's pre-training loss (and SSL4MIS's supervised loss): (mean CE + soft Dice) / 2.

    The CE mean runs over the voxels that are not ignored; a patch with none left adds 0.
    """
    dice = soft_dice_loss(logits, target)
    ce = F.cross_entropy(_full_precision(logits), target.long(), ignore_index=logits.shape[1])
    return (torch.nan_to_num(ce, nan=0.0) + dice) / 2


def mix_loss(logits: Tensor, image_label: Tensor, patch_label: Tensor, image_region: Tensor,
             *, image_weight: float, patch_weight: float) -> Tensor:
    """BCP ``mix_loss`` of one copy-paste output, summed in BCP's order.

    ``image_region`` (B, X, Y, Z) is 1 where the outer ("image") volume was kept and 0 in the
    pasted cube ("patch"): loss = (w_i Dice_M + w_p Dice_{1-M} + w_i CE_M + w_p CE_{1-M}) / 2.
    """
    patch_region = 1 - image_region
    dice = soft_dice_loss(logits, image_label, mask=image_region) * image_weight
    dice = dice + soft_dice_loss(logits, patch_label, mask=patch_region) * patch_weight
    ce = region_cross_entropy(logits, image_label, image_region, weight=image_weight)
    ce = ce + region_cross_entropy(logits, patch_label, patch_region, weight=patch_weight)
    return (dice + ce) / 2


def mix_loss_parts(logits: Tensor, image_label: Tensor, patch_label: Tensor,
                   image_region: Tensor, *, image_weight: float,
                   patch_weight: float) -> tuple[Tensor, Tensor]:
    """:func:`mix_loss` split by region: (image-region terms, patch-region terms).

    Each part is w (Dice_R + CE_R) / 2; their sum equals :func:`mix_loss` up to rounding (the
    additions are associated differently). BCP's HCO split puts ground-truth regions in L and
    pseudo-label regions in U (PROTOCOLS 4).
    """
    patch_region = 1 - image_region
    image_part = (soft_dice_loss(logits, image_label, mask=image_region) * image_weight
                  + region_cross_entropy(logits, image_label, image_region,
                                         weight=image_weight)) / 2
    patch_part = (soft_dice_loss(logits, patch_label, mask=patch_region) * patch_weight
                  + region_cross_entropy(logits, patch_label, patch_region,
                                         weight=patch_weight)) / 2
    return image_part, patch_part


def softmax_mse(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Mean-teacher consistency: mean squared difference of the two softmaxes (SSL4MIS)."""
    student = torch.softmax(_full_precision(student_logits), dim=1)
    teacher = torch.softmax(_full_precision(teacher_logits), dim=1)
    return torch.mean((student - teacher) ** 2)


def supervised_loss(logits: Tensor, target: Tensor, *, kind: str) -> Tensor:
    """``ce_dice`` (BCP / SSL4MIS: (CE + Dice) / 2) or ``dice`` (UCMT: soft Dice only)."""
    if kind == "ce_dice":
        return ce_dice_loss(logits, target)
    if kind == "dice":
        return soft_dice_loss(logits, target)
    raise ValueError(f"unknown supervised loss {kind!r} (choose ce_dice or dice)")
