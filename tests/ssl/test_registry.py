"""Framework configuration (discriminated union, defaults, strictness) and the registry."""

from __future__ import annotations

import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from hco_cli.data.batch import Batch
from hco_cli.ssl import FRAMEWORK_NAMES, build_framework
from hco_cli.ssl.bcp import BCPFramework
from hco_cli.ssl.cmt import CMTFramework
from hco_cli.ssl.config import BCPConfig, CMTConfig, FrameworkConfig, MeanTeacherConfig
from hco_cli.ssl.mean_teacher import MeanTeacherFramework
from hco_cli.ssl.supervised import SupervisedFramework
from tests.ssl.helpers import Recorder, synthetic_batch, tiny_factory

ADAPTER: TypeAdapter[FrameworkConfig] = TypeAdapter(FrameworkConfig)
CPU = torch.device("cpu")


def test_defaults_follow_the_reference_code() -> None:
    bcp = ADAPTER.validate_python({"name": "bcp"})
    assert isinstance(bcp, BCPConfig)
    assert (bcp.pretrain_iterations, bcp.selftrain_iterations, bcp.ema_decay) == (2000, 15000, 0.99)
    assert (bcp.mask_ratio, bcp.u_weight, bcp.lr_decay, bcp.lr_decay_every) == (
        2 / 3, 0.5, 0.1, 2500)
    assert (bcp.grad_split, bcp.lcc_connectivity) == ("source", 26)
    cmt = ADAPTER.validate_python({"name": "cmt"})
    assert isinstance(cmt, CMTConfig)
    assert (cmt.epochs, cmt.topk, cmt.blocks_per_axis, cmt.unsup_weight, cmt.loss) == (
        200, 2, 8, 0.1, "dice")
    mt = ADAPTER.validate_python({"name": "mean-teacher"})
    assert isinstance(mt, MeanTeacherConfig)
    assert (mt.ema_decay, mt.consistency, mt.rampup_length, mt.rampup_every) == (
        0.99, 0.1, 200.0, 150)


def test_strict_validation() -> None:
    with pytest.raises(ValidationError):
        ADAPTER.validate_python({"name": "bcp", "mask_ration": 0.5})
    with pytest.raises(ValidationError):
        ADAPTER.validate_python({"name": "fixmatch"})
    with pytest.raises(ValidationError):
        ADAPTER.validate_python({"name": "bcp", "grad_split": "both"})
    with pytest.raises(ValidationError):
        ADAPTER.validate_python({"name": "bcp", "lcc_connectivity": 8})
    with pytest.raises(ValidationError, match="blur_sigma_max"):
        CMTConfig(blur_sigma_min=3.0)


@pytest.mark.parametrize(("name", "cls"), [
    ("supervised", SupervisedFramework), ("mean-teacher", MeanTeacherFramework),
    ("bcp", BCPFramework), ("cmt", CMTFramework)])
def test_build_framework(name: str, cls: type) -> None:
    assert name in FRAMEWORK_NAMES
    fw = build_framework(ADAPTER.validate_python({"name": name}), model_factory=tiny_factory(),
                         num_classes=2, device=CPU)
    assert isinstance(fw, cls) and fw.name == name
    assert fw.phases() and fw.trainable()


def test_seed_makes_framework_randomness_reproducible() -> None:
    cfg = BCPConfig(pretrain_iterations=1)
    a, b = (build_framework(cfg, model_factory=tiny_factory(seed=0), num_classes=2, device=CPU,
                            seed=42) for _ in range(2))
    batch = synthetic_batch(0, unlabeled=0, shape=(16, 16, 16))
    phase = a.phases()[0]
    ra = a.train_step(phase, batch, {"student": Recorder(list(a.trainable()["student"]
                                                              .parameters()))}, 0)
    rb = b.train_step(phase, batch, {"student": Recorder(list(b.trainable()["student"]
                                                              .parameters()))}, 0)
    assert torch.equal(ra.loss_l, rb.loss_l)


def test_supervised_framework_has_no_unlabeled_gradient() -> None:
    fw = build_framework(ADAPTER.validate_python({"name": "supervised", "iterations": 10}),
                         model_factory=tiny_factory(), num_classes=2, device=CPU)
    (phase,) = fw.phases()
    assert not phase.needs_unlabeled and phase.iterations == 10
    assert phase.lr_factor(0) == 1.0 and phase.lr_factor(6) == pytest.approx(0.5**0.9)
    rec = Recorder(list(fw.trainable()["student"].parameters()))
    batch = synthetic_batch(0, unlabeled=0, shape=(16, 16, 16))
    result = fw.train_step(phase, Batch(batch.labeled_image, batch.labeled_label), {"student": rec},
                           0)
    assert result.loss_u.item() == 0.0 and result.loss_l.ndim == 0
    assert not result.loss_l.requires_grad
    assert all(g is None for g in rec.calls[0][1])
