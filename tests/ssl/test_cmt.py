"""CMT/UCMT: loss split against UCMT's formula, per-student gradients, teacher update, setup."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from hco_cli.data.batch import Batch
from hco_cli.errors import ConfigError
from hco_cli.ssl.cmt import CMTFramework, cmt_losses
from hco_cli.ssl.common import FrameworkRng
from hco_cli.ssl.config import CMTConfig
from hco_cli.ssl.ramps import sigmoid_rampup
from hco_cli.ssl.umix import strong_view
from tests.ssl.helpers import Recorder, reference_dice, synthetic_batch, tiny_factory

CPU = torch.device("cpu")
SMALL = (16, 16, 16)


def _framework(**overrides: object) -> CMTFramework:
    cfg = CMTConfig(**overrides)  # type: ignore[arg-type]
    return CMTFramework(cfg, model_factory=tiny_factory(dtype=torch.float64), num_classes=2,
                        device=CPU, seed=4)


def reference_loss(s1_l: Tensor, s2_l: Tensor, y: Tensor, s1_u: Tensor, s2_u: Tensor,
                   pseudo: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """UCMT train_3d.py: loss_s + loss_x * 0.1 * lambda + loss_u * 0.1 * lambda, and loss_s."""
    loss_s = (reference_dice(s1_l, y) + reference_dice(s2_l, y)) / 2
    loss_x = (reference_dice(s1_u, s2_u.argmax(1)) + reference_dice(s2_u, s1_u.argmax(1))) / 2
    loss_u = (reference_dice(s1_u, pseudo) + reference_dice(s2_u, pseudo)) / 2
    return loss_s + loss_x * 0.1 * lam + loss_u * 0.1 * lam, loss_s


def test_cmt_losses_sum_to_ucmt_loss() -> None:
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(2, 2, 6, 6, 6, generator=g, dtype=torch.float64) for _ in range(4)]
    y = torch.randint(0, 2, (2, 6, 6, 6), generator=g)
    pseudo = torch.randint(0, 2, (2, 6, 6, 6), generator=g)
    lam = sigmoid_rampup(37, 100)
    loss_l, loss_u, _, _ = cmt_losses(logits[0], logits[1], y, logits[2], logits[3], pseudo,
                                      weight=0.1 * lam, kind="dice")
    total, loss_s = reference_loss(logits[0], logits[1], y, logits[2], logits[3], pseudo, lam)
    torch.testing.assert_close(loss_l, loss_s, rtol=1e-13, atol=0)
    torch.testing.assert_close(loss_l + loss_u, total, rtol=1e-13, atol=0)


def _views(rng_state: dict[str, Tensor], batch: Batch) -> list[Tensor]:
    rng = FrameworkRng(0, CPU)
    rng.load_state_dict(rng_state)
    assert batch.unlabeled_image is not None
    sources = [batch.labeled_image] * 2 + [batch.unlabeled_image] * 2
    return [strong_view(x, rng, p=0.8, sigma_min=0.1, sigma_max=2.0) for x in sources]


def test_step_one_gradients_per_student_and_source() -> None:
    fw = _framework(iterations_per_epoch=4)
    batch = synthetic_batch(0, dtype=torch.float64, shape=SMALL)
    state = {k: v.clone() for k, v in fw.rng.state_dict().items()}
    rec1 = Recorder(list(fw.student1.parameters()))
    rec2 = Recorder(list(fw.student2.parameters()))
    teacher = {k: v.clone() for k, v in fw.teacher.state_dict().items()}
    result = fw.train_step(fw.phases()[0], batch, {"student1": rec1, "student2": rec2}, 7)
    assert len(rec1.calls) == len(rec2.calls) == 2  # plain step, then the UMIX step
    fw.teacher.load_state_dict(teacher)
    l1, l2, u1, u2 = _views(state, batch)
    assert batch.unlabeled_image is not None
    with torch.no_grad():
        pseudo = fw.teacher(batch.unlabeled_image).argmax(1)
    s1_l, s2_l, s1_u, s2_u = fw.student1(l1), fw.student2(l2), fw.student1(u1), fw.student2(u2)
    lam = sigmoid_rampup(7, 5 * 4)
    total, loss_s = reference_loss(s1_l, s2_l, batch.labeled_label, s1_u, s2_u, pseudo, lam)
    torch.testing.assert_close(result.loss_l + result.loss_u, total.detach(), rtol=1e-12, atol=0)
    assert result.extra["lambda"].item() == pytest.approx(lam)
    for net, rec in ((fw.student1, rec1), (fw.student2, rec2)):
        params = list(net.parameters())
        ref_l = torch.autograd.grad(loss_s, params, retain_graph=True)
        ref_u = torch.autograd.grad(total - loss_s, params, retain_graph=True)
        grads_l, grads_u = rec.calls[0]
        for a, b, c, d in zip(grads_l, ref_l, grads_u, ref_u, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-13)
            torch.testing.assert_close(c, d, rtol=1e-9, atol=1e-13)


def test_teacher_is_weighted_average_after_iteration_zero() -> None:
    fw = _framework(umix=False)
    rec1 = Recorder(list(fw.student1.parameters()))
    rec2 = Recorder(list(fw.student2.parameters()))
    fw.train_step(fw.phases()[0], synthetic_batch(1, dtype=torch.float64, shape=SMALL),
                  {"student1": rec1, "student2": rec2}, 0)
    assert len(rec1.calls) == 1
    for t, a, b in zip(fw.teacher.parameters(), fw.student1.parameters(),
                       fw.student2.parameters(), strict=True):
        torch.testing.assert_close(t, 0.99 * a + 0.01 * b)  # d = 0 at iteration 0


def test_setup_follows_ucmt() -> None:
    fw = _framework(epochs=3, iterations_per_epoch=7)
    (phase,) = fw.phases()
    assert (phase.name, phase.iterations, phase.needs_unlabeled) == ("train", 21, True)
    assert phase.lr_factor(20) == 1.0
    assert set(fw.trainable()) == {"student1", "student2"}
    assert fw.eval_model() is fw.teacher
    assert not any(p.requires_grad for p in fw.teacher.parameters())
    assert fw.rampup(0) == pytest.approx(math.exp(-5)) and fw.rampup(35) == 1.0
    first = [p.clone() for p in fw.student1.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(first, fw.student2.parameters(),
                                                        strict=True))


def test_kaiming_decoder_init() -> None:
    fw = CMTFramework(CMTConfig(), model_factory=tiny_factory(), num_classes=2, device=CPU,
                      seed=0)
    w = fw.student1.decoder.block_six.conv[0].weight  # type: ignore[union-attr,index]
    fan_in = w.shape[1] * 27
    assert float(w.detach().std()) == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
    enc = fw.student1.encoder.block_five.conv[0].weight  # type: ignore[union-attr,index]
    assert float(enc.detach().std()) < 0.6 * math.sqrt(2 / (enc.shape[1] * 27))  # default init kept


def test_state_round_trip_and_errors() -> None:
    fw = _framework()
    other = CMTFramework(CMTConfig(), model_factory=tiny_factory(dtype=torch.float64, seed=5),
                         num_classes=2, device=CPU, seed=99)
    other.load_state_dict(fw.state_dict())
    for a, b in zip(other.teacher.parameters(), fw.teacher.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(other.rng.cpu.get_state(), fw.rng.cpu.get_state())
    batch = synthetic_batch(0, dtype=torch.float64, shape=SMALL)
    odd = _framework(blocks_per_axis=3)
    opts = {"student1": Recorder(list(odd.student1.parameters())),
            "student2": Recorder(list(odd.student2.parameters()))}
    with pytest.raises(ConfigError, match="divisible by 3"):
        odd.train_step(odd.phases()[0], batch, opts, 0)
    with pytest.raises(ConfigError, match="student2"):
        fw.train_step(fw.phases()[0], batch, {"student1": opts["student1"]}, 0)


def test_umix_with_blocks_per_axis_trains_a_step() -> None:
    """Per-axis UMIX blocks (as planned for anisotropic patches) in a full CMT iteration."""
    fw = _framework(blocks_per_axis=(8, 8, 4))
    batch = synthetic_batch(0, dtype=torch.float64, shape=SMALL)
    opts = {"student1": Recorder(list(fw.student1.parameters())),
            "student2": Recorder(list(fw.student2.parameters()))}
    result = fw.train_step(fw.phases()[0], batch, opts, 0)
    assert "loss_l_umix" in result.extra and torch.isfinite(result.extra["loss_l_umix"])
    with pytest.raises(ValueError, match="topk is larger"):
        CMTConfig(blocks_per_axis=(1, 1, 3))
