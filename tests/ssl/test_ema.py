"""EMA updates (BCP, SSL4MIS, UCMT's two-student teacher) and ramps against float64 formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hco_cli.ssl.ema import ema_update_, make_teacher, warmup_decay, weighted_ema_update_
from hco_cli.ssl.ramps import poly_lr_factor, sigmoid_rampup


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv3d(1, 3, 3), nn.BatchNorm3d(3), nn.Conv3d(3, 2, 1)).double()


def test_make_teacher_copies_and_freezes() -> None:
    student = _net(0)
    teacher = make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    for a, b in zip(teacher.parameters(), student.parameters(), strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()


def test_ema_update_formula_parameters_only() -> None:
    teacher, student = _net(0), _net(1)
    before = [p.clone() for p in teacher.parameters()]
    buffers = [b.clone() for b in teacher.buffers()]
    student.get_submodule("1").running_mean.fill_(5.0)
    ema_update_(teacher, student, decay=0.99)
    for t, t0, s in zip(teacher.parameters(), before, student.parameters(), strict=True):
        torch.testing.assert_close(t, 0.99 * t0 + 0.01 * s, rtol=1e-14, atol=1e-15)
    for b, b0 in zip(teacher.buffers(), buffers, strict=True):
        assert torch.equal(b, b0)


def test_two_student_teacher_update_formula() -> None:
    teacher, s1, s2 = _net(0), _net(1), _net(2)
    before = [p.clone() for p in teacher.parameters()]
    for step in (0, 3, 500):
        d = warmup_decay(step, 0.99)
        before = [p.clone() for p in teacher.parameters()]
        weighted_ema_update_(teacher, s1, s2, decay=d, coefficient=0.99)
        for t, t0, a, b in zip(teacher.parameters(), before, s1.parameters(), s2.parameters(),
                               strict=True):
            expected = d * t0 + 0.99 * (1 - d) * a + 0.01 * (1 - d) * b
            torch.testing.assert_close(t, expected, rtol=1e-13, atol=1e-14)


def test_warmup_decay_values() -> None:
    assert warmup_decay(0, 0.99) == 0.0
    assert warmup_decay(1, 0.99) == 0.5
    assert warmup_decay(9, 0.99) == pytest.approx(0.9)
    assert warmup_decay(10_000, 0.99) == 0.99


def test_sigmoid_rampup_values() -> None:
    assert sigmoid_rampup(0, 200) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(100, 200) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(200, 200) == 1.0
    assert sigmoid_rampup(10_000, 200) == 1.0
    assert sigmoid_rampup(-3, 200) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(7, 0) == 1.0


def test_poly_lr_factor_lags_one_step_like_ssl4mis() -> None:
    assert poly_lr_factor(0, 100) == 1.0
    assert poly_lr_factor(1, 100) == 1.0
    assert poly_lr_factor(51, 100) == pytest.approx(0.5**0.9)
    assert poly_lr_factor(101, 100) == 0.0
