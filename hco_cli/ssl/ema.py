"""Exponential moving averages of network parameters (mean teachers).

Only parameters are averaged, as in BCP, SSL4MIS and UCMT: buffers (BatchNorm running
statistics) of a teacher come from its own forward passes.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A copy of ``student`` whose parameters take no gradient (the EMA starting point)."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher


def warmup_decay(step: int, decay: float) -> float:
    """min(1 - 1/(step + 1), decay): the true average while it is the better estimate (SSL4MIS)."""
    return min(1.0 - 1.0 / (step + 1), decay)


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, *, decay: float) -> None:
    """theta_t <- decay * theta_t + (1 - decay) * theta_s, for every parameter."""
    t_params = _params(teacher)
    s_params = _params(student)
    _check_pairs(t_params, s_params)
    torch._foreach_mul_(t_params, decay)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - decay)


@torch.no_grad()
def weighted_ema_update_(teacher: nn.Module, student1: nn.Module, student2: nn.Module, *,
                         decay: float, coefficient: float) -> None:
    """UCMT's two-student teacher: theta_t <- d theta_t + c (1-d) theta_1 + (1-c)(1-d) theta_2."""
    t_params = _params(teacher)
    s1 = _params(student1)
    s2 = _params(student2)
    _check_pairs(t_params, s1)
    _check_pairs(t_params, s2)
    torch._foreach_mul_(t_params, decay)
    torch._foreach_add_(t_params, s1, alpha=coefficient * (1.0 - decay))
    torch._foreach_add_(t_params, s2, alpha=(1.0 - coefficient) * (1.0 - decay))


def _params(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters()]


def _check_pairs(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=False)):
        raise ValueError("teacher and student have different parameter shapes")
