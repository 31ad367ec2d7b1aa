"""BCP: cube mask, exact loss split (source), gradient split (region), teacher, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from scipy import ndimage
from torch import Tensor

from hco_cli.data.batch import Batch
from hco_cli.errors import ConfigError
from hco_cli.ssl.base import Phase
from hco_cli.ssl.bcp import BCPFramework, cube_size, random_cube_mask, teacher_batches
from hco_cli.ssl.common import FrameworkRng
from hco_cli.ssl.config import BCPConfig
from tests.ssl.helpers import Recorder, synthetic_batch, tiny_factory

CPU = torch.device("cpu")
SMALL = (16, 16, 16)  # float64 tests: the smallest V-Net input


def test_cube_size_of_the_la_patch() -> None:
    assert cube_size((112, 112, 80), 2 / 3) == (74, 74, 53)
    assert cube_size((96, 96, 96), 2 / 3) == (64, 64, 64)


def test_cube_is_sized_per_axis_on_anisotropic_patches() -> None:
    assert cube_size((64, 64, 12), 2 / 3) == (42, 42, 8)
    assert cube_size((64, 64, 12), (2 / 3, 2 / 3, 0.5)) == (42, 42, 6)
    mask = random_cube_mask((64, 64, 12), (2 / 3, 2 / 3, 0.5), rng=FrameworkRng(3, CPU),
                            device=CPU)
    zeros = (mask == 0).nonzero()
    assert (zeros.max(0).values - zeros.min(0).values + 1).tolist() == [42, 42, 6]
    assert BCPConfig(mask_ratio=(0.5, 0.5, 1.0)).mask_ratio == (0.5, 0.5, 1.0)
    with pytest.raises(ValidationError, match="mask_ratio must be in"):
        BCPConfig(mask_ratio=(0.5, 0.5, 1.5))


def test_random_cube_mask_size_and_uniform_corner() -> None:
    rng = FrameworkRng(0, CPU)
    corners = []
    for i in range(300):
        mask = random_cube_mask((112, 112, 80), 2 / 3, rng=rng, device=CPU)
        corner = np.unravel_index(int(mask.argmin()), (112, 112, 80))  # first zero voxel
        if i < 5:
            zeros = (mask == 0).nonzero()
            lo, hi = zeros.min(0).values, zeros.max(0).values
            assert (hi - lo + 1).tolist() == [74, 74, 53]
            assert len(zeros) == 74 * 74 * 53  # one solid cube
            assert lo.tolist() == list(corner)
        corners.append(corner)
    corners_np = np.array(corners)
    assert corners_np.min(0).tolist() == [0, 0, 0]
    assert corners_np.max(0).tolist() == [37, 37, 26]  # randint(0, dim - size): exclusive bound
    assert len({tuple(c) for c in corners}) > 250  # random, not centred


def test_mask_is_reproducible_from_the_seed() -> None:
    a = [random_cube_mask((12, 12, 9), 2 / 3, rng=rng, device=CPU)
         for rng in [FrameworkRng(5, CPU)] for _ in range(5)]
    b = [random_cube_mask((12, 12, 9), 2 / 3, rng=rng, device=CPU)
         for rng in [FrameworkRng(5, CPU)] for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_phases_follow_bcp() -> None:
    fw = BCPFramework(BCPConfig(), model_factory=tiny_factory(), num_classes=2, device=CPU, seed=0)
    pre, self_ = fw.phases()
    assert (pre.name, pre.iterations, pre.plain_optimizer, pre.restore_best) == (
        "pretrain", 2000, True, True)
    assert not pre.needs_unlabeled and pre.lr_factor(1999) == 1.0
    assert (self_.name, self_.iterations, self_.needs_unlabeled) == ("selftrain", 15000, True)
    assert [self_.lr_factor(i) for i in (0, 2499, 2500, 4999, 5000)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01])


# --- reference written from PROTOCOLS 1.4/1.5 (BCP mix_loss, mask_DiceLoss) -------------------

def ref_dice(logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    n, c = logits.shape[:2]
    p = torch.softmax(logits.view(n, c, -1), dim=1)
    t = F.one_hot(target.view(n, -1), c).permute(0, 2, 1).to(p.dtype)
    m = mask.view(n, 1, -1).to(p.dtype)
    inter = (p * t * m).sum(2)
    union = ((p + t) * m).sum(2)
    return 1 - ((2 * inter + 1e-5) / (union + 1e-5)).mean()


def ref_mix_loss(out: Tensor, img_l: Tensor, patch_l: Tensor, mask: Tensor, *,
                 unlab: bool) -> Tensor:
    w_img, w_patch = (0.5, 1.0) if unlab else (1.0, 0.5)
    patch = 1 - mask
    dice = ref_dice(out, img_l, mask) * w_img
    dice = dice + ref_dice(out, patch_l, patch) * w_patch
    ce_img = F.cross_entropy(out, img_l, reduction="none")
    ce_patch = F.cross_entropy(out, patch_l, reduction="none")
    ce = w_img * (ce_img * mask).sum() / (mask.sum() + 1e-16)
    ce = ce + w_patch * (ce_patch * patch).sum() / (patch.sum() + 1e-16)
    return (dice + ce) / 2


def ref_pseudo(teacher: torch.nn.Module, images: Tensor) -> Tensor:
    prob = torch.softmax(teacher(images), dim=1)[:, 1] >= 0.5
    out = []
    for volume in prob.numpy():
        labels, count = ndimage.label(volume, structure=np.ones((3, 3, 3)))
        keep = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1 if count else volume
        out.append(torch.from_numpy(keep))
    return torch.stack(out).long()


def reference_total(fw: BCPFramework, batch: Batch, rng_state: dict[str, Tensor]) -> Tensor:
    """BCP's loss_l + loss_u with the framework's networks and the same random cube."""
    assert fw.teacher is not None and batch.unlabeled_image is not None
    img_a, img_b = batch.labeled_image[:2], batch.labeled_image[2:]
    lab_a, lab_b = batch.labeled_label[:2], batch.labeled_label[2:]
    unimg_a, unimg_b = batch.unlabeled_image[:2], batch.unlabeled_image[2:]
    with torch.no_grad():
        plab_a, plab_b = ref_pseudo(fw.teacher, unimg_a), ref_pseudo(fw.teacher, unimg_b)
    rng = FrameworkRng(0, CPU)
    rng.load_state_dict(rng_state)
    img_mask = random_cube_mask(tuple(img_a.shape[2:]), 2 / 3, rng=rng, device=CPU)
    loss_mask = img_mask.expand(2, *img_mask.shape).clone().long()
    out_l = fw.student(img_a * img_mask + unimg_a * (1 - img_mask))
    out_u = fw.student(unimg_b * img_mask + img_b * (1 - img_mask))
    loss_l = ref_mix_loss(out_l, lab_a, plab_a, loss_mask, unlab=False)
    loss_u = ref_mix_loss(out_u, plab_b, lab_b, loss_mask, unlab=True)
    return loss_l + loss_u


def _selftrain_framework(grad_split: str, *,
                         dropout: bool = False) -> tuple[BCPFramework, Phase, Batch]:
    cfg = BCPConfig(grad_split=grad_split)  # type: ignore[arg-type]
    fw = BCPFramework(cfg, model_factory=tiny_factory(dtype=torch.float64, dropout=dropout),
                      num_classes=2, device=CPU, seed=3)
    phase = fw.phases()[1]
    fw.start_phase(phase)
    return fw, phase, synthetic_batch(0, dtype=torch.float64, shape=SMALL)


@pytest.mark.parametrize("dropout", [False, True])
def test_source_split_sums_to_bcp_loss_bit_for_bit(dropout: bool) -> None:
    """With dropout, also the order of the random draws: the component step runs after the
    student's forwards (it waits for the device), and the reference takes BCP's order
    (pseudo-labels complete, then the student); both draw the teacher's dropout first."""
    fw, _, batch = _selftrain_framework("source", dropout=dropout)
    state = {k: v.clone() for k, v in fw.rng.state_dict().items()}
    torch.manual_seed(11)
    loss_l, loss_u, _ = fw.selftrain_losses(batch)
    torch.manual_seed(11)
    want = reference_total(fw, batch, state)
    assert torch.equal(loss_l + loss_u, want)
    if dropout:  # not vacuous: other dropout draws give another loss
        torch.manual_seed(12)
        assert not torch.equal(reference_total(fw, batch, state), want)


def test_region_split_gradients_sum_to_the_combined_gradient() -> None:
    fw, phase, batch = _selftrain_framework("region")
    state = {k: v.clone() for k, v in fw.rng.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in fw.teacher.state_dict().items()}  # type: ignore[union-attr]
    params = list(fw.student.parameters())
    recorder = Recorder(params)
    result = fw.train_step(phase, batch, {"student": recorder}, 0)
    assert len(recorder.calls) == 1
    grads_l, grads_u = recorder.calls[0]
    fw.teacher.load_state_dict(teacher_before)  # type: ignore[union-attr]
    total = reference_total(fw, batch, state)
    torch.testing.assert_close((result.loss_l + result.loss_u), total.detach(), rtol=1e-12,
                               atol=0)
    ref_grads = torch.autograd.grad(total, params)
    for gl, gu, ref in zip(grads_l, grads_u, ref_grads, strict=True):
        assert gl is not None and gu is not None
        torch.testing.assert_close(gl + gu, ref, rtol=1e-9, atol=1e-12)
    # L holds the ground-truth regions only: its gradient differs from the whole.
    first = grads_l[0]
    assert first is not None and not torch.allclose(first, ref_grads[0])


def test_source_split_hands_the_two_losses_to_a_hierarchical_optimizer() -> None:
    fw, phase, batch = _selftrain_framework("source")
    params = list(fw.student.parameters())
    recorder = Recorder(params)
    result = fw.train_step(phase, batch, {"student": recorder}, 0)
    fw2, _, _ = _selftrain_framework("source")
    loss_l, loss_u, _ = fw2.selftrain_losses(batch)
    assert torch.equal(result.loss_l, loss_l.detach()) and torch.equal(result.loss_u,
                                                                        loss_u.detach())
    grads_l, grads_u = recorder.calls[0]
    ref_l = torch.autograd.grad(loss_l, list(fw2.student.parameters()), retain_graph=True)
    ref_u = torch.autograd.grad(loss_u, list(fw2.student.parameters()))
    for a, b, c, d in zip(grads_l, ref_l, grads_u, ref_u, strict=True):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(c, d)


def test_teacher_starts_as_student_and_follows_ema() -> None:
    fw, phase, batch = _selftrain_framework("source")
    assert fw.teacher is not None
    for t, s in zip(fw.teacher.parameters(), fw.student.parameters(), strict=True):
        assert torch.equal(t, s) and not t.requires_grad
    with torch.no_grad():
        for p in fw.student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in fw.teacher.parameters()]
    fw.train_step(phase, batch, {"student": Recorder(list(fw.student.parameters()))}, 0)
    for t, t0, s in zip(fw.teacher.parameters(), before, fw.student.parameters(), strict=True):
        torch.testing.assert_close(t, 0.99 * t0 + 0.01 * s)
    assert fw.teacher.training and fw.eval_model() is fw.student


def test_state_dict_round_trip_resumes_identically() -> None:
    fw, phase, batch = _selftrain_framework("source")
    state = fw.state_dict()
    assert set(state["networks"]) == {"student", "teacher"}
    first = fw.selftrain_losses(batch)[0]
    fresh = BCPFramework(BCPConfig(), model_factory=tiny_factory(dtype=torch.float64, seed=9),
                         num_classes=2, device=CPU, seed=123)
    fresh.load_state_dict(state)
    fresh.start_phase(phase)  # a resumed teacher is kept, not re-copied
    assert fresh.teacher is not None
    assert torch.equal(fresh.selftrain_losses(batch)[0], first)


def test_pretrain_mixes_labeled_halves() -> None:
    fw = BCPFramework(BCPConfig(), model_factory=tiny_factory(dtype=torch.float64),
                      num_classes=2, device=CPU, seed=1)
    pre = fw.phases()[0]
    batch = synthetic_batch(2, unlabeled=0, dtype=torch.float64, shape=SMALL)
    recorder = Recorder(list(fw.student.parameters()))
    result = fw.train_step(pre, batch, {"student": recorder}, 0)
    assert result.loss_u.item() == 0.0 and result.admitted is None
    assert all(gu is None for gu in recorder.calls[0][1])


def test_multiclass_pseudo_labels_keep_one_component_per_class() -> None:
    torch.manual_seed(0)
    from hco_cli.models import ModelConfig
    from hco_cli.models.vnet import build_model
    cfg = ModelConfig(n_filters=4, dropout=False)
    fw = BCPFramework(BCPConfig(), model_factory=lambda: build_model(cfg, in_channels=1,
                      num_classes=3), num_classes=3, device=CPU, seed=0)
    fw.start_phase(fw.phases()[1])
    labels = fw.pseudo_label(synthetic_batch(0, shape=SMALL).labeled_image[:2])
    for volume in labels.numpy():
        for c in (1, 2):
            assert ndimage.label(volume == c, structure=np.ones((3, 3, 3)))[1] <= 1


def test_pseudo_labels_of_two_halves_equal_one_call_per_half() -> None:
    """Batching the halves' components changes nothing: each half keeps its own forward pass."""
    fw, _, batch = _selftrain_framework("source")
    fw.teacher.requires_grad_(False)  # type: ignore[union-attr]
    for module in fw.teacher.modules():  # type: ignore[union-attr]
        if isinstance(module, torch.nn.Dropout3d):
            module.p = 0.0  # deterministic teacher, so the two ways can be compared
    unlabeled = batch.unlabeled_image
    assert unlabeled is not None
    half_a, half_b = unlabeled.chunk(2)
    together = fw.pseudo_labels(half_a, half_b)
    apart = [fw.pseudo_label(half_a), fw.pseudo_label(half_b)]
    for x, y in zip(together, apart, strict=True):
        assert x.dtype == torch.long and torch.equal(x, y)


def test_batch_errors() -> None:
    fw, phase, batch = _selftrain_framework("source")
    odd = Batch(batch.labeled_image[:3], batch.labeled_label[:3], batch.unlabeled_image)
    with pytest.raises(ConfigError, match="even labeled batch"):
        fw.train_step(phase, odd, {"student": Recorder(list(fw.student.parameters()))}, 0)
    no_u = Batch(batch.labeled_image, batch.labeled_label, None)
    with pytest.raises(ConfigError, match="unlabeled images"):
        fw.train_step(phase, no_u, {"student": Recorder(list(fw.student.parameters()))}, 0)
    with pytest.raises(ConfigError, match="optimizer for 'student'"):
        fw.train_step(phase, batch, {}, 0)


def _instancenorm_framework(mode: str) -> BCPFramework:
    """BCP's Pancreas network (InstanceNorm, no dropout): no layer mixes the halves."""
    from hco_cli.models import ModelConfig
    from hco_cli.models.vnet import build_model
    torch.manual_seed(0)
    cfg = ModelConfig(n_filters=4, dropout=False, normalization="instancenorm")
    fw = BCPFramework(BCPConfig(teacher_forward=mode),  # type: ignore[arg-type]
                      model_factory=lambda: build_model(cfg, in_channels=1, num_classes=2),
                      num_classes=2, device=CPU, seed=0)
    fw.start_phase(fw.phases()[1])
    return fw


def test_batched_teacher_forward_gives_the_same_pseudo_labels() -> None:
    unlabeled = synthetic_batch(3).unlabeled_image
    assert unlabeled is not None
    halves = unlabeled.chunk(2)
    batched, separate = _instancenorm_framework("auto"), _instancenorm_framework("separate")
    assert teacher_batches(batched.teacher, "auto")  # type: ignore[arg-type]
    calls: list[int] = []
    batched.teacher.register_forward_hook(  # type: ignore[union-attr]
        lambda _m, args, _o: calls.append(args[0].shape[0]))
    together, apart = batched.pseudo_labels(*halves), separate.pseudo_labels(*halves)
    assert calls == [4]  # one forward pass over both halves
    with torch.no_grad():  # the probabilities agree to float rounding, not only the labels
        one = torch.softmax(batched.teacher(unlabeled), dim=1)  # type: ignore[misc]
        two = torch.cat([torch.softmax(separate.teacher(h), dim=1)  # type: ignore[misc]
                         for h in halves])
    torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-6)
    for x, y in zip(together, apart, strict=True):
        assert torch.equal(x, y)


def test_auto_keeps_separate_passes_where_batchnorm_or_dropout_would_mix_halves() -> None:
    fw, _, _ = _selftrain_framework("source")  # BatchNorm V-Net (BCP's LA network)
    assert not teacher_batches(fw.teacher, "auto")  # type: ignore[arg-type]
    assert teacher_batches(fw.teacher, "batched")  # type: ignore[arg-type]
    assert not teacher_batches(torch.nn.Sequential(torch.nn.Dropout3d(0.5)), "auto")
    assert teacher_batches(torch.nn.Sequential(torch.nn.Dropout3d(0.0)), "auto")
    assert not teacher_batches(torch.nn.Sequential(torch.nn.Conv3d(1, 1, 1)), "separate")
