"""Optimizer diagnostics against values computed by hand from the same step."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from hco_cli.optim import DIAGNOSTIC_KEYS, build_optimizer

SHAPES = [(4, 3, 2), (7,), (3, 5)]
MODES: dict[str, dict[str, Any]] = {
    "single": {"foreach": False, "flat": False},
    "foreach": {"foreach": True, "flat": False},
    "flat": {"flat": True, "fused": False},
}


def _data(seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    w = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    gl = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    gu = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    return w, gl, gu


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", ["sgd", "sgd-co", "sgd-hco", "adamw-hco"])
def test_diagnostics_match_hand_computed_values(name: str, mode: str) -> None:
    w0, gl, gu = _data(3)
    params = [w.clone().requires_grad_() for w in w0]
    lr = 0.02
    opt = build_optimizer(name, params, lr=lr, unlabeled_scale=0.5, **MODES[mode])
    opt.step_two_source(gl, gu)  # an undiagnosed step first: momentum is not zero
    assert opt.take_diagnostics() is None
    before = [p.detach().clone() for p in params]
    opt.diagnose = True
    opt.step_two_source(gl, gu)
    assert opt.diagnose is False  # one step only
    diag = {k: float(v) for k, v in opt.take_diagnostics().items()}
    assert list(diag) == list(DIAGNOSTIC_KEYS)
    flat_l = np.concatenate([g.numpy().ravel() for g in gl])
    flat_u = np.concatenate([g.numpy().ravel() for g in gu])
    step = np.concatenate([(p.detach() - b).numpy().ravel() for p, b in
                           zip(params, before, strict=True)])
    assert diag["step_norm"] == pytest.approx(np.linalg.norm(step), rel=1e-5)
    assert diag["grad_norm_l"] == pytest.approx(np.linalg.norm(flat_l), rel=1e-5)
    assert diag["grad_norm_u"] == pytest.approx(np.linalg.norm(flat_u), rel=1e-5)  # unscaled
    cos = flat_l @ flat_u / np.linalg.norm(flat_l) / np.linalg.norm(flat_u)
    assert diag["cos_lu"] == pytest.approx(cos, rel=1e-5)
    plain = lr * np.linalg.norm(flat_l + flat_u)
    assert diag["step_ratio"] == pytest.approx(np.linalg.norm(step) / plain, rel=1e-5)
    if name == "sgd":
        assert all(math.isnan(diag[k]) for k in ("admitted_std", "admitted_min", "admitted_max"))
        return
    # Per-tensor admitted fractions, from the mask the optimizer reports in total.
    assert 0.0 <= diag["admitted_min"] <= opt.last_alignment <= diag["admitted_max"] <= 1.0
    # sgd-co on the same g twice: b = (1 + mu) g + ..., so every tensor admits all elements.
    assert diag["admitted_std"] > 0.0 if name.endswith("hco") else diag["admitted_std"] == 0.0


def test_diagnostics_of_per_tensor_fractions_are_exact() -> None:
    """sgd-co's mask phi = 1[b * g > 0] on the first step (b = g): every element admitted
    unless g = 0; a tensor of zeros gradient admits nothing."""
    params = [torch.ones(4, dtype=torch.float64, requires_grad=True),
              torch.ones(6, dtype=torch.float64, requires_grad=True)]
    opt = build_optimizer("sgd-co", params, weight_decay=0.0, foreach=True)
    opt.diagnose = True
    g = [torch.tensor([1.0, -2.0, 0.0, 3.0], dtype=torch.float64),
         torch.zeros(6, dtype=torch.float64)]
    opt.step_two_source(g, [None, None])
    diag = opt.take_diagnostics()
    assert float(diag["admitted_min"]) == 0.0 and float(diag["admitted_max"]) == 0.75
    assert float(diag["admitted_std"]) == pytest.approx(0.375)
    assert math.isnan(float(diag["cos_lu"]))  # no g_U
