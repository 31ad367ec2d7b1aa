"""Synthetic volumes, tiny networks and a gradient-recording optimizer for the framework tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn

from hco_cli.data.batch import Batch
from hco_cli.models import ModelConfig
from hco_cli.models.vnet import build_model

SHAPE = (32, 32, 16)  # divisible by 16 (V-Net) and by 8 (UMIX blocks)


def ellipsoids(n: int, generator: torch.Generator, *, shape: tuple[int, int, int] = SHAPE,
               dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """n noisy images of one bright ellipsoid each (class 1) and their labels."""
    axes = [torch.linspace(-1, 1, s, dtype=torch.float64) for s in shape]
    grid = torch.meshgrid(*axes, indexing="ij")
    images, labels = [], []
    for _ in range(n):
        centre = (torch.rand(3, generator=generator, dtype=torch.float64) - 0.5) * 0.6
        radius = 0.35 + 0.2 * torch.rand(3, generator=generator, dtype=torch.float64)
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius, strict=True)) <= 1
        noise = 0.3 * torch.randn(shape, generator=generator, dtype=torch.float64)
        images.append((inside.double() + noise).unsqueeze(0))
        labels.append(inside.long())
    return torch.stack(images).to(dtype), torch.stack(labels)


def synthetic_batch(seed: int, *, labeled: int = 4, unlabeled: int = 4,
                    dtype: torch.dtype = torch.float32,
                    shape: tuple[int, int, int] = SHAPE) -> Batch:
    g = torch.Generator().manual_seed(seed)
    images, labels = ellipsoids(labeled, g, dtype=dtype, shape=shape)
    unlabeled_images = (ellipsoids(unlabeled, g, dtype=dtype, shape=shape)[0] if unlabeled
                        else None)
    return Batch(labeled_image=images, labeled_label=labels, unlabeled_image=unlabeled_images)


def tiny_factory(*, dropout: bool = False, dtype: torch.dtype = torch.float32,
                 seed: int = 0) -> Callable[[], nn.Module]:
    """A factory of n_filters=4 V-Nets; successive calls give different initialisations."""
    torch.manual_seed(seed)
    cfg = ModelConfig(n_filters=4, dropout=dropout)
    return lambda: build_model(cfg, in_channels=1, num_classes=2).to(dtype)


class Recorder(torch.optim.Optimizer):
    """Records g_L and g_U of each step and leaves the parameters unchanged (a test double of
    the :class:`~hco_cli.optim.protocol.TwoSource` contract)."""

    def __init__(self, params: Sequence[Tensor] | object, *, hierarchical: bool = True) -> None:
        super().__init__(params, {})  # type: ignore[arg-type]
        self.hierarchical = hierarchical
        self.diagnose = False
        self.last_alignment_tensor: Tensor | None = None
        self.calls: list[tuple[list[Tensor | None], list[Tensor | None]]] = []

    def collecting(self, source: int) -> AbstractContextManager[None]:
        return nullcontext()

    def take_diagnostics(self) -> dict[str, Tensor] | None:
        return None

    def step_two_source(self, grads_l: Sequence[Tensor | None],
                        grads_u: Sequence[Tensor | None]) -> None:
        self.calls.append((list(grads_l), list(grads_u)))


def reference_dice(logits: Tensor, target: Tensor) -> Tensor:
    """UCMT ``DSCLoss`` Dice (weight 1): per sample and class (p.sum + t.sum), batch mean, class
    mean; written independently of :func:`hco_cli.ssl.losses.soft_dice_loss`."""
    n, c = logits.shape[:2]
    p = torch.softmax(logits, dim=1).reshape(n, c, -1)
    t = torch.nn.functional.one_hot(target.reshape(n, -1), c).permute(0, 2, 1).to(p.dtype)
    dice = (2 * (p * t).sum(2) + 1e-5) / (p.sum(2) + t.sum(2) + 1e-5)
    return (1 - dice.sum(0) / n).mean()
