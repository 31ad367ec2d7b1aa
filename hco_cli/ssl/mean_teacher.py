"""Mean teacher as in SSL4MIS ``train_mean_teacher_3D.py`` (Tarvainen & Valpola, 2017).

Per iteration: the student sees labeled and unlabeled images in one forward pass (BatchNorm
statistics over the whole batch, as SSL4MIS); the EMA teacher, in train mode, sees the
unlabeled images plus clamp(N(0, 0.1^2), -0.2, 0.2) noise. L_L is the supervised loss on the
labeled part; L_U = 0.1 * sigmoid_rampup(iteration // 150, 200) * mean((softmax_s - softmax_t)^2).
After the step the teacher follows theta_t <- a theta_t + (1 - a) theta_s with
a = min(1 - 1/(iteration + 1), 0.99), parameters only.

Choices: the supervised loss defaults to BCP's (CE + Dice)/2 with the (p + t) Dice denominator,
so that every framework of this project shares one loss (SSL4MIS's DiceLoss squares the
denominator). Validation and prediction use the student, as SSL4MIS does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from hco_cli.data.batch import Batch
from hco_cli.optim.protocol import TwoSource
from hco_cli.ssl.base import Framework, ModelFactory, Phase, StepResult, two_source_step
from hco_cli.ssl.common import (
    FrameworkRng,
    detached,
    get_optimizer,
    mean_alignment,
    networks_state,
    optimizer_params,
    scalar,
    unlabeled_of,
)
from hco_cli.ssl.config import MeanTeacherConfig
from hco_cli.ssl.ema import ema_update_, make_teacher, warmup_decay
from hco_cli.ssl.losses import softmax_mse, supervised_loss
from hco_cli.ssl.ramps import sigmoid_rampup
from hco_cli.ssl.supervised import lr_factor_for


class MeanTeacherFramework(Framework):
    """Student + EMA teacher with a softmax-MSE consistency on unlabeled images."""

    name = "mean-teacher"
    loss_functions = ("supervised_loss", "softmax_mse")

    def __init__(self, cfg: MeanTeacherConfig, *, model_factory: ModelFactory, num_classes: int,
                 device: torch.device, seed: int) -> None:
        self.cfg = cfg
        self.num_classes = num_classes
        self.device = device
        self.student = model_factory().to(device)
        # SSL4MIS builds the teacher separately, but its first update (a = 0) copies the student.
        self.teacher = make_teacher(self.student)
        self.rng = FrameworkRng(seed, device)
        self.supervised_loss, self.softmax_mse = supervised_loss, softmax_mse

    def phases(self) -> list[Phase]:
        factor = lr_factor_for(self.cfg.lr_schedule, self.cfg.iterations, self.cfg.poly_power)
        return [Phase("train", self.cfg.iterations, needs_unlabeled=True, lr_factor=factor)]

    def trainable(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    def consistency_weight(self, iteration: int) -> float:
        """0.1 x sigmoid ramp-up over ``iteration // rampup_every`` (SSL4MIS)."""
        step = iteration // self.cfg.rampup_every
        return self.cfg.consistency * sigmoid_rampup(step, self.cfg.rampup_length)

    def teacher_noise(self, images: Tensor) -> Tensor:
        """clamp(N(0, std^2), -clip, clip) drawn from the framework's device generator."""
        noise = torch.randn(images.shape, generator=self.rng.device, device=images.device,
                            dtype=images.dtype)
        return (noise * self.cfg.noise_std).clamp_(-self.cfg.noise_clip, self.cfg.noise_clip)

    def losses(self, batch: Batch, iteration: int) -> tuple[Tensor, Tensor, Tensor]:
        """(L_L, L_U, unweighted consistency) of one iteration, with the graph for the student."""
        unlabeled = unlabeled_of(batch, self.name)
        self.student.train()
        self.teacher.train()
        n_l = batch.labeled_image.shape[0]
        noisy = unlabeled + self.teacher_noise(unlabeled)
        logits = self.student(torch.cat([batch.labeled_image, unlabeled]))
        with torch.no_grad():
            teacher_logits = self.teacher(noisy)
        loss_l = self.supervised_loss(logits[:n_l], batch.labeled_label, kind=self.cfg.loss)
        consistency = self.softmax_mse(logits[n_l:], teacher_logits)
        return loss_l, self.consistency_weight(iteration) * consistency, consistency

    def train_step(self, phase: Phase, batch: Batch,
                   optimizers: Mapping[str, TwoSource], iteration: int) -> StepResult:
        opt = get_optimizer(optimizers, "student")
        loss_l, loss_u, consistency = self.losses(batch, iteration)
        two_source_step(opt, optimizer_params(opt), loss_l, loss_u)
        ema_update_(self.teacher, self.student,
                    decay=warmup_decay(iteration, self.cfg.ema_decay))
        extra = {"consistency": detached(consistency),
                 "consistency_weight": scalar(self.consistency_weight(iteration), loss_l.device)}
        return StepResult(loss_l=detached(loss_l), loss_u=detached(loss_u),
                          admitted=mean_alignment([opt]), extra=extra)

    def eval_model(self) -> nn.Module:
        return self.student

    def state_dict(self) -> dict[str, Any]:
        nets = networks_state({"student": self.student, "teacher": self.teacher})
        return {"networks": nets, "rng": self.rng.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["networks"]["student"])
        self.teacher.load_state_dict(state["networks"]["teacher"])
        self.rng.load_state_dict(state["rng"])
