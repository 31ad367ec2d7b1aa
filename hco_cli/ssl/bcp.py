"""Bidirectional copy-paste (Bai et al., CVPR 2023) as in BCP's ``LA_BCP_train.py``.

Pre-training: the labeled batch is split into halves a and b; a is pasted around one random cube
of b (image and label alike) and the student learns (CE + Dice)/2 on the result.

Self-training: the teacher starts as a copy of the (best pre-trained) student and stays in train
mode. Per iteration it labels the two unlabeled halves (softmax foreground >= 0.5, then the
largest connected component of each volume), one random cube M (zero inside) is drawn for the
whole batch, and the student sees two mixed images:
``mix_l = img_a M + unimg_a (1 - M)`` and ``mix_u = unimg_b M + img_b (1 - M)``. Ground-truth
regions weigh 1 and pseudo-label regions ``u_weight`` = 0.5 (``mix_loss``). After the step the
teacher follows theta_t <- 0.99 theta_t + 0.01 theta_s (parameters only).

With more than two classes the pseudo-label is the teacher's argmax with the largest component
kept per foreground class (our extension; BCP is binary). BCP's NIH-Pancreas code pairs the halves
the other way round (img_a with unimg_b); the halves are exchangeable, so one pairing serves both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from hco_cli.data.batch import Batch
from hco_cli.errors import ConfigError
from hco_cli.ops.components import keep_largest_per_class, largest_connected_component
from hco_cli.optim.protocol import TwoSource
from hco_cli.ssl.base import Framework, ModelFactory, Phase, StepResult, two_source_step
from hco_cli.ssl.common import (
    FrameworkRng,
    check_even_halves,
    detached,
    get_optimizer,
    mean_alignment,
    networks_state,
    optimizer_params,
    unlabeled_of,
)
from hco_cli.ssl.config import BCPConfig
from hco_cli.ssl.ema import ema_update_, make_teacher
from hco_cli.ssl.losses import ce_dice_loss, mix_loss, mix_loss_parts


def cube_size(shape: tuple[int, ...], ratio: float | tuple[float, ...]) -> tuple[int, ...]:
    """int(ratio * dim) per axis: 74 x 74 x 53 for a 112 x 112 x 80 patch and ratio 2/3.

    ``ratio`` may differ per axis; either way the cube is sized per axis, so an anisotropic
    patch of 160 x 160 x 12 gets a 106 x 106 x 8 cube at 2/3.
    """
    ratios = (ratio,) * len(shape) if isinstance(ratio, int | float) else tuple(ratio)
    return tuple(int(d * r) for d, r in zip(shape, ratios, strict=True))


def random_cube_mask(shape: tuple[int, ...], ratio: float | tuple[float, ...], *,
                     rng: FrameworkRng, device: torch.device) -> Tensor:
    """BCP ``context_mask``: ones with one zero cube of ``cube_size`` at a uniform corner.

    The corner is uniform over [0, dim - size) per axis (NumPy's exclusive ``randint`` bound, not
    centred) and drawn on the host, so building the mask needs no device synchronisation.
    """
    size = cube_size(shape, ratio)
    corner = [rng.randint(d - s) for d, s in zip(shape, size, strict=True)]
    mask = torch.ones(shape, device=device)
    mask[tuple(slice(c, c + s) for c, s in zip(corner, size, strict=True))] = 0
    return mask


def teacher_batches(teacher: nn.Module, mode: str) -> bool:
    """Whether the halves go through the teacher in one forward pass: ``batched`` always,
    ``separate`` never, ``auto`` when no layer mixes samples or draws random numbers in train
    mode (BatchNorm statistics, dropout masks), so that one pass gives the same outputs."""
    if mode != "auto":
        return mode == "batched"
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                   or (isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0)
                   for m in teacher.modules())


class BCPFramework(Framework):
    """Student + EMA teacher with BCP's two-phase schedule and mixed-image losses."""

    name = "bcp"
    loss_functions = ("ce_dice_loss", "mix_loss", "mix_loss_parts")

    def __init__(self, cfg: BCPConfig, *, model_factory: ModelFactory, num_classes: int,
                 device: torch.device, seed: int) -> None:
        self.cfg = cfg
        self.num_classes = num_classes
        self.device = device
        self.student = model_factory().to(device)
        self.teacher: nn.Module | None = None
        self._keep_loaded_teacher = False
        self.rng = FrameworkRng(seed, device)
        self.ce_dice_loss, self.mix_loss, self.mix_loss_parts = (ce_dice_loss, mix_loss,
                                                                 mix_loss_parts)

    def phases(self) -> list[Phase]:
        decay, every = self.cfg.lr_decay, self.cfg.lr_decay_every
        phases = [Phase("selftrain", self.cfg.selftrain_iterations, needs_unlabeled=True,
                        lr_factor=lambda i: decay ** (i // every),
                        carry_optimizer=self.cfg.restore_optimizer)]
        if self.cfg.pretrain_iterations:
            pretrain = Phase("pretrain", self.cfg.pretrain_iterations, needs_unlabeled=False,
                             plain_optimizer=True, restore_best=True,
                             produces_shareable_checkpoint=True)
            phases.insert(0, pretrain)
        return phases

    def trainable(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    def start_phase(self, phase: Phase) -> None:
        """Self-training: the teacher becomes a copy of the student (unless just resumed)."""
        if phase.name == "selftrain":
            if not (self._keep_loaded_teacher and self.teacher is not None):
                self.teacher = make_teacher(self.student)
            self._keep_loaded_teacher = False

    def train_step(self, phase: Phase, batch: Batch,
                   optimizers: Mapping[str, TwoSource], iteration: int) -> StepResult:
        opt = get_optimizer(optimizers, "student")
        check_even_halves(batch, self.name)
        self.student.train()
        if phase.name == "pretrain":
            loss_l = self.pretrain_loss(batch)
            two_source_step(opt, optimizer_params(opt), loss_l, None)
            return StepResult(loss_l=detached(loss_l), loss_u=torch.zeros_like(detached(loss_l)),
                              admitted=mean_alignment([opt]))
        if phase.name != "selftrain":
            raise ConfigError(f"the bcp framework has no phase {phase.name!r}")
        teacher = self._teacher()
        loss_l, loss_u, extra = self.selftrain_losses(batch)
        two_source_step(opt, optimizer_params(opt), loss_l, loss_u)
        ema_update_(teacher, self.student, decay=self.cfg.ema_decay)
        return StepResult(loss_l=detached(loss_l), loss_u=detached(loss_u),
                          admitted=mean_alignment([opt]), extra=extra)

    def pretrain_loss(self, batch: Batch) -> Tensor:
        """(CE + Dice)/2 of the student on labeled half a pasted around a cube of half b."""
        img_a, img_b = batch.labeled_image.chunk(2)
        lab_a, lab_b = batch.labeled_label.chunk(2)
        mask = random_cube_mask(tuple(img_a.shape[2:]), self.cfg.mask_ratio, rng=self.rng,
                                device=img_a.device)
        image = img_a * mask + img_b * (1 - mask)
        label = (lab_a * mask + lab_b * (1 - mask)).long()
        return self.ce_dice_loss(self.student(image), label)

    def pseudo_labels(self, *halves: Tensor) -> list[Tensor]:
        """Teacher pseudo-labels of unlabeled halves: fg prob >= 0.5 (argmax for more classes),
        then the largest component per volume (per class): :meth:`teacher_labels`, then
        :meth:`largest_components`."""
        return self.largest_components(self.teacher_labels(*halves),
                                       [images.shape[0] for images in halves])

    @torch.no_grad()
    def teacher_labels(self, *halves: Tensor) -> Tensor:
        """The teacher's labels of unlabeled halves, concatenated, before the component step.

        The teacher sees each half in its own forward pass, as BCP does (in train mode its
        BatchNorm uses each half's statistics), unless ``teacher_forward`` batches them
        (:func:`teacher_batches`). Nothing here waits for the device.
        """
        teacher = self._teacher()
        teacher.train()  # BCP keeps the teacher in train mode (BN batch statistics, dropout)
        batched = len(halves) > 1 and teacher_batches(teacher, self.cfg.teacher_forward)
        raw = []
        for images in [torch.cat(halves)] if batched else halves:
            prob = torch.softmax(teacher(images).float(), dim=1)
            raw.append(prob[:, 1] >= 0.5 if self.num_classes == 2 else prob.argmax(dim=1))
        return torch.cat(raw)

    @torch.no_grad()
    def largest_components(self, labels: Tensor, sizes: list[int]) -> list[Tensor]:
        """:meth:`teacher_labels`' output with the largest component kept per volume (per
        class when ``pseudo_lcc``), split back into halves of ``sizes``. The components of all
        halves are found in one call, on a GPU without a host synchronisation (Triton; with CuPy
        instead, its component count is the iteration's one synchronisation)."""
        if self.cfg.pseudo_lcc:
            if self.num_classes == 2:
                labels = largest_connected_component(labels,
                                                     connectivity=self.cfg.lcc_connectivity)
            else:
                labels = keep_largest_per_class(labels, self.num_classes,
                                                connectivity=self.cfg.lcc_connectivity)
        return list(labels.long().split(sizes))

    def pseudo_label(self, images: Tensor) -> Tensor:
        """:meth:`pseudo_labels` of one half."""
        return self.pseudo_labels(images)[0]

    def selftrain_losses(self, batch: Batch) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(L_L, L_U, extras) of one self-training iteration, split per ``grad_split``."""
        unlabeled = unlabeled_of(batch, self.name)
        img_a, img_b = batch.labeled_image.chunk(2)
        lab_a, lab_b = batch.labeled_label.chunk(2)
        unimg_a, unimg_b = unlabeled.chunk(2)
        teacher_labels = self.teacher_labels(unimg_a, unimg_b)
        mask = random_cube_mask(tuple(img_a.shape[2:]), self.cfg.mask_ratio, rng=self.rng,
                                device=img_a.device)
        region = mask.expand(img_a.shape[0], *mask.shape)  # 1 outside the cube ("image" region)
        out_l = self.student(img_a * mask + unimg_a * (1 - mask))
        out_u = self.student(unimg_b * mask + img_b * (1 - mask))
        # The component step waits for the device (on a GPU); queued after the student's
        # forwards, which do not need the pseudo-labels, it waits while they run instead of
        # leaving the device idle until the host has queued them. It draws no random numbers,
        # so the teacher's and the student's dropout draw what they drew in BCP's order.
        plab_a, plab_b = self.largest_components(teacher_labels,
                                                 [unimg_a.shape[0], unimg_b.shape[0]])
        w = self.cfg.u_weight
        if self.cfg.grad_split == "source":
            loss_l = self.mix_loss(out_l, lab_a, plab_a, region, image_weight=1.0,
                                   patch_weight=w)
            loss_u = self.mix_loss(out_u, plab_b, lab_b, region, image_weight=w,
                                   patch_weight=1.0)
            return loss_l, loss_u, {}
        gt_l, pseudo_l = self.mix_loss_parts(out_l, lab_a, plab_a, region,
                                             image_weight=1.0, patch_weight=w)
        pseudo_u, gt_u = self.mix_loss_parts(out_u, plab_b, lab_b, region,
                                             image_weight=w, patch_weight=1.0)
        extra = {"bcp_loss_l": detached(gt_l + pseudo_l), "bcp_loss_u": detached(pseudo_u + gt_u)}
        return gt_l + gt_u, pseudo_l + pseudo_u, extra

    def _teacher(self) -> nn.Module:
        if self.teacher is None:
            raise ConfigError("bcp self-training started without start_phase('selftrain')")
        return self.teacher

    def eval_model(self) -> nn.Module:
        return self.student

    def state_dict(self) -> dict[str, Any]:
        nets = {"student": self.student}
        if self.teacher is not None:
            nets["teacher"] = self.teacher
        return {"networks": networks_state(nets), "rng": self.rng.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load every network; a saved teacher survives the next ``start_phase`` (resume)."""
        self.student.load_state_dict(state["networks"]["student"])
        if "teacher" in state["networks"]:
            if self.teacher is None:
                self.teacher = make_teacher(self.student)
            self.teacher.load_state_dict(state["networks"]["teacher"])
            self._keep_loaded_teacher = True
        self.rng.load_state_dict(state["rng"])
