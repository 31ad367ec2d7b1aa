"""Labeled-only training: the lower bound every SSL method is compared against."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from hco_cli.data.batch import Batch
from hco_cli.optim.protocol import TwoSource
from hco_cli.ssl.base import Framework, ModelFactory, Phase, StepResult, two_source_step
from hco_cli.ssl.common import (
    detached,
    get_optimizer,
    mean_alignment,
    networks_state,
    optimizer_params,
)
from hco_cli.ssl.config import SupervisedConfig
from hco_cli.ssl.losses import supervised_loss
from hco_cli.ssl.ramps import poly_lr_factor


def lr_factor_for(schedule: str, iterations: int, power: float) -> Any:
    """The per-iteration LR factor of a ``poly`` or ``constant`` schedule."""
    if schedule == "poly":
        return lambda i: poly_lr_factor(i, iterations, power=power)
    return lambda i: 1.0


class SupervisedFramework(Framework):
    """One network on the labeled stream; L_U is a zero tensor and g_U is absent."""

    name = "supervised"
    loss_functions = ("supervised_loss",)

    def __init__(self, cfg: SupervisedConfig, *, model_factory: ModelFactory, num_classes: int,
                 device: torch.device) -> None:
        self.cfg = cfg
        self.num_classes = num_classes
        self.device = device
        self.student = model_factory().to(device)
        self.supervised_loss = supervised_loss

    def phases(self) -> list[Phase]:
        factor = lr_factor_for(self.cfg.lr_schedule, self.cfg.iterations, self.cfg.poly_power)
        return [Phase("train", self.cfg.iterations, needs_unlabeled=False, lr_factor=factor)]

    def trainable(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    def train_step(self, phase: Phase, batch: Batch,
                   optimizers: Mapping[str, TwoSource], iteration: int) -> StepResult:
        opt = get_optimizer(optimizers, "student")
        self.student.train()
        logits = self.student(batch.labeled_image)
        loss_l = self.supervised_loss(logits, batch.labeled_label, kind=self.cfg.loss)
        two_source_step(opt, optimizer_params(opt), loss_l, None)
        return StepResult(loss_l=detached(loss_l), loss_u=torch.zeros((), device=loss_l.device),
                          admitted=mean_alignment([opt]))

    def eval_model(self) -> nn.Module:
        return self.student

    def state_dict(self) -> dict[str, Any]:
        return {"networks": networks_state({"student": self.student})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["networks"]["student"])
