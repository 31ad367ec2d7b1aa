"""Mean teacher (SSL4MIS): loss split, ramp-up, teacher noise and EMA, per-source gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hco_cli.ssl.common import FrameworkRng
from hco_cli.ssl.config import MeanTeacherConfig
from hco_cli.ssl.mean_teacher import MeanTeacherFramework
from tests.ssl.helpers import Recorder, reference_dice, synthetic_batch, tiny_factory

CPU = torch.device("cpu")
SMALL = (16, 16, 16)


def _framework() -> MeanTeacherFramework:
    return MeanTeacherFramework(MeanTeacherConfig(), model_factory=tiny_factory(
        dtype=torch.float64), num_classes=2, device=CPU, seed=2)


def test_consistency_weight_ramps_over_iteration_blocks() -> None:
    fw = _framework()
    assert fw.consistency_weight(0) == pytest.approx(0.1 * math.exp(-5))
    assert fw.consistency_weight(149) == fw.consistency_weight(0)
    assert fw.consistency_weight(150 * 100) == pytest.approx(0.1 * math.exp(-5 * 0.25))
    assert fw.consistency_weight(150 * 200) == pytest.approx(0.1)


def test_losses_sum_to_the_ssl4mis_loss() -> None:
    fw = _framework()
    batch = synthetic_batch(0, labeled=2, unlabeled=2, dtype=torch.float64, shape=SMALL)
    assert batch.unlabeled_image is not None
    state = {k: v.clone() for k, v in fw.rng.state_dict().items()}
    loss_l, loss_u, _ = fw.losses(batch, 15000)
    rng = FrameworkRng(0, CPU)
    rng.load_state_dict(state)
    noise = torch.randn(batch.unlabeled_image.shape, generator=rng.cpu, dtype=torch.float64)
    noise = torch.clamp(noise * 0.1, -0.2, 0.2)
    out = fw.student(torch.cat([batch.labeled_image, batch.unlabeled_image]))
    with torch.no_grad():
        ema = torch.softmax(fw.teacher(batch.unlabeled_image + noise), dim=1)
    supervised = 0.5 * (reference_dice(out[:2], batch.labeled_label)
                        + F.cross_entropy(out[:2], batch.labeled_label))
    consistency = torch.mean((torch.softmax(out[2:], dim=1) - ema) ** 2)
    total = supervised + 0.1 * math.exp(-5 * 0.25) * consistency
    torch.testing.assert_close(loss_l, supervised, rtol=1e-13, atol=0)
    torch.testing.assert_close(loss_l + loss_u, total, rtol=1e-13, atol=0)


def test_train_step_splits_gradients_and_updates_teacher() -> None:
    fw = _framework()
    batch = synthetic_batch(1, labeled=2, unlabeled=2, dtype=torch.float64, shape=SMALL)
    with torch.no_grad():
        for p in fw.teacher.parameters():
            p.add_(1.0)
    rec = Recorder(list(fw.student.parameters()))
    result = fw.train_step(fw.phases()[0], batch, {"student": rec}, 0)
    (grads_l, grads_u), = rec.calls
    assert all(g is not None for g in grads_l) and all(g is not None for g in grads_u)
    assert result.loss_u.item() > 0 and result.admitted is None
    for t, s in zip(fw.teacher.parameters(), fw.student.parameters(), strict=True):
        assert torch.equal(t, s)  # decay min(1 - 1/1, 0.99) = 0 at iteration 0
    assert fw.eval_model() is fw.student and fw.phases()[0].lr_factor(1) == 1.0


def test_state_round_trip() -> None:
    fw = _framework()
    other = MeanTeacherFramework(MeanTeacherConfig(), model_factory=tiny_factory(
        dtype=torch.float64, seed=7), num_classes=2, device=CPU, seed=11)
    other.load_state_dict(fw.state_dict())
    batch = synthetic_batch(2, labeled=2, unlabeled=2, dtype=torch.float64, shape=SMALL)
    a = fw.losses(batch, 100)
    b = other.losses(batch, 100)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
